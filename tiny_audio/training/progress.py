"""The console progress line: `Step 25/20000 | Loss: 8.34 | Grad Norm: 45.2 | LR: 1e-4 | ETA: 20hr`."""

from __future__ import annotations

import math
import time
from collections import deque


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
