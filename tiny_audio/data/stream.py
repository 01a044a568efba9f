"""The torch IterableDatasets the trainer consumes: decoded, filtered, sharded, resumable.

Each item is {"audio": float32 mono at cfg.sample_rate, "text": normalised transcript,
"skipped": [(reason, sample_id), ...]} where `skipped` lists the records this worker dropped
since its previous item, so the main process can count them (see SkipLedger) without losing any.

Resuming (state_dict / load_state_dict, driven by torchdata's StatefulDataLoader) restores each
worker's position in its sources, so no sample is replayed. Records sitting in a shuffle buffer
at the checkpoint are not saved by `datasets`; they are dropped for that pass only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from datasets import IterableDataset as RecordStream
from datasets.distributed import split_dataset_by_node

from tiny_audio.config import DataConfig
from tiny_audio.data.guard import BadFractionGuard, DataQualityError
from tiny_audio.data.samples import prepare_sample
from tiny_audio.data.skips import Unusable
from tiny_audio.data.sources import eval_records, train_records


def build_train_stream(cfg: DataConfig, *, rank: int = 0, world_size: int = 1) -> SpeechStream:
    """Endless: pass after pass over the train splits, reshuffled with cfg.seed + pass number."""
    return SpeechStream(train_records(cfg), cfg, endless=True, rank=rank, world_size=world_size)


def build_eval_stream(cfg: DataConfig, *, rank: int = 0, world_size: int = 1) -> SpeechStream:
    """One pass over the eval splits in a fixed order, capped at cfg.max_eval_samples records."""
    return SpeechStream(eval_records(cfg), cfg, endless=False, rank=rank, world_size=world_size)


class SpeechStream(torch.utils.data.IterableDataset):
    """Decodes and filters a record stream, split across ranks and dataloader workers.

    Splitting happens here rather than in `datasets`' own worker logic because that gives a
    worker nothing when a dataset has fewer shards than workers (one local file, say); here
    each (rank, worker) pair takes whole shards when there are enough, else every n-th record.
    """

    def __init__(
        self, records: RecordStream, cfg: DataConfig, *, endless: bool, rank: int = 0, world_size: int = 1
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.records = records
        self.cfg = cfg
        self.endless = endless
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.guard = BadFractionGuard(cfg.max_bad_fraction, cfg.bad_check_samples)
        self._part: RecordStream | None = None  # this worker's share of the current pass
        self._resume: dict[str, Any] | None = None  # position to restore in the next pass started

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skipped: list[tuple[str, str]] = []
        held: dict[str, Any] | None = None
        while True:
            records = yielded = 0
            # A pass resumed at its very end has nothing left; only a full pass proves a worker starved.
            full_pass = self._resume is None
            for record in self._records_for_this_worker():
                records += 1
                try:
                    audio, text = prepare_sample(record, self.cfg)
                except Unusable as unusable:
                    skipped.append((unusable.reason, record["sample_id"]))
                    self.guard.observe(record["dataset"], unusable.reason, record["sample_id"])
                    continue
                self.guard.observe(record["dataset"])
                yielded += 1
                item = {"audio": audio, "text": text, "skipped": skipped}
                skipped = []
                if self.endless:
                    yield item  # skips after the last sample of a pass ride on the next pass's first
                else:
                    # A finite stream holds one sample back so that skips after its last sample
                    # still reach the consumer, attached to that sample.
                    if held is not None:
                        yield held
                    held = item
            self.guard.end_of_pass()
            if not self.endless:
                if held is not None:
                    held["skipped"] = held["skipped"] + skipped
                    yield held
                return
            if not yielded and full_pass:
                # Another pass would find nothing either: fail rather than spin without yielding.
                raise DataQualityError(self._empty_pass_message(records, skipped))
            self.epoch += 1

    def _empty_pass_message(self, records: int, skipped: list[tuple[str, str]]) -> str:
        worker = f"rank {self.rank} of {self.world_size}, dataloader worker {self._worker_id()}"
        if not records:
            return (
                f"{worker} received no train records in a full pass: the train splits hold fewer records "
                "than dataloader workers x ranks; lower data.num_workers or add data"
            )
        reasons = ", ".join(sorted({reason for reason, _ in skipped}))
        return f"{worker} found no usable sample among {records} train records (skipped: {reasons})"

    @staticmethod
    def _worker_id() -> int:
        worker = torch.utils.data.get_worker_info()
        return worker.id if worker is not None else 0

    def _records_for_this_worker(self) -> Iterator[dict[str, Any]]:
        part = self._split_for_this_worker()
        # `iter` rather than `for record in part`: the latter splits by dataloader worker again.
        for batch in part.iter(batch_size=1):
            yield {key: values[0] for key, values in batch.items()}

    def _split_for_this_worker(self) -> RecordStream:
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        shards, shard = self.world_size * workers, self.rank * workers + worker_id
        # A capped stream (take) must be split by records for the cap to hold across workers.
        capped = self.cfg.max_train_samples if self.endless else self.cfg.max_eval_samples
        by_shards = self.records.num_shards >= shards and not capped
        part = split_dataset_by_node(
            self.records, rank=shard, world_size=shards, strategy="shards" if by_shards else "examples"
        )
        part.set_epoch(self.epoch)  # after the split, which starts the copy at epoch 0
        if self._resume is not None:
            part.load_state_dict(self._resume)
            self._resume = None
        self._part = part
        return part

    def state_dict(self) -> dict[str, Any]:
        """Position of this worker: restoring it continues with the next record it had not read."""
        position = self._part.state_dict() if self._part is not None else self._resume
        return {"epoch": self.epoch, "records": position, "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self._resume = state["records"]
        self.guard.load_state_dict(state["guard"])
