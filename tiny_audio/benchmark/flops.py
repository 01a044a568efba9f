"""FLOP accounting for one training step, written out from the model shapes.

Counts matrix-multiply FLOPs (2 per multiply-add); norms, activations and softmax are left out
(they are memory-bound and small next to the matmuls). Per step:

- encoder forward (frozen, no backward) on the mel frames it actually runs: conv1 (3-tap, n_mels -> D)
  on every mel frame, conv2 (3-tap, stride 2, D -> D) and the transformer on the T = ceil(mel/2) frames;
  the batch's padded width, or each clip's own frames when the encoder encodes per clip (`longest`);
- projector forward, and its backward when it trains (mlp: both weight gradients, but no input
  gradient: the encoder is frozen); a frozen projector (stage 2) runs its forward only;
- LLM forward + backward through its activations (frozen weights: input gradients only, so the
  backward of a linear costs one forward and the backward of attention two); under gradient
  checkpointing the backward first runs each decoder layer's forward again (up to the last tensor
  it needs: all but the MLP's down projection);
- LM head on the label positions only, forward + input gradient.

LoRA's low-rank products are left out (small next to the frozen matmuls). "as run" counts what the
step computes (padding and recomputation included); "useful" counts real audio frames and real
tokens, once. The benchmark's headline figures come from torch's own count of the step
(counted.py); these formulas cross-check it part by part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tiny_audio.runtime.speech_llm import IGNORE_INDEX


@dataclass(frozen=True)
class TransformerShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    gated: bool  # SwiGLU-style MLP: three matrices instead of two

    def linear_flops_per_token(self) -> int:
        d, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = 2 * d * q + 2 * 2 * d * kv + 2 * q * d  # q, k, v, o projections
        mlp = 2 * d * self.ffn * (3 if self.gated else 2)
        return self.layers * (attention + mlp)

    def attention_flops(self, seq_len: int) -> int:
        """Scores (Q K^T) and the weighted sum (A V) over the full square, as SDPA computes them."""
        return self.layers * 2 * 2 * seq_len * seq_len * self.heads * self.head_dim

    def forward_flops(self, seq_len: int) -> int:
        return seq_len * self.linear_flops_per_token() + self.attention_flops(seq_len)

    def recomputed_flops(self, seq_len: int) -> int:
        """A checkpointed layer's forward again, in the backward. torch's non-reentrant checkpoint stops
        at the last tensor the backward needs, so the MLP's down projection (whose output nothing
        saves) is not run again."""
        return self.forward_flops(seq_len) - seq_len * self.layers * 2 * self.ffn * self.hidden

    def frozen_backward_flops(self, seq_len: int) -> int:
        """Input gradients only: one forward's worth for linears, two for attention (dQ, dK and dV)."""
        return seq_len * self.linear_flops_per_token() + 2 * self.attention_flops(seq_len)


def encoder_shape(config: Any) -> tuple[TransformerShape, int]:
    """The encoder's transformer shape and its mel bins, from a GLM-ASR or Whisper encoder config."""
    if hasattr(config, "d_model"):  # Whisper
        heads = config.encoder_attention_heads
        shape = TransformerShape(
            config.encoder_layers, config.d_model, heads, heads, config.d_model // heads, config.encoder_ffn_dim, False
        )
        return shape, config.num_mel_bins
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    shape = TransformerShape(
        config.num_hidden_layers, config.hidden_size, heads, kv_heads, head_dim, config.intermediate_size, False
    )
    return shape, config.num_mel_bins


def llm_shape(config: Any) -> TransformerShape:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return TransformerShape(
        config.num_hidden_layers,
        config.hidden_size,
        heads,
        config.num_key_value_heads,
        head_dim,
        config.intermediate_size,
        True,
    )


def encoder_forward_flops(shape: TransformerShape, n_mels: int, mel_frames: int) -> int:
    frames = (mel_frames - 1) // 2 + 1
    conv1 = 2 * mel_frames * n_mels * 3 * shape.hidden
    conv2 = 2 * frames * 3 * shape.hidden * shape.hidden
    return conv1 + conv2 + shape.forward_flops(frames)


def mlp_projector_train_flops(tokens: int, in_dim: int, hidden: int, out_dim: int, trains: bool = True) -> int:
    """Forward (both linears) + backward (both weight gradients, the second layer's input gradient);
    the forward alone for a frozen projector."""
    first, second = 2 * tokens * in_dim * hidden, 2 * tokens * hidden * out_dim
    return (first + second) + ((first + 2 * second) if trains else 0)


def lm_head_train_flops(label_tokens: int, hidden: int, vocab: int) -> int:
    """Logits at label positions, then their input gradient (the tied embedding is frozen)."""
    return 2 * 2 * label_tokens * hidden * vocab


@dataclass(frozen=True)
class StepShapes:
    """What one batch makes each part run: lists have one entry per clip."""

    mel_frames_run: list[int]  # padded mel frames per clip (what the encoder runs)
    mel_frames_real: list[int]
    projector_tokens_run: list[int]  # projector outputs computed per clip
    projector_tokens_real: list[int]
    llm_tokens_run: list[int]  # LLM positions per row (padded width)
    llm_tokens_real: list[int]
    label_tokens: int


def batch_shapes(model: Any, batch: dict[str, Tensor], mel_real: list[int]) -> StepShapes:
    """Read a collated batch the way SpeechLLM.forward runs it (projector trimmed to the longest clip).

    `mel_real`: each clip's real mel frames (samples // hop), as the collator computes them. An
    encoder that encodes per clip (`longest`) runs each clip on its own mel frames, not the batch's
    padded width (every clip is new to the step it is measured in, so none is served from a cache).
    """
    encoder_lengths = batch["encoder_lengths"]
    width = batch["input_features"].shape[-1]
    per_clip = model.encoder.per_clip
    mel_run = [int(m) for m in batch["mel_lengths"].tolist()] if per_clip else [width] * len(mel_real)
    unit = model.projector.frame_unit
    trimmed = max(-(-int(encoder_lengths.max()) // unit) * unit, unit)
    per_clip_run = int(model.audio_token_counts(torch.tensor([trimmed]))[0])
    counts = [int(c) for c in model.audio_token_counts(encoder_lengths).tolist()]
    rows = [int(r) for r in batch["attention_mask"].sum(dim=1).tolist()]
    labels = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    n = len(counts)
    return StepShapes(
        mel_run, list(mel_real), [per_clip_run] * n, counts, [batch["input_ids"].shape[1]] * n, rows, labels
    )


def step_flops(model: Any, shapes: StepShapes, recompute: bool = False) -> dict[str, dict[str, int]]:
    """FLOPs per part, as run and useful, for one micro-batch (one forward + backward).

    `recompute`: decoder layers checkpointed (training.gradient_checkpointing), so "as run" counts
    their forward again in the backward; "useful" counts it once.
    """
    enc, n_mels = encoder_shape(model.encoder.module.config)
    llm_config = model.causal_lm.config
    llm = llm_shape(llm_config)
    vocab = model.causal_lm.get_output_embeddings().weight.shape[0]
    projector = _projector_dims(model)
    trains = any(p.requires_grad for p in model.projector.parameters())

    def parts(mel: list[int], proj: list[int], tokens: list[int], recomputed: bool) -> dict[str, int]:
        result = {
            "encoder_forward": sum(encoder_forward_flops(enc, n_mels, m) for m in mel),
            "projector": sum(mlp_projector_train_flops(t, *projector, trains) for t in proj) if projector else 0,
            "llm": sum(
                llm.forward_flops(s) + llm.frozen_backward_flops(s) + (llm.recomputed_flops(s) if recomputed else 0)
                for s in tokens
            ),
            "lm_head": lm_head_train_flops(shapes.label_tokens, llm.hidden, vocab),
        }
        result["total"] = sum(result.values())
        return result

    return {
        "as_run": parts(shapes.mel_frames_run, shapes.projector_tokens_run, shapes.llm_tokens_run, recompute),
        "useful": parts(shapes.mel_frames_real, shapes.projector_tokens_real, shapes.llm_tokens_real, False),
    }


def _projector_dims(model: Any) -> tuple[int, int, int] | None:
    """(in, hidden, out) of an mlp projector; other projectors are counted as 0 (not written out)."""
    projector = getattr(model.projector, "projector", model.projector)  # under an output norm
    net = getattr(projector, "net", None)
    if model.config.projector_type != "mlp" or net is None:
        return None
    return net[0].in_features, net[0].out_features, net[2].out_features
