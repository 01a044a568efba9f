"""The precision a run actually uses: `model.dtype` and `training.bf16`, unless the CPU cannot run them.

bf16 and fp16 are right on a GPU and on CPUs with native support (AMX, AVX512-BF16/FP16, Arm's BF16).
Without it torch emulates them: on an AVX2-only CPU a bf16 matmul runs at ~1.3 GFLOP/s against ~140 in
fp32, so a training step with bf16 weights takes ~24x longer (277 s against 11.4 s, full shapes). There
the run loads and trains in fp32 unless `training.cpu_precision=as_configured` insists.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from tiny_audio.config import Config

# CPU feature flags (Linux /proc/cpuinfo names; Arm's as in its "Features" line) that give torch native
# kernels for a dtype.
NATIVE_FLAGS = {
    "bfloat16": frozenset({"avx512_bf16", "amx_bf16", "bf16"}),
    "float16": frozenset({"avx512_fp16", "amx_fp16", "fphp"}),
}
# macOS names the same Arm features in sysctl.
_MACOS_FEATURES = {"hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_FP16": "fphp"}


@dataclass(frozen=True)
class Precision:
    dtype: str  # weights of the frozen encoder and decoder
    bf16: bool  # training.bf16 as the run uses it
    reason: str | None = None  # why it differs from the config, when it does

    def describe(self, device_type: str) -> str:
        autocast = self.bf16 and (device_type == "cuda" or self.dtype == "bfloat16")
        return f"{self.dtype} weights, {'bf16 autocast' if autocast else 'no autocast'} on {device_type}"


def native_dtypes(flags: frozenset[str]) -> frozenset[str]:
    """The half-precision dtypes these CPU feature flags give native kernels for."""
    return frozenset(dtype for dtype, needed in NATIVE_FLAGS.items() if flags & needed)


@cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags; empty where they cannot be read (then no native half precision is assumed)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags: set[str] = set()
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags.update(value.split())
        return frozenset(flags)
    if platform.system() == "Darwin":
        found = set()
        for key, flag in _MACOS_FEATURES.items():
            result = subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, check=False)
            if result.stdout.strip() == "1":
                found.add(flag)
        return frozenset(found)
    return frozenset()


def choose_precision(dtype: str, bf16: bool, cpu_precision: str, device_type: str, native: frozenset[str]) -> Precision:
    """The precision to run with: the configured one, or fp32 on a CPU without native kernels for it."""
    if device_type != "cpu" or cpu_precision == "as_configured" or dtype == "float32" or dtype in native:
        return Precision(dtype, bf16)
    reason = (
        f"Precision: float32 instead of model.dtype={dtype}: this CPU has no native {dtype} "
        f"({' or '.join(sorted(NATIVE_FLAGS[dtype]))}), where torch runs it ~100x slower than float32; "
        f"training.cpu_precision=as_configured keeps {dtype}."
    )
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
