"""The prompt's names where miniature/llm.py imports them; the prompt builder lives in
tiny_audio.runtime.prompts. This module goes once that importer names the runtime."""

from tiny_audio.runtime.prompts import AUDIO_TOKEN, PromptBuilder

__all__ = ["AUDIO_TOKEN", "PromptBuilder"]
