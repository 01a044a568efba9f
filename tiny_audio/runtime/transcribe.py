"""Greedy batched transcription with the training collator's prompts, so inference sees what training saw."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import nn
from transformers import PreTrainedTokenizerBase

from .collator import collator_for
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS
from .speech_llm import SpeechLLM

GENERATION_INPUTS = ("input_features", "encoder_lengths", "mel_lengths", "input_ids", "attention_mask")
# skip_special_tokens keeps Qwen3's think tags (they are ordinary added tokens), so an empty
# think block the model writes itself would otherwise be scored as words.
_EMPTY_THINK = re.compile(r"<think>\s*</think>")


def transcribe(
    model: SpeechLLM,
    audios: Sequence[np.ndarray],
    sample_rate: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """One transcript per clip (mono float32 at `sample_rate`), in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    collator = collator_for(model, sample_rate, with_targets=False)
    device = next(model.parameters()).device
    # Batched by length: less prompt padding, and for a 30 s window encoder nothing changes. (With
    # `longest` padding the encoder encodes each clip on its own frames: see AudioEncoder.per_clip.)
    order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
    texts: dict[int, str] = {}
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = collator([{"audio": audios[i], "text": ""} for i in indices])
            inputs = send_to_device({k: batch[k] for k in GENERATION_INPUTS}, device)
            new_ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
            texts.update(zip(indices, decode(model.tokenizer, new_ids), strict=True))
    return [texts[i] for i in range(len(audios))]


def decode(tokenizer: PreTrainedTokenizerBase, token_ids: torch.Tensor) -> list[str]:
    """Generated ids to one line of text each: special tokens, padding and empty think blocks removed."""
    texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True)
    return [" ".join(_EMPTY_THINK.sub(" ", text).split()) for text in texts]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout off while decoding, then back to whatever mode the caller (e.g. the trainer) had."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
