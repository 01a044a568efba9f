"""Thin executor: runs the argv lists from `commands.py` with the system ssh/rsync and explains failures."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tiny_audio.remote.commands import Target, rsync_pull_argv, rsync_push_argv, ssh_argv

STDERR_TAIL_LINES = 15


class RemoteError(RuntimeError):
    """A failure worth one clear message: what failed, where, and what to do."""


def explain_connection_failure(stderr: str, target: Target) -> str | None:
    """One line naming host, port and the likely fix, or None when ssh itself connected fine."""
    where = target.describe()
    text = stderr.lower()
    if "connection refused" in text:
        return (
            f"cannot connect to {where}: connection refused. Check the port (RunPod → Connect → "
            f"'SSH over exposed TCP') and that the pod is running."
        )
    if "timed out" in text or "no route to host" in text or "network is unreachable" in text:
        return (
            f"cannot connect to {where}: no answer within {target.connect_timeout} s. Check the host "
            f"address and port (RunPod → Connect) and that the pod is running."
        )
    if "could not resolve hostname" in text or "name or service not known" in text:
        return f"cannot connect to {where}: unknown host {target.host!r}. Copy the IP from RunPod → Connect."
    if "remote host identification has changed" in text or "host key verification failed" in text:
        return (
            f"cannot connect to {where}: its host key changed (a new pod at a reused address). If that is "
            f"expected, forget the old key: ssh-keygen -R '[{target.host}]:{target.port}'"
        )
    if "permission denied" in text:
        key = target.key or "ssh's default keys"
        return (
            f"cannot log in to {where}: key {key} was refused. Add its .pub to RunPod (Settings → SSH "
            f"Public Keys) before creating the pod, or pass --key / TA_SSH_KEY."
        )
    if "connection closed" in text or "connection reset" in text or "kex_exchange_identification" in text:
        return f"cannot connect to {where}: the server closed the connection. Wait for the pod to finish starting."
    return None


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class Remote:
    target: Target

    def run(self, command: str, *, what: str, stdin: str | None = None, check: bool = True) -> str:
        """Run `command` on the pod and return its stdout; `what` names the step in errors."""
        argv = ssh_argv(self.target, command)
        # Bytes, decoded by hand: text mode would turn a lone '\r' (a redrawn progress line) into '\n'.
        result = subprocess.run(argv, input=(stdin or "").encode(), capture_output=True)
        stdout, stderr = (result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace"))
        if result.returncode != 0:
            if result.returncode == 255 and (reason := explain_connection_failure(stderr, self.target)):
                raise RemoteError(reason)
            if check:
                raise RemoteError(
                    f"{what} failed on {self.target.describe()} (exit {result.returncode}):\n{_tail(stderr)}"
                )
        return stdout

    def script(self, script: str, *, what: str, check: bool = True) -> str:
        """Run a bash script sent on stdin, so nothing in it shows up in the pod's process list."""
        return self.run("bash -s", what=what, stdin=script, check=check)

    def stream_script(self, script: str, *, what: str) -> None:
        """Like `script`, but the pod's output appears live (long installs); errors keep the stderr tail."""
        self._stream(ssh_argv(self.target, "bash -s"), what=what, stdin=script)

    def push(self, source: Path, remote_dir: str) -> str:
        """Sync `source` into `remote_dir`; returns rsync's --stats report."""
        return self._stream(rsync_push_argv(self.target, source, remote_dir), what="sync (rsync)", capture=True)

    def pull(self, remote_path: str, dest: Path) -> None:
        self._stream(rsync_pull_argv(self.target, remote_path, dest), what="download (rsync)")

    def interactive(self, command: str) -> int:
        """Run with the local terminal attached (tmux attach)."""
        sys.stdout.flush()
        return subprocess.run(ssh_argv(self.target, command, tty=True)).returncode

    def _stream(self, argv: list[str], *, what: str, stdin: str | None = None, capture: bool = False) -> str:
        """Run with stderr shown live and kept for errors; stdout shown live, or returned if `capture`."""
        sys.stdout.flush()  # our own headers first: the child writes straight to the terminal
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
        )
        tail: collections.deque[str] = collections.deque(maxlen=200)

        def forward_stderr() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                tail.append(line)
                sys.stderr.write(line)

        reader = threading.Thread(target=forward_stderr, daemon=True)
        reader.start()
        assert process.stdin is not None
        process.stdin.write(stdin or "")
        process.stdin.close()
        stdout = process.stdout.read() if process.stdout is not None else ""
        code = process.wait()
        reader.join()
        if code != 0:
            stderr = "".join(tail)
            if reason := explain_connection_failure(stderr, self.target):
                raise RemoteError(reason)
            if "rsync: command not found" in stderr or "rsync: not found" in stderr:
                raise RemoteError(
                    f"{what} failed: rsync is not installed on {self.target.describe()}. "
                    "Run `ta runpod deploy HOST PORT` without --skip-setup once."
                )
            raise RemoteError(f"{what} failed on {self.target.describe()} (exit {code}):\n{_tail(stderr)}")
        return stdout
