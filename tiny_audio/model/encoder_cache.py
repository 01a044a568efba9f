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
    A clip the collator marks not cacheable (audio augmented, so drawn anew next pass) would only
    spend the budget: it is encoded every time and never stored.
    """

    def __init__(self, max_bytes: int, per_clip: bool = False) -> None:
        self.max_bytes = max_bytes
        self.per_clip = per_clip
        self.entries: dict[bytes, Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.uncacheable = 0  # augmented clips: encoded every time, outside hits and misses

    def encode(
        self,
        encode: Callable[[Tensor], Tensor],
        features: Tensor,
        lengths: Tensor,
        mel_lengths: Tensor,
        cacheable: Tensor | None = None,
    ) -> Tensor:
        """Hidden states (B, T, D) of every clip; a clip not `cacheable` (augmented: the next pass
        draws it anew) is encoded but neither looked up nor stored, so it spends no budget."""
        mels = mel_lengths.tolist()
        storable = [True] * len(mels) if cacheable is None else [bool(c) for c in cacheable.tolist()]
        keys = self._keys(features, mels, storable)
        # A clip twice in one batch is encoded, and charged to the budget, once.
        first: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key is not None and key not in self.entries:
                first.setdefault(key, i)
        uncacheable = [i for i, key in enumerate(keys) if key is None]
        self.hits += len(keys) - len(uncacheable) - len(first)
        self.misses += len(first)
        self.uncacheable += len(uncacheable)
        encoded = self._encode_rows(encode, features, lengths, mels, sorted([*first.values(), *uncacheable]))
        for key, i in first.items():
            if self.bytes + encoded[i].nbytes <= self.max_bytes:
                self.entries[key] = encoded[i]
                self.bytes += encoded[i].nbytes
        outputs = []
        for i, key in enumerate(keys):
            if key is None:
                outputs.append(encoded[i])
            else:
                outputs.append(encoded[first[key]] if key in first else self.entries[key])
        hidden = outputs[0].new_zeros(len(keys), int(lengths.max()), outputs[0].shape[-1])
        for i, clip in enumerate(outputs):
            hidden[i, : clip.shape[0]] = clip
        return hidden

    def _encode_rows(
        self, encode: Callable[[Tensor], Tensor], features: Tensor, lengths: Tensor, mels: list[int], rows: list[int]
    ) -> dict[int, Tensor]:
        """Row -> the clip's own encoder frames (T_i, D), for the given rows of the batch."""
        # Per clip: clips of one mel length share a call, each cut to its own frames.
        groups: dict[int | None, list[int]] = {None: rows} if rows else {}
        if self.per_clip:
            groups = dict(_group_by(rows, [mels[i] for i in rows]))
        encoded: dict[int, Tensor] = {}
        for frames_kept, indices in groups.items():
            hidden = encode(features[indices][..., :frames_kept])
            for row, i in enumerate(indices):
                encoded[i] = hidden[row, : int(lengths[i])].clone()
        return encoded

    def _keys(self, features: Tensor, mels: list[int], storable: list[bool]) -> list[bytes | None]:
        """Each cacheable clip's key, None for the others (never hashed: their frames stay on the device)."""
        # Keyed by the clip's own mel frames, as the collator counted them: an encoder length stands
        # for two mel lengths (2L-1 or 2L), and the wrong one would key a clip by its batch's padding.
        rows = [i for i, ok in enumerate(storable) if ok]
        if not rows:
            return [None] * len(mels)
        frames = features[rows][..., : max(mels[i] for i in rows)].cpu()
        keys: list[bytes | None] = [None] * len(mels)
        for row, i in zip(frames, rows, strict=True):
            keys[i] = self.key(row[:, : mels[i]])
        return keys

    @staticmethod
    def key(frames: Tensor) -> bytes:
        digest = hashlib.blake2b(frames.contiguous().view(torch.uint8).numpy().tobytes(), digest_size=16)
        return digest.digest() + frames.shape[-1].to_bytes(4, "little")

    def describe(self) -> str:
        seen = self.hits + self.misses
        rate = self.hits / seen if seen else 0.0
        return (
            f"Encoder cache: {len(self.entries):,} clips, {self.bytes / 2**30:.2f} of "
            f"{self.max_bytes / 2**30:.2f} GiB, {rate:.0%} of {seen:,} unaugmented clip encodings reused "
            f"({self.uncacheable:,} augmented encoded fresh)"
        )


def _group_by(items: list[int], keys: list[Key]) -> dict[Key, list[int]]:
    groups: dict[Key, list[int]] = {}
    for item, key in zip(items, keys, strict=True):
        groups.setdefault(key, []).append(item)
    return groups
