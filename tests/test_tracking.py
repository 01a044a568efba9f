"""W&B: an offline run's files hold the named keys; a run without a login fails before training.

The W&B server is unreachable from the test machines: runs use WANDB_MODE=offline and the
assertions read the run's `.wandb` transaction log with wandb's own protobuf records.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wandb.proto import wandb_internal_pb2

from tests.data_helpers import write_corrupt_audiofolder
from tiny_audio.recipe.run import run
from tiny_audio.training.preflight import run_preflight
from tiny_audio.training.tracking import TrackerLoginError, require_tracker
from tiny_audio.training.trainer import Callback

LOGIN_HINTS = ("wandb login", "export WANDB_API_KEY=", "training.report_to=none", "WANDB_MODE=offline")


def wandb_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Records of a `.wandb` file. wandb 0.31 reads these only in its Go core, so the framing is read
    here: a 7-byte file header, then LevelDB-log chunks (crc32 u32, length u16, type u8) in 32 KiB
    blocks, types FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4."""
    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", path
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


class FakeWer(Callback):
    """Stands in for the WER callback: adds what it adds to the eval metrics."""

    def on_evaluate(self, trainer: Any, metrics: dict[str, Any]) -> None:
        metrics["eval/wer"] = 0.5
        metrics["eval/predictions"] = [{"reference": "alpha bravo", "prediction": "alpha"}] * 3


@pytest.fixture
def wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))


def nested(items: Any) -> dict[str, Any]:
    """History/summary items as a dict; a key path such as ("eval/loss", "min") becomes nested dicts."""
    found: dict[str, Any] = {}
    for item in items:
        *parents, last = list(item.nested_key) or [item.key]
        node = found
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = json.loads(item.value_json)
    return found


def test_offline_wandb_run_holds_the_named_keys(tiny_run_config, tmp_path: Path, wandb_offline: None) -> None:
    expected_skips = write_corrupt_audiofolder(tmp_path / "data")
    cfg = tiny_run_config(tmp_path / "data", max_steps=6, logging_steps=2, eval_steps=3, report_to="wandb")
    run(cfg, callbacks=[FakeWer()], log=lambda _: None)  # run() adds the TrackerCallback
    (log_file,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    # W&B's core process writes the file on its own schedule; on a loaded machine the last
    # records can land just after finish() returns, so read again (bounded) until the summary is in.
    deadline = time.monotonic() + 20
    while True:
        rows, summary = [], {}
        for record in wandb_records(log_file):
            if record.WhichOneof("record_type") == "history":
                rows.append(nested(record.history.item))
            elif record.WhichOneof("record_type") == "summary":
                summary.update(nested(record.summary.update))
        if "eval/wer" in summary or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    keys = {key for row in rows for key in row}
    assert {"train/loss", "train/grad_norm", "train/learning_rate", "eval/loss", "eval/wer"} <= keys, keys
    assert {f"data/skipped_{reason}" for reason in expected_skips} <= keys, keys
    (first_table, *_) = [row["eval/predictions"] for row in rows if "eval/predictions" in row]
    table = json.loads((log_file.parent / "files" / first_table["path"]).read_text())
    assert table["columns"] == ["step", "reference", "prediction"]
    assert table["data"] == [[3, "alpha bravo", "alpha"]] * 3
    # The run page shows the best eval loss and WER, not only the last.
    assert "min" in summary["eval/loss"] and summary["eval/wer"]["min"] == 0.5, summary


@pytest.fixture
def wandb_not_logged_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key in the environment, an empty HOME (no ~/.netrc), no terminal on stdin."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "stdin", io.StringIO())


def test_wandb_without_login_or_terminal_fails_with_the_fix(
    tiny_run_config, tmp_path: Path, wandb_not_logged_in
) -> None:
    with pytest.raises(TrackerLoginError) as error:
        require_tracker("wandb")
    assert all(hint in str(error.value) for hint in LOGIN_HINTS), error.value
    # Preflight (the first thing a run does) stops on the same check before touching models or data.
    cfg = tiny_run_config(tmp_path / "no-data-needed", report_to="wandb")
    lines: list[str] = []
    results = run_preflight(cfg, log=lines.append)
    assert [r.name for r in results][-1] == "tracker" and not results[-1].ok
    assert [r.name for r in results if not r.ok] == ["tracker"]  # stopped there, before models or data
    assert not {"models", "dataset"} & {r.name for r in results}
    assert lines[-1].startswith("✗ tracker: training.report_to=wandb but W&B is not logged in")


def test_wandb_login_is_found_in_env_netrc_or_offline_mode(
    monkeypatch: pytest.MonkeyPatch, wandb_not_logged_in
) -> None:
    require_tracker("none")
    require_tracker("wandb", interactive=True)  # wandb can ask for the key itself
    monkeypatch.setenv("WANDB_MODE", "offline")
    require_tracker("wandb")
    monkeypatch.delenv("WANDB_MODE")
    home = Path.home()
    home.mkdir(parents=True)
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    require_tracker("wandb")
    (home / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    require_tracker("wandb")


def test_a_missing_tracker_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(TrackerLoginError, match=r"pip install trackio, or set training\.report_to=none"):
        require_tracker("trackio")
