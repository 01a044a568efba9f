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
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tiny_audio.config import ModelConfig
from tiny_audio.folders import swap_in
from tiny_audio.model import decoder_weights
from tiny_audio.model.build import read_model_config
from tiny_audio.runtime.projector_registry import PROJECTORS
from tiny_audio.training.disk import disk_full_error, is_disk_full

STATE_FILE = "trainer_state.json"
TRAINING_STATE_FILE = "training_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# The frozen models and how they see audio: a projector (and a trained decoder) only fits the ones it
# was trained with.
FROZEN_MODEL_SETTINGS = ("audio_model_id", "text_model_id", "encoder_padding")


class CheckpointMismatchError(ValueError):
    """A checkpoint that cannot continue into this run's configuration."""


def check_compatible(checkpoint: Path, wanted: ModelConfig) -> None:
    """Fail in one line, before any tensor is copied, when the saved weights cannot continue into `wanted`:
    decoder weights incomplete (a shard named by the index is missing), a projector of other settings, or
    weights trained on other frozen models. The line names each differing key, both values and the fix."""
    missing = decoder_weights.missing_shards(checkpoint)
    if missing:
        raise CheckpointMismatchError(
            f"{checkpoint} holds incomplete decoder weights: {', '.join(missing)} named by "
            f"{decoder_weights.INDEX_FILE} not found; copy the whole checkpoint directory"
        )
    saved = read_model_config(checkpoint)
    # Both projectors' settings: after switching model.projector_type back, the rest must match too.
    types = [name for name in dict.fromkeys((saved.projector_type, wanted.projector_type)) if name in PROJECTORS]
    settings = dict.fromkeys(setting for name in types for setting in PROJECTORS[name].weight_settings)
    differ = _differing(saved, wanted, [*settings, *FROZEN_MODEL_SETTINGS])
    if not differ:
        return
    found = ", ".join(f"model.{key}={before!r} (config: {now!r})" for key, (before, now) in differ.items())
    fix = " ".join(f"model.{key}={_override_value(before)}" for key, (before, _) in differ.items())
    frozen_models_differ = any(key in FROZEN_MODEL_SETTINGS for key in differ)
    if frozen_models_differ and decoder_weights.has_decoder(checkpoint):
        fits = "projector and decoder weights only fit"
    else:
        fits = "projector only fits"
    raise CheckpointMismatchError(
        f"{checkpoint} was trained with {found}; its {fits} those, so set {fix} (e.g. in your stage-2 "
        "experiment file) to continue from it"
    )


def _differing(saved: ModelConfig, wanted: ModelConfig, settings: list[str]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, wanted value) for each differing one."""
    differ = {}
    for setting in settings:
        saved_leaves, wanted_leaves = (
            _leaves(setting, getattr(saved, setting)),
            _leaves(setting, getattr(wanted, setting)),
        )
        pairs = zip(saved_leaves, wanted_leaves, strict=True)
        differ.update({key: (before, now) for (key, before), (_, now) in pairs if before != now})
    return differ


def _leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    """A setting as dotted override keys: a projector's block (model.mosa) by each of its fields."""
    if is_dataclass(value):
        return [(f"{key}.{f.name}", getattr(value, f.name)) for f in fields(value)]
    return [(key, value)]


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


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
