"""`pipeline("automatic-speech-recognition", model=..., trust_remote_code=True)` for tiny-audio models.

Accepts a file path, the file's bytes, a dict {"raw" or "array": samples, "sampling_rate": rate},
a bare array (taken to be at the model's rate, 16 kHz), or a list of these. Audio is mixed to mono
and resampled to 16 kHz as `ta transcribe` does; a list is decoded in batches of `batch_size`.
Each clip gives {"text": ...}. The encoders read at most 30 s at once: a longer clip is refused,
naming the limit, unless `chunk_length_s` is given, which cuts it into equal consecutive pieces of
at most that length (no overlap: a word cut at a boundary may be lost) and joins their transcripts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import soundfile as sf
from transformers import Pipeline

from .audio import check_signal, decode_audio, resample, to_mono
from .defaults import DEFAULT_BATCH_SIZE
from .unusable import Unusable

if TYPE_CHECKING:
    from .modeling_tiny_audio import TinyAudioModel

MAX_CHANNELS = 8  # an array with a dimension this small is (frames, channels) or (channels, frames)


class UnusableAudio(ValueError):
    """A clip that cannot be transcribed. `reason` is the skip name (silent_audio, too_long, ...), so a
    caller such as the web demo can treat silence as an empty transcript rather than parse the message."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class TinyAudioASRPipeline(Pipeline):
    # The ignores: transformers declares these flags as None only, and types a pipeline's steps with
    # the base signatures that every pipeline narrows to its own parameters (_sanitize_parameters).
    model: TinyAudioModel
    _load_processor = False  # type: ignore[assignment]
    _load_image_processor = False  # type: ignore[assignment]
    _load_video_processor = False  # type: ignore[assignment]
    _load_feature_extractor = False  # type: ignore[assignment]
    _load_tokenizer = False  # type: ignore[assignment]

    def _sanitize_parameters(
        self, max_new_tokens: int | None = None, chunk_length_s: float | None = None, **unknown: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if unknown:
            raise TypeError(
                f"unknown argument(s) {', '.join(unknown)}; this pipeline takes max_new_tokens, "
                "chunk_length_s and batch_size"
            )
        preprocess = {} if chunk_length_s is None else {"chunk_length_s": chunk_length_s}
        forward = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        return preprocess, forward, {}

    def __call__(  # type: ignore[override]
        self, inputs: Any, batch_size: int | None = None, **kwargs: Any
    ) -> dict[str, str] | list[dict]:
        preprocess, forward, _ = self._sanitize_parameters(**kwargs)
        preprocess = {**self._preprocess_params, **preprocess}
        forward = {**self._forward_params, **forward}
        single = not isinstance(inputs, list | tuple)
        items = [inputs] if single else list(inputs)
        # Every clip is cut into pieces (one, unless chunked); all pieces are decoded together.
        pieces = [self.preprocess(item, **preprocess, label=self._label(item, i)) for i, item in enumerate(items)]
        flat = [piece for clip in pieces for piece in clip["pieces"]]
        texts = self.model.transcribe(flat, batch_size=batch_size or self._batch_size or DEFAULT_BATCH_SIZE, **forward)
        results, start = [], 0
        for clip in pieces:
            count = len(clip["pieces"])
            results.append(self.postprocess({"texts": texts[start : start + count]}))
            start += count
        return results[0] if single else results

    def preprocess(  # type: ignore[override]
        self, inputs: Any, chunk_length_s: float | None = None, label: str = "audio"
    ) -> dict[str, Any]:
        audio = self.load_audio(inputs, label=label, allow_long=chunk_length_s is not None)
        return {"pieces": split(audio, self.model.sampling_rate, chunk_length_s, self._max_seconds)}

    def _forward(  # type: ignore[override]
        self, model_inputs: dict[str, Any], max_new_tokens: int | None = None
    ) -> dict[str, Any]:
        extra = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        return {"texts": self.model.transcribe(model_inputs["pieces"], **extra)}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, str]:  # type: ignore[override]
        return {"text": " ".join(text for text in model_outputs["texts"] if text)}

    @property
    def _max_seconds(self) -> float:
        return float(self.model.config.max_audio_seconds)

    @staticmethod
    def _label(item: Any, index: int) -> str:
        return str(item) if isinstance(item, str | Path) else f"input {index}"

    def load_audio(self, inputs: Any, label: str = "audio", allow_long: bool = False) -> np.ndarray:
        """Mono float32 at the model's rate; ValueError naming the clip and the fix for anything unusable."""
        rate = self.model.sampling_rate
        limit = math.inf if allow_long else self._max_seconds
        try:
            if isinstance(inputs, str | Path):
                return _read_file(Path(inputs), label, rate, limit)
            if isinstance(inputs, bytes | bytearray):
                return decode_audio(bytes(inputs), None, sample_rate=rate, max_duration=limit)
            if isinstance(inputs, dict):
                samples = inputs.get("raw", inputs.get("array"))
                if samples is None or "sampling_rate" not in inputs:
                    raise ValueError(
                        f"{label}: a dict input needs 'raw' (or 'array') and 'sampling_rate', got keys {sorted(inputs)}"
                    )
                return _from_array(samples, int(inputs["sampling_rate"]), rate, limit)
            if hasattr(inputs, "shape") or isinstance(inputs, list):
                return _from_array(inputs, rate, rate, limit)
        except Unusable as unusable:
            message = f"cannot transcribe {label}: {_explain(unusable, self._max_seconds)}"
            raise UnusableAudio(message, unusable.reason) from None
        raise TypeError(
            f"cannot transcribe {label}: got {type(inputs).__name__}; pass a file path, bytes, a numpy array at "
            f"{rate} Hz, or {{'raw': array, 'sampling_rate': rate}}"
        )


def _read_file(path: Path, label: str, rate: int, limit: float) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"no such audio file: {label}")
    if path.stat().st_size == 0:
        raise Unusable("empty_audio")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        detail = getattr(error, "error_string", str(error))  # libsndfile's reason, without the path again
        raise ValueError(f"cannot decode {label}: {detail} (readable formats: WAV, FLAC, OGG, MP3)") from None
    # Checked on the header, before decoding: a two-hour file is refused without reading it.
    if info.duration > limit:
        raise Unusable("too_long", f"{info.duration:.1f} s")
    return decode_audio(None, path, sample_rate=rate, max_duration=limit)


def _from_array(samples: Any, source_rate: int, rate: int, limit: float) -> np.ndarray:
    array = np.asarray(samples.cpu() if hasattr(samples, "cpu") else samples, dtype=np.float32)
    if array.ndim == 2 and array.shape[0] <= MAX_CHANNELS < array.shape[1]:
        array = array.T  # (channels, frames) as torchaudio and librosa give it
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"expected samples shaped (frames,) or (frames, channels), got {array.shape}")
    check_signal(array)
    if array.shape[0] / source_rate > limit:
        raise Unusable("too_long", f"{array.shape[0] / source_rate:.1f} s")
    return resample(to_mono(array), source_rate, rate)


def split(audio: np.ndarray, rate: int, chunk_length_s: float | None, max_seconds: float) -> list[np.ndarray]:
    if chunk_length_s is None:
        return [audio]
    if not 0 < chunk_length_s <= max_seconds:
        raise ValueError(f"chunk_length_s={chunk_length_s} must be > 0 and at most {max_seconds:.0f} s")
    count = max(1, math.ceil(len(audio) / (chunk_length_s * rate)))
    return list(np.array_split(audio, count))


def _explain(unusable: Unusable, max_seconds: float) -> str:
    if unusable.reason == "too_long":
        return (
            f"it is {str(unusable).split(': ', 1)[-1].split(' >')[0]} long; this model reads at most "
            f"{max_seconds:.0f} s per clip (its encoder's window). Pass chunk_length_s={max_seconds:.0f} to "
            "transcribe it in consecutive pieces, or split it into clips of at most that length"
        )
    return _EXPLANATIONS.get(unusable.reason) or str(unusable).replace("_", " ")


_EXPLANATIONS = {
    "empty_audio": "it holds no audio (0 samples); record or upload the clip again",
    "non_finite_audio": "it holds NaN or infinite samples; re-export it as 16-bit PCM",
}
