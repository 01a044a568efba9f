"""`ta runpod ...` end to end against a real sshd on 127.0.0.1 (tests/sshd.py), with real ssh, rsync and tmux.

The "pod" is this machine: its workspace is a temp dir and its Python is this venv's. The RunPod API is the
one thing replaced: the pod's `runpodctl` is a recorder, so auto-stop is checked without a RunPod account.
"""

from __future__ import annotations

import getpass
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from tests.data_helpers import write_audiofolder
from tests.sshd import POD_ID, SshServer, free_port, sshd_server  # noqa: F401
from tiny_audio.cli import app
from tiny_audio.model.build import load_pretrained

REPO = Path(__file__).resolve().parents[1]
SECRETS = {"HF_TOKEN": "hf_secret_do_not_leak_1234", "WANDB_API_KEY": "wandb_secret_do_not_leak_5678"}
EXPERIMENT = "tiny"
SESSION = "train"
MAX_STEPS = 6

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
    """A copy of the project plus junk the deploy must leave behind."""
    src = tmp_path_factory.mktemp("src") / "tiny-audio"
    src.mkdir()
    for name in ("tiny_audio", "configs", "scripts"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    for junk in JUNK:
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_text("junk")
    return src


@pytest.fixture(scope="module")
def deployed(sshd_server: SshServer, source_tree: Path) -> Result:  # noqa: F811
    return invoke(sshd_server, "deploy", "127.0.0.1", str(sshd_server.port), "--skip-setup", "--skip-deps",
                  "--source", str(source_tree))  # fmt: skip


def tiny_training(fixtures: dict[str, Path], data: Path, max_steps: int) -> list[str]:
    """Hydra overrides for a few-second real training on the tiny fixtures. The pod is this machine, so
    local absolute paths are valid there."""
    return [
        f"model.audio_model_id={fixtures['glm_asr']}",
        f"model.text_model_id={fixtures['qwen3']}",
        f"data.datasets.0.path={data}",
        f"training.max_steps={max_steps}",
        "training.logging_steps=2",
        "training.save_steps=3",
        "training.eval_wer_samples=0",
    ]


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audiofolder(tmp_path_factory.mktemp("audio"), {"train": 16, "validation": 4})


@dataclass
class TrainingRun:
    started: Result
    refused: Result
    processes: str  # `ps` output while training ran
    training_env: str  # the training process's environment, as the pod sees it


def wait_session_gone(server: SshServer, session: str, timeout_s: float = 40) -> None:
    deadline = time.monotonic() + timeout_s
    while server.tmux("has-session", "-t", f"={session}").returncode == 0:
        assert time.monotonic() < deadline, f"session {session} still running after {timeout_s} s"
        time.sleep(0.2)


def training_process(marker: str, timeout_s: float = 20) -> int:
    """pid of the running training whose command line contains `marker`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"scripts/train.py" in args and any(marker.encode() in a for a in args):
                return int(proc.name)
        time.sleep(0.1)
    raise AssertionError(f"no training process with {marker} within {timeout_s} s")


@pytest.fixture(scope="module")
def training_run(
    sshd_server: SshServer,  # noqa: F811
    deployed: Result,
    tiny_fixtures: dict[str, Path],
    audio: Path,
) -> Iterator[TrainingRun]:
    assert deployed.exit_code == 0, deployed.output
    port = str(sshd_server.port)
    overrides = tiny_training(tiny_fixtures, audio, MAX_STEPS)
    started = invoke(sshd_server, "train", "127.0.0.1", port, "--experiment", EXPERIMENT, "--no-attach",
                     "--auto-stop", "--auto-stop-grace", "1", *overrides, env=SECRETS)  # fmt: skip
    refused = invoke(sshd_server, "train", "127.0.0.1", port, "--experiment", EXPERIMENT, "--no-attach")
    pid = training_process(str(audio))
    processes = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    training_env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    wait_session_gone(sshd_server, SESSION, timeout_s=60)
    yield TrainingRun(started, refused, processes, training_env)
    sshd_server.tmux("kill-session", "-t", f"={SESSION}")


def test_wrong_port_fails_fast_with_a_named_error(sshd_server: SshServer) -> None:  # noqa: F811
    port = free_port()  # nothing listens here
    start = time.monotonic()
    result = invoke(sshd_server, "status", "127.0.0.1", str(port))
    assert time.monotonic() - start < 15
    assert result.exit_code == 1
    message = result.output.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith(f"error: cannot connect to {getpass.getuser()}@127.0.0.1:{port}: connection refused.")
    assert "Check the port" in message


def test_unauthorized_key_names_the_key_and_the_fix(sshd_server: SshServer, tmp_path: Path) -> None:  # noqa: F811
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    result = invoke(sshd_server, "status", "127.0.0.1", str(sshd_server.port), env={"TA_SSH_KEY": str(stranger)})
    assert result.exit_code == 1
    where = f"{getpass.getuser()}@127.0.0.1:{sshd_server.port}"
    assert f"cannot log in to {where}: key {stranger} was refused" in result.output
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


def test_train_names_a_missing_experiment_and_the_fix(sshd_server: SshServer, deployed: Result) -> None:  # noqa: F811
    result = invoke(sshd_server, "train", "127.0.0.1", str(sshd_server.port), "--experiment", "nope", "--no-attach")
    assert result.exit_code == 1
    assert "experiment 'nope' is not on the pod (configs/experiments/nope.yaml)" in result.output
    assert f"ta runpod deploy 127.0.0.1 {sshd_server.port} --skip-setup" in result.output


def test_attach_lists_sessions_and_needs_a_terminal(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    port = str(sshd_server.port)
    sshd_server.tmux("new-session", "-d", "-s", "other", "sleep 30")
    try:
        listed = invoke(sshd_server, "attach", "127.0.0.1", port, "--list")
        assert listed.exit_code == 0 and listed.output.split() == ["other"]
        result = invoke(sshd_server, "attach", "127.0.0.1", port)  # CliRunner's stdin is no terminal
        assert result.exit_code == 1
        assert "attach needs a terminal; use --logs" in result.output
    finally:
        sshd_server.tmux("kill-session", "-t", "=other")


def test_secrets_reach_training_but_not_ps_or_the_log(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    log = (sshd_server.project / ".ta" / f"{SESSION}.log").read_text()
    for name, secret in SECRETS.items():
        assert f"{name}={secret}\0" in training_run.training_env
        assert secret not in training_run.processes
        assert secret not in log
    assert not (sshd_server.project / ".ta" / f"{SESSION}.env").exists()  # read once, then deleted


def test_attach_logs_shows_step_lines(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    result = invoke(sshd_server, "attach", "127.0.0.1", str(sshd_server.port), "--logs", "-n", "200")
    assert result.exit_code == 0, result.output
    steps = [line for line in result.output.splitlines() if line.startswith("Step ")]
    assert [line.split(" | ")[0] for line in steps] == ["Step 2/6", "Step 4/6", "Step 6/6"]
    assert steps[-1].split(" | ")[2].startswith("Grad Norm: ")
    assert "\x1b" not in result.output and "\r" not in result.output


def test_status_parses_progress_and_checkpoint(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    result = invoke(sshd_server, "status", "127.0.0.1", str(sshd_server.port))
    assert result.exit_code == 0, result.output
    assert "session:    train (not running)" in result.output
    assert re.search(r"step 6/6  loss \d+\.\d{4}  ETA \S+", result.output), result.output
    assert f"checkpoint: {sshd_server.project}/outputs/{EXPERIMENT}/checkpoint-6" in result.output
    assert "disk free:" in result.output


def test_checkpoint_and_download(sshd_server: SshServer, training_run: TrainingRun, tmp_path: Path) -> None:  # noqa: F811
    port = str(sshd_server.port)
    run_dir = sshd_server.project / "outputs" / EXPERIMENT
    # Newer than the last complete one, but half-written: no trainer_state.json, or still a hidden temp dir.
    (run_dir / "checkpoint-999").mkdir()
    (run_dir / ".checkpoint-1000.tmp").mkdir()
    (run_dir / ".checkpoint-1000.tmp" / "trainer_state.json").write_text("{}")
    found = invoke(sshd_server, "checkpoint", "127.0.0.1", port)
    assert found.exit_code == 0, found.output
    assert found.output.strip() == str(run_dir / "checkpoint-6")
    fetched = invoke(sshd_server, "download", "127.0.0.1", port, str(tmp_path))
    assert fetched.exit_code == 0, fetched.output
    assert json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())["step"] == 6
    assert load_pretrained(str(tmp_path / "checkpoint-6")).projector is not None
    named = invoke(sshd_server, "download", "127.0.0.1", port, f"outputs/{EXPERIMENT}/checkpoint-3", str(tmp_path))
    assert named.exit_code == 0, named.output
    assert (tmp_path / "checkpoint-3" / "trainer_state.json").is_file()


def test_auto_stop_stops_the_pod_when_training_ends(sshd_server: SshServer, training_run: TrainingRun) -> None:  # noqa: F811
    assert sshd_server.runpodctl_calls.read_text().splitlines() == [f"stop pod {POD_ID}"]
    log = (sshd_server.project / ".ta" / f"{SESSION}.log").read_text()
    assert "training exited with code 0" in log
    assert "auto-stop: stopping this pod in 1 s" in log
    assert f"auto-stop: asked RunPod to stop pod {POD_ID}" in log


def test_force_stops_the_running_session_with_a_checkpoint_and_starts_again(
    sshd_server: SshServer,  # noqa: F811
    training_run: TrainingRun,
    tiny_fixtures: dict[str, Path],
    audio: Path,
) -> None:
    port = str(sshd_server.port)
    args = ["train", "127.0.0.1", port, "--experiment", EXPERIMENT, "--no-attach", "--session-name", "forced"]
    output_dir = sshd_server.workspace / "forced-run"
    long_run = [*tiny_training(tiny_fixtures, audio, 100000), f"training.output_dir={output_dir}"]
    first = invoke(sshd_server, *args, *long_run)
    assert first.exit_code == 0, first.output
    log = sshd_server.project / ".ta" / "forced.log"
    deadline = time.monotonic() + 30
    while "Step 2/" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    second = invoke(sshd_server, *args, "--force", *tiny_training(tiny_fixtures, audio, 2))
    assert second.exit_code == 0, second.output
    assert "stopping session 'forced' (Ctrl+C, so training saves a checkpoint)" in second.output
    # Ctrl+C reached the first training, which saved before the session ended.
    stopped = Path(f"{log}.previous").read_text()
    assert "training exited with code 0" in stopped
    assert list(output_dir.glob("checkpoint-*/trainer_state.json"))
    # ... and the new run is up in a fresh session with a fresh log.
    assert sshd_server.tmux("has-session", "-t", "=forced").returncode == 0
    assert "training exited" not in log.read_text()
    sshd_server.tmux("kill-session", "-t", "=forced")
