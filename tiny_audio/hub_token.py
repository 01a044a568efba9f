"""Keeping the Hugging Face token out of every message: errors from the Hub may echo it."""

from __future__ import annotations

import os
import re

from huggingface_hub import get_token

_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


def scrub_token(text: str) -> str:
    """`text` with any Hugging Face token replaced by ***."""
    for token in {get_token(), os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}:
        if token:
            text = text.replace(token, "***")
    return _TOKEN_PATTERN.sub("hf_***", text)
