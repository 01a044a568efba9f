"""Synthetic English speech with espeak-ng: a small, download-free ASR dataset for tests and demos.

Sentences come from a template grammar below; each clip gets a voice, speed and pitch drawn from
a seeded generator, so the same seed writes the same dataset. The output is an audiofolder:
OUT/<split>/metadata.csv (file_name,text) beside 16 kHz mono 16-bit WAV files.
"""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from tiny_audio.data.audio import resample, to_mono

ESPEAK = "espeak-ng"
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
VARIANTS = ("", "+m3", "+f2", "+f4")  # espeak-ng voice variants: male/female timbres
SPEEDS = (135, 190)  # words per minute; espeak's default is 175
PITCHES = (30, 70)  # 0-99; espeak's default is 50

NAMES = ("Alice", "Ben", "Clara", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "James", "Laura", "Martin")
ADJECTIVES = ("small", "bright", "quiet", "heavy", "old", "green", "careful", "busy", "warm", "narrow", "happy")
NOUNS = ("cat", "teacher", "train", "garden", "letter", "river", "window", "doctor", "bicycle", "kitchen", "farmer")
PLURALS = ("birds", "children", "boxes", "lamps", "students", "boats", "apples", "clocks", "engineers", "songs")
VERBS = ("opened", "painted", "carried", "watched", "found", "cleaned", "visited", "followed", "repaired", "moved")
PRESENT = ("open", "paint", "carry", "watch", "find", "clean", "visit", "follow", "repair", "move")
PLACES = ("station", "market", "library", "harbour", "school", "museum", "bridge", "village", "office", "park")
PREPOSITIONS = ("near", "behind", "inside", "beside", "across", "under", "past", "towards")
TIMES = ("this morning", "last night", "on Monday", "after lunch", "in the spring", "every day", "at noon")
NUMBERS = ("Two", "Three", "Four", "Five", "Seven", "Nine", "Twelve", "Twenty")
TEMPLATES = (
    "The {adjective} {noun} {verb} the {noun2} {preposition} the {place}.",
    "{name} {verb} a {adjective} {noun} {time}.",
    "{number} {plurals} waited {preposition} the {place} {time}.",
    "Did {name} {present} the {noun} {preposition} the {place}?",
    "Please {present} the {adjective} {noun} before {name} arrives.",
    "{name} said that the {noun} was too {adjective} for the {place}.",
    "We {verb} the {plurals} {time}, and {name} {verb2} the {noun}.",
    "Why is the {noun} so {adjective} {time}?",
)


class SynthError(RuntimeError):
    """espeak-ng is missing or failed; the message says what to install or what it printed."""


@dataclass(frozen=True)
class Clip:
    file_name: str
    text: str
    voice: str
    speed: int
    pitch: int


def make_sentence(rng: random.Random) -> str:
    slots = {
        "name": rng.choice(NAMES),
        "adjective": rng.choice(ADJECTIVES),
        "noun": rng.choice(NOUNS),
        "noun2": rng.choice(NOUNS),
        "plurals": rng.choice(PLURALS),
        "verb": rng.choice(VERBS),
        "verb2": rng.choice(VERBS),
        "present": rng.choice(PRESENT),
        "place": rng.choice(PLACES),
        "preposition": rng.choice(PREPOSITIONS),
        "time": rng.choice(TIMES),
        "number": rng.choice(NUMBERS),
    }
    return rng.choice(TEMPLATES).format(**slots)


def plan_split(split: str, count: int, seed: int) -> list[Clip]:
    # A string seed is hashed deterministically (unlike hash()), and differs per split so
    # validation sentences are not a replay of train's.
    rng = random.Random(f"{seed}-{split}")
    return [
        Clip(
            file_name=f"{split}_{i:05d}.wav",
            text=make_sentence(rng),
            voice=rng.choice(VOICES) + rng.choice(VARIANTS),
            speed=rng.randint(*SPEEDS),
            pitch=rng.randint(*PITCHES),
        )
        for i in range(count)
    ]


def speak(clip: Clip, sample_rate: int) -> np.ndarray:
    """Mono float32 at `sample_rate` for one clip (espeak-ng itself writes 22.05 kHz)."""
    command = [ESPEAK, "-v", clip.voice, "-s", str(clip.speed), "-p", str(clip.pitch), "--stdout", clip.text]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        raise SynthError(f"{' '.join(command)} failed: {result.stderr.decode(errors='replace').strip()}")
    samples, rate = sf.read(io.BytesIO(result.stdout), dtype="float32", always_2d=True)
    return resample(to_mono(samples), rate, sample_rate)


def synthesize(
    out_dir: Path,
    *,
    train: int = 400,
    validation: int = 40,
    seed: int = 0,
    sample_rate: int = 16000,
    workers: int | None = None,
) -> dict[str, int]:
    """Write OUT/train and OUT/validation audiofolders; returns clips written per split."""
    if shutil.which(ESPEAK) is None:
        raise SynthError(
            "espeak-ng is not installed: install the apt package `espeak-ng` "
            "(sudo apt-get install espeak-ng) or your platform's equivalent"
        )
    # espeak-ng runs in its own process, so threads are enough to keep every core busy.
    workers = workers or max(2, os.cpu_count() or 2)
    written = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split, count in (("train", train), ("validation", validation)):
            folder = Path(out_dir) / split
            folder.mkdir(parents=True, exist_ok=True)
            clips = plan_split(split, count, seed)
            for clip, audio in zip(clips, pool.map(lambda c: speak(c, sample_rate), clips), strict=True):
                sf.write(folder / clip.file_name, audio, sample_rate, subtype="PCM_16")
            with open(folder / "metadata.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["file_name", "text"])
                writer.writerows((clip.file_name, clip.text) for clip in clips)
            written[split] = count
    return written
