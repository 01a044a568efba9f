"""Evaluate a model on one split of any dataset the training data layer can read; results as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tiny_audio.config import DataConfig, DatasetConfig
from tiny_audio.data.samples import prepare_sample
from tiny_audio.data.skips import SkipLedger, Unusable
from tiny_audio.data.sources import eval_records
from tiny_audio.evaluation.wer import WerReport


@dataclass(frozen=True)
class EvalSample:
    sample_id: str  # dataset/split/file name (or a content hash), as the data layer names it
    audio: np.ndarray
    text: str


def eval_data_config(
    path: str, name: str | None, split: str, audio_column: str, text_column: str, sample_rate: int
) -> DataConfig:
    """Read `split` in order, keeping every clip the encoder can take.

    Training drops short clips and one-word transcripts; a benchmark must not, or its WER would not
    compare with published numbers for the same split.
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


def load_eval_samples(cfg: DataConfig, limit: int) -> tuple[list[EvalSample], SkipLedger]:
    """The first `limit` usable samples of the eval splits, and the records skipped on the way, by reason.

    Records are read here rather than through the eval stream because results name each sample
    by its id, which the stream does not pass on.
    """
    samples: list[EvalSample] = []
    skipped = SkipLedger()
    for record in eval_records(cfg):
        if len(samples) == limit:
            break
        try:
            audio, text = prepare_sample(record, cfg)
        except Unusable as unusable:
            skipped.add(unusable.reason, record["sample_id"])
            continue
        samples.append(EvalSample(record["sample_id"], audio, text))
    return samples, skipped


def results_json(
    report: WerReport, samples: list[EvalSample], skipped: SkipLedger, settings: dict[str, Any]
) -> dict[str, Any]:
    """Settings, overall metrics, skip counts, and one entry per sample in dataset order."""
    return {
        **settings,
        "num_samples": len(report.samples),
        "reference_words": report.reference_words,
        **report.metrics(prefix=""),
        "skipped": skipped.counts(),
        "samples": [
            {
                "id": sample.sample_id,
                "reference": scored.reference,
                "prediction": scored.prediction,
                "wer": scored.wer,
                "substitutions": scored.substitutions,
                "insertions": scored.insertions,
                "deletions": scored.deletions,
                "empty": scored.empty,
                "looping": scored.looping,
            }
            for sample, scored in zip(samples, report.samples, strict=True)
        ],
    }
