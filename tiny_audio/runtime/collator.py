"""Batch samples into mel features, prompts with the right number of `<audio>` tokens, and labels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .prompts import PromptBuilder
from .speech_llm import IGNORE_INDEX, SpeechLLM

# A sample key the train audio augmenter sets on a clip that no later pass gives again (augmented
# by a draw of this pass alone, or mixed with its batch's babble): the encoder cache must neither
# store nor look up its encoding.
ONE_OFF = "one_off"


class SpeechCollator:
    """Turns `{"audio", "text"}` samples (with `ONE_OFF`, from the train augmenter) into model inputs.

    With `with_targets` the transcript follows the prompt and only it is labelled (right
    padding); without, prompts are left-padded for batched generation.
    """

    def __init__(
        self,
        prompts: PromptBuilder,
        feature_extractor: Any,
        encoder_lengths: Callable[[Tensor], Tensor],
        audio_token_counts: Callable[[Tensor], Tensor],
        pad_to_max_length: bool,
        sample_rate: int,
        with_targets: bool = True,
        augment: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        self.prompts = prompts
        self.feature_extractor = feature_extractor
        self.encoder_lengths = encoder_lengths
        self.audio_token_counts = audio_token_counts
        self.pad_to_max_length = pad_to_max_length
        self.sample_rate = sample_rate
        self.with_targets = with_targets
        self.augment = augment  # (features, mel_lengths) -> features; the train loader's collator only
        self.pad_id = prompts.tokenizer.pad_token_id

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        audio = [np.asarray(s["audio"], dtype=np.float32) for s in samples]
        features = self._features(audio)
        encoder_lengths = self.encoder_lengths(features["mel_lengths"])
        counts = self.audio_token_counts(encoder_lengths).tolist()
        sequences, label_rows = [], []
        for sample, n_audio in zip(samples, counts, strict=True):
            prompt = self.prompts.prompt_ids(int(n_audio))
            if self.with_targets:
                target = self.prompts.target_ids(sample["text"])
                sequences.append(prompt + target)
                label_rows.append([IGNORE_INDEX] * len(prompt) + target)
            else:
                sequences.append(prompt)
        input_ids, attention_mask = self._pad(sequences, self.pad_id, left=not self.with_targets)
        batch: dict[str, Any] = {
            "input_features": features["input_features"],
            "encoder_lengths": encoder_lengths,
            "mel_lengths": features["mel_lengths"],  # the encoder cache keys a clip by its own frames
            "encoder_cacheable": torch.tensor([not s.get(ONE_OFF, False) for s in samples]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "audio_seconds": float(sum(len(a) for a in audio) / self.sample_rate),
            "texts": [s["text"] for s in samples],
            "skipped": [pair for s in samples for pair in s.get("skipped", ())],
        }
        if self.with_targets:
            batch["labels"], _ = self._pad(label_rows, IGNORE_INDEX, left=False)
        return batch

    def _features(self, audio: list[np.ndarray]) -> dict[str, Tensor]:
        # Whisper's learned positions need every clip padded to 30 s; GLM-ASR's rotary encoder
        # does not, so its batches pad only to their longest clip.
        if self.pad_to_max_length:
            features = self._extract(audio, "max_length")
        else:
            features = self._pad_frames([self._extract([a], "longest")[0] for a in audio])
        # From each clip's own length, not the extractor's mask: the mask rounds a padded clip's
        # last partial hop up and an unpadded one's down, so a clip's length would depend on its batch.
        hop = self.feature_extractor.hop_length
        mel_lengths = torch.tensor([len(a) // hop for a in audio]).clamp(min=1, max=features.shape[-1])
        if self.augment is not None:
            features = self.augment(features, mel_lengths)
        return {"input_features": features, "mel_lengths": mel_lengths}

    def _extract(self, audio: list[np.ndarray], padding: str) -> Tensor:
        extracted = self.feature_extractor(audio, sampling_rate=self.sample_rate, return_tensors="pt", padding=padding)
        return extracted["input_features"]

    @staticmethod
    def _pad_frames(clips: list[Tensor]) -> Tensor:
        """Each clip's own frames (n_mels, T_i), padded to the longest: (B, n_mels, T).

        Extracted alone, a clip's last frame is the same in any batch (the STFT pads the longest
        clip's end by reflection, the others' with zeros), so it encodes, and is cached, as one
        clip. The padding is the log-mel of silence: the clip's floor, 8 log10 units (2 after
        scaling) below its loudest bin, as the feature extractor clamps it.
        """
        width = max(clip.shape[-1] for clip in clips)
        return torch.stack(
            [torch.nn.functional.pad(c, (0, width - c.shape[-1]), value=float(c.max()) - 2.0) for c in clips]
        )

    @staticmethod
    def _pad(rows: list[list[int]], value: int, left: bool) -> tuple[Tensor, Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), value, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids, mask


def collator_for(
    model: SpeechLLM,
    sample_rate: int,
    with_targets: bool = True,
    augment: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> SpeechCollator:
    """The collator matching `model`'s feature extractor, encoder and projector (`augment`: training only)."""
    encoder = model.encoder
    return SpeechCollator(
        prompts=model.prompts,
        feature_extractor=encoder.feature_extractor,
        encoder_lengths=encoder.output_lengths,
        audio_token_counts=model.audio_token_counts,
        pad_to_max_length=encoder.fixed_frames is not None or model.config.encoder_padding == "max_length",
        sample_rate=sample_rate,
        with_targets=with_targets,
        augment=augment,
    )
