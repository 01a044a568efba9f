"""The frozen audio encoder: GLM-ASR's audio tower or a Whisper encoder, loaded without the rest.

Only the encoder's tensors are read from the checkpoint, shard by shard, so a 1.5B GLM-ASR
checkpoint costs the memory of its 0.6B encoder and never builds its language model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from accelerate import init_empty_weights
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import safe_open
from torch import Tensor, nn
from transformers import AutoConfig, AutoFeatureExtractor, PretrainedConfig, PreTrainedModel
from transformers.models.glmasr.modeling_glmasr import GlmAsrEncoder
from transformers.models.whisper.modeling_whisper import WhisperEncoder

WHISPER_FRAMES = 3000  # learned positions cover exactly 30 s of mel frames


@dataclass(frozen=True)
class EncoderLayout:
    """Where an encoder lives inside a checkpoint and how to build it."""

    module_class: type[PreTrainedModel]
    prefixes: tuple[str, ...]  # checkpoint key prefixes, legacy names first
    fixed_frames: int | None  # mel frames every input must be padded to, if any


def encoder_layout(config: PretrainedConfig) -> tuple[EncoderLayout, PretrainedConfig]:
    if config.model_type == "glmasr":
        return EncoderLayout(GlmAsrEncoder, ("audio_tower.", "model.audio_tower."), None), config.audio_config
    if config.model_type == "glmasr_encoder":
        return EncoderLayout(GlmAsrEncoder, ("",), None), config
    if config.model_type == "whisper":
        return EncoderLayout(WhisperEncoder, ("model.encoder.", "encoder."), WHISPER_FRAMES), config
    raise ValueError(
        f"audio model type '{config.model_type}' is not supported; use a GLM-ASR (glmasr) or Whisper checkpoint"
    )


ClipEncoder = Callable[[Tensor, Tensor, Tensor, list[int]], dict[int, Tensor]]
"""(features, lengths, mel_lengths, rows) -> row -> that clip's encoder frames (T_i, D): AudioEncoder.encode_clips."""


class FrameCache(Protocol):
    """Encoder outputs kept across passes (training's tiny_audio.model.encoder_cache.EncoderCache)."""

    def encode(
        self,
        encode_clips: ClipEncoder,
        features: Tensor,
        lengths: Tensor,
        mel_lengths: Tensor,
        cacheable: Tensor | None = None,
    ) -> Tensor: ...


class AudioEncoder(nn.Module):
    """A frozen encoder from mel features (B, n_mels, frames) to hidden states (B, T, D)."""

    def __init__(
        self, module: PreTrainedModel, feature_extractor, fixed_frames: int | None, per_clip: bool = False
    ) -> None:
        super().__init__()
        self.module = module
        self.feature_extractor = feature_extractor
        self.fixed_frames = fixed_frames
        # `longest` padding: the encoder takes no attention mask, so padding a clip to its batch's
        # longest changes every frame it encodes. Each clip is encoded on its own frames instead,
        # in training and inference alike, so a transcript never depends on the batch. Not for
        # an encoder of fixed frames (Whisper: 3000), whose padding is the same for every clip.
        self.per_clip = per_clip and fixed_frames is None
        self.hidden_size: int = (
            module.config.d_model if hasattr(module.config, "d_model") else module.config.hidden_size
        )
        self.module.requires_grad_(False)
        self.module.eval()
        # Clips per encoder call; larger batches are encoded in chunks. Set to the train batch size,
        # evaluation (8 clips x 30 s) then peaks no higher than a training step does.
        self.max_batch: int | None = None
        self.cache: FrameCache | None = None  # training's EncoderCache, when model.encoder_cache_gib > 0

    def train(self, mode: bool = True) -> AudioEncoder:
        # Frozen: stays in eval mode whatever the parent module asks.
        return super().train(False)

    @staticmethod
    def output_lengths(mel_lengths: Tensor) -> Tensor:
        # conv1 (k3, s1, p1) keeps the length; conv2 (k3, s2, p1) halves it, rounding up.
        return (mel_lengths - 1) // 2 + 1

    def forward(
        self,
        input_features: Tensor,
        lengths: Tensor | None = None,
        mel_lengths: Tensor | None = None,
        cacheable: Tensor | None = None,
    ) -> Tensor:
        """Hidden states (B, T, D). Given each clip's encoder `lengths` and `mel_lengths` (the
        collator's), with `per_clip` or a cache, frames past a clip's length are zeros (every
        projector ignores them); with a cache, clips seen before are not re-encoded, and a clip
        whose `cacheable` (B, bool; all when absent) is False is encoded every time, never stored."""
        if lengths is None or mel_lengths is None:
            return self.encode(input_features).clone()
        if self.cache is not None:
            return self.cache.encode(self.encode_clips, input_features, lengths, mel_lengths, cacheable)
        if not self.per_clip:
            return self.encode(input_features).clone()
        clips = self.encode_clips(input_features, lengths, mel_lengths, list(range(input_features.shape[0])))
        return stack_clips([clips[i] for i in sorted(clips)], int(lengths.max()))

    def encode_clips(
        self, features: Tensor, lengths: Tensor, mel_lengths: Tensor, rows: list[int]
    ) -> dict[int, Tensor]:
        """Row -> the clip's own encoder frames (T_i, D), for the given rows of a batch.

        With `per_clip` each clip is encoded on its own mel frames (clips of one length share a
        call); otherwise the rows are encoded together at the batch's width.
        """
        groups: dict[int | None, list[int]] = {}
        if self.per_clip:
            mels = mel_lengths.tolist()
            for i in rows:
                groups.setdefault(mels[i], []).append(i)
        elif rows:
            groups[None] = rows
        encoded: dict[int, Tensor] = {}
        for frames_kept, indices in groups.items():
            hidden = self.encode(features[indices][..., :frames_kept])
            for row, i in enumerate(indices):
                encoded[i] = hidden[row, : int(lengths[i])].clone()
        return encoded

    def encode(self, input_features: Tensor) -> Tensor:
        """The frozen forward, in chunks of `max_batch` clips; returns an inference tensor."""
        dtype = next(self.module.parameters()).dtype
        step = self.max_batch or input_features.shape[0]
        # Inference mode: frozen, so no autograd bookkeeping at all (not even version counters).
        # An inference tensor cannot be saved for the projector's backward: callers copy it.
        with torch.inference_mode():
            chunks = [
                self.module(input_features[i : i + step].to(dtype)).last_hidden_state
                for i in range(0, input_features.shape[0], step)
            ]
            return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def stack_clips(clips: list[Tensor], width: int) -> Tensor:
    """Clips' encoder frames (T_i, D) as one batch (B, width, D), zeros past each clip's frames."""
    hidden = clips[0].new_zeros(len(clips), width, clips[0].shape[-1])
    for i, clip in enumerate(clips):
        hidden[i, : clip.shape[0]] = clip
    return hidden


def load_audio_encoder(
    model_id: str, dtype: torch.dtype, attn_implementation: str = "sdpa", per_clip: bool = False
) -> AudioEncoder:
    """Load only the encoder of a GLM-ASR or Whisper checkpoint (hub id or local directory).

    `per_clip` (the `longest` padding) encodes each clip of a batch on its own frames.
    """
    config = AutoConfig.from_pretrained(model_id)
    layout, encoder_config = encoder_layout(config)
    encoder_config._attn_implementation = attn_implementation
    with init_empty_weights():
        module = layout.module_class(encoder_config)
    state = read_prefixed_tensors(model_id, layout.prefixes)
    module.load_state_dict(state, strict=True, assign=True)
    module.to(dtype)  # type: ignore[arg-type]  # transformers' @wraps(nn.Module.to) hides self
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_id)
    return AudioEncoder(module, feature_extractor, layout.fixed_frames, per_clip)


def read_prefixed_tensors(model_id: str, prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """Tensors whose key starts with the first prefix found, prefix removed; other shards untouched."""
    index_file = _resolve(model_id, "model.safetensors.index.json")
    if index_file is not None:
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        prefix = _first_used_prefix(prefixes, weight_map)
        shards = sorted({shard for key, shard in weight_map.items() if key.startswith(prefix)})
        files = [_resolve(model_id, shard, required=True) for shard in shards]
    else:
        files = [_resolve(model_id, "model.safetensors", required=True)]
    tensors: dict[str, Tensor] = {}
    for file in files:
        assert file is not None
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
            prefix = _first_used_prefix(prefixes, keys)
            for key in keys:
                if key.startswith(prefix):
                    tensors[key[len(prefix) :]] = handle.get_tensor(key)
    return tensors


def _first_used_prefix(prefixes: tuple[str, ...], keys) -> str:
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in keys):
            return prefix
    raise ValueError(f"no encoder weights found: no checkpoint key starts with any of {', '.join(prefixes)}")


def _resolve(model_id: str, filename: str, required: bool = False) -> Path | None:
    local = Path(model_id)
    if local.is_dir():
        path = local / filename
        if path.exists():
            return path
        if required:
            raise FileNotFoundError(f"{path} is missing from the local checkpoint {model_id}")
        return None
    try:
        return Path(hf_hub_download(model_id, filename))
    except EntryNotFoundError:
        if required:
            raise
        return None
