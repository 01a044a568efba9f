"""The loop's state in a checkpoint: what a save assembles, and what a same-stage resume puts back.

`trainer_state.json` (`trainer_record`) says what the checkpoint is; `training_state.pt`
(`training_state`) holds what only a resume needs: optimizer, schedule, each rank's data position
and random state, the loop's counters and every callback's state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from tiny_audio.config import Config, ModelConfig
from tiny_audio.data.skips import SkipLedger
from tiny_audio.training import checkpoints
from tiny_audio.training.callback import Callback


@dataclass
class TrainState:
    step: int = 0
    samples_seen: int = 0
    audio_seconds: float = 0.0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None
    history: dict[str, list[float]] = field(default_factory=lambda: {"train_loss": [], "eval_loss": []})


def trainable_components(model: ModelConfig) -> dict[str, bool]:
    trainable = {"projector": model.projector_trainable, "lora": model.lora.enabled}
    # Named only when true, so checkpoints of a frozen decoder read as they always have.
    return trainable | ({"decoder": True} if model.decoder_trainable else {})


def layout(processes: int, num_workers: int) -> dict[str, int]:
    """What the saved data positions depend on: one per loader worker on each rank."""
    return {"processes": processes, "data.num_workers": num_workers}


def check_same_layout(checkpoint: Path, saved: dict[str, Any], now: dict[str, int]) -> None:
    """The data position of each loader worker on each rank only fits the same layout."""
    before = saved.get("layout", now)
    if before != now:
        raise checkpoints.CheckpointMismatchError(
            f"{checkpoint} was saved with {before} but this run has {now}; resume with the same "
            "number of processes and data.num_workers (the data position is kept per worker)"
        )


def rank_state(loader: Any, skips: SkipLedger) -> dict[str, Any]:
    """This rank's part: every rank has its own data position, skipped ids and random state."""
    return {"dataloader": loader.state_dict(), "skips": skips.state_dict(), "rng": checkpoints.rng_state()}


def trainer_record(cfg: Config, state: TrainState, processes: int, wandb_run_id: str | None) -> dict[str, Any]:
    return {
        "step": state.step,
        "max_steps": cfg.training.max_steps,
        "experiment": cfg.experiment,
        "trainable": trainable_components(cfg.model),
        "train_loss": state.history["train_loss"][-1:] or None,
        "eval_loss": state.history["eval_loss"][-1:] or None,
        "layout": layout(processes, cfg.data.num_workers),
        "wandb_run_id": wandb_run_id,
    }


def training_state(
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    ranks: list[dict[str, Any]],
    state: TrainState,
    callbacks: list[Callback],
) -> dict[str, Any]:
    """`ranks`: every rank's `rank_state`, in rank order."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ranks": ranks,
        "train_state": asdict(state),
        "callbacks": {type(c).__name__: c.state_dict() for c in callbacks},
    }


def restore(
    saved: dict[str, Any],
    rank: int,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    loader: Any,
    skips: SkipLedger,
    callbacks: list[Callback],
) -> tuple[TrainState, dict[str, Any]]:
    """Load a `training_state` into the run's parts; returns the loop's state and this rank's random state."""
    mine = saved["ranks"][rank]
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    loader.load_state_dict(mine["dataloader"])
    skips.load_state_dict(mine["skips"])
    for callback in callbacks:
        if type(callback).__name__ in saved["callbacks"]:
            callback.load_state_dict(saved["callbacks"][type(callback).__name__])
    return TrainState(**saved["train_state"]), mine["rng"]
