"""Configuration of an exported tiny-audio speech recognizer (frozen encoder -> projector -> frozen LLM).

Written by `ta export`; loads with `AutoConfig.from_pretrained(DIR, trust_remote_code=True)`.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class TinyAudioConfig(PretrainedConfig):
    model_type = "tiny_audio"

    def __init__(
        self,
        audio_model: str | None = None,
        text_model: str | None = None,
        speech_llm: dict[str, Any] | None = None,
        lora: str | None = None,
        max_audio_seconds: float = 30.0,
        **kwargs: Any,
    ) -> None:
        # Hub id, local path, or a folder inside the exported directory (weights included).
        self.audio_model = audio_model
        self.text_model = text_model
        # tiny-audio's model settings (projector type and sizes, dtype, padding) as trained.
        self.speech_llm = dict(speech_llm or {})
        # Folder of the PEFT LoRA adapter inside the exported directory; None when there is none or it is merged.
        self.lora = lora
        # The encoders read at most 30 s at once; longer audio is refused or cut into pieces.
        self.max_audio_seconds = max_audio_seconds
        super().__init__(**kwargs)
