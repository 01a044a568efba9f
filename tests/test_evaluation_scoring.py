"""Normalisation, WER breakdown, empty/looping detection and the cliff rule, on hand-made text."""

from __future__ import annotations

import pytest

from tiny_audio.evaluation.callback import CliffDetector
from tiny_audio.evaluation.normalize import normalize, number_to_words, ordinal_to_words, year_to_words
from tiny_audio.evaluation.wer import is_looping, longest_repeat, score


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  The   end.\n", "the end"),
        ("Mr. Smith's 2 cats", "mister smiths two cats"),
        ("I won't go; we're done & they've left.", "i will not go we are done and they have left"),
        ("Don't, can't, I'm", "do not can not i am"),
        ("It\u2019s here", "its here"),
        ("[noise] uh the (laughs) dog <unk> um barked", "the dog barked"),
        ("Twenty-five CAFÉS", "twenty five cafes"),
        ("1,250 people", "one thousand two hundred fifty people"),
        ("3.5 percent or 50%", "three point five percent or fifty percent"),
        ("the 2nd and 21st and 40th", "the second and twenty first and fortieth"),
        (
            "in 1984 and 1905 and 2005 and 2024",
            "in nineteen eighty four and nineteen oh five and two thousand five and twenty twenty four",
        ),
        ("at 3:30", "at three thirty"),
        ("mp3 files", "mp3 files"),
        ("", ""),
        ("...!?", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_normalize_is_idempotent() -> None:
    text = "Dr. O'Brien's 3rd visit, in 1999 (roughly) cost $1,000.50!"
    assert normalize(normalize(text)) == normalize(text)


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (101, "one hundred one"),
        (2_000_005, "two million five"),
        (10**12 + 1, "one trillion one"),
    ],
)
def test_number_to_words(number: int, words: str) -> None:
    assert number_to_words(number) == words


def test_years_and_ordinals() -> None:
    assert year_to_words(1900) == "nineteen hundred"
    assert year_to_words(1066 + 1000) == "twenty sixty six"
    assert [ordinal_to_words(n) for n in (1, 3, 5, 8, 9, 12, 20, 100)] == [
        "first",
        "third",
        "fifth",
        "eighth",
        "ninth",
        "twelfth",
        "twentieth",
        "one hundredth",
    ]


def test_wer_counts_each_error_kind_exactly() -> None:
    # ref 1: "the cat sat on the mat" -> one substitution (sat->sit), one deletion (the)
    # ref 2: "hello world" -> one insertion (again); ref 3: exact after normalisation
    report = score(
        ["The cat sat on the mat.", "hello world", "It's 2 o'clock"],
        ["the cat sit on mat", "hello world again", "its two oclock"],
    )
    per_sample = [(s.substitutions, s.insertions, s.deletions, s.reference_words) for s in report.samples]
    assert per_sample == [(1, 0, 1, 6), (0, 1, 0, 2), (0, 0, 0, 3)]
    assert report.reference_words == 11
    assert report.substitution_rate == pytest.approx(1 / 11)
    assert report.insertion_rate == pytest.approx(1 / 11)
    assert report.deletion_rate == pytest.approx(1 / 11)
    assert report.wer == pytest.approx(3 / 11)
    assert [s.wer for s in report.samples] == pytest.approx([2 / 6, 1 / 2, 0.0])
    assert report.empty_rate == 0 and report.looping_rate == 0


def test_metrics_use_the_eval_prefix_and_summary_reads_as_percentages() -> None:
    report = score(["a b c d"], ["a b c x"])
    assert report.metrics() == {
        "eval/wer": 0.25,
        "eval/substitution_rate": 0.25,
        "eval/insertion_rate": 0.0,
        "eval/deletion_rate": 0.0,
        "eval/empty_rate": 0.0,
        "eval/looping_rate": 0.0,
    }
    assert report.summary().startswith("WER 25.0% (sub 25.0%, ins 0.0%, del 0.0%) | empty 0.0% | looping 0.0%")


def test_empty_predictions_are_counted_as_deletions_and_flagged() -> None:
    report = score(["one two three", "four five"], ["", "  [noise] uh "])
    assert [s.empty for s in report.samples] == [True, True]
    assert report.empty_rate == 1.0
    assert report.deletion_rate == 1.0 and report.wer == 1.0


def test_looping_predictions_are_flagged() -> None:
    references = ["the weather is nice today"] * 4
    predictions = [
        "the weather is nice today",  # right
        "the the the the weather",  # one word, four times in a row
        "is nice is nice is nice is nice today",  # a phrase, four times
        " ".join(f"word{i}" for i in range(16)),  # no repeats, but more than 3x the reference's 5 words
    ]
    report = score(references, predictions)
    assert [s.looping for s in report.samples] == [False, True, True, True]
    assert report.looping_rate == 0.75


def test_repeats_below_the_threshold_are_not_a_loop() -> None:
    assert longest_repeat(["a", "b", "a", "b", "a", "b", "c"]) == 3
    assert longest_repeat([]) == 0
    assert not is_looping(["no", "no", "no", "thank", "you"], reference_words=5)
    assert is_looping(["no", "no", "no", "no", "thank", "you"], reference_words=6)


def test_score_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no samples"):
        score([], [])
    with pytest.raises(ValueError, match="no reference words"):
        score(["..."], ["x"]).wer  # noqa: B018


def test_cliff_fires_once_after_a_plateau() -> None:
    detector = CliffDetector()
    wers = (1.0, 1.0, 0.98, 0.4, 0.35)
    messages = [detector.update(100 * (i + 1), wer) for i, wer in enumerate(wers)]
    assert messages[:3] == [None, None, None] and messages[4] is None
    assert messages[3] == "WER fell from 0.98 to 0.40: output became intelligible at step 400"
    assert detector.cliff_step == 400


@pytest.mark.parametrize(
    "wers",
    [
        [1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3],  # a smooth decline
        [4.0, 3.5, 1.2, 1.1],  # insertions falling, but not yet intelligible
        [1.0, 0.5, 0.4],  # a drop with no plateau before it
        [1.0, 0.95, 0.8],  # a drop of less than 30%
    ],
)
def test_cliff_does_not_fire_without_a_sharp_drop_off_a_plateau(wers: list[float]) -> None:
    detector = CliffDetector()
    assert all(detector.update(100 * (i + 1), wer) is None for i, wer in enumerate(wers))
    assert detector.cliff_step is None


def test_cliff_state_survives_a_round_trip() -> None:
    before = CliffDetector()
    for step, wer in ((100, 1.0), (200, 0.99)):
        before.update(step, wer)
    after = CliffDetector()
    after.load_state_dict(before.state_dict())
    assert after.update(300, 0.5) is not None
    fired = CliffDetector()
    fired.load_state_dict(after.state_dict())
    assert fired.update(400, 0.1) is None and fired.cliff_step == 300
