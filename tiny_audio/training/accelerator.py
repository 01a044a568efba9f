"""The Accelerator a run trains on, built the same way by the run and by preflight's memory check."""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from tiny_audio.config import Config


def make_accelerator(cfg: Config) -> Accelerator:
    tracker = None if cfg.training.report_to == "none" else cfg.training.report_to
    # A routed expert that no token chose in a step gets no gradient; DDP must be told to expect that.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.model.projector_type == "moe")
    # Mixed precision is the trainer's own bf16 autocast (see bf16_autocast), not accelerate's.
    return Accelerator(log_with=tracker, project_dir=cfg.training.output_dir, kwargs_handlers=[ddp])
