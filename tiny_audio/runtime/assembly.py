"""The one assembly of a SpeechLLM: training, `ta transcribe` and an exported model all build it here.

The frozen encoder and LLM come from ids or folders, the projector is fresh or carries trained
weights. What differs between callers is passed in: the tokenizer (training adds `<audio>` to the
LLM's; a saved model carries its own), the dtype, and what becomes of the LLM before it joins
(a fresh LoRA adapter in training, a saved one in an export).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from .encoder import load_audio_encoder
from .projectors import build_projector
from .settings import ModelSettings
from .speech_llm import SpeechLLM

# An export keeps the trained projector in one file, its keys under this prefix.
WEIGHTS_FILE = "model.safetensors"
PROJECTOR_PREFIX = "projector."
# Decoder settings that change logits after the LM head (Gemma 2/3 soft-capping, Cohere and Granite
# scaling). SpeechLLM applies the bare head at target positions only, so it would silently skip them.
LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def assemble_speech_llm(
    settings: ModelSettings,
    audio_model: str,
    text_model: str,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
    *,
    adapt_llm: Callable[[PreTrainedModel], PreTrainedModel | PeftModel] | None = None,
    projector_state: dict[str, Tensor] | None = None,
) -> SpeechLLM:
    """Encoder and LLM (frozen) from `audio_model` and `text_model`, and a projector between them.

    The projector is fresh and trainable, or frozen with `projector_state`'s weights. `adapt_llm`
    receives the frozen LLM after the projector is built (random draws keep that order) and returns
    the LLM the model runs.
    """
    encoder = load_audio_encoder(
        audio_model, dtype, settings.attn_implementation, per_clip=settings.encoder_padding == "longest"
    )
    llm = AutoModelForCausalLM.from_pretrained(
        text_model, dtype=dtype, attn_implementation=settings.attn_implementation
    )
    require_plain_lm_head(llm.config, text_model)
    # Qwen3-0.6B has 151,936 rows for 151,669 tokens: the new id usually fits, and resizing a
    # tied checkpoint would only add memory. The row's value never matters: audio replaces it.
    if len(tokenizer) > token_embeddings(llm).num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    llm.requires_grad_(False)
    embeddings = token_embeddings(llm)
    embedding_rms = 1.0  # trained weights replace the output norm's initial gain: nothing to measure for it
    if projector_state is None:
        embedding_rms = token_embedding_rms(embeddings, len(tokenizer) - 1)  # all but `<audio>`
    projector = build_projector(settings, encoder.hidden_size, embeddings.embedding_dim, embedding_rms)
    if projector_state is not None:
        projector.load_state_dict(projector_state)
        projector.requires_grad_(False)
    adapted = llm if adapt_llm is None else adapt_llm(llm)
    return SpeechLLM(encoder, projector, adapted, tokenizer, settings)


def require_plain_lm_head(config: PretrainedConfig, model_id: str) -> None:
    for name in LOGIT_POSTPROCESSING:
        value = getattr(config, name, None)
        if value is not None and value != 1.0:
            raise ValueError(
                f"model.text_model_id={model_id} post-processes its logits ({name}={value}), which the "
                "labels-only LM head would skip and so train against other logits than the model's; "
                "use a decoder without it (e.g. Qwen/Qwen3-0.6B)"
            )


def token_embeddings(llm: PreTrainedModel) -> nn.Embedding:
    """The decoder's token-embedding table (transformers types it as any module)."""
    return cast(nn.Embedding, llm.get_input_embeddings())


def token_embedding_rms(embeddings: nn.Embedding, n_tokens: int) -> float:
    """RMS over the rows of real tokens; spare rows past the tokenizer are never read."""
    return float(embeddings.weight.detach()[:n_tokens].float().pow(2).mean().sqrt())


def read_projector_state(directory: Path) -> dict[str, Tensor]:
    """The trained projector's weights in an export's WEIGHTS_FILE, prefix removed."""
    weights = load_file(str(directory / WEIGHTS_FILE))
    return {key[len(PROJECTOR_PREFIX) :]: value for key, value in weights.items() if key.startswith(PROJECTOR_PREFIX)}
