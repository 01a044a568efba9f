"""Early warnings on a run nobody is watching: a stuck loss, overfitting, and early stopping.

Each watches the metrics the loop already reports (`train/loss` on log, `eval/loss` on evaluate)
and speaks once per episode: a warning is repeated only after the condition has cleared.
"""

from __future__ import annotations

import math
from typing import Any

from tiny_audio.training.trainer import Callback, Trainer

# Noise in a logged loss (an average over `logging_steps`) is about 1%; smaller gains are no progress.
MIN_RELATIVE_IMPROVEMENT = 0.01

PLATEAU_ADVICE = (
    "Course advice: a stage-1 loss that stalls early usually means the projector is not learning from the audio. "
    "Check the learning rate (if the loss is smooth but flat, raise training.learning_rate; if it jumps "
    "around, lower it or lengthen training.warmup_steps), that the transcripts match the audio "
    "(listen to a few samples), and that the part you meant to train is trainable (the parameter table at "
    "the start of the run)."
)


class PlateauCallback(Callback):
    """Warn when the best train loss of the last `window` steps is no better than the best before them."""

    def __init__(self, window: int, warmup_steps: int = 0) -> None:
        self.window = window
        self.warmup_steps = warmup_steps
        self.losses: list[tuple[int, float]] = []  # (step, logged loss) after warm-up
        self.warned = False

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        step, loss = trainer.state.step, metrics.get("train/loss", math.nan)
        if step <= self.warmup_steps or not math.isfinite(loss):
            return
        self.losses.append((step, loss))
        boundary = step - self.window
        before = [value for at, value in self.losses if at <= boundary]
        if not before:
            return
        reference = min(before)
        recent = min(value for at, value in self.losses if at > boundary)
        if recent < reference - abs(reference) * MIN_RELATIVE_IMPROVEMENT:
            self.warned = False
            return
        if not self.warned:
            self.warned = True
            trainer.log(
                f"warning: the training loss has not improved in the last {self.window} steps "
                f"(best {reference:.4f} by step {boundary}, best since {recent:.4f}; "
                f"training.plateau_window={self.window}). {PLATEAU_ADVICE}"
            )


class OverfittingCallback(Callback):
    """Warn when eval loss rose at two evaluations in a row while the train loss fell over the same span."""

    def __init__(self, early_stopping_enabled: bool = False) -> None:
        self.early_stopping_enabled = early_stopping_enabled
        self.evals: list[float] = []
        self.train_means: list[float] = []  # mean logged train loss between consecutive evaluations
        self._since_eval: list[float] = []
        self.warned = False

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        loss = metrics.get("train/loss", math.nan)
        if math.isfinite(loss):
            self._since_eval.append(loss)

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        loss = metrics.get("eval/loss", math.nan)
        if not math.isfinite(loss) or not self._since_eval:
            return
        self.evals.append(loss)
        self.train_means.append(sum(self._since_eval) / len(self._since_eval))
        self._since_eval = []
        if len(self.evals) < 3:
            return
        (e0, e1, e2), (t0, t2) = self.evals[-3:], (self.train_means[-3], self.train_means[-1])
        if e2 < e1:
            self.warned = False  # eval improved: a later rise is a new episode
        if e0 < e1 < e2 and t2 < t0 and not self.warned:
            self.warned = True
            advice = (
                "early stopping (training.early_stopping.patience) will stop the run and keep the best checkpoint"
                if self.early_stopping_enabled
                else "set training.early_stopping.patience=N to stop after N evaluations without a new best "
                "and keep the best checkpoint, or train on more data"
            )
            trainer.log(
                f"warning: eval loss rose at two evaluations in a row ({e0:.4f} -> {e1:.4f} -> {e2:.4f}) while the "
                f"training loss fell ({t0:.4f} -> {t2:.4f}): the model may be overfitting; {advice}."
            )


class EarlyStoppingCallback(Callback):
    """Stop after `patience` evaluations without a new best eval loss; keep that best checkpoint.

    The best evaluation's step goes into `trainer.state.best_step`; the checkpoint saved at that step
    becomes `trainer.state.best_checkpoint`, which pruning never deletes. A best evaluation at a step
    the loop would not save at is saved here, so the best weights always exist on disk.
    """

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.evals_without_improvement = 0

    def state_dict(self) -> dict[str, Any]:
        return {"evals_without_improvement": self.evals_without_improvement}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evals_without_improvement = state["evals_without_improvement"]

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        loss = metrics.get("eval/loss", math.nan)
        if not math.isfinite(loss):
            return
        state, step = trainer.state, trainer.state.step
        if state.best_eval_loss is None or loss < state.best_eval_loss - self.min_delta:
            state.best_eval_loss, state.best_step = loss, step
            self.evals_without_improvement = 0
            if not trainer.will_save_at(step):
                trainer.save()
            return
        self.evals_without_improvement += 1
        if self.evals_without_improvement >= self.patience:
            trainer.request_stop(
                f"early stopping: no eval loss below {state.best_eval_loss:.4f} (step {state.best_step}) for "
                f"{self.patience} evaluations, training.early_stopping.patience={self.patience}"
            )

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        state = trainer.state
        if state.best_checkpoint is not None and state.best_eval_loss is not None:
            trainer.log(
                f"Best checkpoint: {state.best_checkpoint} (eval loss {state.best_eval_loss:.4f} at step "
                f"{state.best_step}); load it with load_pretrained('{state.best_checkpoint}')."
            )
