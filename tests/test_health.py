"""Plateau and overfitting warnings on scripted losses; early stopping on a real short run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.data_helpers import write_audiofolder
from tests.training_helpers import StopAt
from tiny_audio.recipe.run import run
from tiny_audio.training.health import EarlyStoppingCallback, OverfittingCallback, PlateauCallback
from tiny_audio.training.trainer import Callback, TrainState


def fake_trainer() -> SimpleNamespace:
    """What the health callbacks read of a Trainer: its state and its log."""
    lines: list[str] = []
    return SimpleNamespace(state=TrainState(), log=lines.append, lines=lines)


def feed_train_losses(callback: Callback, trainer: SimpleNamespace, losses: list[float], every: int = 25) -> None:
    for i, loss in enumerate(losses, start=1):
        trainer.state.step = i * every
        callback.on_log(trainer, {"train/loss": loss})


def warnings(trainer: SimpleNamespace) -> list[str]:
    return [line for line in trainer.lines if line.startswith("warning:")]


def test_plateau_warns_once_on_a_flat_loss_after_warmup() -> None:
    trainer = fake_trainer()
    plateau = PlateauCallback(window=200, warmup_steps=100)
    flat = [6.0 + 0.02 * ((i * 7) % 5 - 2) for i in range(60)]  # noise around 6.0 for 1500 steps
    feed_train_losses(plateau, trainer, flat)
    found = warnings(trainer)
    assert len(found) == 1, trainer.lines
    assert "not improved in the last 200 steps" in found[0] and "training.learning_rate" in found[0]


def test_plateau_is_quiet_on_a_falling_loss_and_during_warmup() -> None:
    trainer = fake_trainer()
    plateau = PlateauCallback(window=200, warmup_steps=100)
    feed_train_losses(plateau, trainer, [8.0 * 0.98**i for i in range(60)])
    assert warnings(trainer) == []
    # Flat only during warm-up: nothing to say yet.
    trainer = fake_trainer()
    plateau = PlateauCallback(window=200, warmup_steps=1000)
    feed_train_losses(plateau, trainer, [6.0] * 40)
    assert warnings(trainer) == []


def drive_evaluations(
    callback: OverfittingCallback, trainer: SimpleNamespace, pairs: list[tuple[float, float]]
) -> None:
    """(train loss logged since the last eval, eval loss) per evaluation."""
    for i, (train, evaluation) in enumerate(pairs, start=1):
        trainer.state.step = i * 100
        callback.on_log(trainer, {"train/loss": train})
        callback.on_evaluate(trainer, {"eval/loss": evaluation})


def test_overfitting_warns_when_eval_rises_twice_while_train_falls() -> None:
    trainer = fake_trainer()
    overfitting = OverfittingCallback()
    drive_evaluations(overfitting, trainer, [(3.0, 2.5), (2.5, 2.2), (2.0, 2.3), (1.6, 2.4), (1.3, 2.6)])
    found = warnings(trainer)
    assert len(found) == 1, trainer.lines
    assert "2.2000 -> 2.3000 -> 2.4000" in found[0] and "early_stopping.patience" in found[0]


def test_overfitting_is_quiet_when_both_fall_or_eval_rises_once() -> None:
    trainer = fake_trainer()
    overfitting = OverfittingCallback()
    drive_evaluations(overfitting, trainer, [(3.0, 2.5), (2.5, 2.2), (2.0, 2.3), (1.8, 2.1), (1.6, 2.0)])
    assert warnings(trainer) == []
    # Both rising is divergence, not overfitting.
    drive_evaluations(overfitting, trainer, [(2.0, 2.1), (2.2, 2.2), (2.4, 2.3)])
    assert warnings(trainer) == []


class ScriptedEvalLoss(Callback):
    """Replaces each eval loss with the next scripted value, so early stopping sees a known curve."""

    def __init__(self, losses: list[float]) -> None:
        self.losses = iter(losses)

    def on_evaluate(self, trainer: Any, metrics: dict[str, Any]) -> None:
        metrics["eval/loss"] = next(self.losses)


def test_early_stopping_stops_after_patience_and_keeps_the_best_checkpoint(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    # Evaluations at steps 2, 4, ...: best at step 6, then two without a new best -> stop at step 10.
    scripted = ScriptedEvalLoss([5.0, 4.0, 3.0, 3.5, 3.2, 2.0, 1.0])
    cfg = tiny_run_config(data, max_steps=30, eval_steps=2, save_steps=2, save_total_limit=1, logging_steps=2)
    lines: list[str] = []
    state = run(cfg, callbacks=[scripted, EarlyStoppingCallback(patience=2)], log=lines.append)
    run_dir = tmp_path / "run"
    assert state.step == 10
    assert state.best_eval_loss == 3.0 and state.best_checkpoint == str(run_dir / "checkpoint-6")
    # save_total_limit=1 keeps the newest; the best survives pruning beside it.
    kept = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert kept == ["checkpoint-10", "checkpoint-6"], kept
    assert any("early stopping" in line and "patience=2" in line for line in lines), lines
    assert any(line.startswith(f"Best checkpoint: {run_dir / 'checkpoint-6'}") for line in lines), lines


def test_a_best_evaluation_between_saves_is_saved(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    scripted = ScriptedEvalLoss([5.0, 4.0, 4.5, 4.6])
    cfg = tiny_run_config(data, max_steps=8, eval_steps=2, save_steps=8, save_total_limit=1, logging_steps=2)
    state = run(cfg, callbacks=[scripted, EarlyStoppingCallback(patience=5)], log=lambda _: None)
    run_dir = tmp_path / "run"
    assert state.best_checkpoint == str(run_dir / "checkpoint-4")
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]


def test_the_best_checkpoint_survives_a_resume(tiny_run_config, tmp_path: Path) -> None:
    """A resumed run keeps counting from the restored best; the true best is never pruned."""
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    cfg = tiny_run_config(data, max_steps=30, eval_steps=2, save_steps=2, save_total_limit=1, logging_steps=2)
    # Best at step 4; the run stops (as if preempted) after step 6.
    run(cfg, callbacks=[ScriptedEvalLoss([5.0, 3.0, 4.0]), EarlyStoppingCallback(patience=3), StopAt(6)], log=print)
    cfg.training.resume_from_checkpoint = "latest"
    lines: list[str] = []
    # Evaluations at 8 and 10 bring no new best: with the restored count that makes three -> stop at 10.
    state = run(cfg, callbacks=[ScriptedEvalLoss([4.5, 4.2, 1.0]), EarlyStoppingCallback(patience=3)], log=lines.append)
    run_dir = tmp_path / "run"
    assert state.step == 10 and state.best_step == 4 and state.best_eval_loss == 3.0
    assert state.best_checkpoint == str(run_dir / "checkpoint-4")
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-4"]
