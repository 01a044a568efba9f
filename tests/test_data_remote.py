"""Datasets at a URL: naming their files, and reading through a host that drops, stalls and dies.

The host is tests/http_shards.FaultyServer on 127.0.0.1, serving parquet shards with the audio inside.
Each clip's transcript ends with its number, so the texts a loader yields identify the records read.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import signal
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch
from datasets import IterableDataset

from tests.data_helpers import sentence, tone
from tests.http_shards import FaultyServer, write_parquet_shards
from tests.test_resume import projector_weights, start_child, wait_for
from tiny_audio.config import Config, ConfigError, DatasetConfig, RemoteConfig
from tiny_audio.data import remote
from tiny_audio.data.cursor import SourceCursor
from tiny_audio.data.sources import COMMON_FEATURES, train_records
from tiny_audio.recipe.run import run
from tiny_audio.training import checkpoints
from tiny_audio.training.data_host import DataHostDownError
from tiny_audio.training.loaders import build_train_loader
from tiny_audio.training.preflight import run_preflight
from tiny_audio.training.trainer import Callback, Trainer

quiet = lambda _: None  # noqa: E731
# Short enough for tests, long enough that a loaded 2-core machine does not trip them.
FAST = RemoteConfig(retries=6, backoff=0.05, max_backoff=0.4, timeout=1.0)
TRAIN_FILES = {"train": ["train-{00000..00003}.parquet"], "validation": ["validation-00000.parquet"]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_parquet_shards(root, "train", shards=4, per_shard=5)
    write_parquet_shards(root, "validation", shards=1, per_shard=4)
    return root


def remote_entry(server: FaultyServer) -> DatasetConfig:
    return DatasetConfig(path=server.base, data_files=TRAIN_FILES)


def with_remote_data(cfg: Config, server: FaultyServer, settings: RemoteConfig = FAST) -> Config:
    cfg.data = dataclasses.replace(cfg.data, datasets=[remote_entry(server)], remote=settings)
    return cfg.validate()


# --- naming the files ------------------------------------------------------------------------


def test_numbered_ranges_expand_with_their_padding() -> None:
    assert remote.expand("train-{00008..00011}.parquet") == [f"train-{i:05d}.parquet" for i in range(8, 12)]
    assert remote.expand("part{1..2}/x{9..10}.jsonl") == [
        "part1/x9.jsonl",
        "part1/x10.jsonl",
        "part2/x9.jsonl",
        "part2/x10.jsonl",
    ]


def test_a_split_resolves_to_urls_under_the_path_and_one_builder() -> None:
    entry = DatasetConfig(
        path="https://data.example.com/sets/",
        data_files={"train": ["t-{0..1}.jsonl", "https://mirror.example.com/x.jsonl"]},
    )
    split = remote.remote_split(entry, 0, "train")
    assert split.builder == "json"
    assert split.urls == (
        "https://data.example.com/sets/t-0.jsonl",
        "https://data.example.com/sets/t-1.jsonl",
        "https://mirror.example.com/x.jsonl",
    )
    mixed = DatasetConfig(path="https://h.example.com", data_files={"train": ["a.parquet", "b.jsonl"]})
    with pytest.raises(remote.RemoteDataError, match=r"data.datasets\[3\].data_files.train mixes .*\.jsonl, \.parquet"):
        remote.remote_split(mixed, 3, "train")
    with pytest.raises(remote.RemoteDataError, match=r"data_files has no split 'dev'.*its splits are: train"):
        remote.remote_split(entry, 0, "dev")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_s3_without_s3fs_names_the_package_to_install() -> None:
    entry = DatasetConfig(path="s3://bucket/set", data_files={"train": ["train.parquet"]})
    with pytest.raises(remote.RemoteDataError) as error:
        remote.remote_split(entry, 0, "train")
    assert str(error.value) == "data.datasets[0]: reading s3:// files needs the s3fs package: pip install s3fs"


def test_a_url_path_needs_data_files_and_a_local_one_refuses_them() -> None:
    with pytest.raises(ConfigError, match=r"data.datasets\[0\].data_files"):
        Config(
            data=dataclasses.replace(Config().data, datasets=[DatasetConfig(path="https://h.example.com/x")])
        ).validate()
    local = DatasetConfig(path="/data/set", data_files={"train": ["a.parquet"]})
    with pytest.raises(ConfigError, match="empty unless path is an http"):
        Config(data=dataclasses.replace(Config().data, datasets=[local])).validate()


def test_remote_records_keep_the_common_schema_and_stable_ids(tmp_path: Path, shards: Path) -> None:
    """Parquet with the audio inside, and jsonl naming clips, read as the same undecoded records twice."""
    clip = tmp_path / "clip.flac"
    sf.write(clip, tone(0.6), 16000)
    (shards / "manifest.jsonl").write_text(json.dumps({"audio": str(clip), "text": "a clip on a shared disk"}) + "\n")
    with FaultyServer(shards) as server:
        entries = [
            remote_entry(server),
            DatasetConfig(path=server.base, data_files={"train": ["manifest.jsonl"], "validation": ["manifest.jsonl"]}),
        ]
        cfg = dataclasses.replace(Config().data, datasets=entries, remote=FAST)
        first, again = list(train_records(cfg)), list(train_records(cfg))
    assert first == again and len(first) == 21
    assert set(first[0]) == set(COMMON_FEATURES)
    assert first[0]["sample_id"] == f"{server.base}/train/train_0000.flac" and first[0]["audio_bytes"][:4] == b"fLaC"
    assert first[0]["text"] == sentence(0)
    assert first[-1]["audio_path"] == str(clip) and first[-1]["audio_bytes"] is None


# --- faults ----------------------------------------------------------------------------------


def texts_through_the_train_loader(cfg: Config, batches: int) -> list[str]:
    """Transcripts of the first `batches` batches of the loader training builds (workers, shuffle, passes)."""
    loader = build_train_loader(cfg, lambda samples: [sample["text"] for sample in samples])
    iterator = iter(loader)
    return [text for _ in range(batches) for text in next(iterator)]


def loader_config(tiny_run_config, shards: Path, server: FaultyServer, split_by: str) -> Config:
    # A cap splits the dataset among workers by records (every n-th), not by whole shards.
    cap = {"max_train_samples": 20} if split_by == "records" else {}
    data = {"num_workers": 2, "shuffle_buffer": 6, **cap}
    return with_remote_data(tiny_run_config(shards, data=data, per_device_train_batch_size=3), server)


@pytest.mark.parametrize("split_by", ["shards", "records"])
def test_a_host_that_drops_and_stalls_yields_exactly_the_undisturbed_records(
    tiny_run_config, shards: Path, split_by: str
) -> None:
    """20 records, 2 workers: 16 batches of 3 cross into the third pass."""
    with FaultyServer(shards) as clean:
        expected = texts_through_the_train_loader(loader_config(tiny_run_config, shards, clean, split_by), 16)
    with FaultyServer(shards, reset_every=3, stall_once=True, stall_after=2, stall_seconds=20) as faulty:
        started = time.monotonic()
        got = texts_through_the_train_loader(loader_config(tiny_run_config, shards, faulty, split_by), 16)
        elapsed = time.monotonic() - started
    assert faulty.resets >= 3 and faulty.stalls == 1  # the faults did happen
    assert elapsed < 15  # the stall was cut by the read timeout, not waited out
    assert got == expected  # same records, same order: nothing lost, nothing read twice
    assert len(set(got)) == 20 and all(got.count(text) <= 3 for text in got)  # 48 reads of 20 records


def test_a_host_that_stays_down_stops_training_with_one_line(tiny_run_config, shards: Path) -> None:
    settings = RemoteConfig(retries=3, backoff=0.05, max_backoff=0.1, timeout=1.0)
    with FaultyServer(shards) as server:
        output_dir = shards.parent / "down"
        data = {"num_workers": 2, "shuffle_buffer": 6}  # the error crosses from a loader worker
        cfg = tiny_run_config(shards, output_dir=str(output_dir), data=data, max_steps=200, save_steps=2)
        cfg = with_remote_data(cfg, server, settings)
        started = time.monotonic()
        with pytest.raises(DataHostDownError) as error:
            run(cfg, callbacks=[StopServerAt(3, server)], log=quiet)
    message = str(error.value)
    assert "\n" not in message, message
    assert time.monotonic() - started < 60
    assert message.startswith(f"training stopped: cannot read {server.base}/train-0000")
    assert "3 retries over 0 s failed (last error " in message
    last = checkpoints.latest_checkpoint(output_dir)  # workers had records buffered when the host died
    assert last is not None and f"the last complete checkpoint is {last}" in message
    assert message.endswith(f"resume with: training.resume_from_checkpoint=latest training.output_dir={output_dir}")


class StopServerAt(Callback):
    def __init__(self, step: int, server: FaultyServer) -> None:
        self.step, self.server = step, server

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.state.step == self.step:
            self.server.stop()


def test_preflight_names_an_unreachable_file_before_models_load(tiny_run_config, shards: Path) -> None:
    with FaultyServer(shards) as server:
        cfg = with_remote_data(tiny_run_config(shards), server)
        ok = run_preflight(cfg, log=quiet)
        assert [r.name for r in ok][:2] == ["config", "remote data"] and all(r.ok for r in ok), ok
        assert ok[1].detail == "5 remote files reachable"
        (shards / "train-00002.parquet").rename(shards / "moved.parquet")
        try:
            results = run_preflight(cfg, log=quiet)
        finally:
            (shards / "moved.parquet").rename(shards / "train-00002.parquet")
    assert [r.name for r in results] == ["config", "remote data"] and not results[-1].ok
    assert results[-1].detail.startswith(f"{server.base}/train-00002.parquet is unreachable (FileNotFoundError")


def test_sigkill_mid_faulty_stream_then_resume_matches_an_uninterrupted_run(
    tiny_run_config, shards: Path, tmp_path: Path
) -> None:
    settings = {"max_steps": 10, "save_steps": 4, "per_device_train_batch_size": 3}
    settings["data"] = {"num_workers": 2, "shuffle_buffer": 1000}
    with FaultyServer(shards, reset_every=4, stall_once=True, stall_after=6, stall_seconds=20) as server:
        reference = with_remote_data(
            tiny_run_config(shards, output_dir=str(tmp_path / "reference"), **settings), server
        )
        run(reference, log=quiet)
        killed = tiny_run_config(shards, output_dir=str(tmp_path / "killed"), save_total_limit=10, **settings)
        killed = with_remote_data(killed, server)
        child = start_child(killed, tmp_path)
        try:
            wait_for(tmp_path / "killed" / "checkpoint-4" / checkpoints.STATE_FILE, child)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            child.kill()
        interrupted_at = checkpoints.latest_checkpoint(tmp_path / "killed")
        assert interrupted_at is not None and interrupted_at.name != "checkpoint-10"
        killed.training.resume_from_checkpoint = "latest"
        assert run(killed, log=quiet).step == 10
    assert server.resets >= 3 and server.stalls == 1
    final = projector_weights(tmp_path / "killed" / "checkpoint-10")
    expected = projector_weights(tmp_path / "reference" / "checkpoint-10")
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key


class HostCuttingAt:
    """Records 0..n-1, then a dropped connection, on each of the first `give_up_after` openings."""

    def __init__(self, n: int, give_up_after: int = 10) -> None:
        self.n, self.give_up_after, self.openings = n, give_up_after, 0

    def __call__(self):
        self.openings += 1
        for i in range(self.n + 2):
            if i == self.n and self.openings <= self.give_up_after:
                raise ConnectionResetError(104, "Connection reset by peer")
            yield {"i": i}


def test_a_host_failing_at_the_same_record_every_time_spends_the_retries() -> None:
    """Records re-read before the failing one are not progress: the retries still run out.

    Reader 0 of 2 reads records 0, 2, 4...; each retry reopens after record 2 and reads record 3
    (the other reader's) again before record 4 fails again.
    """
    host = HostCuttingAt(4)
    records = IterableDataset.from_generator(host)
    cursor = SourceCursor(records, seed=0, source=0, worker=0, workers=2, buffer_size=0, remote=FAST)
    assert [cursor.next()["i"] for _ in range(2)] == [0, 2]
    with pytest.raises(remote.RemoteReadError, match=r"6 retries over 2 s failed \(last error ConnectionResetError"):
        cursor.next()
    assert host.openings == 7


def test_a_host_down_at_the_start_fails_opening_with_one_line(shards: Path) -> None:
    with FaultyServer(shards) as server:
        pass  # stopped: its port refuses connections
    cfg = dataclasses.replace(Config().data, datasets=[remote_entry(server)], remote=FAST)
    with pytest.raises(remote.RemoteReadError) as error:
        train_records(cfg)
    assert str(error.value).startswith(
        f"cannot read {server.base}/train-00000.parquet (opening data.datasets[0] split 'train'): 6 retries over"
    )


def test_a_missing_file_fails_opening_at_once_naming_it(shards: Path) -> None:
    with FaultyServer(shards) as server:
        entry = DatasetConfig(path=server.base, data_files={"train": ["train-{00003..00004}.parquet"]})
        cfg = dataclasses.replace(Config().data, datasets=[entry], remote=FAST)
        with pytest.raises(remote.RemoteDataError) as error:
            train_records(cfg)
    assert str(error.value).startswith(
        f"data.datasets[0].data_files.train: {server.base}/train-00004.parquet was not found (FileNotFoundError"
    )
