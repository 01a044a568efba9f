"""Ctrl+C and SIGTERM stop a run cleanly: the first finishes the step and saves, a second quits at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While installed, SIGINT and SIGTERM call `request_stop(name)` instead of killing the process."""

    def __init__(self, request_stop: Callable[[str], None], log: Callable[[str], None]) -> None:
        self.request_stop = request_stop
        self.log = log
        self.received = 0
        self.main_pid = os.getpid()
        self.previous: dict[signal.Signals, Any] = {}

    def install(self) -> None:
        self.main_pid = os.getpid()
        self.previous = {s: signal.getsignal(s) for s in HANDLED}
        for sig in self.previous:
            signal.signal(sig, self)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __call__(self, signum: int, frame: object) -> None:
        if os.getpid() != self.main_pid:
            # A data-loader worker forked with this handler: Ctrl+C reaches the whole process
            # group, and the worker must keep serving batches until the main process has saved.
            return
        self.received += 1
        name = signal.Signals(signum).name
        if self.received > 1:
            raise KeyboardInterrupt(f"second {name}: exiting without saving")
        self.log(f"{name} received: finishing this step, saving a checkpoint, then exiting (again to quit at once).")
        self.request_stop(name)
