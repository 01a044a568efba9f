"""Training-step benchmark (`ta benchmark`): throughput, time breakdown, FLOPs vs a measured matmul ceiling.

Runs real optimizer steps on speech-length noise through the training code, so with
`ta fixtures build DIR --shape full` it measures the full-size GLM-ASR encoder + Qwen3-0.6B
without any download. Prints a table and writes JSON (keys: see README, "Benchmark").
"""

from __future__ import annotations

from typing import Any


def run_benchmark(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See tiny_audio.benchmark.run.run_benchmark (imported on use: `ta --help` stays fast)."""
    from tiny_audio.benchmark.run import run_benchmark as run

    return run(*args, **kwargs)
