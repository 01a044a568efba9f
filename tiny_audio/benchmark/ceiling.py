"""The matmul ceiling: torch.mm FLOP/s on this device, measured in the same run as the steps."""

from __future__ import annotations

import time

import torch


def matmul_flops_per_second(dtype: torch.dtype, device: torch.device, size: int = 2048, seconds: float = 1.0) -> float:
    """Best of repeated size x size products; the practical peak a step's matmuls can reach here."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: kernel selection, page faults
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def matmul_ceiling(device: torch.device, size: int = 2048, seconds: float = 1.0) -> dict[str, float]:
    return {
        "bfloat16": matmul_flops_per_second(torch.bfloat16, device, size, seconds),
        "float32": matmul_flops_per_second(torch.float32, device, size, seconds),
    }
