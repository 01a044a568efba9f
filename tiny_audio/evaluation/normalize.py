"""English text normalisation for WER, in the spirit of Whisper's: score words, not formatting.

The LLM decoder writes casing, punctuation and digits, while references are often lower-case and
spell numbers out. Both sides go through `normalize` before scoring, so "Mr. Smith's 2 cats!" and
"mister smiths two cats" count as the same words. The steps, in order:

1. Unicode compatibility form, accents dropped ("café" -> "cafe"), lower-cased.
2. Annotations removed: anything in [brackets], (parentheses) or <angle brackets>, e.g. "[noise]".
3. Contractions with one reading expanded ("won't" -> "will not", "we're" -> "we are"); "'s" and
   "'d" are ambiguous (is/has, would/had) and are only joined ("it's" -> "its").
4. Numbers spelled out: "1,250" -> "one thousand two hundred fifty", "3.5" -> "three point five",
   "2nd" -> "second", "50%" -> "fifty percent". Four-digit numbers from 1100 to 2099 outside
   2000-2009 are read as years ("1984" -> "nineteen eighty four"), as they are usually spoken.
5. Symbols and punctuation become spaces (hyphens too: "twenty-five" -> "twenty five").
6. Filler words (uh, um, hmm, mhm) dropped; a few titles standardised ("dr" -> "doctor").
7. Whitespace collapsed.

Not handled: British/American spellings, spoken forms of currency amounts, number words back to
digits. Both sides get the same treatment, so these cost WER only when reference and prediction
choose different forms.
"""

from __future__ import annotations

import re
import unicodedata

_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")
# Typographic apostrophes normalise to ASCII first so the contraction rules see one form.
_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'"})
_CONTRACTIONS = (
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bcan't\b"), "can not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"\bain't\b"), "is not"),
    (re.compile(r"\b(\w+)n't\b"), r"\1 not"),
    (re.compile(r"\b(\w+)'re\b"), r"\1 are"),
    (re.compile(r"\b(\w+)'ll\b"), r"\1 will"),
    (re.compile(r"\b(\w+)'ve\b"), r"\1 have"),
    (re.compile(r"\bi'm\b"), "i am"),
)
_APOSTROPHE_IN_WORD = re.compile(r"(?<=\w)'(?=\w)")
_PERCENT = re.compile(r"(\d)\s*%")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_GROUPED = r"\d{1,3}(?:,\d{3})+"  # 1,250,000
_DECIMAL = re.compile(rf"\b({_GROUPED}|\d+)\.(\d+)\b")
_INTEGER = re.compile(rf"\b(?:{_GROUPED}|\d+)\b")
_NON_WORD = re.compile(r"[^\w\s]|_")
_SPACE = re.compile(r"\s+")

FILLERS = frozenset({"uh", "um", "umm", "uhm", "er", "erm", "hmm", "mm", "mmm", "mhm"})
STANDARD_SPELLINGS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "okay": "ok"}

# fmt: off
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
# fmt: on
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")  # by tens digit
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def normalize(text: str) -> str:
    """The words of `text` in the normalised form described in the module docstring."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(char for char in text if not unicodedata.combining(char)).lower()
    text = _ANNOTATION.sub(" ", text).translate(_APOSTROPHES)
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = _APOSTROPHE_IN_WORD.sub("", text)
    text = text.replace("&", " and ")
    text = _spell_numbers(text)
    text = _NON_WORD.sub(" ", text)
    words = [STANDARD_SPELLINGS.get(word, word) for word in text.split() if word not in FILLERS]
    return _SPACE.sub(" ", " ".join(words)).strip()


def number_to_words(number: int) -> str:
    """Cardinal English words without "and": 1250 -> "one thousand two hundred fifty"."""
    if number < 0:
        return "minus " + number_to_words(-number)
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if number < 1000:
        hundreds, rest = divmod(number, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if number >= scale:
            high, rest = divmod(number, scale)
            return f"{number_to_words(high)} {name}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable: every number >= 1000 has a scale")


def year_to_words(year: int) -> str:
    """How a year is spoken: 1984 -> "nineteen eighty four", 1900 -> "nineteen hundred", 1905 -> "nineteen oh five"."""
    century, rest = divmod(year, 100)
    if rest == 0:
        return f"{number_to_words(century)} hundred"
    tail = number_to_words(rest) if rest >= 10 else f"oh {_ONES[rest]}"
    return f"{number_to_words(century)} {tail}"


def ordinal_to_words(number: int) -> str:
    """2 -> "second", 21 -> "twenty first", 40 -> "fortieth"."""
    words = number_to_words(number).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _spell_numbers(text: str) -> str:
    text = _PERCENT.sub(r"\1 percent", text)
    text = _ORDINAL.sub(lambda m: f" {ordinal_to_words(int(m.group(1)))} ", text)
    text = _DECIMAL.sub(lambda m: f" {_cardinal(m.group(1))} point {_digit_words(m.group(2))} ", text)
    return _INTEGER.sub(lambda m: f" {_integer_words(m.group(0))} ", text)


def _digit_words(digits: str) -> str:
    return " ".join(_ONES[int(digit)] for digit in digits)


def _cardinal(digits: str) -> str:
    return number_to_words(int(digits.replace(",", "")))


def _integer_words(digits: str) -> str:
    """A year for four plain digits in the usual range, else the cardinal ("1,984" is never a year)."""
    if len(digits) == 4 and 1100 <= int(digits) <= 2099 and not 2000 <= int(digits) <= 2009:
        return year_to_words(int(digits))
    return _cardinal(digits)
