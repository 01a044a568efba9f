"""One dataloader worker's resumable, shuffled walk through one record source, pass after pass.

Everything a worker reads is a function of (seed, source, pass, worker), never of timing, so a
position can be saved as a few numbers and replayed exactly:

- Its share of a pass: with at least as many shards as workers (and no cap), whole shards, the
  shard order reshuffled each pass; otherwise every n-th record of the source, in file order, up
  to `cap` records (so a capped source is the same subset every pass).
- Its order: a shuffle buffer driven by its own seeded generator (`datasets`' buffer is lost on
  resume, so it is not used).
- Its state: the records read this pass, the shuffle buffer as the read-counts of the records in
  it (not their audio), the generator's state, and the source position (a `datasets` state_dict)
  just before the oldest record still in the buffer. Restoring re-reads the records from there to
  the saved read-count without decoding them, keeps those that were in the buffer, and continues.

A failed read (a dropped connection, a stalled host) reopens the segment at the same kind of
position, just after the worker's last record, so no record is lost or read twice (remote.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import IterableDataset as RecordStream

from tiny_audio.config import RemoteConfig
from tiny_audio.data.remote import Retries, current_file


@dataclass(frozen=True)
class Position:
    """Just before a worker's next unread record: which segment of its share, where in it."""

    segment: int  # index into this pass's segments (shards, or the whole source)
    source_state: dict[str, Any] | None  # the segment's `datasets` state_dict; None at its start
    index: int  # records of the segment read so far, by any worker
    read: int  # records of this worker's share read so far this pass

    def as_dict(self) -> dict[str, Any]:
        return {"segment": self.segment, "source_state": self.source_state, "index": self.index, "read": self.read}


START = Position(segment=0, source_state=None, index=0, read=0)


class SourceCursor:
    """Yields one worker's records of one source in shuffled order; `next()` is None at a pass's end."""

    # The current pass, set by `_begin_pass`.
    _segments: list[int]
    _rng: np.random.Generator
    _buffer: list[tuple[int, dict[str, Any], Position]]
    _here: Position
    _segment: int
    _index: int
    _iterator: Iterator[dict[str, list[Any]]] | None  # over the open segment's records, one per batch
    _dataset: RecordStream | None  # the open segment

    def __init__(
        self,
        records: RecordStream,
        *,
        seed: int,
        source: int,
        worker: int,
        workers: int,
        buffer_size: int,
        cap: int | None = None,
        remote: RemoteConfig | None = None,
    ) -> None:
        self.records = records
        self.retries = Retries(remote or RemoteConfig())
        # (pass, segment, records of it) where the last read failed: retries count as spent until the
        # reader gets past it, so a host that always fails at the same place cannot loop forever.
        self._failed_at = (-1, -1, -1)
        self.seed, self.source, self.worker, self.workers = seed, source, worker, workers
        self.buffer_size = buffer_size
        self.cap = cap
        # Whole shards need one per worker at least, and a cap must count records in file order.
        self.by_shards = records.num_shards >= workers and cap is None
        self.passes = 0
        self._begin_pass(START)

    # --- reading -----------------------------------------------------------------------------

    def next(self) -> dict[str, Any] | None:
        """The next record of this pass, or None when the pass is over (then call `next_pass`)."""
        if self.buffer_size == 0:
            return self._read()
        while len(self._buffer) < self.buffer_size:
            entry = self._read_entry()
            if entry is None:
                break
            self._buffer.append(entry)
        if not self._buffer:
            return None
        # Swap the chosen slot to the end and pop: O(1), and the slot order stays deterministic.
        slot = int(self._rng.integers(len(self._buffer)))
        self._buffer[slot], self._buffer[-1] = self._buffer[-1], self._buffer[slot]
        return self._buffer.pop()[1]

    def _read_entry(self) -> tuple[int, dict[str, Any], Position] | None:
        before = self._here
        record = self._read()
        return None if record is None else (before.read, record, before)

    def _read(self) -> dict[str, Any] | None:
        """The next record of this worker's share, in source order; None when the share is read."""
        while self._segment < len(self._segments):
            if self._iterator is None:
                self._iterator = self._open_segment()
            if self.cap is not None and self._index >= self.cap:
                break
            try:
                batch = next(self._iterator, None)
            except Exception as error:
                self._reopen_after(error)
                continue
            if (self.passes, self._segment, self._index) >= self._failed_at:
                self.retries.succeeded()
            if batch is None:
                self._segment, self._index, self._iterator = self._segment + 1, 0, None
                self._here = Position(self._segment, None, 0, self._here.read)
                continue
            index = self._index
            self._index += 1
            if not self.by_shards and index % self.workers != self.worker:
                continue
            assert self._dataset is not None  # opened with the iterator
            self._here = Position(self._segment, self._dataset.state_dict(), self._index, self._here.read + 1)
            return {key: values[0] for key, values in batch.items()}
        return None

    def _open_segment(self) -> Iterator[dict[str, list[Any]]]:
        position = self._here
        dataset = self._segment_dataset(self._segments[self._segment])
        if position.segment == self._segment and position.source_state is not None:
            dataset.load_state_dict(position.source_state)
        self._dataset = dataset
        # `iter` rather than `for record in dataset`: the latter splits by dataloader worker again.
        return iter(dataset.iter(batch_size=1))

    def _reopen_after(self, error: Exception) -> None:
        """After a backoff, read the segment again from just after this worker's last record.

        Records of other workers read since then are read (and passed over) again.
        """
        self._failed_at = (self.passes, self._segment, self._index)
        self.retries.failed(error, current_file(self._dataset) or "the dataset's files")
        self._iterator = None
        self._index = self._here.index

    def _segment_dataset(self, shard: int) -> RecordStream:
        # A new dataset object each time: a loaded state_dict stays with the object for later passes.
        if not self.by_shards:
            return self.records.shard(num_shards=1, index=0)
        return self.records.shard(num_shards=self.records.num_shards, index=shard)

    # --- passes ------------------------------------------------------------------------------

    def next_pass(self) -> None:
        self.passes += 1
        self._begin_pass(START)

    def _begin_pass(self, at: Position) -> None:
        self._segments = self._plan(self.passes)
        self._rng = np.random.default_rng([self.seed, self.source, self.passes, self.worker])
        self._buffer = []
        self._here = at
        self._segment, self._index = at.segment, at.index
        self._iterator = None
        self._dataset = None

    def _plan(self, number: int) -> list[int]:
        """The segments this worker reads in pass `number`: its shards in a per-pass order, or the source."""
        if not self.by_shards:
            return [0]
        # Dealt once, the same shards to a reader every pass: a rank's encoder-output cache then meets
        # its clips again (dealt anew each pass, it would reuse about 1/N of them with N readers).
        shards = np.arange(self.records.num_shards)[self.worker :: self.workers]
        if self.buffer_size > 0:
            shards = np.random.default_rng([self.seed, self.source, number]).permutation(shards)
        return [int(shard) for shard in shards]

    @property
    def read_this_pass(self) -> int:
        return self._here.read

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """A few numbers per buffered record, never audio: see the module docstring."""
        oldest = min(self._buffer, key=lambda entry: entry[0])[2] if self._buffer else self._here
        return {
            "pass": self.passes,
            "replay_from": oldest.as_dict(),
            "read": self._here.read,
            "buffer": [entry[0] for entry in self._buffer],
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.passes = state["pass"]
        self._begin_pass(Position(**state["replay_from"]))
        slots = {read: slot for slot, read in enumerate(state["buffer"])}
        buffer: list[tuple[int, dict[str, Any], Position] | None] = [None] * len(slots)
        while self._here.read < state["read"]:
            entry = self._read_entry()
            if entry is None:
                raise RuntimeError(
                    f"the saved data position is past the end of source {self.source}: the dataset changed "
                    "since the checkpoint was written"
                )
            if entry[0] in slots:
                buffer[slots[entry[0]]] = entry
        missing = [read for read, slot in slots.items() if buffer[slot] is None]
        if missing:
            raise RuntimeError(f"could not re-read buffered records {missing[:5]} of source {self.source}")
        self._buffer = buffer  # type: ignore[assignment]
        self._rng.bit_generator.state = state["rng"]
