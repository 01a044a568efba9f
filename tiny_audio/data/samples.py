"""Turn one undecoded record into a training sample, or say why it cannot be one."""

from __future__ import annotations

from typing import Any

import numpy as np

from tiny_audio.config import DataConfig
from tiny_audio.data import skips
from tiny_audio.data.text import count_words, find_junk_marker, normalize_text
from tiny_audio.runtime.audio import decode_audio
from tiny_audio.runtime.unusable import Unusable


def prepare_sample(record: dict[str, Any], cfg: DataConfig) -> tuple[np.ndarray, str]:
    """(mono float32 audio at cfg.sample_rate, normalised transcript), or Unusable(reason).

    The transcript is checked first: it is cheap, and a record without one is not worth decoding.
    """
    text = _transcript(record, cfg)
    if record["audio_problem"]:
        raise Unusable(record["audio_problem"])
    audio = decode_audio(
        record["audio_bytes"],
        record["audio_path"],
        sample_rate=cfg.sample_rate,
        min_duration=cfg.min_duration,
        max_duration=cfg.max_duration,
    )
    return audio, text


def _transcript(record: dict[str, Any], cfg: DataConfig) -> str:
    if record["text_problem"]:
        raise Unusable(record["text_problem"])
    raw = record["text"]
    if raw is None:
        raise Unusable(skips.EMPTY_TEXT)
    # Markers are matched before normalisation, which could split them (e.g. inside a tag).
    marker = find_junk_marker(raw, list(cfg.junk_markers))
    if marker is not None:
        raise Unusable(skips.JUNK_MARKER, marker)
    text = normalize_text(raw, lowercase=cfg.lowercase)
    if not text:
        raise Unusable(skips.EMPTY_TEXT)
    if count_words(text) < cfg.min_words:
        raise Unusable(skips.TOO_FEW_WORDS, f"{count_words(text)} < {cfg.min_words}")
    return text
