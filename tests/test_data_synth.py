import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import load_dataset
from typer.testing import CliRunner

from tiny_audio.cli import app
from tiny_audio.config import DataConfig, DatasetConfig
from tiny_audio.data import synth
from tiny_audio.data.stream import build_eval_stream

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="apt package espeak-ng not installed")


def metadata(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@needs_espeak
def test_cli_writes_a_deterministic_audiofolder(tmp_path: Path) -> None:
    for name in ("a", "b"):
        result = CliRunner().invoke(app, ["data", "synth", str(tmp_path / name), "--train", "6", "--validation", "2"])
        assert result.exit_code == 0, result.output
    train = metadata(tmp_path / "a" / "train")
    assert len(train) == 6 and len(metadata(tmp_path / "a" / "validation")) == 2
    assert train == metadata(tmp_path / "b" / "train")
    first = tmp_path / "a" / "train" / train[0]["file_name"]
    assert first.read_bytes() == (tmp_path / "b" / "train" / train[0]["file_name"]).read_bytes()
    info = sf.info(first)
    assert (info.samplerate, info.channels) == (16000, 1)
    assert 0.5 < info.duration < 10


@needs_espeak
def test_synth_output_streams_through_the_pipeline(tmp_path: Path) -> None:
    synth.synthesize(tmp_path, train=2, validation=3, seed=1)
    # `datasets` recognises the layout as an audiofolder with the columns the configs name.
    splits = load_dataset(str(tmp_path), streaming=True)
    assert set(splits) == {"train", "validation"}
    assert set(splits["validation"].column_names) == {"audio", "text"}
    cfg = DataConfig(datasets=[DatasetConfig(path=str(tmp_path))], streaming=False)
    items = list(build_eval_stream(cfg))
    assert [item["text"] for item in items] == [row["text"] for row in metadata(tmp_path / "validation")]
    assert all(item["audio"].dtype == np.float32 and np.abs(item["audio"]).max() > 0.01 for item in items)


def test_plans_vary_voices_speeds_and_sentences() -> None:
    clips = synth.plan_split("train", 200, seed=0)
    assert len({clip.voice.split("+")[0] for clip in clips}) >= 4
    assert len({clip.speed for clip in clips}) > 20
    assert len({clip.text for clip in clips}) > 150
    assert synth.plan_split("train", 200, seed=0) == clips
    assert synth.plan_split("train", 200, seed=1) != clips
    assert {c.text for c in synth.plan_split("validation", 50, seed=0)} != {c.text for c in clips[:50]}


def test_missing_espeak_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path)])
    assert result.exit_code == 1
    assert "apt package `espeak-ng`" in result.output
