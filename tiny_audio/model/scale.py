"""How loud projected audio is next to the LLM's own token embeddings.

A projector whose outputs are far quieter (or louder) than text embeddings feeds the LLM inputs
unlike anything it was trained on; the ratio at step 0 is printed at the start of every run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from tiny_audio.runtime.assembly import token_embedding_rms, token_embeddings
from tiny_audio.runtime.projectors import Projector
from tiny_audio.runtime.speech_llm import SpeechLLM


@torch.no_grad()
def projected_rms(projector: Projector, hidden: Tensor, lengths: Tensor) -> float:
    """RMS of a projector's outputs for encoder states `hidden`, over each clip's real positions only."""
    was_training = projector.training
    projector.eval()  # dropout would both distort the figure and consume random numbers
    try:
        projected, _ = projector(hidden.float(), lengths)  # B, T', H
    finally:
        projector.train(was_training)
    counts = projector.output_lengths(lengths)
    valid: Tensor = torch.arange(projected.shape[1], device=projected.device)[None, :] < counts[:, None]
    return float(projected[valid].pow(2).mean().sqrt())


def projector_scale_ratio(model: SpeechLLM, batch: dict[str, Any]) -> float:
    """Projected-audio RMS divided by token-embedding RMS (1.0: as loud as text)."""
    device = next(model.projector.parameters()).device
    lengths = batch["encoder_lengths"].to(device)
    hidden = model.encoder(batch["input_features"].to(device), lengths, batch["mel_lengths"].to(device))
    return projected_rms(model.projector, hidden, lengths) / _text_rms(model)


def _text_rms(model: SpeechLLM) -> float:
    return token_embedding_rms(token_embeddings(model.causal_lm), len(model.tokenizer) - 1)


class StepZeroScale:
    """Logs the ratio once, from the first batch the projector sees in a run (its weights at step 0).

    It reuses that batch's encoder states: a separate pass over 30 s windows would cost a CPU
    run tens of seconds before its first step.
    """

    def __init__(self, model: SpeechLLM, log: Callable[[str], None]) -> None:
        self.model = model
        self.log = log
        self.ratio: float | None = None
        self._handle = model.projector.register_forward_hook(self._measure)

    def _measure(self, _projector: nn.Module, args: tuple[Tensor, Tensor], _output: object) -> None:
        self._handle.remove()
        hidden, lengths = args
        self.ratio = projected_rms(self.model.projector, hidden.detach(), lengths) / _text_rms(self.model)
        self.log(
            f"Projector output RMS at step 0 is {self.ratio:.3g}x the LLM's token-embedding RMS "
            "(1 = as loud as text; model.projector_output_norm=true makes it 1)."
        )
