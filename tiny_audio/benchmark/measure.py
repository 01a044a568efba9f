"""One benchmark run: real optimizer steps through the training code, timed part by part.

The model, optimizer, speed settings, collator and autocast are the ones `ta train` builds; only
the data is synthetic (in memory), so the loader's own throughput is measured separately.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.hooks import RemovableHandle

from tiny_audio.benchmark.counted import counted_step_flops
from tiny_audio.benchmark.flops import batch_shapes, step_flops
from tiny_audio.config import Config
from tiny_audio.model.build import attach_encoder_cache, build_model
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.speech_llm import MODEL_INPUTS, SpeechLLM
from tiny_audio.runtime.transcribe import transcribe
from tiny_audio.training.optim import apply_speed_settings, build_optimizer, loader_speedups
from tiny_audio.training.trainer import bf16_autocast

SAMPLE_RATE = 16000

# Where a step's time goes, in the order a step spends it.
PHASES = ("encoder_forward", "projector_forward", "llm_forward", "forward_rest", "backward", "optimizer", "data_wait")


def synthetic_samples(count: int, min_s: float, max_s: float, seed: int) -> list[dict[str, Any]]:
    """Noise clips with speech-like durations and a transcript of matching length (~2.5 words/s)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        seconds = float(rng.uniform(min_s, max_s))
        audio = (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.05).astype(np.float32)
        samples.append({"audio": audio, "text": " ".join(["word"] * max(1, int(seconds * 2.5)))})
    return samples


class PartTimer:
    """Wall time of the encoder, projector and LLM forward, via forward hooks (synchronised on a GPU)."""

    def __init__(self, model: SpeechLLM, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)
        self._start: dict[str, float] = {}
        decoder = getattr(model.causal_lm, model.causal_lm.base_model_prefix)
        self.handles: list[RemovableHandle] = []
        for name, module in (("encoder_forward", model.encoder), ("projector_forward", model.projector)):
            self._hook(name, module)
        self._hook("llm_forward", decoder)

    def _hook(self, name: str, module: torch.nn.Module) -> None:
        def before(*_: Any) -> None:
            self._start[name] = self.now()

        def after(*_: Any) -> None:
            self.totals[name] += self.now() - self._start.pop(name)

        self.handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def loader(samples: list[dict[str, Any]], collate: Any, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        samples,  # type: ignore[arg-type]  # a list is a map-style dataset; torch types only Dataset
        batch_size=batch_size,
        collate_fn=collate,
        num_workers=workers,
        **loader_speedups(workers),
    )


def loader_throughput(samples: list[dict[str, Any]], collate: Any, batch_size: int, workers: int) -> float:
    """Samples/s of the loader alone (feature extraction, prompts, padding), no model step."""
    batches = iter(loader(samples, collate, batch_size, workers))
    next(batches)  # worker start-up is paid once per run, not per batch
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch["texts"])
    return count / max(time.perf_counter() - start, 1e-9)


def measure(
    cfg: Config,
    samples: list[dict[str, Any]],
    *,
    warmup: int,
    workers: int,
    eval_samples: list[dict[str, Any]] | None = None,
    eval_new_tokens: int = 16,
) -> dict[str, Any]:
    """Build the model as training does, run len(samples)/batch steps, return the figures of the timed ones.

    Then, with `eval_samples`, one evaluation as training runs it (eval loss, then generated
    transcripts for WER), so the peak memory of the whole run, evaluation included, is known.
    """
    build_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    args = cfg.training
    batch_size = args.per_device_train_batch_size
    model = build_model(cfg.model)
    apply_speed_settings(model, args, log=lambda _: None)
    model.encoder.max_batch = batch_size
    attach_encoder_cache(model, cfg.model)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, args, device)
    collate = collator_for(model, SAMPLE_RATE)
    hop = model.encoder.feature_extractor.hop_length
    parts = PartTimer(model, device)
    timings: dict[str, list[float]] = defaultdict(list)
    totals: dict[str, float] = defaultdict(float)
    flops: dict[str, dict[str, float]] = {"as_run": defaultdict(float), "useful": defaultdict(float)}
    first_step_end: float | None = None
    timed_inputs = []
    batches: Iterator[dict[str, Any]] = iter(loader(samples, collate, batch_size, workers))
    for index in range(len(samples) // batch_size):
        wait_start = parts.now()
        batch = next(batches)
        inputs = {k: v.to(device, non_blocking=True) for k, v in ((k, batch[k]) for k in MODEL_INPUTS)}
        start = parts.now()
        before = dict(parts.totals)
        with bf16_autocast(cfg, device):
            loss = model(**inputs).loss
        forward_end = parts.now()
        loss.backward()
        backward_end = parts.now()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = parts.now()
        first_step_end = first_step_end or end
        if index < warmup:
            continue
        timed_inputs.append(inputs)
        timings["step"].append(end - start)
        timings["data_wait"].append(start - wait_start)
        for name in ("encoder_forward", "projector_forward", "llm_forward"):
            timings[name].append(parts.totals[name] - before.get(name, 0.0))
        timings["forward_rest"].append((forward_end - start) - sum(timings[n][-1] for n in parts.totals))
        timings["backward"].append(backward_end - forward_end)
        timings["optimizer"].append(end - backward_end)
        mel_real = [len(s["audio"]) // hop for s in samples[index * batch_size : (index + 1) * batch_size]]
        shapes = batch_shapes(model, batch, mel_real)
        for kind, values in step_flops(model, shapes, recompute=args.gradient_checkpointing).items():
            for part, value in values.items():
                flops[kind][part] += value
        totals["samples"] += len(batch["texts"])
        totals["audio_seconds"] += batch["audio_seconds"]
        totals["target_tokens"] += shapes.label_tokens
        totals["audio_frames_real"] += sum(shapes.mel_frames_real)
        totals["audio_frames_run"] += sum(shapes.mel_frames_run)
        totals["text_tokens_real"] += sum(shapes.llm_tokens_real)
        totals["text_tokens_run"] += sum(shapes.llm_tokens_run)
    parts.remove()
    steps = len(timings["step"])
    if steps == 0:
        raise ValueError(f"no timed steps: {len(samples) // batch_size} steps for {warmup} warm-up steps; add --steps")
    assert first_step_end is not None  # set by the first step
    # What the timed steps ran, counted op by op on the same batches after the timing.
    counted = sum(counted_step_flops(model, inputs, bf16_autocast(cfg, device)) for inputs in timed_inputs)
    flops["counted"] = {"total": counted}
    seconds = sum(timings["step"]) + sum(timings["data_wait"])
    step_rate = totals["samples"] / seconds
    loader_rate = loader_throughput(samples, collate, batch_size, workers)
    training_peak = _peak_memory_gib(device)
    evaluation = None
    if eval_samples:
        evaluation = _evaluate(model, cfg, collate, eval_samples, eval_new_tokens, device)
    as_run, useful = counted / seconds, flops["useful"]["total"] / seconds
    return {
        "_first_step_end": first_step_end,  # perf_counter time, for the launch-to-first-step figure
        "samples_per_second": step_rate,
        "audio_seconds_per_second": totals["audio_seconds"] / seconds,
        "target_tokens_per_second": totals["target_tokens"] / seconds,
        "step_seconds": {
            "median": statistics.median(timings["step"]),
            "p90": _percentile(timings["step"], 0.9),
            "all": timings["step"],
        },
        "build_to_first_step_seconds": first_step_end - build_start,
        "peak_memory_gib": training_peak,
        "evaluation": evaluation,
        "data_loader": {
            "workers": workers,
            "samples_per_second": loader_rate,
            "ratio_to_step": loader_rate / step_rate,
        },
        "padding": {
            "audio_frames": 1 - totals["audio_frames_real"] / totals["audio_frames_run"],
            "text_tokens": 1 - totals["text_tokens_real"] / totals["text_tokens_run"],
        },
        "time_breakdown_seconds_per_step": {name: sum(timings[name]) / steps for name in PHASES},
        "flops_per_step": {kind: {k: v / steps for k, v in values.items()} for kind, values in flops.items()},
        "flops_per_second": {"as_run": as_run, "useful": useful},
        "flops_counted_over_formula": counted / flops["as_run"]["total"],
        "device": str(device),
        "steps": steps,
        "warmup": warmup,
        "batch_size": batch_size,
    }


def _peak_memory_gib(device: torch.device) -> dict[str, float | None]:
    """Peaks of this process so far: each run measures in a fresh process, so the peak is its own."""
    return {
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "gpu_max_allocated": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }


def _evaluate(
    model: SpeechLLM,
    cfg: Config,
    collate: Any,
    samples: list[dict[str, Any]],
    new_tokens: int,
    device: torch.device,
) -> dict[str, Any]:
    """One evaluation as the trainer runs it: eval loss over the clips (under its autocast), then
    greedy transcripts (without, as the WER callback decodes)."""
    start = time.perf_counter()
    batch_size = cfg.training.per_device_eval_batch_size
    model.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            batch = collate(samples[i : i + batch_size])
            with bf16_autocast(cfg, device):
                model(**{k: batch[k].to(device) for k in MODEL_INPUTS})
    transcribe(model, [s["audio"] for s in samples], SAMPLE_RATE, batch_size=batch_size, max_new_tokens=new_tokens)
    model.train()
    return {
        "clips": len(samples),
        "batch_size": batch_size,
        "new_tokens": new_tokens,
        "seconds": time.perf_counter() - start,
        "peak_memory_gib": _peak_memory_gib(device),
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


_IMPORTED = time.perf_counter()


def process_seconds() -> float:
    """Seconds since this process started (launch and imports included); since this import off Linux."""
    try:
        started = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: start time
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - started / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
