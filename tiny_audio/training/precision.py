"""The precision a run actually uses: `model.dtype` and `training.bf16`, unless the CPU cannot run them.

On a CPU that emulates bf16 (see tiny_audio.hardware) a training step with bf16 weights takes ~24x
longer than in fp32 (277 s against 11.4 s, full shapes). There the run loads and trains in fp32
unless `training.cpu_precision=as_configured` insists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tiny_audio.config import Config
from tiny_audio.hardware import cpu_flags, cpu_runs_natively, emulated_reason, native_dtypes


@dataclass(frozen=True)
class Precision:
    dtype: str  # weights of the frozen encoder and decoder
    bf16: bool  # training.bf16 as the run uses it
    reason: str | None = None  # why it differs from the config, when it does

    def describe(self, device_type: str) -> str:
        autocast = self.bf16 and (device_type == "cuda" or self.dtype == "bfloat16")
        return f"{self.dtype} weights, {'bf16 autocast' if autocast else 'no autocast'} on {device_type}"


def choose_precision(dtype: str, bf16: bool, cpu_precision: str, device_type: str, native: frozenset[str]) -> Precision:
    """The precision to run with: the configured one, or fp32 on a CPU without native kernels for it."""
    if device_type != "cpu" or cpu_precision == "as_configured" or cpu_runs_natively(dtype, native):
        return Precision(dtype, bf16)
    reason = emulated_reason(dtype, "Precision", "training.cpu_precision=as_configured")
    # On a CPU, bf16 autocast only ever applies to bf16 weights (see bf16_autocast): with fp32 weights it is off.
    return Precision("float32", False, reason)


def resolve_precision(
    cfg: Config,
    device: torch.device,
    log: Callable[[str], None] = print,
    native: frozenset[str] | None = None,
) -> Config:
    """`cfg` with the precision this device should run (one log line when it falls back to fp32)."""
    native = native_dtypes(cpu_flags()) if native is None else native
    chosen = choose_precision(cfg.model.dtype, cfg.training.bf16, cfg.training.cpu_precision, device.type, native)
    if chosen.reason is None:
        return cfg
    log(chosen.reason)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, dtype=chosen.dtype),
        training=dataclasses.replace(cfg.training, bf16=chosen.bf16),
    )
