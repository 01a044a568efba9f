"""Decode any audio cell (bytes, a path, or {bytes, path}) to mono float32 at a target rate.

Decoding uses soundfile (libsndfile: WAV, FLAC, OGG, MP3) and soxr, never torchcodec or FFmpeg:
`datasets` >= 4 decodes through torchcodec, whose wheels do not load against every torch build.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .unusable import (
    EMPTY_AUDIO,
    MISSING_AUDIO,
    NON_FINITE_AUDIO,
    SILENT_AUDIO,
    TOO_LONG,
    TOO_SHORT,
    UNREADABLE_AUDIO,
    Unusable,
)

# One step of 16-bit PCM: a clip whose every sample is below it holds no signal at all.
SILENCE_PEAK = 1.0 / 32768


def read_audio(data: bytes | None, path: str | None) -> tuple[np.ndarray, int]:
    """Samples as float32 (frames, channels) and the file's sample rate. Bytes win over the path."""
    if data is None and path is None:
        raise Unusable(MISSING_AUDIO)
    source = io.BytesIO(data) if data is not None else path
    try:
        samples, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.SoundFileError, OSError) as error:
        # libsndfile reports corrupt data and missing files alike as SoundFileError; OSError
        # covers paths that exist but cannot be opened (a directory, no permission).
        raise Unusable(UNREADABLE_AUDIO, str(error)) from error
    return samples, int(rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) by averaging channels."""
    return samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return samples
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)


def check_signal(samples: np.ndarray, allow_silence: bool = False) -> None:
    """Raise Unusable for empty, NaN/Inf or (unless allowed) all-silent audio."""
    if samples.size == 0:
        raise Unusable(EMPTY_AUDIO)
    if not np.isfinite(samples).all():
        raise Unusable(NON_FINITE_AUDIO)
    if not allow_silence and float(np.abs(samples).max()) < SILENCE_PEAK:
        raise Unusable(SILENT_AUDIO)


def decode_audio(
    data: bytes | None,
    path: str | Path | None,
    *,
    sample_rate: int,
    min_duration: float = 0.0,
    max_duration: float = float("inf"),
    allow_silence: bool = False,
) -> np.ndarray:
    """Mono float32 at `sample_rate`, or Unusable naming why the clip cannot be used.

    Training has no use for a silent clip; a benchmark or a transcription keeps it (`allow_silence`).

    The duration limits are checked on the source before resampling, so a clip that is too long
    costs a read but no resampling.
    """
    samples, rate = read_audio(data, None if path is None else str(path))
    check_signal(samples, allow_silence)
    duration = samples.shape[0] / rate
    if duration < min_duration:
        raise Unusable(TOO_SHORT, f"{duration:.2f} s < {min_duration} s")
    if duration > max_duration:
        raise Unusable(TOO_LONG, f"{duration:.2f} s > {max_duration} s")
    return resample(to_mono(samples), rate, sample_rate)
