"""Pure builders for everything `ta runpod` runs: ssh/rsync argument lists and the bash sent to the pod.

Nothing here touches the network, so each command can be checked in a unit test; `ssh.py` runs them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

# Paths the pod never needs: local runs, caches, environments and history. Anchored ones ('/x/') only
# match at the project root; the others match at any depth.
SYNC_EXCLUDES = (
    "/.git/",
    "/.venv/",
    "/venv/",
    "/outputs/",
    "/wandb/",
    "/.fixtures/",
    "/.data/",
    "/.ta/",
    "checkpoints/",
    "checkpoint-*/",
    "__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
    ".cache/",
    ".DS_Store",
)

# What training needs from the OS; soundfile needs libsndfile, `train` needs tmux, `deploy` needs rsync.
SETUP_PACKAGES = ("tmux", "rsync", "libsndfile1")

BILLING_REMINDER = (
    "RunPod bills by the hour whether you use it or not: stop or terminate the pod when training "
    "is done (`ta runpod stop HOST PORT`, or train with --auto-stop)."
)

SECRET_NAMES = ("HF_TOKEN", "WANDB_API_KEY")
DEFAULT_SESSION = "train"


@dataclass(frozen=True)
class Target:
    """How to reach the pod's sshd."""

    host: str
    port: int
    user: str = "root"
    key: Path | None = None
    known_hosts: Path | None = None
    connect_timeout: int = 10

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}"

    def describe(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Pod:
    """Where things live on the pod and which programs run there."""

    workspace: str = "/workspace"
    python: str = "python"
    tmux_socket: str | None = None  # a private tmux server (`tmux -L NAME`); None = the default one

    @property
    def project(self) -> str:
        return f"{self.workspace.rstrip('/')}/tiny-audio"

    @property
    def state_dir(self) -> str:
        """Launch scripts, logs and (briefly) secrets of `ta runpod train`; never synced over."""
        return f"{self.project}/.ta"

    @property
    def tmux(self) -> str:
        return "tmux" if self.tmux_socket is None else f"tmux -L {shlex.quote(self.tmux_socket)}"

    def log_path(self, session: str) -> str:
        return f"{self.state_dir}/{session}.log"

    def run_script_path(self, session: str) -> str:
        return f"{self.state_dir}/{session}.sh"

    def secrets_path(self, session: str) -> str:
        return f"{self.state_dir}/{session}.env"

    def replaced_marker(self, session: str) -> str:
        """Present while `train --force` replaces the session: its auto-stop must not stop the pod."""
        return f"{self.state_dir}/{session}.replaced"


def ssh_options(target: Target) -> list[str]:
    options = [
        "-p", str(target.port),
        # Never prompt: a password or passphrase prompt would hang a script instead of failing.
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={target.connect_timeout}",
        # Pods are new machines every time; accept a host key the first time, refuse a changed one.
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
    ]  # fmt: skip
    if target.key is not None:
        options += ["-i", str(target.key), "-o", "IdentitiesOnly=yes"]
    if target.known_hosts is not None:
        options += ["-o", f"UserKnownHostsFile={target.known_hosts}"]
    return options


def ssh_argv(target: Target, remote_command: str, *, tty: bool = False) -> list[str]:
    return ["ssh", *ssh_options(target), *(["-t"] if tty else []), target.address, remote_command]


def rsync_push_argv(target: Target, source: Path, remote_dir: str) -> list[str]:
    excludes = [f"--exclude={pattern}" for pattern in SYNC_EXCLUDES]
    return [
        "rsync", "-az", "--partial", "--stats", *excludes,
        "-e", shlex.join(["ssh", *ssh_options(target)]),
        f"{source}/", f"{target.address}:{remote_dir}/",
    ]  # fmt: skip


def rsync_pull_argv(target: Target, remote_path: str, dest: Path) -> list[str]:
    # No trailing slash on the source: DEST/checkpoint-N/ is created. --partial keeps half-copied
    # files so a re-run resumes instead of starting over.
    return [
        "rsync", "-a", "--partial", "--info=progress2",
        "-e", shlex.join(["ssh", *ssh_options(target)]),
        f"{target.address}:{remote_path.rstrip('/')}", f"{dest}/",
    ]  # fmt: skip


def setup_script() -> str:
    packages = " ".join(SETUP_PACKAGES)
    return f"""set -eu
missing=""
for p in {packages}; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -z "$missing" ]; then echo "system packages already installed: {packages}"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing
echo "installed:$missing"
"""


def deps_script(pod: Pod) -> str:
    """Install the project into the pod's Python without letting pip swap the pod's CUDA torch."""
    py = pod.python
    return f"""set -eu
cd {shlex.quote(pod.project)}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
torch_version=$({py} -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [ -n "$torch_version" ]; then
  # Pinning the exact installed build (e.g. 2.8.0+cu128) makes pip keep it; the dry run tells
  # whether the project accepts that version at all.
  echo "torch==$torch_version" > "$constraints"
  if {py} -m pip install --dry-run --quiet -c "$constraints" -e . >/dev/null 2>&1; then
    echo "keeping the pod's torch $torch_version"
  else
    echo "the pod's torch $torch_version does not meet the project's requirement; pip installs one that does" >&2
    : > "$constraints"
  fi
fi
{py} -m pip install --quiet --progress-bar off -c "$constraints" -e .
{py} -c 'import torch; print("torch", torch.__version__, "| CUDA available:", torch.cuda.is_available())'
"""


def precheck_script(pod: Pod, session: str, experiment: str) -> str:
    """Print key=value facts `train` checks before starting anything."""
    project = shlex.quote(pod.project)
    config = shlex.quote(f"{pod.project}/configs/experiments/{experiment}.yaml")
    alive = f"{pod.tmux} has-session -t {shlex.quote('=' + session)} 2>/dev/null"
    return f"""{alive} && echo session=alive || echo session=gone
test -f {project}/scripts/train.py && echo project=present || echo project=missing
test -f {config} && echo experiment=present || echo experiment=missing
"""


def stop_session_script(pod: Pod, session: str, wait_s: int = 30) -> str:
    """Ctrl+C first so training saves a checkpoint; kill the session only if it outlives `wait_s`."""
    target = shlex.quote(f"={session}")
    return f"""touch {shlex.quote(pod.replaced_marker(session))}
{pod.tmux} send-keys -t {target}: C-c
for _ in $(seq {wait_s * 2}); do {pod.tmux} has-session -t {target} 2>/dev/null || exit 0; sleep 0.5; done
{pod.tmux} kill-session -t {target}
"""


def write_secrets_command(pod: Pod, session: str) -> str:
    """Remote command that stores stdin as a private file; the secrets travel on stdin, never in argv."""
    state = shlex.quote(pod.state_dir)
    return f"umask 077 && mkdir -p {state} && cat > {shlex.quote(pod.secrets_path(session))}"


def secrets_file(values: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())


def run_script(
    pod: Pod,
    session: str,
    experiment: str,
    overrides: list[str],
    *,
    auto_stop: bool,
    auto_stop_grace_s: int,
) -> str:
    """The script tmux runs: load secrets, train, then (with auto-stop) stop the pod."""
    secrets = shlex.quote(pod.secrets_path(session))
    train = shlex.join([pod.python, "scripts/train.py", f"+experiments={experiment}", *overrides])
    lines = [
        "#!/usr/bin/env bash",
        f"# Written by `ta runpod train` for tmux session {session}.",
        "set -u",
        "# RunPod keeps the pod's variables (RUNPOD_POD_ID, ...) here; ssh sessions do not inherit them.",
        "if [ -f /etc/rp_environment ]; then . /etc/rp_environment; fi",
        f"if [ -f {secrets} ]; then . {secrets}; rm -f {secrets}; fi",
        f"cd {shlex.quote(pod.project)}",
        f"echo {shlex.quote(f'tiny-audio: training {experiment} in tmux session {session!r} (detach: Ctrl+B then D)')}",
        f"echo {shlex.quote(BILLING_REMINDER)}",
        "# A handler (not an ignore, which children would inherit) keeps this script alive through",
        "# Ctrl+C while training still receives it and saves a checkpoint.",
        "trap ':' INT TERM",
        train,
        "code=$?",
        "trap - INT TERM",
        'echo "tiny-audio: training exited with code $code"',
    ]
    if auto_stop:
        lines += [
            "trap 'echo \"tiny-audio: auto-stop cancelled; the pod keeps running (and billing)\"; exit 130' INT",
            f'echo "tiny-audio: auto-stop: stopping this pod in {auto_stop_grace_s} s (Ctrl+C keeps it running)"',
            f"sleep {auto_stop_grace_s}",
            f"if [ -f {shlex.quote(pod.replaced_marker(session))} ]; then",
            '  echo "tiny-audio: auto-stop skipped: this session was replaced by train --force"',
            "else",
            f"  {shlex.quote(pod.python)} -m tiny_audio.remote.runpod_api stop-this-pod",
            "fi",
        ]
    lines.append('exit "$code"')
    return "\n".join(lines) + "\n"


def launch_script(pod: Pod, session: str, script: str) -> str:
    """Write the run script and start it in a detached tmux session whose output is logged to a file."""
    state = shlex.quote(pod.state_dir)
    path = shlex.quote(pod.run_script_path(session))
    log = shlex.quote(pod.log_path(session))
    name = shlex.quote(session)
    command = shlex.quote(f"bash {pod.run_script_path(session)}")
    pipe = shlex.quote(f"cat >> {log}")
    # new-session and pipe-pane run as one tmux command list, so logging starts before any output.
    return f"""set -eu
mkdir -p {state} && chmod 700 {state}
cat > {path} <<'TA_RUN_SCRIPT_EOF'
{script}TA_RUN_SCRIPT_EOF
rm -f {shlex.quote(pod.replaced_marker(session))}
if [ -f {log} ]; then mv {log} {log}.previous; fi
: > {log}
{pod.tmux} new-session -d -s {name} -x 200 -y 50 -c {shlex.quote(pod.project)} {command} \\; \\
  pipe-pane -t {shlex.quote("=" + session + ":")} {pipe}
"""


def sessions_script(pod: Pod) -> str:
    """Live tmux sessions, then the logs of past ones (newest first), one per line."""
    state = shlex.quote(pod.state_dir)
    return f"""{pod.tmux} list-sessions -F '#{{session_name}}' 2>/dev/null | sed 's/^/session=/'
ls -t {state} 2>/dev/null | sed -n 's/\\.log$//p' | sed 's/^/log=/'
"""


def log_tail_script(pod: Pod, session: str, max_bytes: int = 262144) -> str:
    return f"tail -c {max_bytes} {shlex.quote(pod.log_path(session))} 2>/dev/null || true\n"


def checkpoints_script(pod: Pod, run_dir: str | None = None) -> str:
    """List complete checkpoint dirs (those holding trainer_state.json); hidden temp dirs don't match."""
    if run_dir is None:
        pattern = f"{shlex.quote(pod.project)}/outputs/*/checkpoint-*/trainer_state.json"
    else:
        base = run_dir if run_dir.startswith("/") else f"{pod.project}/{run_dir}"
        pattern = f"{shlex.quote(base.rstrip('/'))}/checkpoint-*/trainer_state.json"
    # trainer_state.json is written last, so its time is when the checkpoint became complete.
    return f'for f in {pattern}; do [ -f "$f" ] && echo "$(stat -c %Y "$f") ${{f%/trainer_state.json}}"; done; true\n'


SECTION = "@@ta-section:{}@@"


def status_script(pod: Pod, session: str) -> str:
    """Everything `status` shows, in one round trip, as marked sections."""
    sections = {
        "session": f"{pod.tmux} has-session -t {shlex.quote('=' + session)} 2>/dev/null && echo alive || echo gone",
        "log": log_tail_script(pod, session, max_bytes=65536).strip(),
        "checkpoints": checkpoints_script(pod).strip(),
        "gpu": (
            "if command -v nvidia-smi >/dev/null; then nvidia-smi "
            "--query-gpu=name,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits; fi"
        ),
        "disk": f"df -Pk {shlex.quote(pod.workspace)} | tail -n 1",
    }
    return "".join(f"echo '{SECTION.format(name)}'\n{body}\n" for name, body in sections.items())
