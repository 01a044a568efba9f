"""Open the configured datasets with `datasets` (streaming by default) as one record stream.

Every split, whatever its origin (a Hub id, a local directory or files at a URL: remote.py) and
audio column type, is mapped to the same undecoded schema (COMMON_FEATURES) so that splits can be
concatenated and datasets mixed. Decoding happens later, in the stream, where bad records are caught and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import (
    Audio,
    Features,
    IterableDataset,
    Value,
    concatenate_datasets,
    load_dataset,
)
from datasets.exceptions import DatasetNotFoundError

from tiny_audio.config import DataConfig, DatasetConfig, RemoteConfig
from tiny_audio.data import remote, skips
from tiny_audio.data.local import AUDIOFOLDER_FILE_COLUMN, find_local_splits

COMMON_FEATURES = Features(
    {
        "audio_bytes": Value("binary"),
        "audio_path": Value("string"),
        "text": Value("string"),
        # A reason from `skips` when the cell has the wrong type; the stream skips the record.
        "audio_problem": Value("string"),
        "text_problem": Value("string"),
        "sample_id": Value("string"),  # stable across passes: dataset/split/file name or content hash
        "dataset": Value("string"),
    }
)
# A map-style split becomes this many shards at most, so dataloader workers and ranks can
# share it by shards rather than each reading every row.
MAX_LOCAL_SHARDS = 64


class DataSourceError(ValueError):
    """A dataset entry that cannot be opened as configured; the message names what exists."""


def dataset_label(dataset: DatasetConfig) -> str:
    return f"{dataset.path}:{dataset.name}" if dataset.name else dataset.path


def train_sources(cfg: DataConfig) -> list[IterableDataset]:
    """Each dataset entry's train splits, concatenated, in file order (the stream shuffles and mixes)."""
    sources = []
    for index, dataset in enumerate(cfg.datasets):
        parts = [
            open_split(dataset, index, split, streaming=cfg.streaming, remote_cfg=cfg.remote)
            for split in dataset.train_splits
        ]
        sources.append(parts[0] if len(parts) == 1 else concatenate_datasets(parts))
    return sources


def train_records(cfg: DataConfig) -> IterableDataset:
    """Every train record of every dataset, one after another (to check that there is any)."""
    sources = train_sources(cfg)
    return sources[0] if len(sources) == 1 else concatenate_datasets(sources)


def train_caps(cfg: DataConfig) -> list[int | None]:
    """Records per pass each dataset may contribute: data.max_train_samples shared by sampling_weight.

    The stream takes a capped dataset's first records in file order, so every pass reads the same subset.
    """
    if not cfg.max_train_samples:
        return [None] * len(cfg.datasets)
    weights = [dataset.sampling_weight for dataset in cfg.datasets]
    shares = [cfg.max_train_samples * weight / sum(weights) for weight in weights]
    caps = [int(share) for share in shares]
    # Largest remainders first, so the caps add up to max_train_samples exactly.
    by_remainder = sorted(range(len(caps)), key=lambda i: caps[i] - shares[i])
    for i in by_remainder[: cfg.max_train_samples - sum(caps)]:
        caps[i] += 1
    return [max(cap, 1) for cap in caps]


def eval_sources(cfg: DataConfig) -> IterableDataset:
    """Every eval split of every dataset, in config order, uncapped."""
    parts = [
        open_split(dataset, index, split, streaming=cfg.streaming, remote_cfg=cfg.remote)
        for index, dataset in enumerate(cfg.datasets)
        for split in dataset.eval_splits
    ]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def eval_records(cfg: DataConfig) -> IterableDataset:
    """Every eval split of every dataset, in config order, capped at cfg.max_eval_samples."""
    records = eval_sources(cfg)
    return records.take(cfg.max_eval_samples) if cfg.max_eval_samples else records


def open_split(
    dataset: DatasetConfig, index: int, split: str, *, streaming: bool, remote_cfg: RemoteConfig | None = None
) -> IterableDataset:
    """One split of one dataset entry, as undecoded records in COMMON_FEATURES."""
    if remote.is_remote(dataset.path):
        records, columns = _open_remote(dataset, index, split, remote_cfg or RemoteConfig())
        base_dir = None  # audio inside the files; a relative path there names the clip, nothing to fetch
    else:
        records, base_dir = _load_split(dataset, index, split, streaming=streaming)
        columns = _column_names(records, dataset, split)
    if (
        dataset.audio_column not in columns
        and dataset.audio_column == "audio"
        and AUDIOFOLDER_FILE_COLUMN in columns
        and base_dir is not None
    ):
        records = records.rename_column(AUDIOFOLDER_FILE_COLUMN, "audio")
        columns = [("audio" if name == AUDIOFOLDER_FILE_COLUMN else name) for name in columns]
    for role, column in (("audio_column", dataset.audio_column), ("text_column", dataset.text_column)):
        if column not in columns:
            raise DataSourceError(
                f"dataset '{dataset_label(dataset)}' split '{split}' has no column '{column}' "
                f"(data.datasets[{index}].{role}); its columns are: {', '.join(columns)}"
            )
    records = records.select_columns([dataset.audio_column, dataset.text_column])
    if isinstance(records.features, Features) and isinstance(records.features[dataset.audio_column], Audio):
        # Keep bytes/path: decoding through `datasets` would need torchcodec.
        records = records.cast_column(dataset.audio_column, Audio(decode=False))
    if not isinstance(records, IterableDataset):
        records = records.to_iterable_dataset(num_shards=max(1, min(len(records), MAX_LOCAL_SHARDS)))
    to_common = ToCommon(
        dataset=dataset_label(dataset),
        split=split,
        audio_column=dataset.audio_column,
        text_column=dataset.text_column,
        base_dir=base_dir,
    )
    return records.map(to_common, remove_columns=[dataset.audio_column, dataset.text_column], features=COMMON_FEATURES)


def _load_split(dataset: DatasetConfig, index: int, split: str, *, streaming: bool) -> tuple[Any, str | None]:
    """The raw split (IterableDataset when streaming, else Dataset) and the directory for relative paths."""
    root = Path(dataset.path).expanduser()
    if not root.is_dir() and _looks_local(dataset.path):
        raise DataSourceError(
            f"data.datasets[{index}].path='{dataset.path}' is not a directory (seen from {Path.cwd()}); "
            "for the synthetic set run `ta data synth .data/synth` first"
        )
    if root.is_dir():
        local = find_local_splits(root)
        _require_split(dataset, index, split, list(local))
        files = local[split]
        records = load_dataset(files.builder, data_files={split: list(files.files)}, split=split, streaming=streaming)
        return records, files.base_dir
    try:
        # Streaming only resolves file lists, so this is cheap even for terabyte datasets.
        available = load_dataset(dataset.path, dataset.name, streaming=True)
    except DatasetNotFoundError as error:
        raise DataSourceError(
            f"data.datasets[{index}].path='{dataset.path}' is neither a local directory nor a dataset "
            f"on the Hub: {error}"
        ) from error
    _require_split(dataset, index, split, list(available))
    if streaming:
        return available[split], None
    return load_dataset(dataset.path, dataset.name, split=split), None


def _open_remote(
    dataset: DatasetConfig, index: int, split: str, remote_cfg: RemoteConfig
) -> tuple[IterableDataset, list[str]]:
    """A remote split, always streamed; opening it (schema, first row) retries like reading does."""
    files = remote.remote_split(dataset, index, split)
    remote.use_own_retries()
    retries = remote.Retries(remote_cfg)
    while True:
        try:
            records = load_dataset(
                files.builder,
                data_files={split: list(files.urls)},
                split=split,
                streaming=True,
                storage_options=remote.storage_options(remote_cfg),
            )
            return records, _column_names(records, dataset, split)
        except FileNotFoundError as error:
            # `datasets` says "Unable to find" for a host it cannot reach too: ask the host which it is.
            url, cause = remote.first_failure(files.urls, remote_cfg) or (files.urls[0], error)
            if remote.transient_cause(cause) is None:
                raise remote.RemoteDataError(
                    f"data.datasets[{index}].data_files.{split}: {url} was not found "
                    f"({remote.describe(cause)}); check the URL"
                ) from error
            retries.failed(cause, f"{url} (opening data.datasets[{index}] split '{split}')")
        except Exception as error:
            retries.failed(error, f"{files.urls[0]} (opening data.datasets[{index}] split '{split}')")


def _looks_local(path: str) -> bool:
    """Hub ids are `owner/name`; anything starting like a filesystem path is meant to be local."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1


def _require_split(dataset: DatasetConfig, index: int, split: str, available: list[str]) -> None:
    if split not in available:
        raise DataSourceError(
            f"dataset '{dataset_label(dataset)}' has no split '{split}' (data.datasets[{index}]); "
            f"its splits are: {', '.join(available) or 'none found'}"
        )


def _column_names(records: Any, dataset: DatasetConfig, split: str) -> list[str]:
    if records.column_names is not None:
        return list(records.column_names)
    # Streaming csv/json learn their columns from the first rows, so read one.
    first = next(iter(records.take(1)), None)
    if first is None:
        raise DataSourceError(f"dataset '{dataset_label(dataset)}' split '{split}' has no rows")
    return list(first)


@dataclass(frozen=True)
class ToCommon:
    """Map one raw row to COMMON_FEATURES. A class rather than a closure so workers can pickle it."""

    dataset: str
    split: str
    audio_column: str
    text_column: str
    base_dir: str | None

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        audio_bytes, audio_path, audio_problem = self._audio(row[self.audio_column])
        text = row[self.text_column]
        text_problem = None
        if text is not None and not isinstance(text, str):
            text, text_problem = None, skips.BAD_TEXT_TYPE
        return {
            "audio_bytes": audio_bytes,
            "audio_path": self._resolve(audio_path),
            "text": text,
            "audio_problem": audio_problem,
            "text_problem": text_problem,
            "sample_id": f"{self.dataset}/{self.split}/{_sample_name(audio_bytes, audio_path, row)}",
            "dataset": self.dataset,
        }

    @staticmethod
    def _audio(cell: Any) -> tuple[bytes | None, str | None, str | None]:
        if cell is None:
            return None, None, skips.MISSING_AUDIO
        if isinstance(cell, str):
            return None, cell, None
        if isinstance(cell, (bytes, bytearray)):
            return bytes(cell), None, None
        if isinstance(cell, dict) and ({"bytes", "path"} & cell.keys()):
            data, path = cell.get("bytes"), cell.get("path")
            if data is None and path is None:
                return None, None, skips.MISSING_AUDIO
            return data, path, None
        return None, None, skips.BAD_AUDIO_TYPE

    def _resolve(self, path: str | None) -> str | None:
        if path is None or self.base_dir is None or "://" in path:
            return path
        return str(Path(self.base_dir) / path)


def _sample_name(audio_bytes: bytes | None, audio_path: str | None, row: dict[str, Any]) -> str:
    """The clip's own name where it has one, else a content hash, so ids survive reshuffling."""
    if audio_path:
        return audio_path
    content = audio_bytes if audio_bytes is not None else repr(sorted(row.items())).encode()
    return "sha1:" + hashlib.sha1(content).hexdigest()[:16]
