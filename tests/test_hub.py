"""Hub push: a failing Hub never stops training or leaks the token; a working one gets every checkpoint.

The Hub is unreachable from the test machines, so a failing Hub is either a closed port on
127.0.0.1 (real HTTP client code, connection refused) or HfApi.upload_folder patched to raise; a
working Hub is HfApi.upload_folder patched to copy into a local "repo" directory.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import HfApi, constants
from safetensors.torch import load_file

from tests.data_helpers import write_audiofolder
from tiny_audio.hub_token import scrub_token
from tiny_audio.model.build import PROJECTOR_FILE, load_pretrained
from tiny_audio.recipe.run import run
from tiny_audio.training.hub import STAGING_DIR, HubPushCallback

SECRET = "hf_TestOnlySecretToken0123456789"


@pytest.fixture
def fake_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login from the machine
    return SECRET


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_hub_warns_once_and_training_finishes(
    tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], fake_token
) -> None:
    # Failing Hub: nothing listens on this port, so every request is refused.
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    # The callback is passed in rather than set up from training.push_to_hub, whose preflight would stop the run.
    cfg = tiny_run_config(data, max_steps=6, save_steps=2)
    lines: list[str] = []
    hub = HubPushCallback("someone/tiny-audio", retries=2, backoff_seconds=0.01)
    state = run(cfg, callbacks=[hub], log=lines.append)
    run_dir = tmp_path / "run"
    assert state.step == 6
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1, lines
    assert "could not upload checkpoint-2" in warnings[0] and "after 3 attempts" in warnings[0]
    assert "Training continues" in warnings[0]
    assert hub.failures == 3 and hub.pushed is None
    # The export of the final model is logged after it (see tiny_audio.recipe.callbacks).
    final = next(line for line in reversed(lines) if line.startswith("The final model"))
    assert final.startswith("The final model (checkpoint-6) is not on the Hub"), lines[-3:]
    assert not (run_dir / STAGING_DIR).exists() or not any((run_dir / STAGING_DIR).iterdir())
    captured = capfd.readouterr()
    assert SECRET not in "\n".join(lines) + captured.out + captured.err


def test_a_token_in_an_upload_error_is_scrubbed(
    tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_token
) -> None:
    # Failing Hub: upload_folder patched to raise an error that quotes the token.
    def leaky_upload(self: HfApi, **kwargs: Any) -> None:
        raise PermissionError(f"403 Forbidden: Authorization: Bearer {SECRET}")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", leaky_upload)
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    cfg = tiny_run_config(data, max_steps=2, save_steps=2)
    lines: list[str] = []
    run(cfg, callbacks=[HubPushCallback("someone/tiny-audio", retries=0)], log=lines.append)
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert "Bearer ***" in warning and SECRET not in "\n".join(lines)
    assert scrub_token(f"token={SECRET}") == "token=***"


def test_a_working_hub_receives_every_checkpoint_and_the_final_model_loads(
    tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_token
) -> None:
    repo = tmp_path / "hub-repo"
    commits: list[str] = []

    def copy_upload(self: HfApi, *, repo_id: str, folder_path: str, commit_message: str, **kwargs: Any) -> None:
        assert repo_id == "someone/tiny-audio"
        shutil.copytree(folder_path, repo, dirs_exist_ok=True)
        commits.append(commit_message)

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", copy_upload)
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    # save_total_limit=1 prunes each checkpoint at the next save, possibly while it is uploading.
    cfg = tiny_run_config(data, max_steps=6, save_steps=2, save_total_limit=1)
    lines: list[str] = []
    hub = HubPushCallback("someone/tiny-audio", retries=1)
    run(cfg, callbacks=[hub], log=lines.append)
    assert commits == ["Upload checkpoint-2", "Upload checkpoint-4", "Upload checkpoint-6"]
    assert any(line.startswith("Final model (checkpoint-6) is on the Hub") for line in lines), lines
    assert not [line for line in lines if line.startswith("warning:")]
    final = tmp_path / "run" / "checkpoint-6"
    assert load_file(str(repo / PROJECTOR_FILE)).keys() == load_file(str(final / PROJECTOR_FILE)).keys()
    model = load_pretrained(str(repo))
    for name, tensor in load_file(str(final / PROJECTOR_FILE)).items():
        assert torch.equal(model.projector.state_dict()[name], tensor), name
