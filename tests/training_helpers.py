"""What the training tests share: a short-run config for module-scoped fixtures, and callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiny_audio.config import Config, DataConfig, DatasetConfig, ModelConfig, TrainingConfig
from tiny_audio.training.trainer import Callback, Trainer


def short_run_config(
    experiment: str,
    model: ModelConfig,
    data: Path,
    output_dir: Path,
    data_options: dict[str, Any] | None = None,
    **training: Any,
) -> Config:
    """A validated CPU run of the tiny models on a local audiofolder: batch 4, no warm-up, no tracker."""
    cfg = Config(experiment=experiment)
    cfg.model = model
    cfg.data = DataConfig(
        datasets=[DatasetConfig(path=str(data))], min_words=1, num_workers=0, shuffle_buffer=0, **(data_options or {})
    )
    defaults: dict[str, Any] = {
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 0,
        "bf16": False,
        "report_to": "none",
    }
    cfg.training = TrainingConfig(output_dir=str(output_dir), **{**defaults, **training})
    return cfg.validate()


class StopAt(Callback):
    """Asks the loop to stop (as a signal would) once a logged step reaches `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.state.step >= self.step:
            trainer.request_stop("test stop")
