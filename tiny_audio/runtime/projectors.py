"""Projectors: map frozen-encoder frames (B, T, D) to LLM input embeddings (B, T', H).

Every projector reports `output_lengths(encoder_lengths)` so the prompt can hold exactly one
`<audio>` token per projected frame, and returns `(embeddings, aux_loss)`; only the MoE has
an auxiliary loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from .projector_registry import projector_spec
from .settings import ModelSettings


def stack_frames(x: Tensor, stride: int) -> Tensor:
    """Concatenate `stride` adjacent frames; a trailing partial group is dropped."""
    b, t, d = x.shape
    if t < stride:
        x = F.pad(x, (0, 0, 0, stride - t))
        t = stride
    t = t // stride * stride
    return x[:, :t].reshape(b, t // stride, d * stride)  # B, T, D -> B, T/k, D*k


class Projector(nn.Module, ABC):
    """What the model asks of every projector besides `forward(x, lengths) -> (embeddings, aux_loss)`."""

    @property
    @abstractmethod
    def frame_unit(self) -> int:
        """Frames each output depends on as a group: outputs for a frame prefix that is a whole number
        of units do not depend on frames past it."""

    @abstractmethod
    def output_lengths(self, encoder_lengths: Tensor) -> Tensor:
        """Embeddings emitted per clip: one `<audio>` token each in the prompt."""


class FrameStackingProjector(Projector):
    """Base for projectors that stack `stride` frames before mixing them."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    @property
    def frame_unit(self) -> int:
        return self.stride

    def output_lengths(self, encoder_lengths: Tensor) -> Tensor:
        return (encoder_lengths - self.stride) // self.stride + 1


class MLPProjector(FrameStackingProjector):
    """Stack k frames, then Linear -> GELU -> Linear to the LLM width."""

    def __init__(self, encoder_dim: int, llm_dim: int, cfg: ModelSettings) -> None:
        super().__init__(cfg.projector_pool_stride)
        self.net = nn.Sequential(
            nn.Linear(encoder_dim * self.stride, cfg.projector_hidden_dim),
            nn.GELU(),
            nn.Linear(cfg.projector_hidden_dim, llm_dim),
        )

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, None]:
        return self.net(stack_frames(x, self.stride)), None


class MOSAProjector(FrameStackingProjector):
    """Dense mixture of simple adapters (MOSA, arXiv:2508.18998).

    Every adapter sees every frame; a small softmax router weights their outputs, so all
    experts train on all data (no load balancing needed), at the cost of running them all.
    """

    def __init__(self, encoder_dim: int, llm_dim: int, cfg: ModelSettings) -> None:
        super().__init__(cfg.projector_pool_stride)
        in_dim, hidden, experts = encoder_dim * self.stride, cfg.projector_hidden_dim, cfg.mosa.num_experts
        self.router = nn.Sequential(
            nn.Linear(in_dim, cfg.mosa.router_hidden_dim), nn.GELU(), nn.Linear(cfg.mosa.router_hidden_dim, experts)
        )
        self.w_in = nn.Parameter(torch.empty(experts, in_dim, hidden))
        self.b_in = nn.Parameter(torch.zeros(experts, hidden))
        self.w_out = nn.Parameter(torch.empty(experts, hidden, llm_dim))
        self.b_out = nn.Parameter(torch.zeros(experts, llm_dim))
        for weight in (self.w_in, self.w_out):
            nn.init.normal_(weight, std=weight.shape[1] ** -0.5)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, None]:
        x = stack_frames(x, self.stride)  # B, T', D*k
        weights = self.router(x).softmax(dim=-1)  # B, T', E
        h = F.gelu(torch.einsum("btd,edh->bteh", x, self.w_in) + self.b_in)  # B, T', E, Hid
        y = torch.einsum("bteh,eho->bteo", h, self.w_out) + self.b_out  # B, T', E, H
        return (weights.unsqueeze(-1) * y).sum(dim=2), None


class MoEProjector(FrameStackingProjector):
    """A shared expert plus sparse top-k routed experts with sigmoid routing (DeepSeek-V3 style).

    Routed experts are half as wide as the shared one so top-2 routing costs about one extra
    shared expert. The auxiliary loss is the Switch load-balancing loss plus the router z-loss.
    """

    def __init__(self, encoder_dim: int, llm_dim: int, cfg: ModelSettings) -> None:
        super().__init__(cfg.projector_pool_stride)
        in_dim, hidden = encoder_dim * self.stride, cfg.projector_hidden_dim
        self.top_k = cfg.moe.num_experts_per_tok
        self.aux_coef = cfg.moe.router_aux_loss_coef
        self.z_coef = cfg.moe.router_z_loss_coef
        self.shared = _mlp(in_dim, hidden, llm_dim)
        self.experts = nn.ModuleList(_mlp(in_dim, max(hidden // 2, 1), llm_dim) for _ in range(cfg.moe.num_experts))
        self.router = nn.Linear(in_dim, cfg.moe.num_experts, bias=False)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = stack_frames(x, self.stride)
        b, t, _ = x.shape
        # Only a clip's own frames are routed: with 30 s padding most frames of a short clip are
        # padding, which would otherwise dominate the load and z-loss statistics and the compute.
        # Padded positions come out as zeros; SpeechLLM never reads them.
        real = torch.arange(t, device=x.device)[None, :] < self.output_lengths(lengths).to(x.device)[:, None]
        flat = x[real]  # N_real, D*k
        logits = self.router(flat).float()  # N_real, E
        scores = logits.sigmoid()
        top_scores, top_idx = scores.topk(self.top_k, dim=-1)  # N_real, k
        gates = top_scores / top_scores.sum(dim=-1, keepdim=True)
        out = self.shared(flat)
        routed = torch.zeros_like(out)
        for expert_id, expert in enumerate(self.experts):
            token_idx, slot = (top_idx == expert_id).nonzero(as_tuple=True)
            if token_idx.numel() == 0:
                continue
            contribution = expert(flat[token_idx]) * gates[token_idx, slot].unsqueeze(-1).to(out.dtype)
            routed.index_add_(0, token_idx, contribution)
        full = out.new_zeros(b, t, out.shape[-1])
        full[real] = out + routed  # N_real, H -> B, T', H
        return full, self._aux_loss(logits, scores, top_idx)

    def _aux_loss(self, logits: Tensor, scores: Tensor, top_idx: Tensor) -> Tensor:
        num_experts = logits.shape[-1]
        if logits.shape[0] == 0:
            return logits.sum()  # no real frame: nothing to balance, and a graph-connected zero
        # Share of routing slots each expert received vs. the mean normalised score it was given.
        load = F.one_hot(top_idx, num_experts).float().sum(dim=(0, 1)) / top_idx.numel()
        importance = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=0)
        balance = num_experts * (load * importance).sum()
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return self.aux_coef * balance + self.z_coef * z_loss


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class QFormerProjector(Projector):
    """Learnable queries cross-attend over fixed windows of encoder frames (Blip-2 Q-Former).

    Each window of `window_size` frames yields `num_queries` tokens, so the token rate is fixed
    whatever the content; frames past a clip's end are masked out of its last window.
    """

    def __init__(self, encoder_dim: int, llm_dim: int, cfg: ModelSettings) -> None:
        super().__init__()
        q = cfg.qformer
        self.window, self.num_queries = q.window_size, q.num_queries
        config = Blip2QFormerConfig(
            hidden_size=q.hidden_size,
            num_hidden_layers=q.num_layers,
            num_attention_heads=q.num_heads,
            intermediate_size=q.hidden_size * 4,
            encoder_hidden_size=encoder_dim,
            cross_attention_frequency=1,
        )
        self.qformer = Blip2QFormerModel(config)
        self.queries = nn.Parameter(torch.randn(1, q.num_queries, q.hidden_size) * 0.02)
        self.out = nn.Linear(q.hidden_size, llm_dim)

    @property
    def frame_unit(self) -> int:
        return self.window

    def output_lengths(self, encoder_lengths: Tensor) -> Tensor:
        return (encoder_lengths + self.window - 1) // self.window * self.num_queries

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, None]:
        b, t, d = x.shape
        windows = -(-t // self.window)
        x = F.pad(x, (0, 0, 0, windows * self.window - t))
        frames = x.reshape(b * windows, self.window, d)  # B, T, D -> B*W, w, D
        position = torch.arange(windows * self.window, device=x.device)
        mask = (position[None, :] < lengths[:, None]).reshape(b * windows, self.window)
        # A window wholly past the clip's end would attend to nothing; its output is discarded
        # by output_lengths, so give it one frame to keep the softmax finite.
        mask[:, 0] = True
        queries = self.queries.expand(b * windows, -1, -1)
        hidden = self.qformer(
            query_embeds=queries, encoder_hidden_states=frames, encoder_attention_mask=mask.long()
        ).last_hidden_state
        hidden = hidden.reshape(b, windows * self.num_queries, -1)  # B*W, q, Hq -> B, W*q, Hq
        return self.out(hidden), None


class OutputNormProjector(Projector):
    """A projector followed by an RMSNorm whose gain starts at the LLM's token-embedding RMS."""

    def __init__(self, projector: Projector, llm_dim: int, embedding_rms: float) -> None:
        super().__init__()
        self.projector = projector
        self.norm = nn.RMSNorm(llm_dim, eps=1e-6)
        nn.init.constant_(self.norm.weight, embedding_rms)

    @property
    def frame_unit(self) -> int:
        return self.projector.frame_unit

    def output_lengths(self, encoder_lengths: Tensor) -> Tensor:
        return self.projector.output_lengths(encoder_lengths)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        projected, aux_loss = self.projector(x, lengths)
        return self.norm(projected), aux_loss


def build_projector(cfg: ModelSettings, encoder_dim: int, llm_dim: int, embedding_rms: float = 1.0) -> Projector:
    """The configured projector; with `cfg.projector_output_norm`, its output normalised to `embedding_rms`."""
    projector_class: type[Projector] = globals()[projector_spec(cfg.projector_type).builder]
    projector = projector_class(encoder_dim, llm_dim, cfg)
    return OutputNormProjector(projector, llm_dim, embedding_rms) if cfg.projector_output_norm else projector
