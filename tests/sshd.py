"""A real OpenSSH server on 127.0.0.1 that plays a RunPod pod, for the `ta runpod` tests.

Import the fixture into a test module: `from tests.sshd import sshd_server  # noqa: F401`.

It runs `sshd -D` as the current user with a temporary host key and one authorized test key, so the
client side is the real `ssh`/`rsync`/`tmux`. The pod's environment mimics RunPod's: RUNPOD_POD_ID is
set and `runpodctl` is on PATH, but this `runpodctl` only records its arguments: the RunPod API is the
one thing the tests replace.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
POD_ID = "pod-under-test"
REQUIRED = ("ssh", "ssh-keygen", "rsync", "tmux")


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    key: Path
    known_hosts: Path
    workspace: Path
    tmux_socket: str
    runpodctl_calls: Path  # one line per call of the recording runpodctl

    @property
    def env(self) -> dict[str, str]:
        """Environment for `ta runpod ...` so it talks to this server and never touches ~/.ssh."""
        return {
            "TA_SSH_USER": getpass.getuser(),
            "TA_SSH_KEY": str(self.key),
            "TA_SSH_KNOWN_HOSTS": str(self.known_hosts),
            "TA_RUNPOD_WORKSPACE": str(self.workspace),
            "TA_RUNPOD_PYTHON": sys.executable,
            "TA_RUNPOD_TMUX_SOCKET": self.tmux_socket,
        }

    @property
    def project(self) -> Path:
        return self.workspace / "tiny-audio"

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.tmux_socket, *args], capture_output=True, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing() -> list[str]:
    missing = [name for name in REQUIRED if shutil.which(name) is None]
    return missing + ([SSHD] if not Path(SSHD).exists() else [])


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with {process.returncode}: {process.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {timeout_s} s")


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if missing := _missing():
        pytest.skip(f"needs {', '.join(missing)} (apt-get install openssh-server openssh-client rsync tmux)")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    shutil.copy(root / "client_key.pub", root / "authorized_keys")

    bin_dir = root / "pod-bin"
    bin_dir.mkdir()
    calls = root / "runpodctl-calls.txt"
    runpodctl = bin_dir / "runpodctl"
    runpodctl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    runpodctl.chmod(0o755)

    workspace = root / "workspace"
    workspace.mkdir()
    port = free_port()
    # sshd refuses to start without its privilege-separation directory (only root can create it).
    try:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    except PermissionError:
        pytest.skip("sshd needs /run/sshd; create it as root (mkdir -m 755 /run/sshd)")
    path = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    config = root / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root / "host_key"}
PidFile {root / "sshd.pid"}
AuthorizedKeysFile {root / "authorized_keys"}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
SetEnv RUNPOD_POD_ID={POD_ID} PATH={path}
LogLevel ERROR
"""
    )
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    server = SshServer(
        host="127.0.0.1",
        port=port,
        key=root / "client_key",
        known_hosts=root / "known_hosts",
        workspace=workspace,
        tmux_socket=f"ta-test-{uuid.uuid4().hex[:8]}",
        runpodctl_calls=calls,
    )
    try:
        _wait_listening(port, process)
        yield server
    finally:
        server.tmux("kill-server")
        process.terminate()
        process.wait(timeout=10)
