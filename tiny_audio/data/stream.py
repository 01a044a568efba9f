"""The torch IterableDatasets the trainer consumes: decoded, filtered, sharded, resumable.

Each item is {"audio": float32 mono at cfg.sample_rate, "text": normalised transcript,
"skipped": [(reason, sample_id), ...]} where `skipped` lists the records this worker dropped
since its previous item, so the main process can count them (see SkipLedger) without losing any.
Train items also carry "augment_key" (dataset index, pass, hashed record id), which seeds the
record's audio augmentation in that pass.

Resuming (state_dict / load_state_dict, driven by torchdata's StatefulDataLoader, which also
keeps which worker serves the next batch) restores each worker's exact position: its place in
every source, the records in its shuffle buffers and its random generators (see cursor.py).
A resumed run reads the same records in the same order as one never interrupted: none is
replayed, none is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from datasets import IterableDataset as RecordStream

from tiny_audio.config import DataConfig
from tiny_audio.data.audio_augment import augment_key
from tiny_audio.data.cursor import SourceCursor
from tiny_audio.data.guard import BadFractionGuard, DataQualityError
from tiny_audio.data.samples import prepare_sample
from tiny_audio.data.sources import eval_sources, train_caps, train_sources
from tiny_audio.runtime.unusable import Unusable


def build_train_stream(cfg: DataConfig, *, rank: int = 0, world_size: int = 1) -> SpeechStream:
    """Endless: each dataset read pass after pass (reshuffled each pass), mixed by sampling_weight.

    Each dataset starts its next pass when it runs out, independently of the others, so every
    record of every dataset is reached and a small dataset simply repeats more often.
    """
    weights = [dataset.sampling_weight for dataset in cfg.datasets]
    return SpeechStream(
        train_sources(cfg),
        cfg,
        endless=True,
        caps=train_caps(cfg),
        weights=weights,
        buffer_size=cfg.shuffle_buffer,
        rank=rank,
        world_size=world_size,
    )


def build_eval_stream(cfg: DataConfig, *, rank: int = 0, world_size: int = 1) -> SpeechStream:
    """One pass over the eval splits in a fixed order, capped at cfg.max_eval_samples records."""
    return SpeechStream(
        [eval_sources(cfg)],
        cfg,
        endless=False,
        caps=[cfg.max_eval_samples],
        weights=[1.0],
        buffer_size=0,
        rank=rank,
        world_size=world_size,
    )


class SpeechStream(torch.utils.data.IterableDataset):
    """Decodes and filters record sources, split across ranks and dataloader workers, mixed by weight.

    Splitting happens here rather than in `datasets`' own worker logic because that gives a
    worker nothing when a dataset has fewer shards than workers (one local file, say); here
    each (rank, worker) pair takes whole shards when there are enough, else every n-th record.
    """

    def __init__(
        self,
        sources: list[RecordStream],
        cfg: DataConfig,
        *,
        endless: bool,
        caps: list[int | None],
        weights: list[float],
        buffer_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.sources, self.caps = sources, caps
        self.probabilities = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.cfg = cfg
        self.endless = endless
        self.buffer_size = buffer_size
        self.rank = rank
        self.world_size = world_size
        self.guard = BadFractionGuard(cfg.max_bad_fraction, cfg.bad_check_samples)
        self._cursors: list[SourceCursor] | None = None  # this worker's, while it iterates
        self._mixer: np.random.Generator | None = None  # picks the source of each next record
        self._usable: list[int] = []  # usable samples per source in its current pass
        self._resume: dict[str, Any] | None = None  # position to restore when iteration starts

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._start()
        assert self._cursors is not None
        skipped: list[tuple[str, str]] = []
        held: dict[str, Any] | None = None
        while True:
            source = self._pick_source()
            cursor = self._cursors[source]
            record = cursor.next()
            if record is None:
                self._end_pass(source, skipped)
                if not self.endless:
                    if held is not None:
                        held["skipped"] = held["skipped"] + skipped
                        yield held
                    return
                continue
            try:
                audio, text = prepare_sample(record, self.cfg)
            except Unusable as unusable:
                skipped.append((unusable.reason, record["sample_id"]))
                self.guard.observe(record["dataset"], unusable.reason, record["sample_id"])
                continue
            self.guard.observe(record["dataset"])
            self._usable[source] += 1
            item = {"audio": audio, "text": text, "skipped": skipped}
            if self.endless:
                # Seeds this record's augmentation in this pass (see audio_augment.py): no state to save.
                # The clip's id within its dataset (the source index tells datasets apart), so the draws
                # do not depend on where the dataset lives: a cache under another home draws the same.
                clip = record["sample_id"].removeprefix(f"{record['dataset']}/")
                item["augment_key"] = augment_key(source, cursor.passes, clip)
            skipped = []
            if self.endless:
                yield item  # skips after the last sample of a pass ride on the next pass's first
            else:
                # A finite stream holds one sample back so that skips after its last sample
                # still reach the consumer, attached to that sample.
                if held is not None:
                    yield held
                held = item

    def _start(self) -> None:
        """This worker's cursors, at the restored position if there is one."""
        worker, workers = self._worker()
        self._cursors = [
            SourceCursor(
                records,
                seed=self.cfg.seed,
                source=index,
                worker=worker,
                workers=workers,
                buffer_size=self.buffer_size,
                cap=cap,
                remote=self.cfg.remote,
            )
            for index, (records, cap) in enumerate(zip(self.sources, self.caps, strict=True))
        ]
        self._mixer = np.random.default_rng([self.cfg.seed, len(self.sources), worker])
        self._usable = [0] * len(self.sources)
        resume, self._resume = self._resume, None
        if resume is None or resume["sources"] is None:
            return
        if resume["worker"] != [worker, workers]:
            raise ValueError(
                f"the saved data position belongs to reader {resume['worker'][0]} of {resume['worker'][1]}, "
                f"not {worker} of {workers}: resume with the same number of processes and data.num_workers"
            )
        for cursor, state in zip(self._cursors, resume["sources"], strict=True):
            cursor.load_state_dict(state)
        self._usable = list(resume["usable"])
        self._mixer.bit_generator.state = resume["mixer"]

    def _worker(self) -> tuple[int, int]:
        """(this reader's index, readers in all): one reader per dataloader worker per rank."""
        info = torch.utils.data.get_worker_info()
        workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker_id, self.world_size * workers

    def _pick_source(self) -> int:
        if len(self.sources) == 1:
            return 0
        assert self._mixer is not None
        return int(self._mixer.choice(len(self.sources), p=self.probabilities))

    def _end_pass(self, source: int, skipped: list[tuple[str, str]]) -> None:
        assert self._cursors is not None
        cursor = self._cursors[source]
        self.guard.end_of_pass()
        if not self._usable[source] and self.endless:
            # Another pass would find nothing either: fail rather than spin without yielding.
            raise DataQualityError(self._empty_pass_message(cursor.read_this_pass, skipped))
        cursor.next_pass()
        self._usable[source] = 0

    def _empty_pass_message(self, records: int, skipped: list[tuple[str, str]]) -> str:
        info = torch.utils.data.get_worker_info()
        worker = f"rank {self.rank} of {self.world_size}, dataloader worker {info.id if info is not None else 0}"
        if not records:
            return (
                f"{worker} received no train records in a full pass: the train splits hold fewer records "
                "than dataloader workers x ranks; lower data.num_workers or add data"
            )
        reasons = ", ".join(sorted({reason for reason, _ in skipped}))
        return f"{worker} found no usable sample among {records} train records (skipped: {reasons})"

    def state_dict(self) -> dict[str, Any]:
        """Position of this worker: restoring it continues with exactly the record it would read next."""
        if self._cursors is None:
            pending = self._resume or {"sources": None}
            return {**pending, "guard": self.guard.state_dict()}
        assert self._mixer is not None
        return {
            "worker": list(self._worker()),
            "sources": [cursor.state_dict() for cursor in self._cursors],
            "usable": list(self._usable),
            "mixer": self._mixer.bit_generator.state,
            "guard": self.guard.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "guard" not in state and "block" in state:
            raise ValueError(
                "the checkpoint's data position was saved with data.group_by_length=true; resume with "
                "data.group_by_length=true and the same training.per_device_train_batch_size and data.bucket_buffer"
            )
        self._resume = state
        self.guard.load_state_dict(state["guard"])
