"""Find the splits of a local dataset directory and the files that hold each.

Layouts understood (the audio column may hold paths relative to the manifest's directory):
  <split>/metadata.{csv,jsonl,parquet}  audiofolder: `file_name` names the clip beside it
  <split>.{jsonl,csv,parquet}          one manifest per split
  <split>/*.parquet, data/<split>-*.parquet, <split>-*.parquet   Hub-style parquet shards

audiofolder directories are read through the csv/json/parquet builders rather than the
`audiofolder` builder, because the latter encodes every row through torchcodec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# audiofolder names the clip column `file_name` and exposes it as `audio`.
AUDIOFOLDER_FILE_COLUMN = "file_name"


@dataclass(frozen=True)
class LocalSplit:
    builder: str  # a `datasets` packaged builder: csv, json or parquet
    files: tuple[str, ...]
    base_dir: str  # relative audio paths are resolved against this directory
    audiofolder: bool  # rename `file_name` to `audio`, as the audiofolder builder does


def find_local_splits(root: Path) -> dict[str, LocalSplit]:
    splits: dict[str, LocalSplit] = {}
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name != "data":
            found = _split_directory(child)
            if found is not None:
                splits[child.name] = found
        elif child.is_file() and child.suffix in BUILDERS and "-" not in child.stem:
            splits.setdefault(child.stem, LocalSplit(BUILDERS[child.suffix], (str(child),), str(root), False))
    for directory in (root, root / "data"):
        for split, files in _hub_style_shards(directory).items():
            splits.setdefault(split, LocalSplit("parquet", files, str(directory), False))
    return splits


def _split_directory(directory: Path) -> LocalSplit | None:
    for suffix, builder in BUILDERS.items():
        metadata = directory / f"metadata{suffix}"
        if metadata.is_file():
            return LocalSplit(builder, (str(metadata),), str(directory), True)
    shards = tuple(str(path) for path in sorted(directory.glob("*.parquet")))
    return LocalSplit("parquet", shards, str(directory), False) if shards else None


def _hub_style_shards(directory: Path) -> dict[str, tuple[str, ...]]:
    """`train-00000-of-00004.parquet` and friends, grouped by the name before the first dash."""
    if not directory.is_dir():
        return {}
    groups: dict[str, list[str]] = {}
    for path in sorted(directory.glob("*-*.parquet")):
        groups.setdefault(path.name.split("-", 1)[0], []).append(str(path))
    return {split: tuple(files) for split, files in groups.items()}
