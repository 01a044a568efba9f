"""The hooks the training loop calls, which watchers (health, tracking, records, the hub) override."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The loop that calls the hooks (training/trainer.py's Trainer). It imports this module, so the hooks
# take it untyped here; a callback annotates `trainer: Trainer` in its own overrides.
Trainer = Any


class Callback:
    """Hooks the loop calls; subclasses override what they need."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...
    def on_save(self, trainer: Trainer, checkpoint: Path) -> None: ...
    def on_train_end(self, trainer: Trainer, status: str) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What a callback must remember across a resume (counters, detectors); saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
