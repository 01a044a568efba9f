"""`ta export`: the export loads with transformers (pipeline and AutoModel) and transcribes as `ta transcribe`.

All offline: the frozen models are the tiny fixtures; the self-contained export is also loaded in a
separate Python where tiny_audio cannot be imported and the Hub is switched off.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import AutoModel, pipeline
from transformers.dynamic_module_utils import get_relative_imports
from typer.testing import CliRunner

from tests.data_helpers import tone
from tests.export_helpers import (
    MAX_NEW_TOKENS,
    save_tiny_full_decoder_model,
    save_tiny_model,
    ta_transcribe,
    write_clips,
)
from tiny_audio.cli import app
from tiny_audio.export.export import RUNTIME_DIR, ExportError, export_model
from tiny_audio.runtime.audio import resample

RATE = 16000


@pytest.fixture(scope="module")
def saved(tiny_model_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tiny_model_config, tmp_path_factory.mktemp("saved") / "checkpoint-3")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def reference(saved: Path, clips: list[Path]) -> list[str]:
    return ta_transcribe(saved, clips)


@pytest.fixture(scope="module")
def exported(saved: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "default"
    result = CliRunner().invoke(app, ["export", str(saved), str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def pipe(exported: Path):
    return pipeline("automatic-speech-recognition", model=str(exported), trust_remote_code=True, device="cpu")


def test_export_directory_is_transformers_native(exported: Path) -> None:
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "tiny_audio"
    assert config["auto_map"]["AutoModel"] == "modeling_tiny_audio.TinyAudioModel"
    assert config["custom_pipelines"]["automatic-speech-recognition"]["impl"].startswith("pipeline_tiny_audio.")
    assert config["lora"] == "lora" and (exported / "lora" / "adapter_model.safetensors").is_file()
    assert not (exported / "text_model").exists() and not (exported / "audio_model").exists()
    for name in ("model.safetensors", "tokenizer.json", "preprocessor_config.json", "modeling_tiny_audio.py"):
        assert (exported / name).is_file(), name
    # The code a receiver runs must not need tiny_audio installed.
    for code in exported.glob("*.py"):
        lines = code.read_text().splitlines()
        assert not [line for line in lines if line.lstrip().startswith(("from tiny_audio", "import tiny_audio"))]


def test_pipeline_transcribes_files_as_ta_transcribe(pipe, clips: list[Path], reference: list[str]) -> None:
    outputs = pipe([str(c) for c in clips], batch_size=2, max_new_tokens=MAX_NEW_TOKENS)
    assert [o["text"] for o in outputs] == reference
    assert pipe(str(clips[0]), max_new_tokens=MAX_NEW_TOKENS) == {"text": reference[0]}


def test_pipeline_takes_arrays_with_their_rate_and_mixes_stereo(pipe, clips: list[Path], reference) -> None:
    stereo, rate = sf.read(clips[1], dtype="float32")
    assert stereo.shape[1] == 2 and rate == 44100
    as_dict = pipe({"raw": stereo, "sampling_rate": rate}, max_new_tokens=MAX_NEW_TOKENS)
    channels_first = pipe({"array": stereo.T, "sampling_rate": rate}, max_new_tokens=MAX_NEW_TOKENS)
    assert as_dict == channels_first == {"text": reference[1]}
    mono16k, _ = sf.read(clips[0], dtype="float32")
    assert pipe(mono16k, max_new_tokens=MAX_NEW_TOKENS) == {"text": reference[0]}


def test_pipeline_resamples_other_rates(pipe) -> None:
    clip8k = tone(1.2, 8000, freq=300.0)
    got = pipe({"raw": clip8k, "sampling_rate": 8000}, max_new_tokens=MAX_NEW_TOKENS)
    expected = pipe.model.transcribe([resample(clip8k, 8000, RATE)], max_new_tokens=MAX_NEW_TOKENS)
    assert got == {"text": expected[0]}


def test_automodel_loads_the_export(exported: Path, clips: list[Path], reference: list[str]) -> None:
    model = AutoModel.from_pretrained(str(exported), trust_remote_code=True)
    assert type(model).__name__ == "TinyAudioModel"
    audios = [sf.read(clips[0], dtype="float32")[0], sf.read(clips[2], dtype="float32")[0]]
    assert model.transcribe(audios, max_new_tokens=MAX_NEW_TOKENS) == [reference[0], reference[2]]


def test_merged_lora_export_transcribes_the_same(saved: Path, clips, reference, tmp_path: Path) -> None:
    out = export_model(saved, tmp_path / "merged", merge_lora=True).directory
    config = json.loads((out / "config.json").read_text())
    assert config["lora"] is None and config["text_model"] == "text_model" and not (out / "lora").exists()
    card = (out / "README.md").read_text()
    assert "with its LoRA adapter merged into the LLM's weights" in card
    assert "(`text_model/` included, the other referenced by id)" in card
    merged = pipeline("automatic-speech-recognition", model=str(out), trust_remote_code=True, device="cpu")
    assert [o["text"] for o in merged([str(c) for c in clips], max_new_tokens=MAX_NEW_TOKENS)] == reference


def test_self_contained_export_loads_without_tiny_audio_offline(saved: Path, clips, reference, tmp_path) -> None:
    out = export_model(saved, tmp_path / "full", include_frozen_weights=True).directory
    config = json.loads((out / "config.json").read_text())
    assert (config["audio_model"], config["text_model"]) == ("audio_model", "text_model")
    assert "(both included in this repository)" in (out / "README.md").read_text()
    script = (
        "import sys, json\n"
        "sys.modules['tiny_audio'] = None  # a receiver's machine: tiny_audio cannot be imported\n"
        "from transformers import pipeline\n"
        f"pipe = pipeline('automatic-speech-recognition', model={str(out)!r}, trust_remote_code=True, device='cpu')\n"
        f"out = pipe({[str(c) for c in clips]!r}, max_new_tokens={MAX_NEW_TOKENS})\n"
        "print(json.dumps([o['text'] for o in out]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == reference


# --- a decoder trained whole ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_full(tiny_model_config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_full_decoder_model(tiny_model_config, tmp_path_factory.mktemp("saved_full") / "checkpoint-5")


def test_full_decoder_export_carries_the_decoder_and_transcribes_as_ta_transcribe(
    saved_full: Path, clips: list[Path], tmp_path: Path
) -> None:
    expected = ta_transcribe(saved_full, clips)
    out = tmp_path / "full_decoder"
    result = CliRunner().invoke(app, ["export", str(saved_full), str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    # The trained decoder exists nowhere else: it is written into the export, not referenced by id.
    assert (config["text_model"], config["lora"]) == ("text_model", None)
    assert config["audio_model"] != "audio_model" and not (out / "audio_model").exists()
    exported = load_file(str(out / "text_model" / "model.safetensors"))
    trained = load_file(str(saved_full / "decoder.safetensors"))
    assert all(torch.equal(exported[key], value) for key, value in trained.items())
    assert "whose decoder was trained" in (out / "README.md").read_text()
    asr = pipeline("automatic-speech-recognition", model=str(out), trust_remote_code=True, device="cpu")
    assert [o["text"] for o in asr([str(c) for c in clips], max_new_tokens=MAX_NEW_TOKENS)] == expected
    # ... and it matters: the same projector over the base decoder transcribes otherwise.
    base = tmp_path / "base_decoder"
    shutil.copytree(saved_full, base, ignore=shutil.ignore_patterns("decoder*.safetensors*"))
    assert ta_transcribe(base, clips) != expected


# --- bad input ------------------------------------------------------------------------------------


def test_export_refuses_what_is_not_a_checkpoint(tmp_path: Path, exported: Path) -> None:
    (tmp_path / "random").mkdir()
    result = CliRunner().invoke(app, ["export", str(tmp_path / "random"), str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "is not a tiny-audio checkpoint (no tiny_audio_model.json)" in result.output
    with pytest.raises(ExportError, match="already an export"):
        export_model(exported, tmp_path / "again")


def test_pipeline_refuses_long_audio_naming_the_limit_without_decoding_it(pipe, tmp_path: Path) -> None:
    two_hours = tmp_path / "two_hours.flac"
    with sf.SoundFile(two_hours, "w", samplerate=8000, channels=1, format="FLAC") as handle:
        block = np.zeros(8000 * 600, dtype=np.float32)
        for _ in range(12):
            handle.write(block)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"7200\.0 s long; this model reads at most 30 s per clip"):
        pipe(str(two_hours))
    assert time.perf_counter() - start < 2, "the length must be read from the header, not by decoding"
    with pytest.raises(ValueError, match="at most 30 s per clip"):
        pipe({"raw": np.ones(RATE * 31, dtype=np.float32) * 0.1, "sampling_rate": RATE})


def test_pipeline_chunks_long_audio_when_asked(pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[int]] = []
    real = pipe.model.transcribe

    def spy(audios, **kwargs):
        seen.append([len(a) for a in audios])
        return real(audios, **kwargs)

    monkeypatch.setattr(pipe.model, "transcribe", spy)
    clip = tone(65.0, RATE, freq=250.0)
    result = pipe({"raw": clip, "sampling_rate": RATE}, chunk_length_s=30, max_new_tokens=2)
    assert isinstance(result["text"], str)
    (lengths,) = seen
    assert len(lengths) == 3 and sum(lengths) == len(clip) and max(lengths) <= 30 * RATE


def test_pipeline_bad_audio_gets_one_clear_message(pipe, tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio")
    with pytest.raises(ValueError, match=r"cannot decode .*junk\.wav.*readable formats"):
        pipe(str(junk))
    with pytest.raises(ValueError, match="no such audio file"):
        pipe(str(tmp_path / "missing.wav"))
    with pytest.raises(ValueError, match="needs 'raw' \\(or 'array'\\) and 'sampling_rate'"):
        pipe({"raw": np.zeros(100)})
    with pytest.raises(ValueError, match="silent audio"):
        pipe({"raw": np.zeros(RATE, dtype=np.float32), "sampling_rate": RATE})


def test_the_export_carries_the_runtime_as_it_is(exported: Path) -> None:
    for module in sorted(RUNTIME_DIR.glob("*.py")):
        if module.name != "__init__.py":
            assert (exported / module.name).read_text() == module.read_text(), module.name


def test_transformers_copies_every_sibling_each_exported_file_imports(exported: Path) -> None:
    """Remote code loads a file's siblings only if transformers sees them named in `from .x import`."""
    for file in exported.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {alias.name for alias in node.names}
        assert imported <= set(get_relative_imports(file)), file.name
