"""The matmul ceiling: torch.mm FLOP/s on this device, measured in the same run as the steps."""

from __future__ import annotations

import time

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


def matmul_ceiling(device: torch.device, size: int = 2048, seconds: float = 1.0) -> dict[str, float]:
    return {
        "bfloat16": matmul_flops_per_second(torch.bfloat16, device, size, seconds),
        "float32": matmul_flops_per_second(torch.float32, device, size, seconds),
    }
