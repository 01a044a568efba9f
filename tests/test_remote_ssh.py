"""`ta runpod ...` end to end against a real sshd on 127.0.0.1 (tests/sshd.py), with real ssh, rsync and tmux.

The "pod" is this machine: its workspace is a temp dir and its Python is this venv's. The RunPod API is the
one thing replaced: the pod's `runpodctl` is a recorder, so auto-stop is checked without a RunPod account.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.sshd import POD_ID, SshServer, free_port, sshd_server  # noqa: F401
from tiny_audio.cli import app

REPO = Path(__file__).resolve().parents[1]
SECRETS = {"HF_TOKEN": "hf_secret_do_not_leak_1234", "WANDB_API_KEY": "wandb_secret_do_not_leak_5678"}
EXPERIMENT = "remote_test"
SESSION = "train"

# Stands in for scripts/train.py: prints the real progress-line format and writes checkpoints the way
# training does (hidden temp dir, renamed when complete, trainer_state.json last).
FAKE_TRAIN = """
import json, os, sys, time
from pathlib import Path

experiment = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("+experiments="))
overrides = dict(a.split("=", 1) for a in sys.argv[1:] if not a.startswith("+"))
max_steps = int(overrides.get("training.max_steps", "8"))
out = Path("outputs") / experiment
print("HF_TOKEN forwarded:", "yes" if os.environ.get("HF_TOKEN") else "no", flush=True)
for step in range(1, max_steps + 1):
    time.sleep(0.25)
    print(f"Step {step}/{max_steps} | Loss: {10 / step:.4f} | Grad Norm: 1.00 | LR: 1e-4 | ETA: {max_steps - step}s"
          " | Samples/s: 3.00", flush=True)
    if step % 4 == 0:
        staging = out / f".checkpoint-{step}.tmp"
        staging.mkdir(parents=True)
        (staging / "weights.json").write_text(json.dumps({"step": step}))
        (staging / "trainer_state.json").write_text(json.dumps({"step": step}))
        staging.rename(out / f"checkpoint-{step}")
(out / "checkpoint-999").mkdir()  # newer but incomplete: no trainer_state.json
print("done", flush=True)
"""

# Paths the deploy must not copy.
JUNK = [
    ".git/HEAD",
    ".venv/bin/python",
    "outputs/old/checkpoint-5/trainer_state.json",
    "wandb/run/log.txt",
    "tiny_audio/__pycache__/x.cpython-311.pyc",
    ".fixtures/tiny/model.bin",
    ".data/synth/a.wav",
    "checkpoints/x.pt",
]


def invoke(server: SshServer, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["runpod", *args], env={**server.env, **(env or {})})


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with junk the deploy must leave behind, and the fake training script."""
    src = tmp_path_factory.mktemp("src") / "tiny-audio"
    src.mkdir()
    for name in ("tiny_audio", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    (src / "scripts").mkdir()
    (src / "scripts" / "train.py").write_text(FAKE_TRAIN)
    (src / "configs" / "experiments" / f"{EXPERIMENT}.yaml").write_text("# @package _global_\n")
    for junk in JUNK:
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_text("junk")
    return src


@pytest.fixture(scope="module")
def deployed(sshd_server: SshServer, source_tree: Path) -> Result:  # noqa: F811
    return invoke(sshd_server, "deploy", "127.0.0.1", str(sshd_server.port), "--skip-setup", "--skip-deps",
                  "--source", str(source_tree))  # fmt: skip


@dataclass
class TrainingRun:
    started: Result
    refused: Result
    processes: str  # `ps` output while training ran
    took_s: float


def wait_session_gone(server: SshServer, session: str, timeout_s: float = 40) -> None:
    deadline = time.monotonic() + timeout_s
    while server.tmux("has-session", "-t", f"={session}").returncode == 0:
        assert time.monotonic() < deadline, f"session {session} still running after {timeout_s} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def training_run(sshd_server: SshServer, deployed: Result) -> Iterator[TrainingRun]:  # noqa: F811
    assert deployed.exit_code == 0, deployed.output
    port = str(sshd_server.port)
    start = time.monotonic()
    started = invoke(sshd_server, "train", "127.0.0.1", port, "--experiment", EXPERIMENT, "--no-attach",
                     "--auto-stop", "--auto-stop-grace", "1", "training.max_steps=8", env=SECRETS)  # fmt: skip
    refused = invoke(sshd_server, "train", "127.0.0.1", port, "--experiment", EXPERIMENT, "--no-attach")
    processes = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    wait_session_gone(sshd_server, SESSION)
    yield TrainingRun(started, refused, processes, time.monotonic() - start)
    sshd_server.tmux("kill-session", "-t", f"={SESSION}")


def test_wrong_port_fails_fast_with_a_named_error(sshd_server: SshServer) -> None:  # noqa: F811
    port = free_port()  # nothing listens here
    start = time.monotonic()
    result = invoke(sshd_server, "status", "127.0.0.1", str(port))
    assert time.monotonic() - start < 15
    assert result.exit_code == 1
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith(f"error: cannot connect to root@127.0.0.1:{port}: connection refused.")
    assert "Check the port" in message


def test_unauthorized_key_names_the_key_and_the_fix(sshd_server: SshServer, tmp_path: Path) -> None:  # noqa: F811
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    result = invoke(sshd_server, "status", "127.0.0.1", str(sshd_server.port), env={"TA_SSH_KEY": str(stranger)})
    assert result.exit_code == 1
    assert f"cannot log in to root@127.0.0.1:{sshd_server.port}: key {stranger} was refused" in result.output
    assert "SSH Public Keys" in result.output


def test_deploy_syncs_the_project_and_skips_junk(sshd_server: SshServer, deployed: Result, source_tree: Path) -> None:  # noqa: F811
    assert deployed.exit_code == 0, deployed.output
    project = sshd_server.project
    assert (project / "tiny_audio" / "remote" / "cli.py").is_file()
    assert (project / "configs" / "experiments" / f"{EXPERIMENT}.yaml").is_file()
    for junk in JUNK:
        assert not (project / junk).exists(), f"{junk} was synced"
    # A second deploy only sends what changed, and keeps what the pod made (runs, logs).
    (project / "outputs").mkdir(exist_ok=True)
    (project / "outputs" / "keep.txt").write_text("pod data")
    (source_tree / "configs" / "experiments" / "mine.yaml").write_text("# @package _global_\n")
    again = invoke(sshd_server, "deploy", "127.0.0.1", str(sshd_server.port), "--skip-setup", "--skip-deps",
                   "--source", str(source_tree))  # fmt: skip
    assert again.exit_code == 0, again.output
    assert (project / "configs" / "experiments" / "mine.yaml").is_file()
    assert (project / "outputs" / "keep.txt").read_text() == "pod data"
    assert "[sync] 1 files updated" in again.output


def test_train_starts_a_session_and_refuses_a_second(training_run: TrainingRun) -> None:
    assert training_run.started.exit_code == 0, training_run.started.output
    assert "RunPod bills by the hour whether you use it or not" in training_run.started.output
    assert "forwarded: HF_TOKEN, WANDB_API_KEY" in training_run.started.output
    assert training_run.refused.exit_code == 1
    assert "tmux session 'train' is already running" in training_run.refused.output
    assert "--force" in training_run.refused.output


def test_secrets_reach_training_but_not_ps_or_the_log(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    log = (sshd_server.project / ".ta" / f"{SESSION}.log").read_text()
    assert "HF_TOKEN forwarded: yes" in log
    for secret in SECRETS.values():
        assert secret not in training_run.processes
        assert secret not in log
    assert not (sshd_server.project / ".ta" / f"{SESSION}.env").exists()  # read once, then deleted


def test_attach_logs_shows_step_lines(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    result = invoke(sshd_server, "attach", "127.0.0.1", str(sshd_server.port), "--logs", "-n", "200")
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if line.startswith("Step ")]
    assert steps[-1].startswith("Step 8/8 | Loss: 1.2500")
    assert "\x1b" not in result.output


def test_status_parses_progress_and_checkpoint(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    result = invoke(sshd_server, "status", "127.0.0.1", str(sshd_server.port))
    assert result.exit_code == 0, result.output
    assert "session:    train (not running)" in result.output
    assert "step 8/8  loss 1.2500  ETA 0s" in result.output
    assert f"checkpoint: {sshd_server.project}/outputs/{EXPERIMENT}/checkpoint-8" in result.output
    assert "disk free:" in result.output


def test_checkpoint_and_download(sshd_server: SshServer, training_run: TrainingRun, tmp_path: Path) -> None:  # noqa: F811
    port = str(sshd_server.port)
    found = invoke(sshd_server, "checkpoint", "127.0.0.1", port)
    assert found.exit_code == 0, found.output
    # checkpoint-999 is newer but incomplete: skipped.
    assert found.output.strip() == f"{sshd_server.project}/outputs/{EXPERIMENT}/checkpoint-8"
    fetched = invoke(sshd_server, "download", "127.0.0.1", port, str(tmp_path))
    assert fetched.exit_code == 0, fetched.output
    assert json.loads((tmp_path / "checkpoint-8" / "weights.json").read_text()) == {"step": 8}
    named = invoke(sshd_server, "download", "127.0.0.1", port, f"outputs/{EXPERIMENT}/checkpoint-4", str(tmp_path))
    assert named.exit_code == 0, named.output
    assert (tmp_path / "checkpoint-4" / "trainer_state.json").is_file()


def test_auto_stop_stops_the_pod_when_training_ends(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    assert sshd_server.runpodctl_calls.read_text().splitlines() == [f"stop pod {POD_ID}"]
    log = (sshd_server.project / ".ta" / f"{SESSION}.log").read_text()
    assert "training exited with code 0" in log
    assert "auto-stop: stopping this pod in 1 s" in log
    assert f"auto-stop: asked RunPod to stop pod {POD_ID}" in log


def test_force_replaces_a_running_session(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    port = str(sshd_server.port)
    args = ["train", "127.0.0.1", port, "--experiment", EXPERIMENT, "--no-attach", "--session-name", "forced"]
    first = invoke(sshd_server, *args, "training.max_steps=400")
    assert first.exit_code == 0, first.output
    second = invoke(sshd_server, *args, "--force", "training.max_steps=2")
    assert second.exit_code == 0, second.output
    assert "stopping session 'forced'" in second.output
    wait_session_gone(sshd_server, "forced")
    log = (sshd_server.project / ".ta" / "forced.log").read_text()
    assert "Step 2/2" in log and "Step 1/400" not in log
    assert os.environ.get("HF_TOKEN") is None or "HF_TOKEN" not in second.output
