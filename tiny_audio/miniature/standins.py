"""Build (once) the miniature stand-ins for GLM-ASR-Nano and Qwen3-0.6B, and their speech data.

Everything depends only on the spec (seed and sizes): the same spec gives the same clips and
bit-identical weights on the same machine, and is cached under a key derived from it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import soundfile as sf
import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing import start_processes
from transformers import AutoTokenizer
from transformers.models.glmasr.modeling_glmasr import GlmAsrEncoder

from tiny_audio.data.robust import build_robust
from tiny_audio.data.sentences import held_out_sentences, is_held_out, make_sentence
from tiny_audio.data.synth import VERSION as SPEECH_VERSION
from tiny_audio.data.synth import synthesize
from tiny_audio.miniature.cache import build_atomically
from tiny_audio.miniature.encoder import (
    EncoderRecipe,
    FeatureBatches,
    acoustic_variety,
    build_encoder,
    character_error_rate,
    pretrain_encoder,
    save_encoder,
)
from tiny_audio.miniature.llm import CopyTask, LlmRecipe, build_llm, build_tokenizer, copy_accuracy, pretrain_llm

VERSION = 3  # bump when the same spec would build different models
# Clips per robustness condition (about 240 reference words each). The course scores 6 conditions
# after each early stage and all 24 after the last: 864 clips, 1.4 times the held-out splits' 600.
# Not part of the spec (the robust set's own marker keys it), so changing it keeps the models.
ROBUST_CLIPS = 24
REPORT_FILE = "pretraining.json"


@dataclass(frozen=True)
class MiniatureSpec:
    seed: int = 0
    train_clips: int = 3200  # about 2.5 passes in stage 1: fewer clips overfit (train loss 3x below eval)
    validation_clips: int = 100
    new_voice_clips: int = 100
    llm: LlmRecipe = field(default_factory=LlmRecipe)
    encoder: EncoderRecipe = field(default_factory=EncoderRecipe)

    def stamp(self) -> str:
        # The speech's version too: new speech must not sit beside models pretrained on the old.
        return json.dumps({"version": VERSION, "speech": SPEECH_VERSION, **asdict(self)}, sort_keys=True)

    def key(self) -> str:
        return hashlib.sha256(self.stamp().encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Miniature:
    root: Path
    speech: Path  # audiofolder: train, validation (unseen sentences), validation_new_voice (unseen voice)
    llm: Path  # a Qwen3 checkpoint with its tokenizer
    encoder: Path  # a GLM-ASR checkpoint with its feature extractor
    robust: Path  # `ta data robust` sets of held-out sentences (tiny_audio/data/robust.py), one split per condition

    def reports(self) -> dict[str, dict]:
        return {
            name: json.loads((path / REPORT_FILE).read_text())
            for name, path in (("llm", self.llm), ("encoder", self.encoder))
        }


def build_miniature(
    spec: MiniatureSpec,
    cache: Path,
    rebuild: bool = False,
    log: Callable[[str], None] = print,
    robust_clips: int = ROBUST_CLIPS,
) -> Miniature:
    """The stand-ins and their speech, from the cache when built before; `robust_clips=0` skips the robust sets."""
    root = cache / f"miniature-v{VERSION}-{spec.key()}"
    miniature = Miniature(root, root / "speech", root / "qwen3", root / "glm-asr", root / "robust")
    started = time.perf_counter()
    written = synthesize(
        miniature.speech,
        train=spec.train_clips,
        validation=spec.validation_clips,
        new_voice=spec.new_voice_clips,
        seed=spec.seed,
    )
    counts = ", ".join(f"{n} {split}" for split, n in written.items())
    log(f"Speech: {counts} clips in {miniature.speech} ({time.perf_counter() - started:.0f} s)")
    if robust_clips:
        started = time.perf_counter()
        conditions = build_robust(miniature.robust, clips=robust_clips, seed=spec.seed)
        log(
            f"Robustness sets: {len(conditions)} conditions x {robust_clips} clips in {miniature.robust} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    # The two pretrainings are independent: one process each, one thread each, so a 2-core laptop
    # runs both at once and the weights do not depend on how many cores the machine has.
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        llm = pool.submit(_build_llm_once, miniature.llm, spec, rebuild)
        with single_thread():
            built = build_atomically(
                miniature.encoder,
                spec.stamp(),
                lambda d: _build_encoder(d, miniature.speech, spec, log),
                rebuild=rebuild,
            )
        log(f"{'Built' if built else 'Reusing'} the miniature GLM-ASR encoder: {miniature.encoder}")
        log(f"{'Built' if llm.result() else 'Reusing'} the miniature Qwen3: {miniature.llm}")
    return miniature


def _build_llm_once(path: Path, spec: MiniatureSpec, rebuild: bool) -> bool:
    with single_thread():
        return build_atomically(path, spec.stamp(), lambda d: _build_llm(d, spec, print), rebuild=rebuild)


@contextmanager
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def training_sentences(seed: int, draws: int = 20_000) -> list[str]:
    """Distinct grammar sentences outside the held-out share, in a seeded order."""
    rng = random.Random(f"llm-{seed}")
    seen = {make_sentence(rng) for _ in range(draws)}
    sentences = sorted(s for s in seen if not is_held_out(s))
    rng.shuffle(sentences)
    return sentences


def _build_llm(directory: Path, spec: MiniatureSpec, log: Callable[[str], None]) -> None:
    started = time.perf_counter()
    sentences = training_sentences(spec.seed)
    tokenizer = build_tokenizer(sentences, spec.llm)
    tokenizer.save_pretrained(directory)  # before the copy task adds `<audio>`: the real one lacks it too
    model = build_llm(tokenizer, spec.llm, spec.seed)
    task = CopyTask(AutoTokenizer.from_pretrained(directory), spec.llm)
    log(f"Pretraining a {_millions(model)}M-parameter Qwen3 to repeat its prompt ({spec.llm.steps} steps)")
    losses = pretrain_llm(model, task, sentences, spec.llm, spec.seed, log=log)
    accuracy = copy_accuracy(model, task, held_out_sentences(50, random.Random(f"llm-check-{spec.seed}")))
    seconds = time.perf_counter() - started
    log(f"  exact copies of 50 held-out sentences: {accuracy:.0%} ({seconds:.0f} s)")
    model.save_pretrained(directory)
    _write_report(directory, parameters=_count(model), copy_accuracy=accuracy, losses=losses, seconds=seconds)


def _build_encoder(directory: Path, speech: Path, spec: MiniatureSpec, log: Callable[[str], None]) -> None:
    started = time.perf_counter()
    processes = spec.encoder.processes
    log(f"Pretraining a GLM-ASR encoder with CTC ({spec.encoder.steps} steps, {processes} processes)")
    if processes == 1:
        _pretrain_encoder_share(0, 1, None, directory, speech, spec)
    else:
        # Spawned, one thread each: the LLM's pretraining holds a core for its first minutes, then
        # both cores are the encoder's. The rendezvous is a file, so no port is needed.
        with tempfile.TemporaryDirectory() as rendezvous:
            start_processes(
                _pretrain_encoder_share,
                args=(processes, Path(rendezvous) / "store", directory, speech, spec),
                nprocs=processes,
                start_method="spawn",
            )
    report = json.loads((directory / REPORT_FILE).read_text())
    seconds = time.perf_counter() - started
    log(f"  held-out character error rate: {report['validation_cer']:.1%} ({seconds:.0f} s)")
    _write_report(directory, **report, seconds=seconds)


def _pretrain_encoder_share(
    rank: int, processes: int, rendezvous: Path | None, directory: Path, speech: Path, spec: MiniatureSpec
) -> None:
    """One process of the encoder's pretraining; the first saves the encoder and its report."""
    torch.set_num_threads(1)
    if rendezvous is not None:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=processes)
    try:
        log = print if rank == 0 else _silent
        encoder, head = pretrain_on_speech(speech, spec.encoder, spec.seed, rank, processes, log)
    finally:
        if rendezvous is not None:
            dist.destroy_process_group()
    if rank == 0:
        validation = FeatureBatches(*read_split(speech / "validation"), spec.encoder.batch_size)
        cer = character_error_rate(encoder, head, validation)
        save_encoder(encoder, spec.encoder, directory)
        _write_report(directory, parameters=_count(encoder), validation_cer=cer)


def pretrain_on_speech(
    speech: Path,
    recipe: EncoderRecipe,
    seed: int,
    rank: int = 0,
    processes: int = 1,
    log: Callable[[str], None] = print,
) -> tuple[GlmAsrEncoder, nn.Linear]:
    """A stand-in encoder pretrained on the train split and its varied copies, with its CTC head.

    In a process group, this process's share of every batch (see `pretrain_encoder`).
    """
    varied = acoustic_variety(*read_split(speech / "train"), recipe, seed)
    train = FeatureBatches(*varied, recipe.batch_size, rank=rank, processes=processes)
    encoder = build_encoder(recipe, seed)
    log(f"  {_millions(encoder)}M parameters")
    return encoder, pretrain_encoder(encoder, train, recipe, seed, log=log)


def _silent(message: str) -> None:
    pass


def read_split(folder: Path) -> tuple[list, list[str]]:
    """(audio arrays, transcripts) of one audiofolder split, in metadata order."""
    with open(folder / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    audios = [sf.read(folder / row["file_name"], dtype="float32")[0] for row in rows]
    return audios, [row["text"] for row in rows]


def _write_report(directory: Path, **figures: object) -> None:
    (directory / REPORT_FILE).write_text(json.dumps(figures, indent=2) + "\n")


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _millions(model: torch.nn.Module) -> str:
    return f"{_count(model) / 1e6:.1f}"
