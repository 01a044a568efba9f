"""A live progress bar when a person watches a terminal; log lines print above it."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tiny_audio.training.trainer import Callback, Trainer


class TerminalProgress(Callback):
    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        )
        self.task = self.progress.add_task("training", total=None)

    def log(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False)

    def on_train_start(self, trainer: Trainer) -> None:
        self.progress.update(self.task, total=trainer.args.max_steps, completed=trainer.state.step)
        self.progress.start()

    def on_step_end(self, trainer: Trainer) -> None:
        self.progress.update(self.task, completed=trainer.state.step)

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        self.progress.stop()
