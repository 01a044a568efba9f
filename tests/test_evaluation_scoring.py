"""Normalisation, WER breakdown, empty/looping detection and the cliff rule, on hand-made text."""

from __future__ import annotations

import pytest

from tiny_audio.evaluation.callback import CliffDetector
from tiny_audio.evaluation.normalize import normalize, raw
from tiny_audio.evaluation.wer import is_looping, longest_repeat, score


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("  The   end.\n", "the end"),
        # British spellings become American (Whisper's spelling map)
        ("The colour of the theatre centre", "the color of the theater center"),
        ("Organise the catalogue", "organize the catalog"),
        # numbers become digits, currencies symbols, as Whisper writes them
        ("Twenty-five CAFÉS", "25 cafes"),
        ("one hundred and twenty three", "123"),
        ("in nineteen eighty four and two thousand and five", "in 1984 and 2005"),
        ("1,250 people", "1250 people"),
        ("ten dollars", "$10"),
        ("3.5 percent or 50%", "3.5% or 50%"),
        # annotations and fillers dropped, contractions and titles expanded
        ("[noise] uh the (laughs) dog um barked", "the dog barked"),
        ("I won't go; we're done and they've left.", "i will not go we are done and they have left"),
        ("Mr. Smith's 2 cats", "mister smith is 2 cats"),
        ("", ""),
        ("[laughter] um, uh!", ""),
    ],
)
def test_normalize_is_whispers_english_normalizer(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_normalize_is_idempotent() -> None:
    text = "Dr. O'Brien's 3rd visit, in 1999 (roughly) cost $1,000.50 in the colour shop!"
    assert normalize(normalize(text)) == normalize(text)


def test_raw_keeps_casing_and_punctuation() -> None:
    assert raw("  Hello,\n World! ") == "Hello, World!"
    spelled, digits = "It cost twenty dollars.", "it cost $20"
    assert score([spelled], [digits]).wer == 0.0
    raw_report = score([spelled], [digits], normalizer=raw)
    # "It"/"it" and "twenty"/"$20" differ, "dollars." is missing
    assert (raw_report.substitution_rate, raw_report.deletion_rate, raw_report.wer) == (2 / 4, 1 / 4, 3 / 4)


def test_wer_counts_each_error_kind_exactly() -> None:
    # ref 1: "the cat sat on the mat" -> one substitution (sat->sit), one deletion (the)
    # ref 2: "hello world" -> one insertion (again); ref 3: exact after normalisation
    report = score(
        ["The cat sat on the mat.", "hello world", "The colour is two"],
        ["the cat sit on mat", "hello world again", "the color is 2"],
    )
    per_sample = [(s.substitutions, s.insertions, s.deletions, s.reference_words) for s in report.samples]
    assert per_sample == [(1, 0, 1, 6), (0, 1, 0, 2), (0, 0, 0, 4)]
    assert report.reference_words == 12
    assert report.substitution_rate == pytest.approx(1 / 12)
    assert report.insertion_rate == pytest.approx(1 / 12)
    assert report.deletion_rate == pytest.approx(1 / 12)
    assert report.wer == pytest.approx(3 / 12)
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
        score(["[laughter] um"], ["x"]).wer  # noqa: B018


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


def test_the_wer_interval_holds_the_wer_and_narrows_with_more_clips() -> None:
    # One clip in six has two errors in four words: WER 2/24 whatever the number of clips.
    def report(copies: int):
        return score(["a b c d"] * 6 * copies, (["a b c d"] * 5 + ["a x y d"]) * copies)

    few, many = report(4), report(40)
    assert few.wer == pytest.approx(many.wer) == pytest.approx(2 / 24)
    low, high = few.wer_interval()
    assert low < few.wer < high
    many_low, many_high = many.wer_interval()
    assert low < many_low < many.wer < many_high < high
    # Clips are resampled, not words: errors come two to a clip, so the half-width is near 1.96
    # standard errors of the share of bad clips (x 2/4), wider than words drawn one by one give.
    clips, bad = 24, 1 / 6
    clip_error = 2 / 4 * (bad * (1 - bad) / clips) ** 0.5
    word_error = (2 / 24 * (1 - 2 / 24) / (4 * clips)) ** 0.5
    assert (high - low) / 2 == pytest.approx(1.96 * clip_error, rel=0.15)
    assert clip_error > 1.3 * word_error
    assert few.wer_interval() == (low, high)  # seeded: the same report, the same interval


def test_the_wer_interval_is_that_of_the_speech_clips_alone() -> None:
    with_silence = score(["a b", "a b", ""], ["a b", "a x", "made up"])
    assert with_silence.wer_interval() == score(["a b", "a b"], ["a b", "a x"]).wer_interval()
    assert with_silence.wer_interval() == (0.0, 0.5)
    with pytest.raises(ValueError, match="no reference words"):
        score([""], ["words"]).wer_interval()
