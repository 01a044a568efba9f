"""The encoder cache: encoder outputs of clips already seen, for training's repeated passes.

Training attaches it to the runtime's AudioEncoder (`model.encoder_cache_gib`); inference never does.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from tiny_audio.runtime.encoder import ClipEncoder, stack_clips


class EncoderCache:
    """Encoder outputs of clips already seen, for repeated passes over the same clips.

    A clip is keyed by its mel frames, so an augmented clip (different frames) is a new clip and
    a cached output is never served for input the encoder did not see. Only a clip's own frames
    are kept. With 30 s windows (`max_length`) the padding is the same every time, and with
    `longest` the encoder encodes each clip on its own frames (AudioEncoder.per_clip), so a cached
    output is what the encoder would compute again, in any batch. Stops adding at `max_bytes`.
    A clip the collator marks not cacheable (a one-off: augmented by a draw no later pass repeats)
    would only spend the budget: it is encoded every time and never stored.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: dict[bytes, Tensor] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.uncacheable = 0  # one-off clips: encoded every time, outside hits and misses

    def encode(
        self,
        encode_clips: ClipEncoder,
        features: Tensor,
        lengths: Tensor,
        mel_lengths: Tensor,
        cacheable: Tensor | None = None,
    ) -> Tensor:
        """Hidden states (B, T, D) of every clip; a clip not `cacheable` (a one-off: no later pass
        gives it again) is encoded but neither looked up nor stored, so it spends no budget."""
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
        encoded = encode_clips(features, lengths, mel_lengths, sorted([*first.values(), *uncacheable]))
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
        return stack_clips(outputs, int(lengths.max()))

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
            f"{self.max_bytes / 2**30:.2f} GiB, {rate:.0%} of {seen:,} repeatable clip encodings reused "
            f"({self.uncacheable:,} one-off augmented clips encoded fresh)"
        )
