"""Several models on several test sets: ordering checkpoints by step, decoding with timing, scoring twice."""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tiny_audio.config import DataConfig
from tiny_audio.evaluation.dataset import LoadedTestSet, load_test_set
from tiny_audio.evaluation.normalize import raw
from tiny_audio.evaluation.registry import TestSet
from tiny_audio.evaluation.wer import WerReport, score
from tiny_audio.runtime.speech_llm import SpeechLLM
from tiny_audio.runtime.transcribe import transcribe

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class ModelRef:
    model: str  # as given on the command line: a directory or a Hub repo id
    run: str  # the run directory for a checkpoint (its parent), else the model itself
    step: int | None  # N of checkpoint-N, else None


def model_ref(model: str) -> ModelRef:
    path = Path(model)
    match = _CHECKPOINT.match(path.name)
    if match is None:
        return ModelRef(model, model, None)
    return ModelRef(model, str(path.parent), int(match.group(1)))


def order_models(models: list[str]) -> list[ModelRef]:
    """Each model once; checkpoints of one run together, by step, where the run first appears.

    A shell glob such as outputs/mlp/checkpoint-* expands in text order (checkpoint-10000 before
    checkpoint-2000); sorting by step makes the table read as WER against training steps.
    """
    refs = [model_ref(m) for m in dict.fromkeys(models)]
    first_seen: dict[str, int] = {}
    for index, ref in enumerate(refs):
        first_seen.setdefault(ref.run, index)
    return sorted(refs, key=lambda ref: (first_seen[ref.run], -1 if ref.step is None else ref.step))


@dataclass(frozen=True)
class Result:
    """One model on one test set."""

    model: ModelRef
    test_set: LoadedTestSet
    predictions: list[str]
    report: WerReport  # Whisper-normalised
    raw_report: WerReport  # text as written
    decode_seconds: float  # wall time of transcription alone (no loading, no scoring)

    @property
    def real_time_factor(self) -> float:
        """Decoding time over audio duration: 0.05 means an hour of audio takes three minutes."""
        return self.decode_seconds / self.test_set.audio_seconds

    @property
    def samples_per_second(self) -> float:
        return len(self.predictions) / self.decode_seconds


@dataclass(frozen=True)
class Comparison:
    results: list[Result]  # models outer, test sets inner
    devices: list[tuple[ModelRef, str]]  # where each model decoded
    test_sets: list[LoadedTestSet]


def compare(
    refs: list[ModelRef],
    test_sets: list[TestSet],
    load: Callable[[str], SpeechLLM],
    *,
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    log: Callable[[str], None] = print,
) -> Comparison:
    """Every model on the same samples of every test set, one model in memory at a time.

    Test sets are read before the first model loads, so a bad one fails early, and once per
    sample rate (every supported encoder takes 16 kHz, so once).
    """
    by_rate: dict[int, list[LoadedTestSet]] = {}

    def loaded_at(rate: int) -> list[LoadedTestSet]:
        if rate not in by_rate:
            by_rate[rate] = [load_test_set(t, rate, limit) for t in test_sets]
            for loaded in by_rate[rate]:
                skipped = f"; {loaded.skipped.summary()}" if loaded.skipped.total else ""
                log(f"{loaded.test_set.name}: {len(loaded.samples)} samples{skipped}")
        return by_rate[rate]

    first = loaded_at(DataConfig().sample_rate)
    results: list[Result] = []
    devices: list[tuple[ModelRef, str]] = []
    for ref in refs:
        speech_llm = load(ref.model)
        device = str(next(speech_llm.parameters()).device)
        log(f"decoding with {ref.model} on {device}")
        rate = int(speech_llm.encoder.feature_extractor.sampling_rate)
        results += evaluate_model(
            speech_llm, ref, loaded_at(rate), batch_size=batch_size, max_new_tokens=max_new_tokens
        )
        devices.append((ref, device))
        del speech_llm  # free it before the next model loads
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return Comparison(results, devices, first)


def evaluate_model(
    speech_llm: SpeechLLM,
    ref: ModelRef,
    test_sets: list[LoadedTestSet],
    *,
    batch_size: int,
    max_new_tokens: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Result]:
    """Transcribe and score every test set with one model; timings cover transcription only."""
    _warm_up(speech_llm, test_sets, max_new_tokens)
    results = []
    for loaded in test_sets:
        audios = [s.audio for s in loaded.samples]
        _synchronize()
        start = clock()
        predictions = transcribe(
            speech_llm, audios, loaded.sample_rate, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
        _synchronize()
        elapsed = max(clock() - start, 1e-9)
        references = [s.text for s in loaded.samples]
        results.append(
            Result(
                model=ref,
                test_set=loaded,
                predictions=predictions,
                report=score(references, predictions),
                raw_report=score(references, predictions, normalizer=raw),
                decode_seconds=elapsed,
            )
        )
    return results


def _warm_up(speech_llm: SpeechLLM, test_sets: list[LoadedTestSet], max_new_tokens: int) -> None:
    """One short untimed decode, so CUDA start-up and kernel selection do not land in the first test set's time."""
    loaded = test_sets[0]
    shortest = min(loaded.samples, key=lambda s: len(s.audio))
    transcribe(speech_llm, [shortest.audio], loaded.sample_rate, max_new_tokens=min(max_new_tokens, 4))


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
