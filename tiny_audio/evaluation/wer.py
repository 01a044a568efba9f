"""Word error rate with its breakdown and the two usual speech-LLM failure modes: empty and looping output.

Rates are corpus-level: errors of each kind over all reference words, so long utterances weigh
more than short ones (as in every published WER). References and predictions are normalised with
`normalize` (Whisper's English normaliser) first; `score(..., normalizer=raw)` gives the
unnormalised WER instead.

A prediction is *empty* when nothing is left after normalisation. It is *looping* when the decoder
got stuck repeating itself: some run of words (one word or a phrase of any length) occurs at
least `LOOP_REPEATS` times in a row ("the the the the", "i see you i see you i see you i see you"),
or it has more than `LOOP_LENGTH_RATIO` times as many words as the reference (a loop cut off by
`max_new_tokens` before it repeated often enough to show).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jiwer

from tiny_audio.evaluation.normalize import normalize

LOOP_REPEATS = 4
LOOP_LENGTH_RATIO = 3.0


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


@dataclass(frozen=True)
class WerReport:
    samples: list[SampleScore]

    @property
    def reference_words(self) -> int:
        return sum(s.reference_words for s in self.samples)

    def _rate(self, count: int) -> float:
        if not self.reference_words:
            raise ValueError(f"no reference words to score in {len(self.samples)} samples; WER is undefined")
        return count / self.reference_words

    @property
    def wer(self) -> float:
        return self._rate(sum(s.errors for s in self.samples))

    @property
    def substitution_rate(self) -> float:
        return self._rate(sum(s.substitutions for s in self.samples))

    @property
    def insertion_rate(self) -> float:
        return self._rate(sum(s.insertions for s in self.samples))

    @property
    def deletion_rate(self) -> float:
        return self._rate(sum(s.deletions for s in self.samples))

    @property
    def empty_rate(self) -> float:
        return sum(s.empty for s in self.samples) / len(self.samples)

    @property
    def looping_rate(self) -> float:
        return sum(s.looping for s in self.samples) / len(self.samples)

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        names = ("wer", "substitution_rate", "insertion_rate", "deletion_rate", "empty_rate", "looping_rate")
        return {f"{prefix}{name}": getattr(self, name) for name in names}

    def summary(self) -> str:
        """One line, e.g. 'WER 23.4% (sub 10.0%, ins 3.0%, del 10.4%) | empty 0.0% | looping 1.0% | 100 samples'."""
        return (
            f"WER {self.wer:.1%} (sub {self.substitution_rate:.1%}, ins {self.insertion_rate:.1%}, "
            f"del {self.deletion_rate:.1%}) | empty {self.empty_rate:.1%} | looping {self.looping_rate:.1%} | "
            f"{len(self.samples)} samples, {self.reference_words} reference words"
        )


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
    aligned = jiwer.process_words(" ".join(ref_words), " ".join(pred_words))
    return SampleScore(
        reference=reference,
        prediction=prediction,
        substitutions=aligned.substitutions,
        insertions=aligned.insertions,
        deletions=aligned.deletions,
        reference_words=len(ref_words),
        empty=not pred_words,
        looping=is_looping(pred_words, len(ref_words)),
    )


def is_looping(words: Sequence[str], reference_words: int) -> bool:
    """True when `words` repeat a run LOOP_REPEATS times in a row or outgrow the reference (see module doc)."""
    if len(words) > LOOP_LENGTH_RATIO * max(reference_words, 1):
        return True
    return longest_repeat(words) >= LOOP_REPEATS


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
    aligned = jiwer.process_words(normalizer(reference) or "", normalizer(prediction) or "")
    lines = jiwer.visualize_alignment(aligned, show_measures=False, skip_correct=False).splitlines()
    # Drop jiwer's "=== SENTENCE 1 ===" header and blank lines: one pair needs neither.
    return "\n".join(line.rstrip() for line in lines if line.strip() and not line.startswith("==="))
