"""Synthetic English speech (espeak-ng from pip): a small, download-free ASR dataset for tests and demos.

Splits, each an audiofolder (OUT/<split>/metadata.csv with file_name,text beside 16 kHz mono
16-bit WAV files):
  train                 training sentences, spoken by TRAIN_VOICES (English accents, some foreign ones)
  validation            held-out sentences (`is_held_out`), spoken by TRAIN_VOICES
  validation_new_voice  the same held-out sentences, spoken by HELD_OUT_VOICE (an accent train never has)
Because both validation splits speak the same sentences, the gap between their error rates is the
cost of the unseen voice alone.

Every clip's sentence, voice, rate, pitch and noise seed come from generators seeded by
(seed, split), and clips are rendered in fixed lanes of LANE_SIZE, each on a fresh espeak-ng
instance, so the same arguments write byte-identical files however many processes render them.
The dataset is written to a temporary directory beside OUT and renamed when complete; a marker
with the arguments lets the next call with the same arguments reuse it at once.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from tiny_audio.data.espeak import PACKAGE, Espeak, SynthError, remove_stale_copies
from tiny_audio.data.sentences import held_out_sentences, is_held_out, make_sentence, training_sentence
from tiny_audio.folders import staging_folder, swap_in
from tiny_audio.runtime.audio import resample

__all__ = [
    "HELD_OUT_VOICE",
    "RESERVED_ACCENTS",
    "RESERVED_VARIANTS",
    "SPLITS",
    "TRAIN_VOICES",
    "Clip",
    "SynthError",
    "is_complete",
    "is_held_out",
    "make_sentence",
    "plan",
    "synthesize",
    "training_sentence",
]

# Accents are espeak-ng voice names; "+variant" changes the timbre (m = male, f = female, named
# voices, klatt = another synthesis model). Every English accent but the held-out one is used.
TRAIN_ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
# Other languages' voices reading English text: foreign accents, for variety beyond English ones.
FOREIGN_ACCENTS = ("de", "nl", "sv", "da", "af", "cs", "el", "fi", "hu", "ro", "id", "sw")
FOREIGN_SHARE = 0.15  # of train and validation clips
VARIANTS = (
    *("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+f1", "+f2", "+f3", "+f4", "+klatt", "+klatt2", "+klatt3"),
    *("+Alex", "+Andy", "+Annie", "+adam", "+aunty", "+boris", "+david", "+ed", "+grandma", "+grandpa"),
    *("+iven", "+john", "+max", "+paul", "+rob", "+robert", "+travis", "+victor", "+zac"),
)
TRAIN_VOICES = tuple(accent + variant for accent in TRAIN_ACCENTS + FOREIGN_ACCENTS for variant in VARIANTS)
HELD_OUT_VOICE = "en-gb-scotland"  # Scottish English: an accent no training voice has
# Kept out of training for robustness test sets (unseen accents, timbres and languages).
RESERVED_ACCENTS = ("en-gb-scotland", "fr", "fr-be", "es", "es-419", "it", "hi", "pl", "pt", "pt-br", "ru", "tr", "vi")
RESERVED_VARIANTS: tuple[str, ...] = ("+m7", "+m8", "+f5", "+klatt4", "+klatt5", "+croak", "+edward", "+linda")
RESERVED_VARIANTS += ("+steph", "+norbert", "+Michael", "+anika", "+whisperf")
RATES = (120, 215)  # words per minute; espeak's default is 175. Faster and slower: test sets only
PITCHES = (20, 80)  # 0-99; espeak's default is 50
SPLITS = ("train", "validation", "validation_new_voice")

VERSION = 3  # bump when the same arguments would write different audio or text
MARKER = "synth-complete.json"  # the dash keeps it from being read as a split by data/local.py
LANE_SIZE = 32  # clips rendered in sequence on one espeak-ng instance


@dataclass(frozen=True)
class Clip:
    file_name: str
    text: str
    voice: str
    rate: int
    pitch: int
    noise_seed: int


def plan(split: str, count: int, seed: int) -> list[Clip]:
    """The clips of one split. A longer split starts with the clips of a shorter one."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    # String seeds are hashed deterministically (unlike hash()) and differ per split.
    rng = random.Random(f"{seed}-{split}")
    # Both validation splits read the same sentences, so that only the voice differs.
    held_out = [] if split == "train" else held_out_sentences(count, random.Random(f"{seed}-held-out"))
    clips = []
    for index in range(count):  # one clip's draws at a time, so a longer plan extends a shorter one
        text = training_sentence(rng) if split == "train" else held_out[index]
        clips.append(
            Clip(
                file_name=f"{split}_{index:05d}.wav",
                text=text,
                voice=HELD_OUT_VOICE if split == "validation_new_voice" else _train_voice(rng),
                rate=rng.randint(*RATES),
                pitch=rng.randint(*PITCHES),
                noise_seed=rng.randrange(1 << 31),
            )
        )
    return clips


def _train_voice(rng: random.Random) -> str:
    """An English accent, or now and then a foreign one, in any timbre."""
    accents = FOREIGN_ACCENTS if rng.random() < FOREIGN_SHARE else TRAIN_ACCENTS
    return rng.choice(accents) + rng.choice(VARIANTS)


def synthesize(
    out_dir: Path,
    *,
    train: int = 400,
    validation: int = 40,
    new_voice: int = 40,
    seed: int = 0,
    sample_rate: int = 16000,
    workers: int | None = None,
) -> dict[str, int]:
    """Write the three splits under `out_dir` (or reuse a complete set with the same arguments).

    Returns clips per split. `workers` processes render lanes in parallel (default: one per CPU);
    the output does not depend on it. Outside Linux the workers are spawned, so a script calling
    this needs the usual `if __name__ == "__main__":` guard there.
    """
    out_dir = Path(out_dir)
    marker = _marker(train=train, validation=validation, new_voice=new_voice, seed=seed, sample_rate=sample_rate)
    counts = marker["counts"]
    if any(count < 0 for count in counts.values()):
        raise ValueError(f"clip counts must be >= 0, got {counts}")
    if _read_marker(out_dir) == marker:
        return counts
    _check_replaceable(out_dir)
    remove_stale_copies()
    plans = {split: plan(split, count, seed) for split, count in counts.items()}
    _check_voices({clip.voice for clips in plans.values() for clip in clips})

    staging = _make_staging(out_dir)
    try:
        lanes = []
        for split, clips in plans.items():
            if not clips:
                continue
            folder = staging / split
            _guarded(folder, lambda folder=folder: folder.mkdir())
            _write_metadata(folder, clips)
            lanes += [(folder, clips[i : i + LANE_SIZE], sample_rate) for i in range(0, len(clips), LANE_SIZE)]
        _render_all(lanes, workers)
        marker["voices"] = {"train": list(TRAIN_VOICES), "held_out": HELD_OUT_VOICE}
        _guarded(staging / MARKER, lambda: (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n"))
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def is_complete(
    out_dir: Path,
    *,
    train: int = 400,
    validation: int = 40,
    new_voice: int = 40,
    seed: int = 0,
    sample_rate: int = 16000,
) -> bool:
    """Whether `out_dir` holds a complete dataset written with these arguments (synthesize would reuse it)."""
    marker = _marker(train=train, validation=validation, new_voice=new_voice, seed=seed, sample_rate=sample_rate)
    return _read_marker(Path(out_dir)) == marker


def _marker(*, train: int, validation: int, new_voice: int, seed: int, sample_rate: int) -> dict:
    arguments = {"train": train, "validation": validation, "new_voice": new_voice, "seed": seed}
    arguments["sample_rate"] = sample_rate
    counts = dict(zip(SPLITS, (train, validation, new_voice), strict=True))
    # The library version is part of the key: another espeak-ng may speak differently.
    return {"version": VERSION, PACKAGE: _package_version(), "arguments": arguments, "counts": counts}


def _read_marker(out_dir: Path, name: str = MARKER) -> dict | None:
    """The marker of a complete dataset (without its informational keys), or None."""
    try:
        found = json.loads((out_dir / name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict):
        return None
    found.pop("voices", None)
    return found


def _package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_replaceable(out_dir: Path, marker: str = MARKER, command: str = "ta data synth") -> None:
    """Refuse to overwrite a directory that `command` did not write (it has no `marker`)."""
    if out_dir.exists() and not (out_dir / marker).is_file():
        if not out_dir.is_dir():
            raise SynthError(f"{out_dir} exists and is not a directory; choose another output path")
        if any(out_dir.iterdir()):
            raise SynthError(
                f"{out_dir} already holds files that `{command}` did not write (no {marker}); "
                "remove it or choose another output directory"
            )


def _check_voices(voices: set[str]) -> None:
    with Espeak() as engine:
        for voice in sorted(voices):
            if not engine.has_voice(voice):
                raise SynthError(f"unknown espeak-ng voice '{voice}' (accents look like en-us, en-gb-x-rp)")


def _guarded(path: Path, action):
    """Run a filesystem action, turning OSError into a one-line error that names the path."""
    try:
        return action()
    except (OSError, sf.SoundFileError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise SynthError(f"cannot write {path}: {reason}; free some space or choose another output path") from error


def _make_staging(out_dir: Path) -> Path:
    return _guarded(out_dir.absolute().parent, lambda: staging_folder(out_dir))


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished staging directory; a reader never sees a partial set."""
    _guarded(out_dir, lambda: swap_in(staging, out_dir))


def _write_metadata(folder: Path, clips: list[Clip]) -> None:
    def write() -> None:
        with open(folder / "metadata.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "text"])
            writer.writerows((clip.file_name, clip.text) for clip in clips)

    _guarded(folder / "metadata.csv", write)


def _render_all(lanes: list, workers: int | None, render: Callable[[Any], None] | None = None) -> None:
    """Run `render` (default: write a lane of Clips) on every lane, in `workers` processes."""
    render = render or _render_lane
    # The CPUs this process may use (a container often has fewer than the machine).
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(workers or available, len(lanes)))
    if workers == 1:
        for lane in lanes:
            render(lane)
        return
    # espeak-ng holds global state, so parallelism needs processes. Linux forks them (instant, as
    # torch's DataLoader does); elsewhere they are spawned, which re-imports the caller's main module.
    context = get_context("fork" if sys.platform == "linux" else "spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
    )
    try:
        for _ in pool.map(render, lanes):
            pass
    finally:
        # On Ctrl+C or an error: drop queued lanes, let running ones finish, then the caller deletes
        # the staging directory.
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(parent: int) -> None:
    # Ctrl+C reaches the whole process group; the parent alone handles it and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (SIGKILL, SIGTERM) cannot stop its pool, and a forked worker would
    # wait on the task queue forever, so each worker leaves once its parent is gone.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _render_lane(lane: tuple[Path, list[Clip], int]) -> None:
    folder, clips, sample_rate = lane
    with Espeak() as engine:
        for clip in clips:
            write_wav(folder / clip.file_name, speak_clip(engine, clip, sample_rate), sample_rate)


def speak_clip(engine: Espeak, clip: Clip, sample_rate: int) -> np.ndarray:
    """The clip's speech as float32 in [-1, 1) at `sample_rate`."""
    samples = engine.speak(clip.text, voice=clip.voice, rate=clip.rate, pitch=clip.pitch, noise_seed=clip.noise_seed)
    return resample(samples.astype(np.float32) / 32768, engine.sample_rate, sample_rate)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM; full scale is clipped to the largest positive sample, as int16 requires."""
    pcm = np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    _guarded(path, lambda: sf.write(path, pcm, sample_rate, subtype="PCM_16"))
