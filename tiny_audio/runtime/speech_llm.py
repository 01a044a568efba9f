"""SpeechLLM: frozen encoder -> projector -> frozen (optionally LoRA-adapted) LLM.

The constructor takes built modules; assembly.py builds one from ids, and tiny_audio.model.build
saves and loads what training changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .encoder import AudioEncoder
from .projectors import Projector
from .prompts import PromptBuilder
from .settings import ModelSettings

IGNORE_INDEX = -100
# The batch keys SpeechLLM.forward takes; a collated batch carries more (texts, skips, audio seconds).
MODEL_INPUTS = (
    "input_features",
    "encoder_lengths",
    "mel_lengths",
    "encoder_cacheable",
    "input_ids",
    "attention_mask",
    "labels",
)


def count_targets(labels: Tensor) -> int:
    """Target tokens in a batch: positions predicted by the one before, i.e. labels[:, 1:]."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


@dataclass
class SpeechLLMOutput:
    loss: Tensor  # language-model loss (mean over target tokens) plus any projector auxiliary loss
    lm_loss: Tensor  # mean over this batch's target tokens
    lm_loss_sum: Tensor  # summed over target tokens: the trainer divides by a whole window's count
    aux_loss: Tensor | None
    num_target_tokens: int


class SpeechLLM(nn.Module):
    def __init__(
        self,
        encoder: AudioEncoder,
        projector: Projector,
        llm: PreTrainedModel | PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ModelSettings,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.config = config
        self.prompts = PromptBuilder(tokenizer)
        # Whether the LLM's own weights differ from `config.text_model_id`'s (trained whole, or
        # loaded from a checkpoint that trained them), so that a save must carry them.
        self.decoder_changed = False

    def train(self, mode: bool = True) -> SpeechLLM:
        # A module with nothing to train (the projector in stage 2, the LLM without LoRA) stays in
        # eval mode, as the encoder does: its dropout would only add noise to what the trainable
        # part learns from, and inference runs it without.
        super().train(mode)
        for module in (self.projector, self.llm):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    @property
    def causal_lm(self) -> PreTrainedModel:
        """The underlying causal LM; LoRA layers, if any, are injected into it in place."""
        return cast(PreTrainedModel, self.llm.get_base_model()) if isinstance(self.llm, PeftModel) else self.llm

    def audio_token_counts(self, encoder_lengths: Tensor) -> Tensor:
        return self.projector.output_lengths(encoder_lengths)

    def embed_inputs(
        self,
        input_features: Tensor,
        encoder_lengths: Tensor,
        input_ids: Tensor,
        mel_lengths: Tensor | None = None,
        encoder_cacheable: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Prompt embeddings with each sample's `<audio>` positions replaced by its projected audio."""
        hidden = self.encoder(input_features, encoder_lengths, mel_lengths, encoder_cacheable)  # B, T_enc, D_enc
        # Frames past the longest clip (30 s padding) feed only outputs nobody reads: cut them,
        # keeping whole projector groups so the outputs that are read do not change.
        unit = self.projector.frame_unit
        needed = -(-int(encoder_lengths.max()) // unit) * unit
        hidden = hidden[:, : max(needed, unit)]  # B, T_enc, D -> B, T_needed, D
        projected, aux_loss = self.projector(hidden.float(), encoder_lengths)  # B, T_out, H
        counts = self.audio_token_counts(encoder_lengths)
        audio_mask = input_ids == self.prompts.audio_token_id
        placeholders = audio_mask.sum(dim=1)
        if not torch.equal(placeholders.cpu(), counts.cpu()):
            bad = int((placeholders != counts).nonzero()[0, 0])
            raise ValueError(
                f"sample {bad} has {int(placeholders[bad])} <audio> tokens in its prompt but the projector "
                f"emits {int(counts[bad])} embeddings for it; build prompts with the collator's PromptBuilder"
            )
        valid = torch.arange(projected.shape[1], device=projected.device)[None, :] < counts[:, None].to(
            projected.device
        )
        embeds = self.causal_lm.get_input_embeddings()(input_ids)
        audio = projected[valid].to(embeds.dtype)  # N_audio, H in batch order, as masked_scatter fills
        if self.training and self.config.audio_token_dropout > 0:
            audio = drop_tokens(audio, self.config.audio_token_dropout)
        embeds = embeds.masked_scatter(audio_mask.unsqueeze(-1), audio)
        return embeds, aux_loss

    def forward(
        self,
        input_features: Tensor,
        encoder_lengths: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        mel_lengths: Tensor | None = None,
        encoder_cacheable: Tensor | None = None,
        **_: object,
    ) -> SpeechLLMOutput:
        embeds, aux_loss = self.embed_inputs(input_features, encoder_lengths, input_ids, mel_lengths, encoder_cacheable)
        lm = self.causal_lm
        decoder = getattr(lm, lm.base_model_prefix)
        # No KV cache: nothing is generated here, and a recomputed (checkpointed) layer would
        # otherwise append its keys and values a second time.
        hidden = decoder(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).last_hidden_state
        # Project to the vocabulary only where there is a target: audio and prompt positions
        # would otherwise cost B x T x 151,936 logits for nothing.
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        logits = lm.get_output_embeddings()(hidden[:, :-1][selected]).float()  # N_targets, V
        lm_loss_sum = F.cross_entropy(logits, targets[selected], reduction="sum")
        count = int(selected.sum())
        lm_loss = lm_loss_sum / max(count, 1)
        loss = lm_loss if aux_loss is None else lm_loss + aux_loss
        return SpeechLLMOutput(loss, lm_loss, lm_loss_sum, aux_loss, count)

    @torch.no_grad()
    def generate(
        self,
        input_features: Tensor,
        encoder_lengths: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        max_new_tokens: int = 128,
        mel_lengths: Tensor | None = None,
        **generate_kwargs: object,
    ) -> Tensor:
        """Greedy decoding from left-padded prompts; returns only the new token ids."""
        embeds, _ = self.embed_inputs(input_features, encoder_lengths, input_ids, mel_lengths)
        # transformers types PreTrainedModel without GenerationMixin, which every causal LM has.
        return self.llm.generate(  # type: ignore[operator]
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.prompts.end_of_turn_id,
            pad_token_id=self.tokenizer.pad_token_id,
            **generate_kwargs,
        )


def drop_tokens(tokens: Tensor, p: float) -> Tensor:
    """Zero whole token vectors (N, H) with probability p, scaling the kept ones by 1/(1-p)."""
    keep = torch.rand(tokens.shape[0], 1, device=tokens.device) >= p  # N, 1
    return tokens * keep.to(tokens.dtype) / (1 - p)
