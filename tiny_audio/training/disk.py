"""A full output disk, reported in one line: what could not be written, what is safe, how to go on."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# ENOSPC: the filesystem is full; EDQUOT: the user's quota on it is.
_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """No space left where the run writes; the message names the last complete checkpoint."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message  # one line, without OSError's "[Errno 28] ...: None" wrapping


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _FULL


def disk_full_error(output_dir: Path, what: str, last_complete: Path | None, cause: OSError) -> DiskFullError:
    """The one-line error for `what` failing on a full disk under `output_dir`."""
    try:
        free = f"{shutil.disk_usage(output_dir).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    safe = (
        f"the last complete checkpoint is {last_complete}"
        if last_complete is not None
        else "no complete checkpoint was written yet"
    )
    message = (
        f"the disk holding {output_dir} is full ({free}; {cause.strerror}): {what} could not be written; {safe}. "
        "Free space (delete old checkpoints or lower training.save_total_limit), then resume with: "
        f"training.resume_from_checkpoint=latest training.output_dir={output_dir}"
    )
    return DiskFullError(cause.errno, message)
