"""Build a folder beside the place it goes, then swap it in whole.

A reader finds the old folder or the new one, never half of one; a build cut off (Ctrl+C, kill -9,
a full disk) leaves only a dot-named sibling, which listings and checkpoint discovery pass over and
the next build of the same place removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def process_alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but belongs to someone else
    return True


def staging_folder(out: Path) -> Path:
    """A new empty sibling `.NAME.partial-PID-*` of `out` to build in; those of dead processes are removed."""
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.partial-"
    for stale in parent.glob(prefix + "*"):
        if not process_alive(stale.name[len(prefix) :].split("-", 1)[0]):
            shutil.rmtree(stale, ignore_errors=True)  # left by a build that was killed
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the folder's mode
    return staging


def swap_in(staging: Path, out: Path) -> None:
    """Replace `out` (when it exists) by the finished `staging`, a sibling of it."""
    old = None
    if out.exists():
        # Two renames rather than delete-then-rename: `out` is never a half-deleted folder.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=staging.parent))
        old.rmdir()
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
