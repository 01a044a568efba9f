"""The recipe: config -> model, data, trainer -> train. `scripts/train.py` and `ta train` call `run`."""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from tiny_audio.config import Config
from tiny_audio.data.effect_files import require_effect_dirs
from tiny_audio.data.guard import DataQualityError
from tiny_audio.data.remote import RemoteDataError, RemoteReadError
from tiny_audio.data.sources import DataSourceError
from tiny_audio.data.stream import build_eval_stream
from tiny_audio.evaluation.callback import WerCallback
from tiny_audio.model.build import attach_encoder_cache, build_model, parameter_counts
from tiny_audio.model.scale import StepZeroScale
from tiny_audio.recipe.callbacks import operations_callbacks
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.speech_llm import SpeechLLM
from tiny_audio.training import checkpoints
from tiny_audio.training.accelerator import make_accelerator
from tiny_audio.training.checkpoints import CheckpointMismatchError
from tiny_audio.training.data_host import DataHostDownError, data_host_down_reported
from tiny_audio.training.disk import DiskFullError, disk_full_error, is_disk_full
from tiny_audio.training.loaders import build_train_loader, train_collator
from tiny_audio.training.optim import apply_speed_settings
from tiny_audio.training.precision import resolve_precision
from tiny_audio.training.preflight import PreflightError, require_memory_fits, require_preflight
from tiny_audio.training.terminal import TerminalProgress
from tiny_audio.training.tracking import TrackerLoginError, require_tracker
from tiny_audio.training.trainer import Callback, NonFiniteLossError, Trainer, TrainState


def describe_parameters(model: SpeechLLM) -> str:
    rows = [
        f"  {name:<10} trainable {trainable:>13,} of {total:>13,}"
        for name, (trainable, total) in parameter_counts(model).items()
    ]
    return "Parameters:\n" + "\n".join(rows)


def run(cfg: Config, callbacks: list[Callback] | None = None, log=print) -> TrainState:
    args = cfg.training
    output_dir = Path(args.output_dir or "outputs")
    accelerator = make_accelerator(cfg)
    if not accelerator.is_main_process:
        log = _quiet  # one voice on the console: the main process speaks for all ranks
    cfg = resolve_precision(cfg, accelerator.device, log)
    # Checked before anything loads: a wrong path should cost seconds, not a model download.
    resume_from = (
        checkpoints.resolve_resume(args.resume_from_checkpoint, output_dir) if args.resume_from_checkpoint else None
    )
    require_tracker(args.report_to)
    require_effect_dirs(cfg.data.augment)
    if args.preflight and accelerator.is_main_process:
        # Once per machine: the checks write probe files and may create the Hub repo.
        require_preflight(cfg, log=log)
    accelerator.wait_for_everyone()
    if not args.pushes_to_hub:
        log(
            f"Checkpoints are kept only in {output_dir} (no training.hub_model_id): copy them off "
            "(`ta runpod download`) before you terminate the machine."
        )
    set_seed(args.seed)
    model = build_model(cfg.model)
    log(describe_parameters(model))
    if args.preflight and torch.cuda.is_available():
        require_memory_fits(cfg, model, accelerator, log=log)
    apply_speed_settings(model, args, log=log)
    model.encoder.max_batch = args.per_device_train_batch_size
    attach_encoder_cache(model, cfg.model)
    collator = collator_for(model, cfg.data.sample_rate)
    rank, world = accelerator.process_index, accelerator.num_processes
    train_loader = build_train_loader(cfg, train_collator(cfg, model, collator_for), rank=rank, world_size=world)
    eval_stream = build_eval_stream(cfg.data, rank=rank, world_size=world)

    def eval_loader() -> DataLoader:
        return DataLoader(
            eval_stream,
            batch_size=args.per_device_eval_batch_size,
            collate_fn=collator,
            num_workers=cfg.data.num_workers,
        )

    model = accelerator.prepare(model)
    # WER first: the tracker callback tables the predictions it adds.
    callbacks = [WerCallback(), *(callbacks or []), *operations_callbacks(cfg)]
    if log is print and sys.stdout.isatty():
        # Plain lines when output goes to a file or a tmux log; a live bar for a person watching.
        bar = TerminalProgress()
        callbacks.append(bar)
        log = bar.log
    if resume_from is None:
        StepZeroScale(accelerator.unwrap_model(model), log)
    trainer = Trainer(cfg, model, accelerator, train_loader, eval_loader, callbacks, log=log)
    if resume_from is not None:
        trainer.resume(resume_from)
    if args.report_to != "none":
        accelerator.init_trackers(
            "tiny-audio",
            config=_flat_config(cfg),
            init_kwargs=_tracker_kwargs(cfg, output_dir, trainer.resumed_wandb_run_id),
        )
    try:
        with full_disk_reported(output_dir, "the tracker logs"), data_host_down_reported(output_dir):
            return trainer.fit()
    finally:
        if cache := accelerator.unwrap_model(model).encoder.cache:
            log(cache.describe())
        with full_disk_reported(output_dir, "the tracker logs"), _unless_failing():
            accelerator.end_training()
        if torch.distributed.is_initialized():
            # Left to interpreter exit, the process group's teardown can hang a finished run.
            torch.distributed.destroy_process_group()


def _quiet(_: str) -> None:
    pass


@contextlib.contextmanager
def full_disk_reported(output_dir: Path, what: str) -> Iterator[None]:
    """A raw "No space left on device" from a write the checkpoint code does not own, in one line."""
    try:
        yield
    except OSError as error:
        if isinstance(error, DiskFullError) or not is_disk_full(error):
            raise
        raise disk_full_error(output_dir, what, checkpoints.latest_checkpoint(output_dir), error) from error


@contextlib.contextmanager
def _unless_failing() -> Iterator[None]:
    """Cleanup that fails while an error is already on its way out must not replace that error."""
    failing = sys.exc_info()[1] is not None
    try:
        yield
    except Exception:
        if not failing:
            raise


def _flat_config(cfg: Config) -> dict[str, Any]:
    container = OmegaConf.to_container(OmegaConf.structured(cfg))
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node if not isinstance(node, list) else str(node)

    walk(container, "")
    return flat


def _tracker_kwargs(cfg: Config, output_dir: Path, wandb_run_id: str | None = None) -> dict[str, Any]:
    name = cfg.training.run_name or cfg.experiment
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.training.report_to != "wandb":
        return {}
    settings: dict[str, Any] = {"name": name, "dir": str(output_dir)}
    if wandb_run_id:
        # A resumed run appends to the run it continues rather than starting a second curve.
        settings.update(id=wandb_run_id, resume="allow")
    return {"wandb": settings}


USAGE = """usage: python scripts/train.py +experiments=NAME [key=value ...]   (or: ta train ...)

  +experiments=NAME   one of configs/experiments/*.yaml, e.g. mlp, mlp_lora, mlp_fine_tune, tiny
  key=value           any config key, e.g. training.max_steps=10 training.learning_rate=1e-4
                      training.resume_from_checkpoint=latest
"""


def main(overrides: list[str]) -> int:
    """Entry point shared by scripts/train.py and `ta train`: one-line errors, no traceback wall."""
    from transformers.utils import logging as transformers_logging

    from tiny_audio.compose import load_config
    from tiny_audio.config import ConfigError

    if any(arg in ("-h", "--help") for arg in overrides):
        print(USAGE, end="")
        return 0
    # Per-shard and per-split progress bars drown the training log, in tmux captures above all.
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")

    try:
        cfg = load_config(overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except (
        DataSourceError,
        DataQualityError,
        NonFiniteLossError,
        FileNotFoundError,
        TrackerLoginError,
        PreflightError,
        CheckpointMismatchError,
        DiskFullError,
        DataHostDownError,
        RemoteDataError,
        RemoteReadError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Interrupted twice: exited without saving; the last saved checkpoint is intact.", file=sys.stderr)
        return 130
    return 0
