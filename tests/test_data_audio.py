import io

import numpy as np
import pytest
import soundfile as sf
from data_helpers import tone

from tiny_audio.data import skips
from tiny_audio.data.text import count_words, find_junk_marker, normalize_text
from tiny_audio.runtime.audio import decode_audio
from tiny_audio.runtime.unusable import Unusable


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize(("rate", "channels"), [(8000, 2), (44100, 1), (16000, 1), (48000, 2)])
def test_any_rate_and_channels_become_16k_mono_float32(rate: int, channels: int) -> None:
    audio = decode_audio(wav_bytes(tone(1.5, rate, channels), rate), None, sample_rate=16000)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert abs(len(audio) / 16000 - 1.5) < 0.01
    assert 0.2 < np.abs(audio).max() < 0.35  # stereo averaged, not summed


def test_decodes_from_a_path(tmp_path) -> None:
    path = tmp_path / "clip.flac"
    sf.write(path, tone(0.75, 22050), 22050)
    audio = decode_audio(None, str(path), sample_rate=16000)
    assert len(audio) == 12000


def reason_for(data: bytes | None, path: str | None = None, **limits: float) -> str:
    with pytest.raises(Unusable) as caught:
        decode_audio(data, path, sample_rate=16000, **limits)
    return caught.value.reason


def test_bad_audio_is_classified() -> None:
    assert reason_for(b"not audio at all" * 8) == skips.UNREADABLE_AUDIO
    assert reason_for(None, "/no/such/file.wav") == skips.UNREADABLE_AUDIO
    assert reason_for(None, None) == skips.MISSING_AUDIO
    assert reason_for(wav_bytes(np.zeros(0, np.float32), 16000)) == skips.EMPTY_AUDIO
    assert reason_for(wav_bytes(np.zeros(16000, np.float32), 16000)) == skips.SILENT_AUDIO
    with_nan = tone(1.0)
    with_nan[5] = np.nan
    assert reason_for(wav_bytes(with_nan, 16000, subtype="FLOAT")) == skips.NON_FINITE_AUDIO


def test_duration_limits() -> None:
    clip = wav_bytes(tone(2.0), 16000)
    assert reason_for(clip, min_duration=2.5) == skips.TOO_SHORT
    assert reason_for(clip, max_duration=1.5) == skips.TOO_LONG
    assert len(decode_audio(clip, None, sample_rate=16000, min_duration=1.0, max_duration=30.0)) == 32000


def test_normalize_keeps_casing_and_punctuation() -> None:
    assert normalize_text("  Hello,   <b>World</b>!\n") == "Hello, World !"
    assert normalize_text("Tom &amp;amp; Jerry&#39;s") == "Tom & Jerry's"
    assert normalize_text("Mixed CASE", lowercase=True) == "mixed case"
    assert normalize_text("<i></i>  ") == ""


def test_words_and_junk_markers() -> None:
    assert count_words("one two  three") == 3
    assert find_junk_marker("IGNORE_TIME_SEGMENT_IN_SCORING", ["ignore_time_segment_in_scoring"])
    assert find_junk_marker("a clean line", ["ignore_time_segment_in_scoring"]) is None
