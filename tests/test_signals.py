"""Signal handling, driven alone: the first signal asks for save-and-stop, a second quits at once."""

from __future__ import annotations

import os
import signal

import pytest

from tiny_audio.training.signals import StopSignals


def test_a_signal_asks_the_loop_to_save_and_stop_and_the_handlers_come_back() -> None:
    stops: list[str] = []
    lines: list[str] = []
    signals = StopSignals(stops.append, lines.append)
    before = signal.getsignal(signal.SIGTERM)
    signals.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal: the process lives on
    finally:
        signals.restore()
    assert stops == ["SIGTERM"]
    assert lines == [
        "SIGTERM received: finishing this step, saving a checkpoint, then exiting (again to quit at once)."
    ]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_signal_exits_without_saving() -> None:
    stops: list[str] = []
    signals = StopSignals(stops.append, lambda _: None)
    signals(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt, match="second SIGTERM: exiting without saving"):
        signals(signal.SIGTERM, None)
    assert stops == ["SIGINT"]


def test_a_forked_loader_worker_ignores_the_signal() -> None:
    stops: list[str] = []
    signals = StopSignals(stops.append, lambda _: None)
    signals.main_pid = os.getpid() + 1  # as a worker sees it: the handler was installed by its parent
    signals(signal.SIGINT, None)
    signals(signal.SIGINT, None)
    assert stops == [] and signals.received == 0
