"""Checkpoints that cannot be half-written: built in a hidden temp dir, renamed into place.

A complete checkpoint `checkpoint-N/` holds a loadable model (see model.build.save_pretrained),
`training_state.pt` (optimizer, scheduler, RNG, data position, counters) and, written last,
`trainer_state.json`. Anything without that file, or whose name starts with '.', is ignored.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tiny_audio.config import ModelConfig
from tiny_audio.folders import swap_in
from tiny_audio.model import decoder_weights
from tiny_audio.model.build import read_model_config
from tiny_audio.training.disk import disk_full_error, is_disk_full

STATE_FILE = "trainer_state.json"
TRAINING_STATE_FILE = "training_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# Settings that shape the projector's weights; a checkpoint only loads into the same ones.
PROJECTOR_SETTINGS = ("projector_type", "projector_pool_stride", "projector_hidden_dim")


class CheckpointMismatchError(ValueError):
    """A checkpoint that cannot continue into this run's configuration."""


def check_compatible(checkpoint: Path, wanted: ModelConfig) -> None:
    """Fail in one line, before any tensor is copied, when the saved projector differs from the config
    or the saved decoder weights are incomplete (a shard named by the index is missing)."""
    missing = decoder_weights.missing_shards(checkpoint)
    if missing:
        raise CheckpointMismatchError(
            f"{checkpoint} holds incomplete decoder weights: {', '.join(missing)} named by "
            f"{decoder_weights.INDEX_FILE} not found; copy the whole checkpoint directory"
        )
    saved = read_model_config(checkpoint)
    keys = [*PROJECTOR_SETTINGS]
    if wanted.projector_type in ("mosa", "moe", "qformer"):
        keys.append(wanted.projector_type)
    differ = [k for k in keys if getattr(saved, k) != getattr(wanted, k)]
    if differ:
        found = ", ".join(f"model.{k}={getattr(saved, k)!r} (config: {getattr(wanted, k)!r})" for k in differ)
        raise CheckpointMismatchError(
            f"{checkpoint} holds a different projector: {found}; set the same values (e.g. in your stage-2 "
            "experiment file) to continue from it"
        )


def is_complete(directory: Path) -> bool:
    return directory.is_dir() and _NAME.match(directory.name) is not None and (directory / STATE_FILE).exists()


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [d for d in output_dir.iterdir() if is_complete(d)]
    return sorted(found, key=lambda d: int(_NAME.match(d.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def resolve_resume(value: str, output_dir: Path) -> Path:
    """`latest` -> newest complete checkpoint in the run's output dir; else the given path, checked."""
    if value == "latest":
        found = latest_checkpoint(output_dir)
        if found is None:
            raise FileNotFoundError(
                f"training.resume_from_checkpoint=latest: no complete checkpoint in {output_dir}; "
                "start without it, or pass a checkpoint path"
            )
        return found
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"training.resume_from_checkpoint={value!r}: no such directory")
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(
            f"training.resume_from_checkpoint={value!r} is not a complete checkpoint (no {STATE_FILE}); "
            f"the newest complete one is {latest_checkpoint(path.parent)}"
        )
    return path


def write_checkpoint(
    output_dir: Path,
    step: int,
    write_contents: Any,
    trainer_state: dict[str, Any],
    training_state: dict[str, Any],
) -> Path:
    """Write checkpoint-`step` atomically; `write_contents(dir)` writes the model files.

    On a full disk the partial copy is removed and DiskFullError names the last complete checkpoint.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    staging = output_dir / f".checkpoint-{step}.tmp"
    try:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        write_contents(staging)
        torch.save(training_state, staging / TRAINING_STATE_FILE)
        (staging / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        # Rename is atomic against a kill, but only data on disk survives a power loss.
        _fsync_tree(staging)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(error):
            raise disk_full_error(output_dir, final.name, latest_checkpoint(output_dir), error) from error
        raise
    # A checkpoint at the same step (a resumed run saving again) is replaced, never merged.
    swap_in(staging, final)
    _fsync_dir(output_dir)
    return final


def prune_checkpoints(output_dir: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Keep the `keep` newest complete checkpoints (at least the newest) and `protect`; delete the rest."""
    found = complete_checkpoints(output_dir)
    kept = set(found[-max(keep, 1) :])
    removed = [d for d in found if d not in kept and d != protect]
    for directory in removed:
        shutil.rmtree(directory)
    return removed


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / TRAINING_STATE_FILE, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then each directory, deepest first."""
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
