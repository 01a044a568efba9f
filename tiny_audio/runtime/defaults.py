"""Decoding defaults, here without imports so that `ta --help` reads them without loading torch."""

# About 90 words (30 s of fast speech) in Qwen3's tokenizer, with room for punctuation.
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_SIZE = 8
