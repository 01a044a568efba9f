"""Stop early when a dataset is mostly unusable, instead of training on the few records that pass."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tiny_audio.data import skips

# What to change for each reason; quoted in the error so the fix is one read away.
_FIXES = {
    skips.UNREADABLE_AUDIO: "check that the audio files exist and decode with soundfile (WAV/FLAC/OGG/MP3)",
    skips.MISSING_AUDIO: "check data.datasets[].audio_column names the column that holds the audio",
    skips.BAD_AUDIO_TYPE: "data.datasets[].audio_column must hold bytes, a path, or {bytes, path}",
    skips.EMPTY_TEXT: "check data.datasets[].text_column names the column that holds the transcript",
    skips.BAD_TEXT_TYPE: "data.datasets[].text_column must hold strings",
    skips.TOO_SHORT: "lower data.min_duration",
    skips.TOO_LONG: "segment the audio below data.max_duration (30 s is the encoder's window)",
    skips.TOO_FEW_WORDS: "lower data.min_words",
    skips.JUNK_MARKER: "review data.junk_markers",
}
_DEFAULT_FIX = "check the audio files and the configured columns"


class DataQualityError(RuntimeError):
    """Too many unusable records at the start of a stream; the message says which and why."""


class BadFractionGuard:
    """Watch the first `window` records one worker reads and raise once more than
    `max_fraction` of them are unusable (or at the end of a pass shorter than the window)."""

    def __init__(self, max_fraction: float, window: int) -> None:
        self.max_fraction = max_fraction
        self.window = window
        self.seen = 0
        self.bad: Counter[str] = Counter()  # reason -> count
        self.examples: dict[str, str] = {}  # reason -> first sample id
        self.datasets: Counter[str] = Counter()  # dataset -> bad count

    def observe(self, dataset: str, reason: str | None = None, sample_id: str = "") -> None:
        if self.seen >= self.window:
            return
        self.seen += 1
        if reason is not None:
            self.bad[reason] += 1
            self.examples.setdefault(reason, sample_id)
            self.datasets[dataset] += 1
        # Raise as soon as the verdict on the full window is certain, not after reading all of it.
        if self._over(self.window):
            raise DataQualityError(self._message())

    def end_of_pass(self) -> None:
        """A pass shorter than the window is judged on what it held."""
        if 0 < self.seen < self.window and self._over(self.seen):
            raise DataQualityError(self._message())
        self.seen = max(self.seen, self.window)

    def _over(self, denominator: int) -> bool:
        return sum(self.bad.values()) > self.max_fraction * denominator

    def _message(self) -> str:
        total = sum(self.bad.values())
        names = ", ".join(f"'{name}'" for name, _ in self.datasets.most_common())
        reasons = "; ".join(
            f"{reason} {count} (e.g. {self.examples[reason]})" for reason, count in self.bad.most_common()
        )
        fixes = "; ".join(dict.fromkeys(_FIXES.get(reason, _DEFAULT_FIX) for reason, _ in self.bad.most_common(3)))
        return (
            f"{total} of the first {self.seen} records read from {names} are unusable: {reasons}. "
            f"To fix: {fixes}. The limit is data.max_bad_fraction={self.max_fraction} "
            f"of the first data.bad_check_samples={self.window} records per dataloader worker."
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "bad": dict(self.bad),
            "examples": dict(self.examples),
            "datasets": dict(self.datasets),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"]
        self.bad = Counter(state["bad"])
        self.examples = dict(state["examples"])
        self.datasets = Counter(state["datasets"])
