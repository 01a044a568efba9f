"""Transcript clean-up: undo web escaping and markup, keep the words, casing and punctuation."""

from __future__ import annotations

import html
import re

_TAG = re.compile(r"<[^<>]*>")
_SPACE = re.compile(r"\s+")


def normalize_text(text: str, *, lowercase: bool = False) -> str:
    """HTML entities decoded, markup tags removed, whitespace collapsed; optionally lower-cased.

    Casing and punctuation are kept by default because the LLM decoder writes them, and a model
    trained on stripped text would unlearn them.
    """
    # Scraped transcripts are sometimes escaped twice ("&amp;amp;"), so unescape until stable.
    previous = None
    while previous != text:
        previous, text = text, html.unescape(text)
    text = _TAG.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    return text.lower() if lowercase else text


def count_words(text: str) -> int:
    return len(text.split())


def find_junk_marker(text: str, markers: list[str]) -> str | None:
    """The first marker found in `text` (case-insensitive), or None."""
    lowered = text.lower()
    for marker in markers:
        if marker.lower() in lowered:
            return marker
    return None
