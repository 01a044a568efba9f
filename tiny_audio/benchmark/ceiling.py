"""The matmul ceiling: torch.mm FLOP/s on this device, measured in the same run as the steps."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


def matmul_flops_per_second(dtype: torch.dtype, device: torch.device, size: int = 2048, seconds: float = 1.0) -> float:
    """Best of repeated products of up to size x size; the practical peak a step's matmuls can reach here.

    The size grows from 256 only while one product takes under a tenth of `seconds`: a CPU without
    native bf16 (AVX2 only) multiplies bf16 at ~1 GFLOP/s, where one 2048^2 product takes minutes.
    """
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)  # warm-up: kernel selection, page faults
        once = _time_mm(a, b, device)
        if n >= size or once > seconds / 10:
            break
        n *= 2
    best, deadline = once, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = min(best, _time_mm(a, b, device))
    return 2 * n**3 / best


def _time_mm(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    torch.mm(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """fp32 products on TF32 tensor cores or not, as `training.tf32` sets them for the run; restored after.

    On an Ampere-or-newer GPU TF32 runs fp32 products several times faster: a ceiling measured
    without the run's setting would over- or understate what its fp32 matmuls can reach.
    """
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def matmul_ceiling(
    device: torch.device, size: int = 2048, seconds: float = 1.0, tf32: bool = False, extra: tuple[str, ...] = ()
) -> tuple[dict[str, float], bool]:
    """FLOP/s per dtype (bf16, fp32 and any `extra`), measured under the run's TF32 setting (`tf32`; only a
    GPU's fp32 products use it), and the TF32 setting the products saw."""
    with tf32_matmuls(tf32):
        rates = {
            name: matmul_flops_per_second(getattr(torch, name), device, size, seconds)
            for name in dict.fromkeys(("bfloat16", "float32", *extra))
        }
        return rates, torch.backends.cuda.matmul.allow_tf32
