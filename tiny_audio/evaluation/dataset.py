"""Read a test set through the training data layer: the first N usable samples, skipped ones counted by reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tiny_audio.config import ConfigError, DataConfig, DatasetConfig
from tiny_audio.data import skips
from tiny_audio.data.skips import SkipLedger
from tiny_audio.data.sources import DataSourceError, eval_records
from tiny_audio.data.text import find_junk_marker, normalize_text
from tiny_audio.evaluation.registry import TestSet, TestSetUnavailable, hint, probe_hub
from tiny_audio.runtime.audio import decode_audio
from tiny_audio.runtime.unusable import Unusable


@dataclass(frozen=True)
class EvalSample:
    sample_id: str  # dataset/split/file name (or a content hash), as the data layer names it
    audio: np.ndarray
    text: str


@dataclass(frozen=True)
class LoadedTestSet:
    test_set: TestSet
    samples: list[EvalSample]
    skipped: SkipLedger
    sample_rate: int
    # Whether every record of the split was read (scored or skipped): only then is its size known,
    # and a WER on fewer clips must not pass for the test set's.
    read_to_end: bool = False

    @property
    def audio_seconds(self) -> float:
        return sum(len(s.audio) for s in self.samples) / self.sample_rate

    @property
    def split_size(self) -> int | None:
        """Records in the split (scored and skipped), when it was read to its end."""
        return len(self.samples) + sum(self.skipped.counts().values()) if self.read_to_end else None


def eval_data_config(
    path: str, name: str | None, split: str, audio_column: str, text_column: str, sample_rate: int
) -> DataConfig:
    """Read `split` in order, keeping every clip the encoder can take.

    Training drops short clips, one-word or empty transcripts and silent clips; a benchmark must
    not, or its WER would not compare with published numbers for the same split.
    """
    dataset = DatasetConfig(
        path=path, name=name, audio_column=audio_column, text_column=text_column, train_splits=[], eval_splits=[split]
    )
    cfg = DataConfig(
        datasets=[dataset],
        sample_rate=sample_rate,
        min_duration=0.0,
        min_words=1,
        max_eval_samples=None,
        shuffle_buffer=0,
        num_workers=0,
    )
    cfg.validate()
    return cfg


def load_eval_samples(cfg: DataConfig, limit: int | None) -> tuple[list[EvalSample], SkipLedger, bool]:
    """The first `limit` usable samples of the eval splits (all when None), the records skipped, by reason,
    and whether the splits were read to their end.

    Records are read here rather than through the eval stream because results name each sample
    by its id, which the stream does not pass on.
    """
    samples: list[EvalSample] = []
    skipped = SkipLedger()
    for record in eval_records(cfg):
        if len(samples) == limit:
            return samples, skipped, False  # a record beyond the limit: the split holds more
        try:
            audio, text = prepare_eval_sample(record, cfg)
        except Unusable as unusable:
            skipped.add(unusable.reason, record["sample_id"])
            continue
        samples.append(EvalSample(record["sample_id"], audio, text))
    return samples, skipped, True


def prepare_eval_sample(record: dict[str, Any], cfg: DataConfig) -> tuple[np.ndarray, str]:
    """(audio, transcript) as training's `prepare_sample` gives them, except that a benchmark keeps
    what training drops: an empty transcript (non-speech audio: any output is a hallucination) and
    digital silence. Junk-marked and unreadable records are still skipped."""
    if record["text_problem"]:
        raise Unusable(record["text_problem"])
    raw = record["text"] or ""
    marker = find_junk_marker(raw, list(cfg.junk_markers))
    if marker is not None:
        raise Unusable(skips.JUNK_MARKER, marker)
    if record["audio_problem"]:
        raise Unusable(record["audio_problem"])
    audio = decode_audio(
        record["audio_bytes"],
        record["audio_path"],
        sample_rate=cfg.sample_rate,
        max_duration=cfg.max_duration,
        allow_silence=True,
    )
    return audio, normalize_text(raw, lowercase=cfg.lowercase)


def load_test_set(test_set: TestSet, sample_rate: int, limit: int | None) -> LoadedTestSet:
    """The first `limit` usable samples of `test_set`, or TestSetUnavailable at once if it cannot be read."""
    probe_hub(test_set)
    try:
        cfg = eval_data_config(
            test_set.path, test_set.config, test_set.split, test_set.audio_column, test_set.text_column, sample_rate
        )
        samples, skipped, read_to_end = load_eval_samples(cfg, limit)
    # OSError covers what `datasets` and the Hub client raise for missing, gated or unreachable
    # files (DatasetNotFoundError, HfHubHTTPError and ConnectionError all derive from it).
    except (ConfigError, DataSourceError, OSError) as error:
        raise TestSetUnavailable(
            f"cannot read test set '{test_set.name}' from {test_set.source}: {error}; {hint(test_set)}"
        ) from error
    if not samples:
        raise TestSetUnavailable(
            f"test set '{test_set.name}' ({test_set.source}) has no usable samples: {skipped.summary()}"
        )
    return LoadedTestSet(test_set, samples, skipped, sample_rate, read_to_end)
