from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from data_helpers import write_audiofolder, write_corrupt_audiofolder
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from tiny_audio.config import DataConfig, DatasetConfig
from tiny_audio.data.guard import DataQualityError
from tiny_audio.data.skips import SkipLedger
from tiny_audio.data.sources import DataSourceError
from tiny_audio.data.stream import build_eval_stream, build_train_stream


def data_config(path: Path, **overrides: object) -> DataConfig:
    settings: dict[str, object] = {"shuffle_buffer": 0, "max_eval_samples": None, "num_workers": 0, **overrides}
    cfg = DataConfig(datasets=[DatasetConfig(path=str(path))], **settings)  # type: ignore[arg-type]
    cfg.validate()
    return cfg


def as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


@pytest.fixture(scope="module")
def twelve(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One metadata.csv per split: fewer shards than workers x ranks when streaming."""
    return write_audiofolder(tmp_path_factory.mktemp("twelve"), {"train": 12, "validation": 12}, seconds=0.6)


@pytest.mark.parametrize("streaming", [True, False])
def test_corrupt_samples_are_counted_exactly_and_never_fatal(tmp_path: Path, streaming: bool) -> None:
    expected = write_corrupt_audiofolder(tmp_path)
    cfg = data_config(tmp_path, streaming=streaming)
    ledger, texts = SkipLedger(), []
    for item in build_eval_stream(cfg):
        ledger.extend(item["skipped"])
        texts.append(item["text"])
    assert ledger.counts() == expected
    assert len(texts) == 12
    # The train stream meets the same bad samples again on every pass; ids de-duplicate them.
    train, ledger = iter(build_train_stream(cfg)), SkipLedger()
    for _ in range(12 * 3):
        ledger.extend(next(train)["skipped"])
    assert ledger.counts() == expected


def test_mostly_bad_data_stops_with_a_named_error(tmp_path: Path) -> None:
    write_corrupt_audiofolder(tmp_path, good=1)
    cfg = data_config(tmp_path, bad_check_samples=8, max_bad_fraction=0.5)
    stream = iter(build_train_stream(cfg))
    with pytest.raises(DataQualityError) as caught:
        for _ in range(10):  # the first record is good; the verdict comes a few records later
            next(stream)
    message = str(caught.value)
    assert f"'{tmp_path}'" in message
    assert "unreadable_audio 3 (e.g. " in message and "corrupt_random.wav" in message
    assert "data.max_bad_fraction=0.5" in message


def test_the_guard_error_reaches_the_main_process_from_a_worker(tmp_path: Path) -> None:
    write_corrupt_audiofolder(tmp_path, good=1)
    stream = build_train_stream(data_config(tmp_path, bad_check_samples=8))
    loader = DataLoader(stream, batch_size=2, num_workers=1, collate_fn=as_list)
    batches = iter(loader)
    try:
        with pytest.raises(DataQualityError, match="unreadable_audio 3"):
            next(batches)
    finally:
        # Shut the worker down while the iterator is intact: left to the garbage collector (the
        # traceback holds it in a cycle), torch waits out a 5 s join timeout.
        batches._shutdown_workers()


@pytest.mark.parametrize("streaming", [True, False])
def test_two_workers_and_two_ranks_see_each_sample_once(twelve: Path, streaming: bool) -> None:
    cfg = data_config(twelve, streaming=streaming)
    eval_texts: list[str] = []
    train_texts: list[str] = []
    for rank in range(2):
        evaluation = DataLoader(build_eval_stream(cfg, rank=rank, world_size=2), num_workers=2, collate_fn=as_list)
        eval_texts += [item["text"] for batch in evaluation for item in batch]
        # Each worker's first pass is 12 / 4 = 3 samples; the loader alternates workers.
        train = DataLoader(build_train_stream(cfg, rank=rank, world_size=2), num_workers=2, collate_fn=as_list)
        batches = iter(train)
        train_texts += [item["text"] for _ in range(6) for item in next(batches)]
    for texts in (eval_texts, train_texts):
        assert len(texts) == 12
        assert len(set(texts)) == 12


def test_train_stream_is_endless_and_reshuffles_each_pass(twelve: Path) -> None:
    stream = iter(build_train_stream(data_config(twelve, shuffle_buffer=100, seed=3)))
    passes = [[next(stream)["text"] for _ in range(12)] for _ in range(3)]
    assert all(sorted(p) == sorted(passes[0]) for p in passes)
    assert passes[0] != passes[1] != passes[2]
    again = iter(build_train_stream(data_config(twelve, shuffle_buffer=100, seed=3)))
    assert [next(again)["text"] for _ in range(12)] == passes[0]  # deterministic for a seed


def test_eval_stream_is_capped_and_ordered(twelve: Path) -> None:
    cfg = data_config(twelve, max_eval_samples=5)
    texts = [item["text"] for item in build_eval_stream(cfg)]
    assert texts == [item["text"] for item in build_eval_stream(cfg)]
    assert [text.split()[-1] for text in texts] == ["0.", "1.", "2.", "3.", "4."]


def test_max_train_samples_caps_each_pass(twelve: Path) -> None:
    stream = iter(build_train_stream(data_config(twelve, max_train_samples=4)))
    assert Counter(next(stream)["text"] for _ in range(12)) == Counter(
        {text: 3 for text in {next(stream)["text"] for _ in range(4)}}
    )


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("streaming", [True, False])
def test_resume_continues_without_replay(twelve: Path, num_workers: int, streaming: bool) -> None:
    cfg = data_config(twelve, streaming=streaming)

    def loader() -> StatefulDataLoader:
        return StatefulDataLoader(build_train_stream(cfg), batch_size=2, num_workers=num_workers, collate_fn=as_list)

    def texts(batches: Any, count: int) -> list[str]:
        return [item["text"] for _ in range(count) for item in next(batches)]

    original = loader()
    batches = iter(original)
    seen = texts(batches, 2)
    state = original.state_dict()
    rest = texts(batches, 6)  # the remaining 8 samples of the pass, then 4 of the next
    assert sorted(seen + rest[:8]) == sorted(set(seen + rest[:8]))  # one full pass, no repeats

    restored = loader()
    restored.load_state_dict(state)
    assert texts(iter(restored), 6) == rest


def test_a_worker_without_records_fails_instead_of_hanging(tmp_path: Path) -> None:
    root = write_audiofolder(tmp_path, {"train": 3})
    stream = build_train_stream(data_config(root), rank=3, world_size=4)  # 3 records, 4 ranks
    with pytest.raises(DataQualityError, match=r"lower data\.num_workers"):
        next(iter(stream))


def test_a_missing_local_directory_says_how_to_make_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataSourceError, match="ta data synth"):
        build_eval_stream(data_config(Path(".data/synth")))


def test_resume_of_an_interleaved_mix(tmp_path: Path) -> None:
    first = write_audiofolder(tmp_path / "a", {"train": 12}, seconds=0.5, text_prefix="first ")
    second = write_audiofolder(tmp_path / "b", {"train": 12}, seconds=0.5, text_prefix="second ")
    cfg = DataConfig(
        datasets=[DatasetConfig(path=str(first), sampling_weight=3.0), DatasetConfig(path=str(second))],
        shuffle_buffer=0,
    )
    original = StatefulDataLoader(build_train_stream(cfg), batch_size=2, num_workers=2, collate_fn=as_list)
    batches = iter(original)
    seen = [item["text"] for _ in range(2) for item in next(batches)]
    state = original.state_dict()
    rest = [item["text"] for _ in range(3) for item in next(batches)]
    restored = StatefulDataLoader(build_train_stream(cfg), batch_size=2, num_workers=2, collate_fn=as_list)
    restored.load_state_dict(state)
    resumed = iter(restored)
    assert [item["text"] for _ in range(3) for item in next(resumed)] == rest
    assert not set(seen) & set(rest)
