"""Preflight: a ✓/✗ checklist that stops at the first failure, each failure naming its fix."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import constants

from tests.data_helpers import write_audiofolder
from tiny_audio.config import LoraConfig
from tiny_audio.training.preflight import CheckResult, largest_batch, preflight_main, run_preflight

CHEAP_CHECKS = ["config", "precision", "tracker", "hub", "models", "output dir", "dataset"]


def failed(results: list[CheckResult]) -> CheckResult:
    assert not results[-1].ok and all(r.ok for r in results[:-1]), results
    return results[-1]


def test_preflight_passes_on_the_tiny_fixtures(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    lines: list[str] = []
    results = run_preflight(tiny_run_config(data), log=lines.append)
    assert [r.name for r in results] == CHEAP_CHECKS and all(r.ok for r in results), lines
    assert all(line.startswith("✓ ") for line in lines)
    assert "trainable parameters" in results[4].detail and "4 train samples" in results[6].detail


def test_full_preflight_builds_the_model_and_runs_one_step_at_max_duration(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    cfg = tiny_run_config(data, data={"max_duration": 2.0}, per_device_train_batch_size=2)
    results = run_preflight(cfg, full=True, log=lambda _: None)
    assert [r.name for r in results] == [*CHEAP_CHECKS, "memory"] and all(r.ok for r in results), results
    assert results[4].detail.startswith("built;") and "collated" in results[6].detail
    assert "batch 2 x 2 s" in results[7].detail


def test_unwritable_output_dir_fails_with_the_key_and_fix(tiny_run_config, tmp_path: Path) -> None:
    # Tests run as root, which ignores permission bits: a directory under a regular file cannot exist at all.
    (tmp_path / "file.txt").write_text("not a directory")
    data = write_audiofolder(tmp_path / "data", {"train": 4, "validation": 2})
    output_dir = tmp_path / "file.txt" / "out"
    lines: list[str] = []
    result = failed(run_preflight(tiny_run_config(data, output_dir=str(output_dir)), log=lines.append))
    assert result.name == "output dir"
    assert lines[-1] == (
        f"✗ output dir: training.output_dir='{output_dir}' is not writable (Not a directory); "
        "point it at a directory you can write to"
    )


def test_missing_dataset_fails_with_the_path(tiny_run_config, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dataset"
    result = failed(run_preflight(tiny_run_config(missing), log=lambda _: None))
    assert result.name == "dataset"
    assert result.detail.startswith(f"data.datasets[0].path='{missing}' is not a directory")


def test_unreadable_dataset_fails_with_the_reason(tiny_run_config, tmp_path: Path) -> None:
    write_audiofolder(tmp_path / "data", {"train": 4, "validation": 2})
    for clip in (tmp_path / "data" / "train").glob("*.wav"):
        clip.write_bytes(np.random.default_rng(0).bytes(512))  # every train clip is noise, not audio
    result = failed(run_preflight(tiny_run_config(tmp_path / "data"), log=lambda _: None))
    assert result.name == "dataset"
    assert result.detail.startswith("4 of the first 4 records") and "unreadable_audio" in result.detail


def test_lora_targets_missing_from_the_llm_are_named(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 4, "validation": 2})
    lora = LoraConfig(enabled=True, target_modules=["q_prj"])
    cfg = tiny_run_config(data, model={"projector_trainable": False, "lora": lora})
    result = failed(run_preflight(cfg, log=lambda _: None))
    assert result.name == "models" and "model.lora.target_modules=['q_prj'] match no linear layer" in result.detail
    assert "q_proj" in result.detail


def test_hub_without_login_fails_before_models_load(
    tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Hub is unreachable here: a closed local port stands in for it, and no token is set.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    cfg = tiny_run_config(tmp_path / "data", push_to_hub=True, hub_model_id="someone/tiny-audio")
    result = failed(run_preflight(cfg, log=lambda _: None))
    assert result.name == "hub" and result.detail.startswith("cannot authenticate with the Hub")
    assert "hf auth login" in result.detail and "training.push_to_hub=false" in result.detail


def test_ta_train_preflight_entry_point(
    tiny_fixtures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The tiny experiment reads its models and data from paths relative to the working directory.
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".fixtures" / "tiny").mkdir(parents=True)
    for name, link in (("glm_asr", "glm-asr"), ("qwen3", "qwen3")):
        (tmp_path / ".fixtures" / "tiny" / link).symlink_to(tiny_fixtures[name])
    write_audiofolder(tmp_path / ".data" / "synth", {"train": 4, "validation": 2})
    small = [
        "data.max_duration=2",
        "data.min_duration=0.1",
        "data.min_words=1",
        "training.per_device_train_batch_size=2",
    ]
    assert preflight_main(["+experiments=tiny", *small]) == 0
    out = capsys.readouterr().out
    assert "✓ memory: forward/backward at batch 2 x 2 s" in out and out.rstrip().endswith("ready to train.")
    assert preflight_main(["+experiments=tiny", "training.max_steps=0"]) == 2
    assert capsys.readouterr().out.startswith("✗ config: training.max_steps=0 is not allowed")


def test_the_memory_probe_turns_its_peak_into_the_largest_batch_that_fits() -> None:
    gib = 2**30
    # 10 GiB of weights; 4 clips peaked at 18 GiB: 2 GiB a clip; 90% of 80 GiB leaves room for 31.
    assert largest_batch(10 * gib, 18 * gib, 4, 80 * gib) == 31
    assert largest_batch(10 * gib, 18 * gib, 4, 80 * gib, headroom=1.0) == 35
    assert largest_batch(70 * gib, 78 * gib, 4, 80 * gib) == 1  # a single clip still fits
    assert largest_batch(75 * gib, 79 * gib, 1, 80 * gib) == 0  # not even one clip
