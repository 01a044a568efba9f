"""The callbacks the recipe registers beside evaluation: tracker extras, health warnings, early
stopping, Hub push, the run record, and the export of the final model."""

from __future__ import annotations

from pathlib import Path

from tiny_audio.config import Config
from tiny_audio.export.export import export_model
from tiny_audio.export.push import push_export_quietly
from tiny_audio.training.health import EarlyStoppingCallback, OverfittingCallback, PlateauCallback
from tiny_audio.training.hub import HubPushCallback
from tiny_audio.training.metrics_file import MetricsFileCallback
from tiny_audio.training.records import RunRecordCallback
from tiny_audio.training.tracking import TrackerCallback
from tiny_audio.training.trainer import Callback, Trainer

EXPORT_DIR = "export"


class FinalExportCallback(Callback):
    """At the end of a run, export the last saved checkpoint to OUTPUT_DIR/export (and push it, when
    the run pushes to the Hub). A failure is logged with the command that redoes it, never raised."""

    def __init__(self) -> None:
        self.last_saved: Path | None = None

    def on_save(self, trainer: Trainer, checkpoint: Path) -> None:
        self.last_saved = checkpoint

    def on_train_end(self, trainer: Trainer, status: str) -> None:
        if status == "failed" or self.last_saved is None or not trainer.accelerator.is_main_process:
            return
        out = trainer.output_dir / EXPORT_DIR
        try:
            export_model(
                self.last_saved, out, model_id=trainer.args.hub_model_id if trainer.args.pushes_to_hub else None
            )
        except Exception as error:  # the run is over and its checkpoint safe: report, never fail it here
            trainer.log(
                f"warning: could not export {self.last_saved} ({type(error).__name__}: {error}); "
                f"export it with: ta export {self.last_saved} {out}"
            )
            return
        trainer.log(f"Exported the final model ({self.last_saved.name}) for transformers, with its model card: {out}")
        if trainer.args.pushes_to_hub:
            push_export_quietly(out, trainer.args.hub_model_id, trainer.log)


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
    callbacks.append(RunRecordCallback())
    # Last: it exports (and pushes) the final checkpoint after the Hub push above has finished.
    callbacks.append(FinalExportCallback())
    return callbacks
