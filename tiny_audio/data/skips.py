"""Counting unusable samples by reason, so a run can report exactly what it dropped and why."""

from __future__ import annotations

from collections.abc import Iterable

from tiny_audio.runtime.unusable import (
    EMPTY_AUDIO,
    MISSING_AUDIO,
    NON_FINITE_AUDIO,
    SILENT_AUDIO,
    TOO_LONG,
    TOO_SHORT,
    UNREADABLE_AUDIO,
)

# Reasons a record is skipped. Streams emit these names; keep them short and stable because
# they become tracker metric names and checkpoint keys.
# The audio reasons (unreadable, missing, empty, non-finite, silent, too short, too long) live with
# the runtime, which reads audio for inference too.
BAD_AUDIO_TYPE = "bad_audio_type"  # the audio cell is neither bytes, a path, nor {bytes, path}
EMPTY_TEXT = "empty_text"  # null, or nothing left after normalisation
BAD_TEXT_TYPE = "bad_text_type"  # the transcript cell is not a string
TOO_FEW_WORDS = "too_few_words"  # fewer than data.min_words words
JUNK_MARKER = "junk_marker"  # contains one of data.junk_markers
# A noise or impulse-response file under data.augment.*.dir that does not decode; the clip is kept.
UNREADABLE_EFFECT_FILE = "unreadable_effect_file"

REASONS = (
    UNREADABLE_AUDIO,
    MISSING_AUDIO,
    BAD_AUDIO_TYPE,
    EMPTY_AUDIO,
    NON_FINITE_AUDIO,
    SILENT_AUDIO,
    TOO_SHORT,
    TOO_LONG,
    EMPTY_TEXT,
    BAD_TEXT_TYPE,
    TOO_FEW_WORDS,
    JUNK_MARKER,
    UNREADABLE_EFFECT_FILE,
)


class SkipLedger:
    """Unique skipped sample ids per reason.

    Streams re-read their sources pass after pass, so the same bad sample is reported again;
    counting ids rather than events keeps the totals equal to the number of bad samples.
    """

    def __init__(self) -> None:
        self._ids: dict[str, set[str]] = {}

    def add(self, reason: str, sample_id: str) -> None:
        self._ids.setdefault(reason, set()).add(sample_id)

    def extend(self, pairs: Iterable[tuple[str, str]]) -> None:
        for reason, sample_id in pairs:
            self.add(reason, sample_id)

    def counts(self) -> dict[str, int]:
        """Unique sample ids per reason, most frequent first."""
        ranked = sorted(self._ids.items(), key=lambda item: (-len(item[1]), item[0]))
        return {reason: len(ids) for reason, ids in ranked}

    @property
    def total(self) -> int:
        return sum(len(ids) for ids in self._ids.values())

    def summary(self) -> str:
        """One line, e.g. 'skipped 7 samples: empty_audio 3, unreadable_audio 2, empty_text 2'."""
        return summarize(self.counts())

    def state_dict(self) -> dict[str, list[str]]:
        return {reason: sorted(ids) for reason, ids in self._ids.items()}

    def load_state_dict(self, state: dict[str, list[str]]) -> None:
        self._ids = {reason: set(ids) for reason, ids in state.items()}


def add_counts(per_rank: list[dict[str, int]]) -> dict[str, int]:
    """Counts from several ranks (disjoint shards), most frequent first."""
    total: dict[str, int] = {}
    for counts in per_rank:
        for reason, count in counts.items():
            total[reason] = total.get(reason, 0) + count
    return dict(sorted(total.items(), key=lambda item: (-item[1], item[0])))


def summarize(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "skipped 0 samples"
    parts = ", ".join(f"{reason} {count}" for reason, count in counts.items())
    return f"skipped {total} sample{'' if total == 1 else 's'}: {parts}"
