import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from data_helpers import sentence, tone, write_audiofolder, write_jsonl_manifest

from tiny_audio.config import DataConfig, DatasetConfig
from tiny_audio.data.sources import DataSourceError, eval_records
from tiny_audio.data.stream import build_eval_stream, build_train_stream


def data_config(*datasets: DatasetConfig, **overrides: object) -> DataConfig:
    settings: dict[str, object] = {"shuffle_buffer": 0, "max_eval_samples": None, **overrides}
    cfg = DataConfig(datasets=list(datasets), **settings)  # type: ignore[arg-type]
    cfg.validate()
    return cfg


@pytest.mark.parametrize("streaming", [True, False])
def test_audiofolder_yields_16k_mono_float32_with_transcripts(tmp_path: Path, streaming: bool) -> None:
    # 8 kHz stereo in: the stream must resample and downmix.
    root = write_audiofolder(tmp_path / "af", {"train": 4, "validation": 3}, seconds=1.25, rate=8000, channels=2)
    items = list(build_eval_stream(data_config(DatasetConfig(path=str(root)), streaming=streaming)))
    assert [item["text"] for item in items] == [
        "Alpha bravo charlie number 0.",
        "Bravo charlie delta number 1.",
        "Charlie delta echo number 2.",
    ]
    for item in items:
        assert item["audio"].dtype == np.float32
        assert item["audio"].ndim == 1
        assert len(item["audio"]) == 20000  # 1.25 s at 16 kHz
        assert item["skipped"] == []


def test_jsonl_manifest_with_relative_paths(tmp_path: Path) -> None:
    root = write_jsonl_manifest(tmp_path / "manifest", "train", 5, seconds=2.0, rate=44100)
    write_jsonl_manifest(root, "dev", 2, rate=44100)
    cfg = data_config(DatasetConfig(path=str(root), audio_column="path", text_column="sentence", eval_splits=["dev"]))
    train = iter(build_train_stream(cfg))
    items = [next(train) for _ in range(5)]
    assert sorted(item["text"] for item in items) == sorted(sentence(i) for i in range(5))
    assert all(len(item["audio"]) == 32000 and item["audio"].dtype == np.float32 for item in items)
    assert len(list(build_eval_stream(cfg))) == 2


def test_hub_style_parquet_with_embedded_audio(tmp_path: Path) -> None:
    """The layout of Hub datasets such as LoquaciousSet: parquet shards, an Audio-typed `wav` column."""
    features = {"wav": {"_type": "Audio"}, "text": {"dtype": "string", "_type": "Value"}}
    (tmp_path / "data").mkdir()
    for shard in range(2):
        cells = []
        for i in range(3):
            buffer = io.BytesIO()
            sf.write(buffer, tone(1.0, 24000), 24000, format="WAV")
            cells.append({"bytes": buffer.getvalue(), "path": f"utt_{shard}_{i}.wav"})
        table = pa.table({"wav": cells, "text": [f"parquet clip {shard} {i}" for i in range(3)]})
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        pq.write_table(table, tmp_path / "data" / f"dev-0000{shard}-of-00002.parquet")
    cfg = data_config(DatasetConfig(path=str(tmp_path), audio_column="wav", eval_splits=["dev"]))
    items = list(build_eval_stream(cfg))
    assert len(items) == 6
    assert all(len(item["audio"]) == 16000 for item in items)


def test_missing_split_names_the_splits_that_exist(tmp_path: Path) -> None:
    root = write_audiofolder(tmp_path / "af", {"train": 1, "validation": 1})
    cfg = data_config(DatasetConfig(path=str(root), eval_splits=["test"]))
    with pytest.raises(DataSourceError) as caught:
        eval_records(cfg)
    message = str(caught.value)
    assert "no split 'test'" in message
    assert "train, validation" in message
    assert str(root) in message


@pytest.mark.parametrize("streaming", [True, False])
def test_missing_column_names_the_columns_that_exist(tmp_path: Path, streaming: bool) -> None:
    root = write_audiofolder(tmp_path / "af", {"validation": 1})
    cfg = data_config(DatasetConfig(path=str(root), text_column="transcript"), streaming=streaming)
    with pytest.raises(DataSourceError) as caught:
        eval_records(cfg)
    message = str(caught.value)
    assert "no column 'transcript'" in message
    assert "data.datasets[0].text_column" in message
    assert "audio, text" in message


def test_interleave_follows_sampling_weights(tmp_path: Path) -> None:
    first = write_audiofolder(tmp_path / "a", {"train": 240}, seconds=0.5, text_prefix="first ")
    second = write_audiofolder(tmp_path / "b", {"train": 240}, seconds=0.5, text_prefix="second ")
    cfg = data_config(
        DatasetConfig(path=str(first), sampling_weight=3.0),
        DatasetConfig(path=str(second), sampling_weight=1.0),
        shuffle_buffer=50,
    )
    stream = iter(build_train_stream(cfg))
    sources = Counter(next(stream)["text"].split()[0] for _ in range(240))
    assert set(sources) == {"First", "Second"}
    assert 0.68 < sources["First"] / 240 < 0.82, sources
