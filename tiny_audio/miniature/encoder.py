"""A miniature GLM-ASR encoder, pretrained with a CTC character head that is then thrown away.

Same layout as GLM-ASR-Nano-2512's audio tower (128 mels, conv k3/s1 then k3/s2, rotary
transformer layers, no attention mask), only narrower and shallower. CTC on characters is the
simplest objective that makes its frames carry what was said; the head is not saved, so the
checkpoint holds an encoder that knows speech but was never taught to talk to an LLM, which is
the position of the real encoder when a projector starts training.

The real encoder was pretrained on a great deal of real-world audio: noisy, reverberant, quiet,
narrow-band, and stretches with no speech at all. A stand-in that only ever heard clean speech
would make every projector look fragile for a reason the real model does not have, so its
pretraining set adds one acoustically varied copy of each clip and some non-speech clips whose
CTC target is empty (all blanks).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    GlmAsrConfig,
    GlmAsrForConditionalGeneration,
    WhisperFeatureExtractor,
    get_cosine_schedule_with_warmup,
)
from transformers.models.glmasr.modeling_glmasr import GlmAsrEncoder

from tiny_audio.data import effects
from tiny_audio.runtime.encoder import AudioEncoder

CTC_ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # index 0 is the CTC blank, so characters start at 1
_NOT_IN_ALPHABET = re.compile(r"[^a-z' ]")


@dataclass(frozen=True)
class EncoderRecipe:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    # Small batches, many steps: at the same clips seen, held-out character error rate 14% with
    # batch 16 x 1200 steps, 7% with 8 x 2400, 4% with 4 x 4800 (and in noise and rooms alike).
    steps: int = 4800
    batch_size: int = 4
    learning_rate: float = 2e-3
    warmup_steps: int = 240
    varied_copies: int = 1  # acoustically varied copies of each training clip (see acoustic_variety)
    non_speech_clips: int = 200  # clips without speech, target empty
    # Data-parallel processes of one thread each, each taking a share of every batch. A fixed
    # count, not the machine's cores: the share changes the float sums, so the weights would too.
    processes: int = 2


def feature_extractor() -> WhisperFeatureExtractor:
    """GLM-ASR's processor: Whisper's log-mel front end with 128 bins, 10 ms hop, 30 s window."""
    return WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30)


def build_encoder(recipe: EncoderRecipe, seed: int) -> GlmAsrEncoder:
    torch.manual_seed(seed)
    return GlmAsrEncoder(_audio_config(recipe))


def ctc_targets(text: str) -> list[int]:
    """Characters the CTC head predicts: lower-case letters, apostrophe and single spaces."""
    plain = " ".join(_NOT_IN_ALPHABET.sub(" ", text.lower()).split())
    return [CTC_ALPHABET.index(c) + 1 for c in plain]


def ctc_decode(log_probs: Tensor) -> str:
    """Greedy CTC: best class per frame, repeats merged, blanks removed."""
    best = log_probs.argmax(-1).tolist()
    chars = [CTC_ALPHABET[i - 1] for j, i in enumerate(best) if i != 0 and (j == 0 or best[j - 1] != i)]
    return "".join(chars).strip()


SAMPLE_RATE = 16000


def varied_copy(audio: np.ndarray, others: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One clip as it might have been recorded elsewhere: speed, room, noise or babble, level, band."""
    if rng.random() < 0.5:
        audio = effects.change_speed(audio, float(rng.choice((0.9, 1.1))), SAMPLE_RATE)
    if rng.random() < 0.4:
        rir = effects.room_impulse_response(rng.uniform(0.2, 1.2), rng.uniform(3.0, 12.0), SAMPLE_RATE, rng)
        audio = effects.reverberate(audio, rir)
    if rng.random() < 0.7:
        if rng.random() < 0.3:
            talkers = [others[int(i)] for i in rng.integers(len(others), size=int(rng.integers(1, 4)))]
            noise = effects.babble(talkers, audio.size, rng)
        else:
            colour = effects.NOISE_COLOURS[int(rng.integers(len(effects.NOISE_COLOURS)))]
            noise = effects.coloured_noise(audio.size, colour, rng)
        audio = effects.mix_at_snr(audio, noise, rng.uniform(-2.0, 20.0), rng)
    if rng.random() < 0.1:
        audio = effects.telephone(audio, SAMPLE_RATE)
    return effects.set_level(audio, rng.uniform(-42.0, -12.0))


def acoustic_variety(
    audios: Sequence[np.ndarray], texts: Sequence[str], recipe: EncoderRecipe, seed: int
) -> tuple[list[np.ndarray], list[str]]:
    """The clean clips, `varied_copies` varied copies of each, and non-speech clips with empty text.

    Every clip draws from its own generator (seed, copy, index), so the set does not depend on order.
    """
    out_audio, out_text = list(audios), list(texts)
    for copy in range(1, recipe.varied_copies + 1):
        for index, (audio, text) in enumerate(zip(audios, texts, strict=True)):
            rng = np.random.default_rng([seed, copy, index])
            out_audio.append(varied_copy(audio, audios, rng))
            out_text.append(text)
    kinds = sorted(effects.NON_SPEECH)
    for index in range(recipe.non_speech_clips):
        rng = np.random.default_rng([seed, 0, len(audios) + index])
        out_audio.append(effects.non_speech(kinds[index % len(kinds)], rng.uniform(1.0, 5.0), SAMPLE_RATE, rng))
        out_text.append("")
    return out_audio, out_text


class FeatureBatches:
    """Length-sorted batches of mel features, extracted once as the speech model's collator would.

    With `processes` > 1, each batch holds only process `rank`'s share of the rows (a batch with
    fewer rows than processes is left out, so that every process has a share of every batch).
    """

    def __init__(
        self, audios: Sequence[np.ndarray], texts: Sequence[str], batch_size: int, rank: int = 0, processes: int = 1
    ) -> None:
        extractor = feature_extractor()
        order = sorted(range(len(audios)), key=lambda i: len(audios[i]))
        self.batches: list[dict[str, Any]] = []  # tensors, and the batch's texts
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            if len(rows) < processes:
                continue
            indices = [int(i) for i in np.array_split(rows, processes)[rank]]
            clips = [audios[i] for i in indices]
            # Padding to the longest clip of a length-sorted group wastes little, and matches the
            # collator's `longest` mode that the miniature course trains with. Every share is
            # padded to the whole batch's longest clip: the encoder has no attention mask, so
            # padding is part of its input.
            longest = max(len(audios[i]) for i in rows)
            features = extractor(
                clips, sampling_rate=16000, return_tensors="pt", padding="max_length", max_length=longest
            )["input_features"]
            mel_lengths = torch.tensor([len(c) // extractor.hop_length for c in clips]).clamp(max=features.shape[-1])
            targets = [torch.tensor(ctc_targets(texts[i])) for i in indices]
            self.batches.append(
                {
                    "input_features": features,
                    "frames": AudioEncoder.output_lengths(mel_lengths),
                    "targets": torch.cat(targets),
                    "target_lengths": torch.tensor([len(t) for t in targets]),
                    "texts": [texts[i] for i in indices],
                }
            )


def ctc_log_probs(encoder: GlmAsrEncoder, head: nn.Linear, input_features: Tensor) -> Tensor:
    return head(encoder(input_features).last_hidden_state).log_softmax(-1)  # B, T, C


def ctc_batch_loss(encoder: GlmAsrEncoder, head: nn.Linear, batch: dict[str, Any]) -> Tensor:
    log_probs = ctc_log_probs(encoder, head, batch["input_features"])
    return F.ctc_loss(
        log_probs.transpose(0, 1),  # T, B, C as ctc_loss expects
        batch["targets"],
        batch["frames"],
        batch["target_lengths"],
        zero_infinity=True,
    )


def pretrain_encoder(
    encoder: GlmAsrEncoder,
    batches: FeatureBatches,
    recipe: EncoderRecipe,
    seed: int,
    log: Callable[[str], None] = print,
) -> nn.Linear:
    """CTC training over shuffled length-sorted batches; returns the head (the caller drops it).

    In a process group (torch.distributed), every process holds its share of each batch
    (FeatureBatches' `rank`) and the same seed; gradients are averaged before each step.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    head = nn.Linear(recipe.hidden_size, len(CTC_ALPHABET) + 1)
    params = [*encoder.parameters(), *head.parameters()]
    # Fused: one kernel for every tensor, 3 ms a step less than the per-tensor loop on a CPU.
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.01, betas=(0.9, 0.98), fused=True)
    schedule = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.steps)
    encoder.train()
    order: list[int] = []
    window: list[float] = []
    log_every = max(1, recipe.steps // 10)
    for step in range(1, recipe.steps + 1):
        if not order:
            order = list(range(len(batches.batches)))
            rng.shuffle(order)
        loss = ctc_batch_loss(encoder, head, batches.batches[order.pop()])
        loss.backward()
        if dist.is_initialized():
            loss = average_across_processes(params, loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(float(loss.detach()))
        if step % log_every == 0 or step == recipe.steps:
            log(f"  encoder step {step}/{recipe.steps} | CTC loss {sum(window) / len(window):.3f}")
            window = []
    encoder.eval()
    return head


def average_across_processes(params: Sequence[Tensor], loss: Tensor) -> Tensor:
    """Average gradients and loss over the process group: the step of the whole batch.

    One all-reduce of one flat buffer rather than one per tensor: 30-odd small messages a step
    would cost more than the sums.
    """
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([*(g.reshape(-1) for g in grads), loss.detach().reshape(1)])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()
    return flat[-1]


@torch.no_grad()
def character_error_rate(encoder: GlmAsrEncoder, head: nn.Linear, batches: FeatureBatches) -> float:
    import jiwer

    references, hypotheses = [], []
    for batch in batches.batches:
        log_probs = ctc_log_probs(encoder, head, batch["input_features"])
        for row, frames, text in zip(log_probs, batch["frames"], batch["texts"], strict=True):
            hypotheses.append(ctc_decode(row[: int(frames)]))
            references.append("".join(CTC_ALPHABET[i - 1] for i in ctc_targets(text)))
    return float(jiwer.cer(references, hypotheses))


def save_encoder(encoder: GlmAsrEncoder, recipe: EncoderRecipe, path: Path) -> None:
    """Save as a GLM-ASR checkpoint (legacy `audio_tower.*` keys) so it loads like the hub id.

    The checkpoint's language model is a one-layer placeholder: the project never reads it, but
    the real repo has one and the loading code must skip it.
    """
    config = GlmAsrConfig(
        audio_config=_audio_config(recipe).to_dict(),
        text_config={
            "model_type": "llama",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 256,
        },
        audio_token_id=255,
    )
    model = GlmAsrForConditionalGeneration(config)
    model.model.audio_tower.load_state_dict(encoder.state_dict())
    model.save_pretrained(path)
    feature_extractor().save_pretrained(path)


def _audio_config(recipe: EncoderRecipe):
    from transformers import GlmAsrEncoderConfig

    return GlmAsrEncoderConfig(
        hidden_size=recipe.hidden_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        intermediate_size=recipe.intermediate_size,
        num_mel_bins=128,
        max_position_embeddings=1500,
    )
