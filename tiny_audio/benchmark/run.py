"""Run the benchmark for one config and each encoder padding mode; print a table, write JSON."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from tiny_audio.benchmark.ceiling import matmul_ceiling
from tiny_audio.benchmark.measure import measure, process_seconds, synthetic_samples
from tiny_audio.benchmark.report import format_table
from tiny_audio.config import Config
from tiny_audio.training.precision import resolve_precision

# The course's stage 1: 50,000 optimizer steps of 4 clips x 4 accumulation steps.
COURSE_STAGE1_SAMPLES = 50_000 * 16


def run_benchmark(
    cfg: Config,
    *,
    paddings: tuple[str, ...] = ("max_length", "longest"),
    steps: int = 4,
    warmup: int = 1,
    min_seconds: float = 2.0,
    max_seconds: float = 7.0,
    seed: int = 0,
    workers: int | None = None,
    eval_clips: int | None = None,
    ceiling_seconds: float = 1.0,
    out: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Figures per padding mode, plus the machine and its matmul ceiling; written to `out` as JSON.

    Each mode runs in a fresh process, as `ta train` would: its launch time and peak memory are its own.
    """
    batch_size = cfg.training.per_device_train_batch_size
    samples = synthetic_samples(batch_size * (steps + warmup), min_seconds, max_seconds, seed)
    eval_clips = cfg.training.per_device_eval_batch_size if eval_clips is None else eval_clips
    eval_samples = synthetic_samples(eval_clips, min_seconds, max_seconds, seed + 1)
    workers = cfg.data.num_workers if workers is None else workers
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = resolve_precision(cfg, device, log)
    runs = []
    for padding in paddings:
        run_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder_padding=padding))
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            result = pool.submit(_measure_fresh, run_cfg, samples, warmup, workers, eval_samples, seed).result()
        result["config"] = _describe(run_cfg, samples_seconds=(min_seconds, max_seconds))
        result["projected_course_stage1_hours"] = COURSE_STAGE1_SAMPLES / result["samples_per_second"] / 3600
        runs.append(result)
    precision = matmul_precision(cfg, device)
    ceiling, tf32 = matmul_ceiling(device, seconds=ceiling_seconds, tf32=cfg.training.tf32, extra=(precision,))
    for result in runs:
        peak = ceiling[result["config"]["matmul_dtype"]]
        result["fraction_of_matmul_ceiling"] = {k: v / peak for k, v in result["flops_per_second"].items()}
        # The step time if every FLOP it runs (as counted) went at the matmul ceiling: no step here can beat it.
        result["step_seconds"]["at_ceiling"] = result["flops_per_step"]["counted"]["total"] / peak
    report = {
        "machine": _machine(device),
        "matmul_ceiling_flops_per_second": ceiling,
        "matmul_ceiling_tf32": tf32,
        "runs": runs,
    }
    log(format_table(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        log(f"Wrote {out}")
    return report


def _measure_fresh(
    cfg: Config,
    samples: list[dict[str, Any]],
    warmup: int,
    workers: int,
    eval_samples: list[dict[str, Any]],
    seed: int,
) -> dict[str, Any]:
    """`measure` in this (fresh) process, plus the seconds from its launch to the end of its first step."""
    # A spawned process inherits "spawn" as its start method; loader workers start as `ta train`'s do.
    multiprocessing.set_start_method(None, force=True)
    torch.manual_seed(seed)
    result = measure(cfg, samples, warmup=warmup, workers=workers, eval_samples=eval_samples)
    since_first_step = time.perf_counter() - result.pop("_first_step_end")
    result["launch_to_first_step_seconds"] = process_seconds() - since_first_step
    return result


def matmul_precision(cfg: Config, device: torch.device) -> str:
    """The dtype the step's matmuls run in, from the resolved precision: bf16 under autocast, else the
    frozen weights' dtype (`cfg` as resolve_precision returns it: fp32 on a CPU without native bf16)."""
    autocast = cfg.training.bf16 and (device.type == "cuda" or cfg.model.dtype == "bfloat16")
    return "bfloat16" if autocast else cfg.model.dtype


def _describe(cfg: Config, samples_seconds: tuple[float, float]) -> dict[str, Any]:
    m, t = cfg.model, cfg.training
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "experiment": cfg.experiment,
        "audio_model_id": m.audio_model_id,
        "text_model_id": m.text_model_id,
        "projector_type": m.projector_type,
        "encoder_padding": m.encoder_padding,
        "dtype": m.dtype,
        "bf16": t.bf16 and (torch.cuda.is_available() or m.dtype == "bfloat16"),
        "matmul_dtype": matmul_precision(cfg, device),
        "tf32": t.tf32,
        "batch_size": t.per_device_train_batch_size,
        "trainable": {"projector": m.projector_trainable, "lora": m.lora.enabled},
        "gradient_checkpointing": t.gradient_checkpointing,
        "torch_compile": t.torch_compile,
        "clip_seconds": list(samples_seconds),
    }


def _machine(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
    }
