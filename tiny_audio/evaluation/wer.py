"""Word error rate with its breakdown and the two usual speech-LLM failure modes: empty and looping output.

Rates are corpus-level: errors of each kind over all reference words, so long utterances weigh
more than short ones (as in every published WER). References and predictions are normalised with
`normalize` (Whisper's English normaliser) first; `score(..., normalizer=raw)` gives the
unnormalised WER instead.

A prediction is *empty* when nothing is left after normalisation. It is *looping* when the decoder
got stuck repeating itself: some run of words (one word or a phrase of any length) occurs at
least `LOOP_REPEATS` times in a row ("the the the the", "i see you i see you i see you i see you");
or, with the spaces taken out, some run of characters holding a letter does ("daviddaviddaviddavid",
a sub-word token repeated without spaces, "abababab"), over at least `LOOP_MIN_CHARS` characters;
or it has more than `LOOP_LENGTH_RATIO` times as many words as the reference (a loop cut off by
`max_new_tokens` before it repeated often enough to show).

A reference with no words (non-speech audio, or "[noise]", "Uh." that normalise to nothing) has no
WER: any words predicted for it are a *hallucination*. Rates therefore split the samples in two:
WER, its breakdown, and the empty and looping rates cover the samples with reference words;
`hallucination_rate` (share of clips with any output) and `hallucinated_words_per_clip` cover the
others. Each is undefined (ValueError) when its half has no samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jiwer
import numpy as np

from tiny_audio.evaluation.normalize import normalize

LOOP_REPEATS = 4
LOOP_LENGTH_RATIO = 3.0
LOOP_MIN_CHARS = 8  # a character loop must be this long: "aaaa" or "hahaha" in real speech is not one
LOOP_MAX_CHARS = 2000  # longer predictions are looked at up to here (the length ratio catches the rest)


@dataclass(frozen=True)
class SampleScore:
    reference: str  # as given, before normalisation
    prediction: str
    substitutions: int
    insertions: int
    deletions: int
    reference_words: int  # after normalisation
    empty: bool
    looping: bool

    @property
    def errors(self) -> int:
        return self.substitutions + self.insertions + self.deletions

    @property
    def wer(self) -> float:
        # A reference with no words left is right only when the prediction has none either.
        return self.errors / self.reference_words if self.reference_words else float(self.errors > 0)


SPEECH_METRICS = ("wer", "substitution_rate", "insertion_rate", "deletion_rate", "empty_rate", "looping_rate")
NON_SPEECH_METRICS = ("hallucination_rate", "hallucinated_words_per_clip")


@dataclass(frozen=True)
class WerReport:
    samples: list[SampleScore]

    @property
    def speech(self) -> list[SampleScore]:
        """The samples with reference words: the ones WER is about."""
        return [s for s in self.samples if s.reference_words]

    @property
    def non_speech(self) -> list[SampleScore]:
        """The samples whose reference has no words: any output for them is a hallucination."""
        return [s for s in self.samples if not s.reference_words]

    @property
    def reference_words(self) -> int:
        return sum(s.reference_words for s in self.samples)

    def _rate(self, count: int) -> float:
        if not self.reference_words:
            raise ValueError(f"no reference words to score in {len(self.samples)} samples; WER is undefined")
        return count / self.reference_words

    def _share(self, flags: list[bool], what: str) -> float:
        if not flags:
            raise ValueError(f"no {what} among {len(self.samples)} samples; the rate is undefined")
        return sum(flags) / len(flags)

    @property
    def wer(self) -> float:
        return self._rate(sum(s.errors for s in self.speech))

    @property
    def substitution_rate(self) -> float:
        return self._rate(sum(s.substitutions for s in self.speech))

    @property
    def insertion_rate(self) -> float:
        return self._rate(sum(s.insertions for s in self.speech))

    @property
    def deletion_rate(self) -> float:
        return self._rate(sum(s.deletions for s in self.speech))

    @property
    def empty_rate(self) -> float:
        return self._share([s.empty for s in self.speech], "samples with reference words")

    @property
    def looping_rate(self) -> float:
        return self._share([s.looping for s in self.speech], "samples with reference words")

    @property
    def hallucination_rate(self) -> float:
        """Share of the samples without reference words that got any output."""
        return self._share([not s.empty for s in self.non_speech], "samples without reference words")

    @property
    def hallucinated_words_per_clip(self) -> float:
        """Words output per sample without reference words (each one an insertion)."""
        clips = self.non_speech
        self._share([not s.empty for s in clips], "samples without reference words")  # raises when none
        return sum(s.insertions for s in clips) / len(clips)

    def wer_interval(self, confidence: float = 0.95, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
        """The WER's `confidence` interval by bootstrap over clips: clips drawn with replacement, WER of each draw.

        Errors come in clips, not in independent words (a misheard clip garbles several), so the
        clip is the unit resampled. Seeded: the same report always gives the same interval.
        """
        speech = self.speech
        if not speech:
            self._rate(0)  # raises: no reference words
        errors = np.array([s.errors for s in speech])
        words = np.array([s.reference_words for s in speech])
        draw = np.random.default_rng(seed).integers(len(speech), size=(draws, len(speech)))
        wers = errors[draw].sum(axis=1) / words[draw].sum(axis=1)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile(wers, [tail, 100 - tail])
        return float(low), float(high)

    def defined_metrics(self) -> tuple[str, ...]:
        """The rate names this report can give: speech ones, non-speech ones, or both."""
        return (SPEECH_METRICS if self.speech else ()) + (NON_SPEECH_METRICS if self.non_speech else ())

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        return {f"{prefix}{name}": getattr(self, name) for name in self.defined_metrics()}

    def summary(self) -> str:
        """One line, e.g. 'WER 23.4% (sub 10.0%, ins 3.0%, del 10.4%) | empty 0.0% | looping 1.0% | 100 samples'."""
        parts = []
        if self.speech:
            parts.append(
                f"WER {self.wer:.1%} (sub {self.substitution_rate:.1%}, ins {self.insertion_rate:.1%}, "
                f"del {self.deletion_rate:.1%}) | empty {self.empty_rate:.1%} | looping {self.looping_rate:.1%}"
            )
        if self.non_speech:
            parts.append(
                f"hallucinated on {self.hallucination_rate:.1%} of {len(self.non_speech)} non-speech samples "
                f"({self.hallucinated_words_per_clip:.1f} words each)"
            )
        return " | ".join([*parts, f"{len(self.samples)} samples, {self.reference_words} reference words"])


def score(
    references: Sequence[str], predictions: Sequence[str], normalizer: Callable[[str], str] = normalize
) -> WerReport:
    """Normalise each pair, align it with jiwer, and flag empty and looping predictions."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions; they must pair up")
    if not references:
        raise ValueError("no samples to score")
    pairs = zip(references, predictions, strict=True)
    return WerReport([score_sample(ref, pred, normalizer) for ref, pred in pairs])


def score_sample(reference: str, prediction: str, normalizer: Callable[[str], str] = normalize) -> SampleScore:
    ref_words, pred_words = normalizer(reference).split(), normalizer(prediction).split()
    if ref_words and pred_words:
        aligned = jiwer.process_words(" ".join(ref_words), " ".join(pred_words))
        counts = aligned.substitutions, aligned.insertions, aligned.deletions
    else:
        # Some jiwer versions refuse an empty side; with one, every word on the other is an error.
        counts = 0, len(pred_words), len(ref_words)
    return SampleScore(
        reference=reference,
        prediction=prediction,
        substitutions=counts[0],
        insertions=counts[1],
        deletions=counts[2],
        reference_words=len(ref_words),
        empty=not pred_words,
        looping=is_looping(pred_words, len(ref_words)),
    )


def is_looping(words: Sequence[str], reference_words: int) -> bool:
    """True when `words` repeat a run LOOP_REPEATS times in a row or outgrow the reference (see module doc)."""
    if len(words) > LOOP_LENGTH_RATIO * max(reference_words, 1):
        return True
    return longest_repeat(words) >= LOOP_REPEATS or repeats_characters("".join(words))


def repeats_characters(text: str, repeats: int = LOOP_REPEATS, min_chars: int = LOOP_MIN_CHARS) -> bool:
    """True when some run of characters holding a letter occurs `repeats` times back to back over `min_chars`.

    For each unit length n, a unit repeated k times is a stretch where text[i] == text[i + n] for
    (k - 1) * n positions in a row, so one vectorised comparison per n finds it.
    """
    text = text[:LOOP_MAX_CHARS]
    codes = np.array([ord(c) for c in text], dtype=np.int64)
    letters = np.array([c.isalpha() for c in text], dtype=bool)
    for n in range(1, codes.size // repeats + 1):
        needed = max((repeats - 1) * n, min_chars - n)  # the stretch plus one unit is the repeated span
        same = np.concatenate(([False], codes[:-n] == codes[n:], [False]))
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            # Digits repeat in real numbers ("1000000"): a loop's unit must hold a letter.
            if end - start >= needed and letters[start : start + n].any():
                return True
    return False


def longest_repeat(words: Sequence[str]) -> int:
    """The most times any run of words occurs back to back: 'a b a b a b c' -> 3, 'a b c' -> 1."""
    best = 1 if words else 0
    for size in range(1, len(words) // 2 + 1):
        for start in range(len(words) - 2 * size + 1):
            unit = words[start : start + size]
            repeats, next_start = 1, start + size
            while words[next_start : next_start + size] == unit:
                repeats, next_start = repeats + 1, next_start + size
            best = max(best, repeats)
    return best


def align(reference: str, prediction: str, normalizer: Callable[[str], str] = normalize) -> str:
    """jiwer's word alignment of the normalised pair: REF and HYP lines, then S/I/D marks under each error."""
    ref, pred = normalizer(reference), normalizer(prediction)
    if not ref or not pred:  # nothing to align (and jiwer may refuse): every word on the other side is an error
        words = (ref or pred).split()
        stars, mark = (
            " ".join("*" * len(w) for w in words),
            " ".join(("D" if ref else "I").ljust(len(w)) for w in words),
        )
        return "\n".join([f"REF: {ref or stars}", f"HYP: {pred or stars}", f"     {mark}".rstrip()]).rstrip()
    aligned = jiwer.process_words(ref, pred)
    lines = jiwer.visualize_alignment(aligned, show_measures=False, skip_correct=False).splitlines()
    # Drop jiwer's "=== SENTENCE 1 ===" header and blank lines: one pair needs neither.
    return "\n".join(line.rstrip() for line in lines if line.strip() and not line.startswith("==="))
