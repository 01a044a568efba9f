"""A data host that stays down, reported in one line: the URL, the retries, what is safe, how to go on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tiny_audio.data.remote import RemoteReadError
from tiny_audio.training import checkpoints


class DataHostDownError(RuntimeError):
    """Training stopped because remote data could not be read; the message names the last checkpoint."""


def worker_message(error: RemoteReadError) -> str:
    """The reader's own line: a loader worker's error reaches the main process wrapped in its traceback."""
    last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
    return last.split(f"{RemoteReadError.__name__}: ", 1)[-1]


@contextlib.contextmanager
def data_host_down_reported(output_dir: Path) -> Iterator[None]:
    try:
        yield
    except RemoteReadError as error:
        last = checkpoints.latest_checkpoint(output_dir)
        safe = f"the last complete checkpoint is {last}" if last is not None else "no checkpoint was written yet"
        raise DataHostDownError(
            f"training stopped: {worker_message(error)}; {safe}. When the data host is back, resume with: "
            f"training.resume_from_checkpoint=latest training.output_dir={output_dir}"
        ) from None
