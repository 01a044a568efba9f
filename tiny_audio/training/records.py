"""What a run records for its model card: stages, steps, hardware, wall time, config, evaluations.

`RunRecordCallback` keeps the record in its callback state, which every checkpoint saves in
training_state.pt: the card is generated from the checkpoint itself (`read_records`). A new stage
started from an earlier stage's checkpoint carries that stage's record forward.
"""

from __future__ import annotations

import copy
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from tiny_audio.training import checkpoints
from tiny_audio.training.trainer import Callback

if TYPE_CHECKING:
    from tiny_audio.training.trainer import Trainer


def hardware_description(processes: int) -> str:
    if torch.cuda.is_available():
        return f"{processes} x {torch.cuda.get_device_name(0)}"
    cpu = _cpu_name() or platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} threads) x {processes} process(es)"


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


class RunRecordCallback(Callback):
    def __init__(self) -> None:
        self.stages: list[dict[str, Any]] = []
        self.resumed = False
        self._trainer: Trainer | None = None
        self._clock = time.monotonic()

    @property
    def stage(self) -> dict[str, Any]:
        return self.stages[-1]

    def on_train_start(self, trainer: Trainer) -> None:
        self._trainer, self._clock = trainer, time.monotonic()
        if not self.resumed:  # a new run or a new stage; a same-stage resume restored its record already
            self.stages = [*_earlier_stages(trainer), self._new_stage(trainer)]
        self.stage["hardware"] = hardware_description(trainer.accelerator.num_processes)

    def _new_stage(self, trainer: Trainer) -> dict[str, Any]:
        return {
            "experiment": trainer.cfg.experiment,
            "trainable": trainer.trainable_components(),
            "from_checkpoint": trainer.cfg.training.resume_from_checkpoint,
            "start_step": trainer.state.step,
            "end_step": trainer.state.step,
            "max_steps": trainer.args.max_steps,
            "wall_seconds": 0.0,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": OmegaConf.to_container(OmegaConf.structured(trainer.cfg)),
            "evaluations": [],
        }

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.stage["evaluations"].append({"step": trainer.state.step, **numbers})

    def state_dict(self) -> dict[str, Any]:
        if self._trainer is not None and self.stages:
            now = time.monotonic()
            self.stage["wall_seconds"] += now - self._clock
            self._clock = now
            state = self._trainer.state
            self.stage.update(
                end_step=state.step, samples_seen=state.samples_seen, audio_hours=state.audio_seconds / 3600
            )
            losses = state.history["train_loss"]
            self.stage["train_loss"] = losses[-1] if losses else None
        return {"stages": copy.deepcopy(self.stages)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stages = copy.deepcopy(state.get("stages", []))
        self.resumed = bool(self.stages)


def _earlier_stages(trainer: Trainer) -> list[dict[str, Any]]:
    """The record of the stage this one starts from, read from its checkpoint."""
    value = trainer.cfg.training.resume_from_checkpoint
    if not value:
        return []
    checkpoint = checkpoints.resolve_resume(value, trainer.output_dir)
    try:
        state = checkpoints.load_training_state(checkpoint)
    except OSError as error:  # e.g. only the model files were copied: training goes on, the card says less
        trainer.log(
            f"warning: cannot read the run record in {checkpoint / checkpoints.TRAINING_STATE_FILE} "
            f"({error.strerror or error}); the model card will list this stage only, not the ones before it"
        )
        return []
    return copy.deepcopy(state.get("callbacks", {}).get(RunRecordCallback.__name__, {}).get("stages", []))


def read_records(checkpoint: Path) -> dict[str, Any]:
    """Everything a checkpoint says about its run; empty parts when it is a saved model, not a checkpoint."""
    trainer_state = checkpoints.read_trainer_state(checkpoint) if (checkpoint / checkpoints.STATE_FILE).exists() else {}
    stages: list[dict[str, Any]] = []
    train_state: dict[str, Any] = {}
    if (checkpoint / checkpoints.TRAINING_STATE_FILE).exists():
        state = checkpoints.load_training_state(checkpoint)
        train_state = state.get("train_state", {})
        stages = state.get("callbacks", {}).get(RunRecordCallback.__name__, {}).get("stages", [])
    return {"trainer_state": trainer_state, "train_state": train_state, "stages": stages}
