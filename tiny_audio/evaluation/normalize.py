"""Text normalisation for WER: Whisper's English normaliser, so our numbers compare with published ones.

The LLM decoder writes casing, punctuation and digits, while references are often lower-case and
spell numbers out. Both sides go through `normalize` before scoring. It is OpenAI Whisper's
`EnglishTextNormalizer` (as used by the Open ASR Leaderboard), shipped with its British->American
spelling map by the `whisper-normalizer` package: lower-casing; [bracketed] and (parenthesised)
annotations and the fillers hmm/mm/mhm/mmm/uh/um removed; contractions expanded ("won't" ->
"will not", "it's" -> "it is"); titles spelled out ("mr" -> "mister"); numbers written as digits
("twenty five" -> "25", "one thousand two hundred fifty" -> "1250", "ten dollars" -> "$10");
British spellings made American ("colour" -> "color"); other symbols and accents dropped.

`raw` is the other view: the text as written, whitespace collapsed, so a raw WER also counts
casing and punctuation (what a user of the transcripts sees).
"""

from __future__ import annotations

from functools import cache

from whisper_normalizer.english import EnglishTextNormalizer


@cache
def _whisper() -> EnglishTextNormalizer:
    # Loads the spelling map (a JSON file) once, on first use rather than at import.
    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """The words of `text` as Whisper's English normaliser writes them, single-spaced."""
    return " ".join(_whisper()(text).split())


def raw(text: str) -> str:
    """`text` unchanged except for whitespace, for the unnormalised WER."""
    return " ".join(text.split())
