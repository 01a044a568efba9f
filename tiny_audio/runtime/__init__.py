"""The inference runtime: what a saved model needs to transcribe, and nothing from training.

Audio loading (audio.py), features and prompts (collator.py, prompts.py), the frozen encoder
(encoder.py), the projectors (projectors.py and their registry), the speech LLM (speech_llm.py),
its one assembly (assembly.py) and batched generation (transcribe.py).

The modules import nothing else from tiny_audio and one another only as `from .sibling import
name`: `ta export` copies them, as they are, beside an exported model, where transformers loads
them as flat siblings of its modelling code (tests/test_runtime.py holds both rules). This file
imports nothing, so config.py can read the projector registry without torch.
"""
