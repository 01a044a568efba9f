import pytest

from tiny_audio.data.guard import BadFractionGuard, DataQualityError
from tiny_audio.data.skips import SkipLedger


def test_ledger_counts_unique_ids_per_reason() -> None:
    ledger = SkipLedger()
    ledger.extend([("empty_audio", "a"), ("empty_audio", "b"), ("empty_text", "c")])
    ledger.add("empty_audio", "a")  # the same bad sample met again on a later pass
    ledger.extend([("unreadable_audio", "d"), ("unreadable_audio", "e"), ("empty_audio", "f")])
    assert ledger.counts() == {"empty_audio": 3, "unreadable_audio": 2, "empty_text": 1}
    assert ledger.total == 6
    assert ledger.summary() == "skipped 6 samples: empty_audio 3, unreadable_audio 2, empty_text 1"
    assert SkipLedger().summary() == "skipped 0 samples"


def test_ledger_round_trips_through_state_dict() -> None:
    ledger = SkipLedger()
    ledger.extend([("too_long", "x"), ("too_long", "y")])
    restored = SkipLedger()
    restored.load_state_dict(ledger.state_dict())
    restored.add("too_long", "x")
    assert restored.counts() == {"too_long": 2}


def test_guard_raises_once_the_window_verdict_is_certain() -> None:
    guard = BadFractionGuard(max_fraction=0.5, window=10)
    for i in range(5):
        guard.observe("ds", "empty_audio", f"ds/train/{i}.wav")
    with pytest.raises(DataQualityError) as caught:
        guard.observe("ds", "unreadable_audio", "ds/train/5.wav")  # 6 of 10 > 50%
    message = str(caught.value)
    assert "'ds'" in message
    assert "empty_audio 5 (e.g. ds/train/0.wav)" in message
    assert "unreadable_audio 1 (e.g. ds/train/5.wav)" in message
    assert "data.max_bad_fraction=0.5" in message


def test_guard_ignores_bad_records_after_the_window() -> None:
    guard = BadFractionGuard(max_fraction=0.5, window=4)
    for _ in range(4):
        guard.observe("ds")
    for i in range(10):
        guard.observe("ds", "empty_text", str(i))


def test_guard_judges_a_short_pass_on_what_it_held() -> None:
    guard = BadFractionGuard(max_fraction=0.5, window=100)
    guard.observe("ds")
    guard.observe("ds", "empty_text", "a")
    guard.observe("ds", "empty_text", "b")
    with pytest.raises(DataQualityError, match="2 of the first 3 records"):
        guard.end_of_pass()
