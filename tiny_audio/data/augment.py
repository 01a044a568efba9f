"""SpecAugment (arXiv:1904.08779): random time and frequency masks on training mel features.

A few lines of torch instead of torchaudio. Masks fall only inside each clip's real frames: the
padding after a clip is already constant, and a mask there would silently shrink the policy.
Masked cells take the clip's mean feature value, a neutral level in Whisper-style log-mels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tiny_audio.config import DataConfig, SpecAugmentConfig


class SpecAugment:
    def __init__(self, cfg: SpecAugmentConfig, generator: torch.Generator | None = None) -> None:
        self.cfg = cfg
        self.generator = generator

    def __call__(self, features: Tensor, mel_lengths: Tensor) -> Tensor:
        """features: B, n_mels, frames (a masked copy is returned); mel_lengths: B real frames per clip."""
        out = features.clone()
        n_mels = features.shape[1]
        for i, length in enumerate(mel_lengths.tolist()):
            real = out[i, :, :length]  # n_mels, L (a view: masks write into `out`)
            fill = real.mean()
            for _ in range(self.cfg.freq_masks):
                start, width = self._span(n_mels, self.cfg.freq_mask_width)
                real[start : start + width, :] = fill
            for _ in range(self.cfg.time_masks):
                start, width = self._span(length, self.cfg.time_mask_width)
                real[:, start : start + width] = fill
        return out

    def _span(self, size: int, max_width: int) -> tuple[int, int]:
        """A mask of width in [0, min(max_width, size)] starting where it fits inside `size`."""
        width = int(torch.randint(0, min(max_width, size) + 1, (1,), generator=self.generator))
        start = int(torch.randint(0, size - width + 1, (1,), generator=self.generator))
        return start, width


def train_augmentation(cfg: DataConfig) -> SpecAugment | None:
    """The train collator's augmentation (evaluation never augments)."""
    return SpecAugment(cfg.spec_augment) if cfg.spec_augment.enabled else None
