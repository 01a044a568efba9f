"""What this CPU runs natively: half precision is fast only where the CPU has kernels for it.

bf16 and fp16 are right on a GPU and on CPUs with native support (AMX, AVX512-BF16/FP16, Arm's BF16).
Without it torch emulates them: on an AVX2-only CPU a bf16 matmul runs at ~1.3 GFLOP/s against ~140 in
fp32. Training (training/precision.py) and inference (model/build.py, the demo) both ask here.
"""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from pathlib import Path

# CPU feature flags (Linux /proc/cpuinfo names; Arm's as in its "Features" line) that give torch native
# kernels for a dtype.
NATIVE_FLAGS = {
    "bfloat16": frozenset({"avx512_bf16", "amx_bf16", "bf16"}),
    "float16": frozenset({"avx512_fp16", "amx_fp16", "fphp"}),
}
# macOS names the same Arm features in sysctl.
_MACOS_FEATURES = {"hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_FP16": "fphp"}


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


def cpu_runs_natively(dtype: str, native: frozenset[str] | None = None) -> bool:
    """Whether this CPU (or one with the `native` dtypes) runs `dtype` at full speed."""
    return dtype == "float32" or dtype in (native_dtypes(cpu_flags()) if native is None else native)


def emulated_reason(dtype: str, subject: str, keep_hint: str) -> str:
    """The one line that says why `subject` runs in float32 instead of `dtype`, and how to keep it."""
    return (
        f"{subject}: float32 instead of model.dtype={dtype}: this CPU has no native {dtype} "
        f"({' or '.join(sorted(NATIVE_FLAGS[dtype]))}), where torch runs it ~100x slower than float32; "
        f"{keep_hint} keeps {dtype}."
    )
