"""The speech LLM's names where training/trainer.py and miniature/ import them; the model lives in
tiny_audio.runtime.speech_llm. This module goes once those importers name the runtime."""

from tiny_audio.runtime.speech_llm import IGNORE_INDEX, MODEL_INPUTS, SpeechLLM, count_targets

__all__ = ["IGNORE_INDEX", "MODEL_INPUTS", "SpeechLLM", "count_targets"]
