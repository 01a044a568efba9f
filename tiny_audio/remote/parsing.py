"""Read what the pod sends back: terminal logs, training progress lines, checkpoints, status sections."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from tiny_audio.remote.commands import SECTION

# CSI (colours, cursor moves), OSC (window titles) and two-byte escapes a terminal program may emit.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|\x1b[()][0-9A-Za-z]")
_STEP = re.compile(r"Step (\d+)/(\d+)")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

# What changes which line a terminal shows: line ends, carriage return, erase-line, cursor-up (a live
# progress bar redraws itself with these), then any other escape, which only styles text.
_CONTROL = re.compile(r"(\r\n|\n)|(\r|\x1b\[2K)|\x1b\[(\d*)A|" + _ANSI.pattern)


def terminal_lines(raw: str) -> list[str]:
    """The lines a terminal would end up showing for a raw pane log: styling dropped, rewritten lines
    (\\r, erase, cursor-up redraws of a progress bar) kept in their last version only."""
    lines: list[str] = []
    current = ""
    position = 0
    for match in _CONTROL.finditer(raw):
        current += raw[position : match.start()]
        position = match.end()
        newline, erase, up = match.group(1), match.group(2), match.group(3)
        if newline:
            lines.append(current)
            current = ""
        elif erase:
            current = ""
        elif up is not None:
            for _ in range(int(up or 1)):
                current = lines.pop() if lines else ""
    current += raw[position:]
    if current:
        lines.append(current)
    return lines


@dataclass(frozen=True)
class Progress:
    step: int
    max_steps: int
    loss: float | None
    eta: str | None
    fields: dict[str, str] = field(default_factory=dict)  # every `Name: value` on the line


def parse_progress(line: str) -> Progress | None:
    """`Step 25/20000 | Loss: 8.3400 | Grad Norm: 45.20 | LR: 1e-4 | ETA: 20hr | ...` -> Progress."""
    match = _STEP.search(line)
    if match is None:
        return None
    fields = {}
    for part in line[match.end() :].split("|"):
        name, sep, value = part.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    try:
        loss = float(fields["Loss"]) if "Loss" in fields else None
    except ValueError:
        loss = None
    return Progress(int(match.group(1)), int(match.group(2)), loss, fields.get("ETA"), fields)


def latest_progress(raw_log: str) -> tuple[Progress, str] | None:
    """The newest progress line in a raw terminal log, parsed, with the line itself."""
    # Split on '\r' as well: a progress display may rewrite one line many times.
    for line in reversed(_ANSI.sub("", raw_log).replace("\r", "\n").split("\n")):
        progress = parse_progress(line)
        if progress is not None:
            return progress, line.strip()
    return None


def checkpoint_step(path: str) -> int | None:
    match = _CHECKPOINT.match(PurePosixPath(path).name)
    return int(match.group(1)) if match else None


def latest_checkpoint(lines: list[str]) -> str | None:
    """The most recently completed checkpoint among "MTIME PATH" lines (see checkpoints_script).

    By time, not step: a new stage restarts at step 0, so its checkpoint-500 is newer than the
    previous stage's checkpoint-20000. The step breaks ties within one second.
    """
    found = []
    for line in lines:
        mtime, _, path = line.strip().partition(" ")
        step = checkpoint_step(path)
        if step is not None and mtime.isdigit():
            found.append((int(mtime), step, path))
    return max(found)[2] if found else None


def rsync_summary(stats: str) -> str:
    """`rsync --stats` report -> `N files updated (X sent)`."""
    found = dict(re.findall(r"^(Number of regular files transferred|Total bytes sent): ([\d,.]+)", stats, re.M))
    files = found.get("Number of regular files transferred", "?")
    return f"{files} files updated ({found.get('Total bytes sent', '?')} bytes sent)"


def key_values(output: str) -> dict[str, list[str]]:
    """`key=value` lines -> {key: [values...]}."""
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found.setdefault(key.strip(), []).append(value)
    return found


def sections(output: str) -> dict[str, str]:
    """Split `status_script` output at its section markers."""
    marker = re.compile(re.escape(SECTION).replace(r"\{\}", r"(\w+)"))
    parts = marker.split(output)
    # parts: [before, name1, body1, name2, body2, ...]
    return {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}


@dataclass(frozen=True)
class Gpu:
    name: str
    utilization_pct: int
    memory_used_mib: int
    memory_total_mib: int


def parse_gpus(csv: str) -> list[Gpu]:
    gpus = []
    for line in csv.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            gpus.append(Gpu(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return gpus


def parse_disk_free_gib(df_line: str) -> float | None:
    """`df -Pk` row -> free GiB."""
    parts = df_line.split()
    if len(parts) >= 4 and parts[3].isdigit():
        return int(parts[3]) / 1024**2
    return None


def pick_session(requested: str | None, live: list[str], logged: list[str], default: str) -> str | None:
    """The session a command means: the named one, else the only live one, else the default,
    else the newest logged run (for reading logs after a session ended)."""
    if requested is not None:
        return requested
    if len(live) == 1:
        return live[0]
    if default in live:
        return default
    if not live and logged:
        return logged[0]
    return None
