"""Training-step benchmark: seconds per step, samples/s and padding waste, per encoder padding mode.

Runs real optimizer steps on random speech-length noise through the real model code, so with
`ta fixtures build DIR --shape full` it measures the full-size GLM-ASR encoder + Qwen3-0.6B
without any download. Prints a table and writes JSON.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tiny_audio.config import ModelConfig
from tiny_audio.data.collator import collator_for
from tiny_audio.model.build import build_model
from tiny_audio.model.speech_llm import MODEL_INPUTS

SAMPLE_RATE = 16000


def synthetic_batches(batch_size: int, count: int, min_s: float, max_s: float, seed: int) -> list[list[dict]]:
    """Noise clips with speech-like durations and a transcript of matching length (~2.5 words/s)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        batch = []
        for _ in range(batch_size):
            seconds = float(rng.uniform(min_s, max_s))
            audio = (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.05).astype(np.float32)
            batch.append({"audio": audio, "text": " ".join(["word"] * max(1, int(seconds * 2.5)))})
        batches.append(batch)
    return batches


def measure(cfg: ModelConfig, batches: list[list[dict]], warmup: int, bf16: bool) -> dict[str, Any]:
    model = build_model(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    collate = collator_for(model, SAMPLE_RATE)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    timings, real_frames, padded_frames, audio_seconds = [], 0, 0, 0.0
    for index, samples in enumerate(batches):
        batch = collate(samples)
        inputs = {k: batch[k].to(device) for k in MODEL_INPUTS}
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            timings.append(time.perf_counter() - start)
            encoder_lengths = batch["encoder_lengths"]
            real_frames += int(encoder_lengths.sum())
            padded_frames += int(
                encoder_lengths.numel() * model.encoder.output_lengths(torch.tensor(batch["input_features"].shape[-1]))
            )
            audio_seconds += batch["audio_seconds"]
    seconds = sum(timings)
    batch_size = len(batches[0])
    return {
        "encoder_padding": cfg.encoder_padding,
        "device": device,
        "bf16": bf16,
        "steps": len(timings),
        "batch_size": batch_size,
        "seconds_per_step": seconds / len(timings),
        "samples_per_second": batch_size * len(timings) / seconds,
        "audio_seconds_per_second": audio_seconds / seconds,
        "real_frame_share": real_frames / padded_frames,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }


def run_benchmark(
    audio_model_id: str,
    text_model_id: str,
    *,
    batch_size: int = 2,
    steps: int = 4,
    warmup: int = 1,
    min_seconds: float = 2.0,
    max_seconds: float = 7.0,
    bf16: bool = True,
    seed: int = 0,
    out: Path | None = None,
    log=print,
) -> list[dict[str, Any]]:
    dtype = "bfloat16" if bf16 else "float32"
    base = ModelConfig(audio_model_id=audio_model_id, text_model_id=text_model_id, dtype=dtype)
    batches = synthetic_batches(batch_size, steps + warmup, min_seconds, max_seconds, seed)
    results = []
    for padding in ("max_length", "longest"):
        torch.manual_seed(seed)
        result = measure(dataclasses.replace(base, encoder_padding=padding), batches, warmup, bf16)
        results.append(result)
        log(
            f"{padding:<10} {result['seconds_per_step']:7.2f} s/step  {result['samples_per_second']:6.2f} samples/s  "
            f"{result['audio_seconds_per_second']:7.1f} audio s/s  real frames {result['real_frame_share']:.0%}  "
            f"peak RSS {result['peak_rss_gib']:.1f} GiB"
        )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    return results
