"""Scoring transcriptions: normalisation, WER with its breakdown, batched transcription, the eval callback,
and `ta eval`'s named test sets, model comparison and reports.

Kept free of heavy imports so that `ta --help` stays fast; the modules import torch themselves.
"""

# About 90 words (30 s of fast speech) in Qwen3's tokenizer, with room for punctuation.
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_SIZE = 8
