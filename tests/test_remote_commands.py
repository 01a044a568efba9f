"""The pure parts of `ta runpod`: command builders, output parsers, error wording, and the RunPod API calls
(the `runpod` package's functions are replaced by a recorder; nothing reaches RunPod)."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
import runpod
from typer.testing import CliRunner

from tiny_audio.cli import app
from tiny_audio.remote import commands, parsing, runpod_api
from tiny_audio.remote.commands import Pod, Target
from tiny_audio.remote.ssh import explain_connection_failure

TARGET = Target("203.0.113.7", 40022, key=Path("/keys/id"), known_hosts=Path("/tmp/kh"))


def bash(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_ssh_argv_never_prompts_and_uses_the_given_key_and_known_hosts() -> None:
    argv = commands.ssh_argv(TARGET, "uptime")
    assert argv[0] == "ssh" and argv[-2:] == ["root@203.0.113.7", "uptime"]
    joined = " ".join(argv)
    for part in ("-p 40022", "BatchMode=yes", "StrictHostKeyChecking=accept-new", "-i /keys/id",
                 "UserKnownHostsFile=/tmp/kh", "ConnectTimeout=10"):  # fmt: skip
        assert part in joined
    assert "-t" not in argv and "-t" in commands.ssh_argv(TARGET, "tmux attach", tty=True)


def test_rsync_excludes_runs_caches_environments_and_history() -> None:
    argv = commands.rsync_push_argv(TARGET, Path("/src/tiny-audio"), "/workspace/tiny-audio")
    excluded = {a.removeprefix("--exclude=") for a in argv if a.startswith("--exclude=")}
    for pattern in ("/.git/", "/.venv/", "/outputs/", "/wandb/", "/.fixtures/", "/.data/", "__pycache__/",
                    "checkpoints/", "checkpoint-*/"):  # fmt: skip
        assert pattern in excluded
    assert argv[-2:] == ["/src/tiny-audio/", "root@203.0.113.7:/workspace/tiny-audio/"]
    assert "-p 40022" in argv[argv.index("-e") + 1]


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        ("ssh: connect to host 203.0.113.7 port 40022: Connection refused", "connection refused. Check the port"),
        ("ssh: connect to host 203.0.113.7 port 40022: Connection timed out", "no answer within 10 s"),
        ("ssh: Could not resolve hostname nope: Name or service not known", "unknown host '203.0.113.7'"),
        ("root@203.0.113.7: Permission denied (publickey).", "key /keys/id was refused"),
        ("@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @", "ssh-keygen -R '[203.0.113.7]:40022'"),
    ],
)
def test_connection_failures_name_host_port_and_fix(stderr: str, expected: str) -> None:
    message = explain_connection_failure(stderr, TARGET)
    assert message is not None and "root@203.0.113.7:40022" in message and expected in message
    assert "\n" not in message


def test_a_failing_remote_command_is_not_mistaken_for_a_connection_failure() -> None:
    assert explain_connection_failure("Traceback ...\nValueError: bad", TARGET) is None


def test_secrets_file_round_trips_awkward_values(tmp_path: Path) -> None:
    values = {"HF_TOKEN": "hf_a'b\"c $HOME `x` ;&", "WANDB_API_KEY": "k e y"}
    path = tmp_path / "s.env"
    path.write_text(commands.secrets_file(values))
    out = bash(f'. {path}; printf "%s\\n%s" "$HF_TOKEN" "$WANDB_API_KEY"').stdout
    assert out == f"{values['HF_TOKEN']}\n{values['WANDB_API_KEY']}"


def test_secrets_are_written_privately_from_stdin(tmp_path: Path) -> None:
    pod = Pod(str(tmp_path))
    command = commands.write_secrets_command(pod, "train")
    subprocess.run(["bash", "-c", command], input="export HF_TOKEN=x\n", text=True, check=True)
    written = Path(pod.secrets_path("train"))
    assert written.read_text() == "export HF_TOKEN=x\n"
    assert written.stat().st_mode & 0o777 == 0o600


def test_run_script_is_valid_bash_and_stops_the_pod_only_with_auto_stop() -> None:
    pod = Pod("/workspace", "python3")
    plain = commands.run_script(pod, "train", "mlp", ["training.max_steps=10"], auto_stop=False, auto_stop_grace_s=60)
    stopping = commands.run_script(pod, "train", "mlp", [], auto_stop=True, auto_stop_grace_s=60)
    for script in (plain, stopping, commands.launch_script(pod, "train", plain)):
        assert bash(f"bash -n <<'EOF'\n{script}\nEOF").returncode == 0
    assert "python3 scripts/train.py +experiments=mlp training.max_steps=10" in plain
    assert "RunPod bills by the hour" in plain
    assert "stop-this-pod" not in plain and "stop-this-pod" in stopping and "sleep 60" in stopping


FAKE_PYTHON = """#!/usr/bin/env bash
# Answers the deps script's questions like a pod's Python would, and records the final pip install.
case "$*" in
  *"import torch; print(torch.__version__)"*) [ -n "$POD_TORCH" ] && echo "$POD_TORCH" || exit 1 ;;
  *"--dry-run"*) exit "$DRY_RUN_EXIT" ;;
  *"-m pip install"*) c="${@: -3:1}"; echo "args: $*" >> "$RECORD"; echo "constraints: $(cat "$c")" >> "$RECORD" ;;
esac
"""


@pytest.mark.parametrize(
    ("pod_torch", "dry_run_exit", "constraint"),
    [("2.8.0+cu128", "0", "torch==2.8.0+cu128"), ("2.1.0+cu118", "1", ""), ("", "0", "")],
)
def test_deps_keep_the_pods_torch_when_the_project_accepts_it(
    tmp_path: Path, pod_torch: str, dry_run_exit: str, constraint: str
) -> None:
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    pod = Pod(str(tmp_path), str(python))
    Path(pod.project).mkdir()
    record = tmp_path / "record"
    env = {"POD_TORCH": pod_torch, "DRY_RUN_EXIT": dry_run_exit, "RECORD": str(record)}
    result = bash(commands.deps_script(pod), env)
    assert result.returncode == 0, result.stderr
    args, constraints = record.read_text().splitlines()
    assert args.endswith("-e .") and constraints == f"constraints: {constraint}"


def test_progress_line_is_parsed_with_any_extra_fields() -> None:
    line = "Step 25/20000 | Loss: 8.3400 | Grad Norm: 45.20 | LR: 1e-4 | ETA: 20hr | Samples/s: 3.1 | Cost: $0.40"
    progress = parsing.parse_progress(line)
    assert progress is not None
    assert (progress.step, progress.max_steps, progress.loss, progress.eta) == (25, 20000, 8.34, "20hr")
    assert progress.fields["Cost"] == "$0.40"
    assert parsing.parse_progress("Loading model...") is None


def test_latest_progress_reads_a_raw_terminal_log() -> None:
    raw = (
        "\x1b[1mStarting\x1b[0m\r\nStep 10/100 | Loss: 3.0000 | ETA: 5m\r\n"
        "eval 1/4\reval 4/4\r\n\x1b[32mStep 20/100 | Loss: nan | ETA: 4m\x1b[0m\r\nSaving checkpoint\r\n"
    )
    found = parsing.latest_progress(raw)
    assert found is not None
    progress, line = found
    assert (progress.step, progress.eta) == (20, "4m")
    assert progress.loss is not None and math.isnan(progress.loss)  # a diverged run shows as nan, not "?"
    assert line == "Step 20/100 | Loss: nan | ETA: 4m"
    assert parsing.terminal_lines(raw)[2] == "eval 4/4"


def test_terminal_lines_keep_a_redrawn_progress_bar_only_in_its_last_state() -> None:
    # What a live progress bar sends: draw, return + erase + redraw, print a line above it, erase at the end.
    raw = (
        "Parameters: 98,624\r\n\x1b[?25lbar 0/6\r\x1b[2Kbar 1/6\r\x1b[2KStep 2/6 | Loss: 9.0\r\n"
        "bar 2/6\r\x1b[2Kbar 6/6\r\n\x1b[?25h\r\x1b[1A\x1b[2KSaved outputs/tiny/checkpoint-6\r\n"
    )
    shown = ["Parameters: 98,624", "Step 2/6 | Loss: 9.0", "Saved outputs/tiny/checkpoint-6"]
    assert parsing.terminal_lines(raw) == shown
    assert parsing.terminal_lines("Step 1/6\r\nbar 3/6") == ["Step 1/6", "bar 3/6"]  # a live bar shows as is


def test_latest_checkpoint_is_the_most_recently_completed() -> None:
    lines = [
        "1700000100 /w/outputs/mlp/checkpoint-20000",
        "1700000900 /w/outputs/mlp_lora/checkpoint-500",  # stage 2 restarted at step 0, later in time
        "1700000900 /w/outputs/mlp_lora/checkpoint-400",
    ]
    assert parsing.latest_checkpoint(lines) == "/w/outputs/mlp_lora/checkpoint-500"
    assert parsing.latest_checkpoint(["1700000000 /w/outputs/a/checkpoint-final"]) is None
    assert parsing.latest_checkpoint([]) is None


def test_checkpoint_listing_skips_incomplete_and_hidden_dirs(tmp_path: Path) -> None:
    pod = Pod(str(tmp_path))
    run = Path(pod.project) / "outputs" / "mlp"
    for name, complete in [("checkpoint-5", True), ("checkpoint-7", False), (".checkpoint-9.tmp", True)]:
        (run / name).mkdir(parents=True)
        if complete:
            (run / name / "trainer_state.json").write_text("{}")
    listed = bash(commands.checkpoints_script(pod)).stdout.splitlines()
    mtime = int((run / "checkpoint-5" / "trainer_state.json").stat().st_mtime)
    assert listed == [f"{mtime} {run / 'checkpoint-5'}"]
    assert bash(commands.checkpoints_script(pod, "outputs/mlp")).stdout.splitlines() == listed
    assert bash(commands.checkpoints_script(pod, "outputs/none")).stdout == ""


def test_status_sections_gpus_and_disk() -> None:
    marker = commands.SECTION.format
    found = parsing.sections(f"{marker('session')}\nalive\n{marker('gpu')}\nNVIDIA A40, 97, 30000, 46068\n")
    assert found == {"session": "alive", "gpu": "NVIDIA A40, 97, 30000, 46068"}
    assert parsing.parse_gpus(found["gpu"]) == [parsing.Gpu("NVIDIA A40", 97, 30000, 46068)]
    assert parsing.parse_disk_free_gib("/dev/sda 104857600 52428800 52428800 50% /workspace") == 50.0


@pytest.mark.parametrize(
    ("requested", "live", "logged", "expected"),
    [
        ("mine", ["train"], [], "mine"),
        (None, ["other"], [], "other"),
        (None, ["a", "train"], [], "train"),
        (None, ["a", "b"], [], None),
        (None, [], ["old", "older"], "old"),
        (None, [], [], None),
    ],
)
def test_pick_session(requested: str | None, live: list[str], logged: list[str], expected: str | None) -> None:
    assert parsing.pick_session(requested, live, logged, "train") == expected


class RunPodRecorder:
    """Stands in for RunPod's API: records calls, serves one pod."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        pod = {
            "id": "abc123",
            "name": "my-a40",
            "runtime": {"ports": [{"ip": "203.0.113.7", "isIpPublic": True, "privatePort": 22, "publicPort": 40022}]},
        }
        monkeypatch.setenv("RUNPOD_API_KEY", "test-key")
        monkeypatch.setattr(runpod, "get_pods", lambda: [pod])
        monkeypatch.setattr(runpod, "stop_pod", lambda pod_id: self.calls.append(("stop", pod_id)))
        monkeypatch.setattr(runpod, "terminate_pod", lambda pod_id: self.calls.append(("terminate", pod_id)))


def test_stop_finds_the_pod_by_its_ssh_address(monkeypatch: pytest.MonkeyPatch) -> None:
    api = RunPodRecorder(monkeypatch)
    result = CliRunner().invoke(app, ["runpod", "stop", "203.0.113.7", "40022"])
    assert result.exit_code == 0, result.output
    assert api.calls == [("stop", "abc123")]
    assert "pod my-a40 (abc123) has SSH at 203.0.113.7:40022" in result.output


def test_stop_names_the_known_pods_when_the_address_matches_none(monkeypatch: pytest.MonkeyPatch) -> None:
    api = RunPodRecorder(monkeypatch)
    result = CliRunner().invoke(app, ["runpod", "stop", "203.0.113.7", "1"])
    assert result.exit_code == 1 and api.calls == []
    assert "no pod of this RunPod account has SSH at 203.0.113.7:1 (pods: my-a40 (abc123))" in result.output


def test_terminate_asks_first(monkeypatch: pytest.MonkeyPatch) -> None:
    api = RunPodRecorder(monkeypatch)
    declined = CliRunner().invoke(app, ["runpod", "terminate", "--pod-id", "abc123"], input="n\n")
    assert declined.exit_code == 1 and api.calls == []
    assert "Terminate pod abc123?" in declined.output
    confirmed = CliRunner().invoke(app, ["runpod", "terminate", "--pod-id", "abc123", "--yes"])
    assert confirmed.exit_code == 0 and api.calls == [("terminate", "abc123")]


def test_api_commands_need_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["runpod", "stop", "--pod-id", "abc123"])
    assert result.exit_code == 1
    assert "RUNPOD_API_KEY is not set" in result.output


def test_auto_stop_outside_a_pod_says_so(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("RUNPOD_POD_ID", raising=False)
    assert runpod_api.stop_this_pod() == 1
    assert "not a RunPod pod; nothing stopped" in capsys.readouterr().out


def test_auto_stop_uses_the_api_without_runpodctl(monkeypatch: pytest.MonkeyPatch) -> None:
    api = RunPodRecorder(monkeypatch)
    monkeypatch.setenv("RUNPOD_POD_ID", "abc123")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert runpod_api.stop_this_pod() == 0
    assert api.calls == [("stop", "abc123")]


def test_a_forced_replacement_cancels_the_old_sessions_auto_stop(tmp_path: Path) -> None:
    """`train --force` marks the session as replaced; the old run script then skips stopping the pod."""
    pod = Pod(str(tmp_path), "python3")
    stop_log = tmp_path / "stopped"
    script = commands.run_script(pod, "train", "mlp", [], auto_stop=True, auto_stop_grace_s=0)
    script = script.replace("python3 -m tiny_audio.remote.runpod_api stop-this-pod", f"touch {stop_log}")
    script = script.replace("python3 scripts/train.py +experiments=mlp", "true")
    (tmp_path / "tiny-audio").mkdir()
    Path(pod.state_dir).mkdir(parents=True)
    assert "touch " + pod.replaced_marker("train") in commands.stop_session_script(pod, "train")

    Path(pod.replaced_marker("train")).touch()
    output = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout
    assert "auto-stop skipped: this session was replaced" in output and not stop_log.exists()

    Path(pod.replaced_marker("train")).unlink()
    subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert stop_log.exists()
