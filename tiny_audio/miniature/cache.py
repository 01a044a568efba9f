"""Where the miniature models live, and how a build lands there only when complete.

Each artefact is built in a staging sibling with a marker written last, then swapped into place
whole (`tiny_audio.folders`), so an interrupted build (Ctrl+C, kill -9, a full disk) is never
mistaken for a finished one, nor does it destroy the earlier build: the next run builds again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tiny_audio.folders import staging_folder, swap_in

MARKER = ".complete"


class CacheError(RuntimeError):
    """The cache cannot be written; the message names the path and the fix."""


def cache_root() -> Path:
    """$TINY_AUDIO_CACHE, else the user's cache directory (XDG on Linux, ~/Library/Caches on macOS)."""
    if os.environ.get("TINY_AUDIO_CACHE"):
        return Path(os.environ["TINY_AUDIO_CACHE"])
    if os.uname().sysname == "Darwin":
        return Path.home() / "Library" / "Caches" / "tiny-audio"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tiny-audio"


def is_built(path: Path, stamp: str) -> bool:
    marker = path / MARKER
    return marker.is_file() and marker.read_text() == stamp


def build_atomically(path: Path, stamp: str, build: Callable[[Path], None], rebuild: bool = False) -> bool:
    """Run `build(tmp_dir)` unless `path` already holds a complete build with this stamp.

    Returns whether it built. `stamp` should name everything the build depends on (version, seed,
    sizes), so a cache written by other settings is rebuilt rather than reused.
    """
    if not rebuild and is_built(path, stamp):
        return False
    try:
        staging = staging_folder(path)
    except OSError as error:
        raise _cache_error(path, error) from None
    try:
        build(staging)
        (staging / MARKER).write_text(stamp)
        swap_in(staging, path)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise _cache_error(path, error) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


def _cache_error(path: Path, error: OSError) -> CacheError:
    reason = error.strerror or str(error)
    return CacheError(
        f"cannot write the miniature models to {path}: {reason}; free some space or point "
        "TINY_AUDIO_CACHE (or --cache) at a writable directory"
    )
