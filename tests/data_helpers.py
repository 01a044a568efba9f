"""Tiny local datasets for the data-pipeline tests and the training test, written with numpy + soundfile."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from tiny_audio.data import skips

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet")


def tone(seconds: float, rate: int = 16000, channels: int = 1, freq: float = 220.0) -> np.ndarray:
    """A quiet sine wave, (frames,) or (frames, channels)."""
    t = np.arange(round(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def sentence(i: int, prefix: str = "") -> str:
    words = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3))
    return f"{prefix}{words}".capitalize() + f" number {i}."


def write_audiofolder(
    directory: Path,
    splits: dict[str, int],
    *,
    seconds: float = 1.0,
    rate: int = 16000,
    channels: int = 1,
    text_prefix: str = "",
) -> Path:
    """directory/<split>/{metadata.csv, clip_XXXX.wav}; each text names its clip index."""
    for split, count in splits.items():
        folder = directory / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            name = f"clip_{i:04d}.wav"
            sf.write(folder / name, tone(seconds, rate, channels, freq=200.0 + i), rate)
            rows.append({"file_name": name, "text": sentence(i, text_prefix)})
        _write_csv(folder / "metadata.csv", rows)
    return directory


def write_jsonl_manifest(directory: Path, split: str, count: int, *, seconds: float = 1.0, rate: int = 16000) -> Path:
    """directory/<split>.jsonl with {"path": "clips/x.wav", "sentence": ...} rows (paths relative)."""
    clips = directory / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{split}.jsonl", "w") as manifest:
        for i in range(count):
            name = f"{split}_{i:04d}.flac"
            sf.write(clips / name, tone(seconds, rate), rate)
            manifest.write(json.dumps({"path": f"clips/{name}", "sentence": sentence(i)}) + "\n")
    return directory


def write_corrupt_audiofolder(directory: Path, *, good: int = 12) -> dict[str, int]:
    """A train (and validation) audiofolder mixing `good` clean clips with known bad ones.

    Returns the exact number of bad samples seeded, by skip reason. Bad samples are fewer than
    good ones, so the bad-fraction guard (default 50%) does not fire.
    """
    expected = {
        skips.UNREADABLE_AUDIO: 3,  # random bytes, a truncated header, a missing file
        skips.EMPTY_AUDIO: 2,
        skips.NON_FINITE_AUDIO: 2,
        skips.EMPTY_TEXT: 2,
    }
    for split in ("train", "validation"):
        folder = directory / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(good):
            name = f"good_{i:03d}.wav"
            sf.write(folder / name, tone(1.0, freq=200.0 + 10 * i), 16000)
            rows.append({"file_name": name, "text": sentence(i)})
        (folder / "corrupt_random.wav").write_bytes(np.random.default_rng(0).bytes(2048))
        (folder / "corrupt_truncated.wav").write_bytes(b"RIFF\x24\x08\x00\x00WAVEfmt ")
        rows += [
            {"file_name": "corrupt_random.wav", "text": "random bytes in a wav file"},
            {"file_name": "corrupt_truncated.wav", "text": "a header cut short"},
            {"file_name": "missing.wav", "text": "this file does not exist"},
        ]
        for i in range(expected[skips.EMPTY_AUDIO]):
            name = f"empty_{i}.wav"
            sf.write(folder / name, np.zeros(0, dtype=np.float32), 16000)
            rows.append({"file_name": name, "text": "there is no audio here"})
        for i in range(expected[skips.NON_FINITE_AUDIO]):
            name = f"nan_{i}.wav"
            samples = tone(1.0)
            samples[100 * (i + 1)] = np.nan if i % 2 == 0 else np.inf
            sf.write(folder / name, samples, 16000, subtype="FLOAT")
            rows.append({"file_name": name, "text": "not a number inside"})
        for i in range(expected[skips.EMPTY_TEXT]):
            name = f"untranscribed_{i}.wav"
            sf.write(folder / name, tone(1.0), 16000)
            rows.append({"file_name": name, "text": "" if i == 0 else "   "})
        _write_csv(folder / "metadata.csv", rows)
    return expected


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
