"""The encoder cache: encoder outputs of clips already seen, for training's repeated passes.

Training attaches it to the runtime's AudioEncoder (`model.encoder_cache_gib`); inference never does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
from torch import Tensor

Key = TypeVar("Key", bound=Hashable)


class EncoderCache:
    """Encoder outputs of clips already seen, for repeated passes over the same clips.

    A clip is keyed by its mel frames, so an augmented clip (different frames) is a new clip and
    a cached output is never served for input the encoder did not see. Only a clip's own frames
    are kept. With 30 s windows (`max_length`) the padding is the same every time, so a cached
    output is what the encoder would compute again. With `per_clip` (for `longest` padding) a
    clip is encoded on its own frames, unpadded, as `ta transcribe` encodes a lone clip: its
    encoding then does not depend on the batch it first came in. Stops adding at `max_bytes`.
    """

    def __init__(self, max_bytes: int, per_clip: bool = False) -> None:
        self.max_bytes = max_bytes
        self.per_clip = per_clip
        self.entries: dict[bytes, Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def encode(
        self, encode: Callable[[Tensor], Tensor], features: Tensor, lengths: Tensor, mel_lengths: Tensor
    ) -> Tensor:
        # Keyed by the clip's own mel frames, as the collator counted them: an encoder length stands
        # for two mel lengths (2L-1 or 2L), and the wrong one would key a clip by its batch's padding.
        mels = mel_lengths.tolist()
        frames = features[..., : max(mels)].cpu()
        keys = [self.key(row[:, :n]) for row, n in zip(frames, mels, strict=True)]
        # A clip twice in one batch is encoded, and charged to the budget, once.
        first: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self.entries:
                first.setdefault(key, i)
        missing = list(first.values())
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        # Per clip: clips of one mel length share a call, each cut to its own frames.
        groups: dict[int | None, list[int]] = {None: missing} if missing else {}
        if self.per_clip:
            groups = dict(_group_by(missing, [mels[i] for i in missing]))
        fresh: dict[bytes, Tensor] = {}
        for frames_kept, indices in groups.items():
            encoded = encode(features[indices][..., :frames_kept])
            for row, i in enumerate(indices):
                fresh[keys[i]] = encoded[row, : int(lengths[i])].clone()
        for key, encoded_clip in fresh.items():
            if self.bytes + encoded_clip.nbytes <= self.max_bytes:
                self.entries[key] = encoded_clip
                self.bytes += encoded_clip.nbytes
        outputs = [fresh[key] if key in fresh else self.entries[key] for key in keys]
        hidden = outputs[0].new_zeros(len(keys), int(lengths.max()), outputs[0].shape[-1])
        for i, clip in enumerate(outputs):
            hidden[i, : clip.shape[0]] = clip
        return hidden

    @staticmethod
    def key(frames: Tensor) -> bytes:
        digest = hashlib.blake2b(frames.contiguous().view(torch.uint8).numpy().tobytes(), digest_size=16)
        return digest.digest() + frames.shape[-1].to_bytes(4, "little")

    def describe(self) -> str:
        seen = self.hits + self.misses
        rate = self.hits / seen if seen else 0.0
        return (
            f"Encoder cache: {len(self.entries):,} clips, {self.bytes / 2**30:.2f} of "
            f"{self.max_bytes / 2**30:.2f} GiB, {rate:.0%} of {seen:,} clip encodings reused"
        )


def _group_by(items: list[int], keys: list[Key]) -> dict[Key, list[int]]:
    groups: dict[Key, list[int]] = {}
    for item, key in zip(items, keys, strict=True):
        groups.setdefault(key, []).append(item)
    return groups
