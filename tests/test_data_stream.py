import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from data_helpers import sentence, tone, write_audiofolder, write_corrupt_audiofolder
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


# --- resume: the same records, in the same order, as a run never interrupted ----------------


@pytest.fixture(scope="module")
def forty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 clips behind one metadata.csv: a single shard, so workers split it record by record."""
    return write_audiofolder(tmp_path_factory.mktemp("forty"), {"train": 40}, seconds=0.5)


def read_texts(cfg: DataConfig, *, workers: int, batches: int, stop_after: int | None = None) -> list[str]:
    """Texts of `batches` batches of one; with `stop_after`, the loader is checkpointed there and
    a fresh loader (fresh worker processes) restored from that checkpoint reads the rest."""

    def loader() -> StatefulDataLoader:
        return StatefulDataLoader(build_train_stream(cfg), batch_size=1, num_workers=workers, collate_fn=as_list)

    first = loader()
    batches_iter = iter(first)
    texts = [next(batches_iter)[0]["text"] for _ in range(stop_after or batches)]
    if stop_after is None:
        return texts
    state = first.state_dict()
    del batches_iter, first
    second = loader()
    second.load_state_dict(state)
    resumed = iter(second)
    return texts + [next(resumed)[0]["text"] for _ in range(batches - stop_after)]


@pytest.mark.parametrize(
    ("workers", "buffer", "overrides"),
    [
        (2, 4, {}),  # the workers have served 3 and 2 batches at the checkpoint
        (3, 4, {}),
        (2, 1000, {}),  # a buffer larger than the data: the whole pass sits in it
        (2, 4, {"max_train_samples": 30}),
        (2, 4, {"streaming": False}),  # a map-style split: 40 shards, split shard by shard
        (0, 4, {}),
    ],
)
def test_resume_reads_exactly_what_an_uninterrupted_run_reads(
    forty: Path, workers: int, buffer: int, overrides: dict[str, object]
) -> None:
    cfg = data_config(forty, shuffle_buffer=buffer, num_workers=workers, seed=7, **overrides)
    per_pass = overrides.get("max_train_samples", 40)
    total = 2 * per_pass + 5  # across two pass boundaries
    expected = read_texts(cfg, workers=workers, batches=total)
    # Every record once per pass (a pass is a permutation of the capped set), then the same set again.
    assert len(set(expected[:per_pass])) == per_pass
    assert set(expected) == set(expected[:per_pass])
    for stop_after in (5, per_pass + 3):
        assert read_texts(cfg, workers=workers, batches=total, stop_after=stop_after) == expected, stop_after


def write_parquet_shards(directory: Path, shards: int, rows: int) -> Path:
    """Hub-style `data/train-0000k-of-0000n.parquet` with embedded audio, in row groups of 3."""
    features = {"audio": {"_type": "Audio"}, "text": {"dtype": "string", "_type": "Value"}}
    (directory / "data").mkdir(parents=True)
    for shard in range(shards):
        cells, texts = [], []
        for i in range(rows):
            buffer = io.BytesIO()
            sf.write(buffer, tone(0.5, freq=200.0 + shard * rows + i), 16000, format="WAV")
            cells.append({"bytes": buffer.getvalue(), "path": None})
            texts.append(sentence(shard * rows + i))
        table = pa.table({"audio": cells, "text": texts})
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, directory / "data" / f"train-{shard:05d}-of-{shards:05d}.parquet", row_group_size=3)
    return directory


@pytest.mark.parametrize(
    ("workers", "overrides", "per_pass"),
    [
        (2, {}, 24),  # 4 shards, 2 workers: two whole shards each
        (3, {}, None),  # 4 shards, 3 workers: 2, 1 and 1 shards
        (2, {"max_train_samples": 20}, 20),  # a cap: record by record, across row groups
    ],
)
def test_resume_of_parquet_shards_is_exact_inside_a_row_group(
    tmp_path: Path, workers: int, overrides: dict[str, object], per_pass: int | None
) -> None:
    root = write_parquet_shards(tmp_path, shards=4, rows=6)
    cfg = data_config(root, shuffle_buffer=4, num_workers=workers, **overrides)
    expected = read_texts(cfg, workers=workers, batches=30)
    if per_pass is not None:
        assert len(set(expected[:per_pass])) == per_pass
    assert read_texts(cfg, workers=workers, batches=30, stop_after=7) == expected


def test_a_mix_reaches_every_record_of_every_dataset_and_resumes_exactly(tmp_path: Path) -> None:
    small = write_audiofolder(tmp_path / "small", {"train": 6}, seconds=0.5, text_prefix="small ")
    large = write_audiofolder(tmp_path / "large", {"train": 30}, seconds=0.5, text_prefix="large ")
    cfg = DataConfig(
        datasets=[DatasetConfig(path=str(small)), DatasetConfig(path=str(large))],
        shuffle_buffer=4,
        num_workers=2,
    )
    expected = read_texts(cfg, workers=2, batches=80)
    # Equal weights: about 40 draws from the large set; each of its 30 clips is among them,
    # although the small set runs out (and starts over) after about 6.
    assert {text for text in expected if text.startswith("Large")} == {sentence(i, "large ") for i in range(30)}
    assert read_texts(cfg, workers=2, batches=80, stop_after=9) == expected


def test_max_train_samples_is_the_same_first_records_every_pass(forty: Path) -> None:
    cfg = data_config(forty, shuffle_buffer=8, max_train_samples=10, num_workers=2, seed=1)
    texts = read_texts(cfg, workers=2, batches=30)
    first_ten = {sentence(i) for i in range(10)}
    for start in (0, 10, 20):
        assert set(texts[start : start + 10]) == first_ten
    assert texts[:10] != texts[10:20]  # the order is reshuffled each pass


def test_a_mix_shares_max_train_samples_by_weight(tmp_path: Path) -> None:
    first = write_audiofolder(tmp_path / "a", {"train": 20}, seconds=0.5, text_prefix="first ")
    second = write_audiofolder(tmp_path / "b", {"train": 20}, seconds=0.5, text_prefix="second ")
    cfg = data_config(first, max_train_samples=10, shuffle_buffer=4)
    cfg.datasets = [DatasetConfig(path=str(first), sampling_weight=3.0), DatasetConfig(path=str(second))]
    stream = iter(build_train_stream(cfg))
    texts = {next(stream)["text"] for _ in range(200)}
    assert texts == {sentence(i, "first ") for i in range(8)} | {sentence(i, "second ") for i in range(2)}


def test_train_items_carry_an_augmentation_key_per_pass_and_eval_items_none(twelve: Path) -> None:
    """(dataset, pass, hashed record id): what seeds a record's audio augmentation in that pass."""
    cfg = data_config(twelve, shuffle_buffer=4)
    train = iter(build_train_stream(cfg))
    keys = [next(train)["augment_key"] for _ in range(24)]
    assert [key[:2] for key in keys] == [[0, 0]] * 12 + [[0, 1]] * 12
    assert sorted(k[2] for k in keys[:12]) == sorted(k[2] for k in keys[12:])  # the same records, reshuffled
    assert [k[2] for k in keys[:12]] != [k[2] for k in keys[12:]]
    assert len({k[2] for k in keys}) == 12
    assert all("augment_key" not in item for item in build_eval_stream(cfg))


def test_augmentation_keys_do_not_depend_on_where_the_dataset_lives(twelve: Path, tmp_path: Path) -> None:
    """The same clips under another path (another user's cache) draw the same augmentation."""
    import shutil

    moved = shutil.copytree(twelve, tmp_path / "elsewhere" / "speech")
    streams = [iter(build_train_stream(data_config(folder, shuffle_buffer=4))) for folder in (twelve, moved)]
    keys = [[next(stream)["augment_key"] for _ in range(24)] for stream in streams]
    assert keys[0] == keys[1]


def test_each_reader_keeps_its_shards_every_pass_in_a_new_order() -> None:
    """Shards are dealt to readers once, so a rank's encoder-output cache meets its clips again next pass."""
    from datasets import IterableDataset

    from tiny_audio.data.cursor import SourceCursor

    def records(shards: list[int]):
        for shard in shards:
            for index in range(3):
                yield {"shard": shard, "index": index}

    source = IterableDataset.from_generator(records, gen_kwargs={"shards": list(range(8))})
    dealt = []
    for reader in range(2):
        cursor = SourceCursor(source, seed=0, source=0, worker=reader, workers=2, buffer_size=4)
        passes = []
        for _ in range(3):
            passes.append([r["shard"] for r in iter(cursor.next, None)])
            cursor.next_pass()
        assert all(sorted(p) == sorted(passes[0]) for p in passes)  # the same shards, all of them, each pass
        assert len({tuple(p) for p in passes}) == 3  # in a new order each pass
        dealt.append(set(passes[0]))
    assert dealt[0].isdisjoint(dealt[1]) and dealt[0] | dealt[1] == set(range(8))
