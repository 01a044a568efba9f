"""An exported tiny-audio speech recognizer as a transformers model (loaded with trust_remote_code).

The frozen encoder and LLM are loaded from the ids in config.json, or from folders inside this
directory when the export includes them; the trained projector (and LoRA adapter) come from here.
The other `*.py` files beside this one (all but the configuration and pipeline) are tiny-audio's inference
runtime, copied as they are by `ta export`, so this model is assembled and transcribes exactly as
`ta transcribe` does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from huggingface_hub import snapshot_download
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedModel, TextIteratorStreamer

from .assembly import assemble_speech_llm, read_projector_state
from .collator import collator_for
from .configuration_tiny_audio import TinyAudioConfig
from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS
from .speech_llm import SpeechLLM
from .transcribe import _EMPTY_THINK, GENERATION_INPUTS, decode, eval_mode, transcribe

_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download")


class TinyAudioModel(PreTrainedModel):
    config: TinyAudioConfig
    config_class = TinyAudioConfig
    base_model_prefix = "speech_llm"
    main_input_name = "input_features"

    def __init__(self, config: TinyAudioConfig, speech_llm: SpeechLLM | None = None) -> None:
        super().__init__(config)
        if speech_llm is None:
            raise ValueError("load a tiny-audio model with TinyAudioModel.from_pretrained(DIRECTORY_OR_REPO_ID)")
        # post_init initialises the weights of every child it finds; the children come loaded, so add them after.
        self.post_init()
        self.speech_llm = speech_llm

    @classmethod
    def from_pretrained(  # type: ignore[override]  # a path is required; transformers' options come as kwargs
        cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any
    ) -> TinyAudioModel:
        """Build the frozen parts from their ids (or included folders), then load the trained weights."""
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if kwargs.get(k) is not None}
        root = model_directory(pretrained_model_name_or_path, **hub_kwargs)
        config = kwargs.get("config")
        if not isinstance(config, TinyAudioConfig):
            config = TinyAudioConfig.from_pretrained(str(root))
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        speech_llm = build_speech_llm(config, root, dtype if isinstance(dtype, torch.dtype) else None)
        return cls(config, speech_llm).eval()

    def _init_weights(self, module: torch.nn.Module) -> None:
        pass  # every weight is loaded; nothing may be re-initialised

    @property
    def sampling_rate(self) -> int:
        return int(self.speech_llm.encoder.feature_extractor.sampling_rate)

    def forward(self, **inputs: Any) -> Any:
        """Training loss on collated batches (input_features, encoder_lengths, input_ids, attention_mask, labels)."""
        return self.speech_llm(**inputs)

    def transcribe(
        self,
        audios: Sequence[np.ndarray],
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    ) -> list[str]:
        """One transcript per clip (mono float32 at `sampling_rate`, at most 30 s), greedy, in input order."""
        return transcribe(self.speech_llm, audios, self.sampling_rate, batch_size, max_new_tokens)

    def stream(self, audio: np.ndarray, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> Iterator[str]:
        """The transcript of one clip as it grows, token by token; the last item is the final transcript."""
        speech_llm = self.speech_llm
        batch = collator_for(speech_llm, self.sampling_rate, with_targets=False)([{"audio": audio, "text": ""}])
        inputs = {key: batch[key].to(self.device) for key in GENERATION_INPUTS}
        streamer = TextIteratorStreamer(speech_llm.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def generate() -> None:
            try:
                result["ids"] = speech_llm.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer)
            except Exception as error:  # re-raised in the caller's thread below
                result["error"] = error
                streamer.end()

        with eval_mode(speech_llm):
            thread = threading.Thread(target=generate, daemon=True)
            thread.start()
            text = ""
            for piece in streamer:
                text += piece
                yield " ".join(_EMPTY_THINK.sub(" ", text).split())
            thread.join()
        if "error" in result:
            raise result["error"]
        yield decode(speech_llm.tokenizer, result["ids"])[0]

    def describe(self) -> dict[str, Any]:
        """What a person looking at a demo wants to know about the model."""
        settings = self.config.speech_llm
        trainable = sum(p.numel() for p in self.speech_llm.projector.parameters())
        return {
            "audio encoder": self.config.audio_model,
            "language model": self.config.text_model,
            "projector": f"{settings.get('projector_type')} ({trainable:,} parameters)",
            "LoRA": _lora_state(self.config),
            "max audio per clip": f"{self.config.max_audio_seconds:.0f} s",
            "device": str(self.device),
        }


def _lora_state(config: TinyAudioConfig) -> str:
    if config.lora:
        return "adapter"
    return "merged into the LLM" if config.speech_llm.get("lora", {}).get("enabled") else "none"


def model_directory(name_or_path: str | Path, **hub_kwargs: Any) -> Path:
    path = Path(name_or_path)
    return path if path.is_dir() else Path(snapshot_download(str(name_or_path), **hub_kwargs))


def resolve(reference: str, root: Path) -> str:
    """A folder inside the exported directory (weights included) wins over a hub id or path of that name."""
    inside = root / reference
    return str(inside) if not Path(reference).is_absolute() and inside.is_dir() else reference


def namespace(value: Any) -> Any:
    """tiny-audio's ModelConfig fields as attributes, the way its projectors and collator read them."""
    if isinstance(value, dict):
        return SimpleNamespace(**{key: namespace(item) for key, item in value.items()})
    return value


def build_speech_llm(config: TinyAudioConfig, root: Path, dtype: torch.dtype | None = None) -> SpeechLLM:
    """The runtime's assembly, as tiny_audio.model.build.build_model calls it, with trained weights from `root`."""
    if config.audio_model is None or config.text_model is None:
        raise ValueError(f"{root}/config.json names no audio_model or text_model: not a tiny-audio export")
    settings = namespace(config.speech_llm)
    # The exported tokenizer holds the added <audio> token. Its directory also holds this code, which is
    # running already: asking again whether to trust it would only prompt the user a second time.
    tokenizer = AutoTokenizer.from_pretrained(str(root), trust_remote_code=True)
    adapter = root / config.lora if config.lora else None
    return assemble_speech_llm(
        settings,
        resolve(config.audio_model, root),
        resolve(config.text_model, root),
        tokenizer,
        dtype or getattr(torch, settings.dtype),
        adapt_llm=None if adapter is None else (lambda llm: PeftModel.from_pretrained(llm, str(adapter))),
        projector_state=read_projector_state(root),
    )
