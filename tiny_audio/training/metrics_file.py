"""Every logged and evaluated number, one JSON line per event, in the run's output directory.

`metrics.jsonl` is the run's own record, independent of any tracker: `ta plot` draws the training
curves from it, on this machine or after `ta runpod download`, with or without W&B.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tiny_audio.training.trainer import Callback, Trainer

METRICS_FILE = "metrics.jsonl"


class MetricsFileCallback(Callback):
    """Appends `{"step": N, "event": "log"|"eval", <metric>: value, ...}` lines (main process only)."""

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._write(trainer, "log", metrics)

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._write(trainer, "eval", metrics)

    def _write(self, trainer: Trainer, event: str, metrics: dict[str, Any]) -> None:
        if not trainer.accelerator.is_main_process:
            return
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        path = trainer.output_dir / METRICS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            handle.write(json.dumps({"step": trainer.state.step, "event": event, **numbers}) + "\n")


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    """The run's records in step order; after a resume, a step logged twice keeps its latest record."""
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {output_dir} the output directory of a training run?")
    latest: dict[tuple[int, str], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[(record["step"], record["event"])] = record
    return [latest[key] for key in sorted(latest)]
