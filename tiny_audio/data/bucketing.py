"""Duration bucketing for the streaming train set (`data.group_by_length`).

Each dataloader worker reads a block of `bucket_buffer` samples, sorts it by duration, cuts it
into batches of clips of similar length and emits those batches in a shuffled order. A batch
then pads text (and, with `model.encoder_padding=longest`, audio) only to a similar clip.

Resume is exact because a block is a pure function of the stream: the saved state is the source
stream's position at the start of the current block, the block number and how many of its samples
were already emitted. Restoring re-reads the block from that position, sorts and shuffles it the
same way, and skips what was emitted. (The source's own limits still apply: records inside a
`datasets` shuffle buffer at the checkpoint are not restored by `datasets`.)
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch

BUCKETING_STATE_VERSION = 1


def audio_length(item: dict[str, Any]) -> int:
    return len(item["audio"])


class LengthBucketedStream(torch.utils.data.IterableDataset):
    """Wraps a stateful stream (SpeechStream) and reorders it block by block, as above."""

    def __init__(
        self,
        source: Any,
        *,
        batch_size: int,
        buffer_size: int,
        seed: int,
        rank: int = 0,
        length: Callable[[dict[str, Any]], int] = audio_length,
    ) -> None:
        if batch_size < 1 or buffer_size < 1:
            raise ValueError(f"batch_size={batch_size} and buffer_size={buffer_size} must be >= 1")
        self.source = source
        self.batch_size = batch_size
        # Whole batches only: a batch must never straddle two blocks, or it would mix lengths.
        self.block_size = -(-buffer_size // batch_size) * batch_size
        self.seed = seed
        self.rank = rank
        self.length = length
        self.block = 0  # blocks started so far in this worker
        self._block_start: Any = None  # source state before the current block was read
        self._emitted = 0  # samples of the current block already yielded
        self._block_len = 0
        self._skip = 0  # samples to skip in the first block after a restore

    def __iter__(self) -> Iterator[dict[str, Any]]:
        items = iter(self.source)
        while True:
            self._block_start = copy.deepcopy(self.source.state_dict())
            block = [item for _, item in zip(range(self.block_size), items, strict=False)]
            if not block:
                return
            ordered = self.order(block, self.block)
            self._block_len, self._emitted = len(ordered), self._skip
            self._skip = 0
            for item in ordered[self._emitted :]:
                self._emitted += 1  # before the yield: a state saved after this batch counts it
                yield item
            self.block += 1

    def order(self, block: list[dict[str, Any]], block_number: int) -> list[dict[str, Any]]:
        """Sort by length, cut into batches, shuffle the batches: a function of the block alone."""
        ranked = sorted(range(len(block)), key=lambda i: self.length(block[i]))  # stable: ties keep arrival order
        batches = [ranked[i : i + self.batch_size] for i in range(0, len(ranked), self.batch_size)]
        # Per rank too: with one seed, every process would take its long batches at the same steps.
        random.Random(f"{self.seed}/{self.rank}/{_worker_id()}/{block_number}").shuffle(batches)
        return [block[i] for batch in batches for i in batch]

    def state_dict(self) -> dict[str, Any]:
        layout = {"batch_size": self.batch_size, "block_size": self.block_size}
        if self._block_start is not None and self._emitted == self._block_len:
            # The block is spent: the source's current position is where the next block starts.
            return {"version": BUCKETING_STATE_VERSION, "source": self.source.state_dict(), "block": self.block + 1}
        source = self._block_start if self._block_start is not None else self.source.state_dict()
        return {
            "version": BUCKETING_STATE_VERSION,
            "source": source,
            "block": self.block,
            "emitted": self._emitted,
            **layout,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "version" not in state:
            raise ValueError(
                "the checkpoint's data position was saved without data.group_by_length; "
                "resume with data.group_by_length=false"
            )
        emitted = state.get("emitted", 0)
        if emitted and (state["batch_size"], state["block_size"]) != (self.batch_size, self.block_size):
            raise ValueError(
                f"the checkpoint's bucketed data position was saved with batch size {state['batch_size']} and "
                f"a block of {state['block_size']} samples, this run has {self.batch_size} and {self.block_size}; "
                "resume with the same training.per_device_train_batch_size and data.bucket_buffer"
            )
        self.source.load_state_dict(state["source"])
        self.block = state["block"]
        self._skip = emitted
        self._block_start = None


def _worker_id() -> int:
    worker = torch.utils.data.get_worker_info()
    return worker.id if worker is not None else 0


def bucketed(source: Any, *, group_by_length: bool, batch_size: int, buffer_size: int, seed: int, rank: int = 0) -> Any:
    """`source` reordered into duration buckets when asked, else unchanged."""
    if not group_by_length:
        return source
    return LengthBucketedStream(source, batch_size=batch_size, buffer_size=buffer_size, seed=seed, rank=rank)
