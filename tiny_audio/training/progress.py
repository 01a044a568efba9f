"""What the loop reports every `logging_steps`: the console progress line and the metrics logged with it.

The line reads `Step 25/20000 | Loss: 8.34 | Grad Norm: 45.2 | LR: 1e-4 | ETA: 20hr | ...`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from tiny_audio.training.ranks import WindowLoss


def format_lr(lr: float) -> str:
    """1e-4, 2.5e-5: the way people write learning rates."""
    if lr == 0:
        return "0"
    exponent = math.floor(math.log10(abs(lr)))
    mantissa = round(lr / 10**exponent, 2)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    text = f"{mantissa:g}"
    return f"{text}e{exponent}"


def format_metric(value: float) -> str:
    """Three significant figures, as the course prints them: 8.34, 45.2, 0.0312, 1234."""
    if not math.isfinite(value) or abs(value) >= 1000:
        return f"{value:.0f}" if math.isfinite(value) else str(value)
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def format_duration(seconds: float) -> str:
    if seconds >= 10 * 3600:
        return f"{seconds / 3600:.0f}hr"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}hr"
    if seconds >= 60:
        return f"{seconds / 60:.0f}min"
    return f"{seconds:.0f}s"


class StepTimer:
    """Seconds per optimizer step as a moving average, for a steady ETA."""

    def __init__(self, window: int = 50) -> None:
        self.durations: deque[float] = deque(maxlen=window)
        self.last = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        self.durations.append(now - self.last)
        self.last = now

    def restart(self) -> None:
        """Exclude pauses (evaluation, checkpointing) from the step time."""
        self.last = time.perf_counter()

    @property
    def seconds_per_step(self) -> float:
        return sum(self.durations) / len(self.durations) if self.durations else 0.0

    def eta(self, steps_left: int) -> float:
        return self.seconds_per_step * steps_left


def progress_line(
    step: int,
    max_steps: int,
    loss: float,
    grad_norm: float,
    lr: float,
    eta_seconds: float,
    samples_per_second: float,
    audio_hours: float,
    cost: tuple[float, float] | None = None,
) -> str:
    parts = [
        f"Step {step}/{max_steps}",
        f"Loss: {format_metric(loss)}",
        f"Grad Norm: {format_metric(grad_norm)}",
        f"LR: {format_lr(lr)}",
        f"ETA: {format_duration(eta_seconds)}",
        f"Samples/s: {samples_per_second:.2f}",
        f"Audio: {audio_hours:.2f}h",
    ]
    if cost is not None:
        spent, projected = cost
        parts.append(f"Cost: ${spent:.2f} (projected ${projected:.2f})")
    return " | ".join(parts)


class ProgressWindow:
    """The updates since the last progress line: their losses, samples and wall time."""

    def __init__(self) -> None:
        self.losses: list[WindowLoss] = []  # one per update that was not skipped
        self.samples = 0  # this rank's
        self.start = time.perf_counter()

    def add(self, loss: WindowLoss | None, samples: int) -> None:
        if loss is not None:
            self.losses.append(loss)
        self.samples += samples

    @property
    def loss(self) -> float:
        """Token-weighted over the window's updates, as eval/loss is over the eval set."""
        tokens = sum(w.tokens for w in self.losses)
        return sum(w.lm_loss_sum for w in self.losses) / tokens if tokens else float("nan")

    @property
    def aux_loss(self) -> float | None:
        aux = [w.aux_loss for w in self.losses if w.aux_loss is not None]
        return sum(aux) / len(aux) if aux else None

    def samples_per_second(self) -> float:
        return self.samples / max(time.perf_counter() - self.start, 1e-9)


def gpu_cost(timer: StepTimer, step: int, eta_seconds: float, hourly_usd: float | None) -> tuple[float, float] | None:
    """(spent, projected at the end) in USD, from the mean step time; None without `training.gpu_hourly_usd`."""
    if hourly_usd is None:
        return None
    elapsed_hours = sum(timer.durations) / 3600 * step / max(len(timer.durations), 1)
    return elapsed_hours * hourly_usd, (elapsed_hours + eta_seconds / 3600) * hourly_usd


def rank_rates_line(rates: list[float]) -> str:
    """Each rank's samples/s, so that a slow rank (which every other rank waits for) shows up."""
    return (
        "Samples/s per rank: "
        + ", ".join(f"{rank}: {rate:.2f}" for rank, rate in enumerate(rates))
        + f" (slowest at {min(rates) / max(max(rates), 1e-9):.0%} of the fastest)"
    )


def train_metrics(
    window: ProgressWindow,
    grad_norm: float,
    lr: float,
    param_groups: list[dict[str, Any]],
    rank_rates: list[float],
    audio_hours: float,
    nonfinite_updates: int,
    skipped: dict[str, int],
) -> dict[str, float]:
    """The metrics logged with a progress line, for trackers and callbacks; `rank_rates` in rank order."""
    metrics = {
        "train/loss": window.loss,
        "train/grad_norm": grad_norm,
        "train/learning_rate": lr,
        **{
            f"train/{group['name']}_learning_rate": group["lr"]
            for group in param_groups
            if group.get("name") == "decoder"
        },
        "train/samples_per_second": sum(rank_rates),
        **{f"train/samples_per_second_rank{rank}": rate for rank, rate in enumerate(rank_rates) if len(rank_rates) > 1},
        "train/audio_hours": audio_hours,
        "train/nonfinite_updates": float(nonfinite_updates),
    }
    if window.aux_loss is not None:
        # Logged apart: train/loss is the language-model loss alone, comparable with eval/loss.
        metrics["train/aux_loss"] = window.aux_loss
    metrics.update({f"data/skipped_{reason}": float(n) for reason, n in skipped.items()})
    return metrics
