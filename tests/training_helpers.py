"""Callbacks the training tests share."""

from __future__ import annotations

from tiny_audio.training.trainer import Callback, Trainer


class StopAt(Callback):
    """Asks the loop to stop (as a signal would) once a logged step reaches `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if trainer.state.step >= self.step:
            trainer.request_stop("test stop")
