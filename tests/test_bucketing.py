"""Duration bucketing: less padding, every record once, and an exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from data_helpers import sentence, tone
from torchdata.stateful_dataloader import StatefulDataLoader

from tiny_audio.config import DataConfig, DatasetConfig
from tiny_audio.data.bucketing import LengthBucketedStream, bucketed
from tiny_audio.data.stream import build_eval_stream, build_train_stream


def write_mixed_lengths(directory: Path, count: int) -> Path:
    """An audiofolder whose clips last 0.6-3 s in a shuffled order; the text grows with the clip."""
    rng = np.random.default_rng(0)
    seconds = rng.uniform(0.6, 3.0, count)
    for split in ("train", "validation"):
        folder = directory / split
        folder.mkdir(parents=True)
        rows = ["file_name,text"]
        for i, length in enumerate(seconds):
            sf.write(folder / f"clip_{i:03d}.wav", tone(float(length), freq=200.0 + i), 16000)
            words = " ".join([sentence(i)] * (1 + int(length)))
            rows.append(f"clip_{i:03d}.wav,{words}")
        (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return directory


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mixed_lengths(tmp_path_factory.mktemp("mixed"), 24)


def data_config(path: Path, **overrides: Any) -> DataConfig:
    settings: dict[str, Any] = {"shuffle_buffer": 0, "max_eval_samples": None, "num_workers": 0, **overrides}
    cfg = DataConfig(datasets=[DatasetConfig(path=str(path))], **settings)
    cfg.validate()
    return cfg


def as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def padding_ratio(batches: list[list[dict[str, Any]]], size: Any) -> float:
    """Share of padded cells when each batch is padded to its longest member."""
    padded = sum(len(b) * max(size(s) for s in b) for b in batches)
    return 1 - sum(size(s) for b in batches for s in b) / padded


def test_bucketing_yields_every_record_once_with_less_padding(mixed: Path) -> None:
    cfg = data_config(mixed)
    plain = list(build_eval_stream(cfg))  # finite: one pass over 24 clips
    stream = LengthBucketedStream(build_eval_stream(cfg), batch_size=4, buffer_size=12, seed=1)
    batches = list(StatefulDataLoader(stream, batch_size=4, collate_fn=as_list))
    texts = [s["text"] for b in batches for s in b]
    assert sorted(texts) == sorted(s["text"] for s in plain) and len(set(texts)) == 24
    plain_batches = [plain[i : i + 4] for i in range(0, 24, 4)]
    audio, words = (lambda s: len(s["audio"])), (lambda s: len(s["text"].split()))
    assert padding_ratio(batches, audio) < padding_ratio(plain_batches, audio) / 2
    assert padding_ratio(batches, words) < padding_ratio(plain_batches, words)
    # Within a block batches are sorted by length, but their order is shuffled.
    first_block = [max(audio(s) for s in b) for b in batches[:3]]
    assert first_block != sorted(first_block)


def test_each_rank_shuffles_its_batches_in_its_own_order() -> None:
    """One seed for all ranks would line their long batches up on the same steps."""
    block = [{"audio": np.zeros(n)} for n in range(40)]
    orders = [
        LengthBucketedStream([], batch_size=2, buffer_size=40, seed=7, rank=rank).order(block, 0) for rank in (0, 1, 0)
    ]
    lengths = [[len(item["audio"]) for item in order] for order in orders]
    assert lengths[0] == lengths[2], "the same rank orders a block the same way (exact resume)"
    assert lengths[0] != lengths[1]


def test_bucketing_is_off_unless_asked(mixed: Path) -> None:
    stream = build_train_stream(data_config(mixed))
    assert bucketed(stream, group_by_length=False, batch_size=4, buffer_size=8, seed=0) is stream


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_block_continues_exactly(mixed: Path, num_workers: int) -> None:
    cfg = data_config(mixed, shuffle_buffer=0)

    def loader() -> StatefulDataLoader:
        # Blocks of 4 divide each worker's 12 or 24 records: the first 24 samples are exactly one pass.
        stream = LengthBucketedStream(build_train_stream(cfg), batch_size=2, buffer_size=4, seed=3)
        return StatefulDataLoader(stream, batch_size=2, num_workers=num_workers, collate_fn=as_list)

    def texts(batches: Any, count: int) -> list[str]:
        return [item["text"] for _ in range(count) for item in next(batches)]

    original = loader()
    batches = iter(original)
    seen = texts(batches, 3)  # a worker is mid-block
    state = original.state_dict()
    rest = texts(batches, 14)  # past the end of the pass, into the next one
    restored = loader()
    restored.load_state_dict(state)
    assert texts(iter(restored), 14) == rest
    assert len(set(seen + rest[: 24 - 6])) == 24  # the first pass: each clip once


def test_resume_with_another_batch_size_is_refused(mixed: Path) -> None:
    cfg = data_config(mixed)
    stream = LengthBucketedStream(build_train_stream(cfg), batch_size=2, buffer_size=8, seed=3)
    items = iter(stream)
    next(items)
    state = stream.state_dict()
    other = LengthBucketedStream(build_train_stream(cfg), batch_size=4, buffer_size=8, seed=3)
    with pytest.raises(ValueError, match=r"resume with the same training\.per_device_train_batch_size"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match=r"resume with data\.group_by_length=false"):
        other.load_state_dict(build_train_stream(cfg).state_dict())
    with pytest.raises(
        ValueError, match=r"saved with data\.group_by_length=true; resume with data\.group_by_length=true"
    ):
        build_train_stream(cfg).load_state_dict(state)
