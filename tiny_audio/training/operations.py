"""The callbacks that watch over a run: tracker extras, health warnings, early stopping, Hub push."""

from __future__ import annotations

from tiny_audio.config import Config
from tiny_audio.export.records import RunRecordCallback
from tiny_audio.training.health import EarlyStoppingCallback, OverfittingCallback, PlateauCallback
from tiny_audio.training.hub import HubPushCallback
from tiny_audio.training.metrics_file import MetricsFileCallback
from tiny_audio.training.tracking import TrackerCallback
from tiny_audio.training.trainer import Callback


def operations_callbacks(cfg: Config) -> list[Callback]:
    """Place after the WER callback: the tracker's predictions table reads what it adds."""
    args = cfg.training
    patience = args.early_stopping.patience
    callbacks: list[Callback] = [
        TrackerCallback(args.report_to),
        MetricsFileCallback(),
        PlateauCallback(args.plateau_window, args.warmup_steps),
        OverfittingCallback(early_stopping_enabled=patience is not None),
    ]
    if patience is not None:
        callbacks.append(EarlyStoppingCallback(patience, args.early_stopping.min_delta))
    if args.pushes_to_hub:
        assert args.hub_model_id is not None
        callbacks.append(HubPushCallback(args.hub_model_id, args.hub_push_retries))
    # Last: it exports (and pushes) the final checkpoint after the Hub push above has finished.
    callbacks.append(RunRecordCallback())
    return callbacks
