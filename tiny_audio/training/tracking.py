"""Experiment trackers: a login check before any model loads, and what the loop's numbers leave out.

The loop already sends every numeric metric through accelerate (`train/loss`, `train/grad_norm`,
`train/learning_rate`, `eval/loss`, `eval/wer` when the WER callback adds it, `data/skipped_*`).
This module adds the eval predictions table and makes sure a run on a pod without a W&B login fails
at once with the fix, instead of after the model download when wandb asks for a key nobody can type.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tiny_audio.training.trainer import Callback, Trainer

WANDB_DEFAULT_HOST = "https://api.wandb.ai"
# Modes in which wandb never contacts the server, so no login is needed.
WANDB_LOCAL_MODES = ("offline", "disabled", "dryrun")
PREDICTION_ROWS = 16  # enough to read what the model does without turning the page into a dataset


class TrackerLoginError(RuntimeError):
    """The configured tracker cannot log: not installed, or not logged in with nobody to ask."""


def wandb_logged_in(env: Mapping[str, str] = os.environ) -> bool:
    """An API key in the environment, an identity-token file, or a netrc entry for the W&B host."""
    if env.get("WANDB_API_KEY") or env.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(env.get("WANDB_BASE_URL", WANDB_DEFAULT_HOST)).hostname or ""
    path = Path(env.get("NETRC") or Path.home() / ".netrc").expanduser()
    if not path.is_file():
        return False
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def require_tracker(report_to: str, *, interactive: bool | None = None) -> None:
    """Raise TrackerLoginError when `report_to` cannot work in this process; call before loading models."""
    if report_to == "none":
        return
    # Each tracker's package and module share its name.
    if importlib.util.find_spec(report_to) is None:
        raise TrackerLoginError(
            f"training.report_to={report_to} needs the '{report_to}' package: pip install {report_to}, "
            "or set training.report_to=none"
        )
    if report_to != "wandb":
        return
    if os.environ.get("WANDB_MODE", "").lower() in WANDB_LOCAL_MODES or wandb_logged_in():
        return
    # With a terminal attached wandb asks for the key itself; without one (tmux logs, nohup, a pod
    # started by a script) it would fail only after the model download.
    if interactive if interactive is not None else sys.stdin.isatty():
        return
    raise TrackerLoginError(
        "training.report_to=wandb but W&B is not logged in and no terminal is attached to ask for a key. "
        "Log in with `wandb login` or `export WANDB_API_KEY=...`; or turn it off with training.report_to=none, "
        "or keep the logs locally with WANDB_MODE=offline (upload later with `wandb sync`)."
    )


class TrackerCallback(Callback):
    """Per-run tracker extras: min-summaries for eval metrics and a table of eval transcriptions.

    Must come after the WER callback in the callback list: that one adds `eval/predictions`.
    """

    def __init__(self, report_to: str, max_rows: int = PREDICTION_ROWS) -> None:
        self.report_to = report_to
        self.max_rows = max_rows

    def on_train_start(self, trainer: Trainer) -> None:
        if self.report_to == "wandb" and trainer.accelerator.is_main_process:
            run = trainer.accelerator.get_tracker("wandb", unwrap=True)
            # The run page then shows the best eval loss and WER, not just the last.
            run.define_metric("eval/loss", summary="min")
            run.define_metric("eval/wer", summary="min")

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        predictions = metrics.get("eval/predictions")
        if not predictions or not trainer.accelerator.is_main_process:
            return
        step = trainer.state.step
        rows = [[step, p["reference"], p["prediction"]] for p in predictions[: self.max_rows]]
        if self.report_to == "wandb":
            import wandb

            run = trainer.accelerator.get_tracker("wandb", unwrap=True)
            table = wandb.Table(columns=["step", "reference", "prediction"], data=rows)
            run.log({"eval/predictions": table}, step=step)
        elif self.report_to == "tensorboard":
            writer = trainer.accelerator.get_tracker("tensorboard", unwrap=True)
            writer.add_text("eval/predictions", _markdown_table(rows), global_step=step)


def _markdown_table(rows: list[list[Any]]) -> str:
    lines = ["| step | reference | prediction |", "|---|---|---|"]
    lines += [f"| {step} | {ref} | {pred} |" for step, ref, pred in rows]
    return "\n".join(lines)
