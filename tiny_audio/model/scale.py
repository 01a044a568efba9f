"""How loud projected audio is next to the LLM's own token embeddings.

A projector whose outputs are far quieter (or louder) than text embeddings feeds the LLM inputs
unlike anything it was trained on; the ratio at step 0 is printed at the start of every run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from tiny_audio.model.speech_llm import SpeechLLM


def token_embedding_rms(embeddings: nn.Embedding, n_tokens: int) -> float:
    """RMS over the rows of real tokens; spare rows past the tokenizer are never read."""
    return float(embeddings.weight.detach()[:n_tokens].float().pow(2).mean().sqrt())


@torch.no_grad()
def projector_output_rms(model: SpeechLLM, batch: dict[str, Any]) -> float:
    """RMS of the projected audio embeddings of `batch`, over each clip's real positions only."""
    device = next(model.projector.parameters()).device
    features, lengths = batch["input_features"].to(device), batch["encoder_lengths"].to(device)
    was_training = model.projector.training
    model.projector.eval()  # dropout would both distort the figure and consume random numbers
    try:
        projected, _ = model.projector(model.encoder(features).float(), lengths)  # B, T', H
    finally:
        model.projector.train(was_training)
    counts = model.audio_token_counts(lengths)
    valid: Tensor = torch.arange(projected.shape[1], device=device)[None, :] < counts[:, None]
    return float(projected[valid].pow(2).mean().sqrt())


def projector_scale_ratio(model: SpeechLLM, batch: dict[str, Any]) -> float:
    """Projected-audio RMS divided by token-embedding RMS (1.0: as loud as text)."""
    embeddings = model.causal_lm.get_input_embeddings()
    return projector_output_rms(model, batch) / token_embedding_rms(embeddings, len(model.tokenizer) - 1)
