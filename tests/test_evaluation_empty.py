"""Empty references (non-speech, or text that normalises to nothing), loops of any unit, and `ta transcribe`'s
handling of silence and unreadable files: scored and reported, never an error."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from tests.data_helpers import tone, write_audiofolder
from tests.test_evaluation_compare import hand_made
from tests.training_helpers import short_run_config
from tiny_audio.data.sentences import held_out_sentences, make_sentence
from tiny_audio.evaluation.cli import app
from tiny_audio.evaluation.dataset import load_test_set
from tiny_audio.evaluation.normalize import normalize
from tiny_audio.evaluation.registry import resolve
from tiny_audio.evaluation.report import markdown, results_json, wer_vs_step
from tiny_audio.evaluation.wer import align, is_looping, repeats_characters, score
from tiny_audio.recipe.run import run
from tiny_audio.training.trainer import Callback, Trainer

# --- scoring -------------------------------------------------------------------------------------


def test_wer_covers_speech_and_hallucination_covers_empty_references() -> None:
    references = ["the cat sat", "Uh.", "[noise]", "", "red fox"]
    predictions = ["the cat sit", "", "David David", "hello", "red fox"]
    report = score(references, predictions)
    assert [s.reference_words for s in report.samples] == [3, 0, 0, 0, 2]
    # Three words said over silence are insertions of their own clips, not of the WER.
    assert report.wer == pytest.approx(1 / 5) and report.insertion_rate == 0.0
    assert report.empty_rate == 0.0
    assert report.hallucination_rate == pytest.approx(2 / 3)
    assert report.hallucinated_words_per_clip == pytest.approx(3 / 3)
    assert report.metrics()["eval/hallucination_rate"] == pytest.approx(2 / 3)
    assert "hallucinated on 66.7% of 3 non-speech samples (1.0 words each)" in report.summary()


def test_a_set_without_reference_words_has_hallucinations_but_no_wer() -> None:
    report = score(["Uh.", "", "[laughter] um"], ["", "", "a b c d e"])
    assert report.hallucination_rate == pytest.approx(1 / 3)
    assert set(report.metrics()) == {"eval/hallucination_rate", "eval/hallucinated_words_per_clip"}
    with pytest.raises(ValueError, match="no reference words"):
        report.wer  # noqa: B018
    with pytest.raises(ValueError, match="no samples with reference words"):
        report.looping_rate  # noqa: B018
    with pytest.raises(ValueError, match="no samples without reference words"):
        score(["a"], ["a"]).hallucination_rate  # noqa: B018
    assert score(["a"], ["a"]).metrics().keys() == {
        "eval/wer",
        "eval/substitution_rate",
        "eval/insertion_rate",
        "eval/deletion_rate",
        "eval/empty_rate",
        "eval/looping_rate",
    }


def test_alignment_of_an_empty_side_marks_every_word() -> None:
    assert align("Uh.", "David David") == "REF: ***** *****\nHYP: david david\n     I     I"
    assert align("the cat", "") == "REF: the cat\nHYP: *** ***\n     D   D"
    assert "D" not in align("[noise]", "") and "I" not in align("[noise]", "")  # nothing on either side


@pytest.mark.parametrize(
    "prediction",
    [
        "DavidDavidDavidDavid",  # a name, no spaces
        "David DavidDavid David",  # the same, spaced unevenly
        "the cat the cat the cat the cat",  # a phrase
        "ababababab",  # characters
        "The small cat opened the window.windowwindowwindowwindow",  # a loop after a right start
        "Emma Emma Emma Emma",
    ],
)
def test_loops_of_any_unit_are_caught(prediction: str) -> None:
    assert is_looping(normalize(prediction).split(), reference_words=12)


@pytest.mark.parametrize(
    "prediction",
    [
        "The bookkeeper's committee agreed that it cost 1000000000 dollars.",  # letters and digits that repeat
        "Hahaha, no no no, thank you.",  # three repeats are speech, not a loop
        "We visited the boats last night, and Emma moved the kitchen.",
        "I see you, I see you, I see you.",
    ],
)
def test_normal_sentences_are_not_loops(prediction: str) -> None:
    assert not is_looping(normalize(prediction).split(), reference_words=12)


def test_no_sentence_of_the_grammar_looks_like_a_loop() -> None:
    rng = random.Random(0)
    sentences = [make_sentence(rng) for _ in range(300)] + held_out_sentences(100, random.Random(1))
    assert not any(is_looping(normalize(s).split(), len(s.split())) for s in sentences)
    assert repeats_characters("xyzxyzxyzxyz") and not repeats_characters("xyzxyzxyz")
    assert not repeats_characters("aaaa") and repeats_characters("aaaaaaaa")  # the minimum span


def test_results_carry_hallucination_and_a_null_wer_for_non_speech() -> None:
    results = [
        hand_made("run/checkpoint-2", "clean", [("a b", "a b"), ("c d", "c x")]),
        hand_made("run/checkpoint-2", "non_speech", [("", ""), ("", "David David David"), ("", "")]),
    ]
    models = [(results[0].model, "cpu")]
    document = results_json(
        results, models, [r.test_set for r in results], {"num_samples": None, "max_new_tokens": 8, "batch_size": 2}, 0
    )
    clean, silent = document["results"]
    assert clean["wer"] == 0.25 and clean["hallucination_rate"] is None and clean["non_speech_samples"] == 0
    assert silent["wer"] is None and silent["raw_wer"] is None and silent["looping_rate"] is None
    assert silent["hallucination_rate"] == pytest.approx(1 / 3) and silent["hallucinated_words_per_clip"] == 1.0
    json.dumps(document)  # null, not NaN
    text = markdown(document)
    assert "| run/checkpoint-2 | 2 | 25.0% | - |" in text
    assert "## Non-speech: hallucinations" in text
    assert "| run/checkpoint-2 | 2 | non_speech | 3 | 33.3% | 1.0 |" in text
    assert [p["test_set"] for p in wer_vs_step(results)] == ["clean"]


# --- reading sets with empty references ----------------------------------------------------------


def _write_non_speech(folder: Path) -> None:
    folder.mkdir(parents=True)
    sf.write(folder / "silence.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(folder / "hum.wav", 0.1 * tone(1.0, freq=50.0), 16000)
    sf.write(folder / "uh.wav", 0.1 * tone(1.0, freq=300.0), 16000)
    with open(folder / "metadata.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["file_name", "text"], ["silence.wav", ""], ["hum.wav", ""], ["uh.wav", "Uh."]])


def test_a_test_set_of_empty_references_and_silence_is_read_whole(tmp_path: Path) -> None:
    _write_non_speech(tmp_path / "set" / "non_speech")
    (test_set,) = resolve([str(tmp_path / "set")])
    loaded = load_test_set(test_set, 16000, None)
    assert [s.text for s in loaded.samples] == ["", "", "Uh."]
    assert not np.any(loaded.samples[0].audio) and loaded.skipped.total == 0


def test_split_all_and_robust_sets_resolve_to_every_split(tmp_path: Path) -> None:
    write_audiofolder(tmp_path / "plain", {"train": 1, "validation": 1, "test": 1})
    assert [t.split for t in resolve([str(tmp_path / "plain")])] == ["test"]
    assert [t.split for t in resolve([str(tmp_path / "plain")], split="all")] == ["test", "train", "validation"]
    from tiny_audio.data.robust import build_robust

    build_robust(tmp_path / "robust", clips=1, conditions=("non_speech", "clean"), workers=1)
    found = resolve([str(tmp_path / "robust")])
    assert [t.name for t in found] == ["robust:non_speech", "robust:clean"]  # the set's own order
    assert [t.split for t in resolve([str(tmp_path / "robust")], split="clean")] == ["clean"]


# --- a training run whose eval references all normalise to nothing, and `ta transcribe` -------------


class Recorder(Callback):
    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.metrics.append(dict(metrics))


@dataclass
class Run:
    root: Path
    checkpoint: Path
    evaluations: list[dict[str, Any]]


@pytest.fixture(scope="module")
def uh_run(tiny_model_config, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Two steps, evaluating WER on references that are all fillers or annotations."""
    root = tmp_path_factory.mktemp("uh_run")
    data = write_audiofolder(root / "data", {"train": 4, "validation": 3})
    with open(data / "validation" / "metadata.csv", "w", newline="") as handle:
        rows = [
            ["file_name", "text"],
            ["clip_0000.wav", "Uh."],
            ["clip_0001.wav", "[noise]"],
            ["clip_0002.wav", "Hmm."],
        ]
        csv.writer(handle).writerows(rows)
    cfg = short_run_config(
        "uh", tiny_model_config(), data, root / "run", data_options={"max_eval_samples": 3}, max_steps=2,
        eval_steps=2, logging_steps=1, eval_wer_samples=3,
    )  # fmt: skip
    recorder = Recorder()
    run(cfg, callbacks=[recorder], log=lambda line: None)
    return Run(root, root / "run" / "checkpoint-2", recorder.metrics)


def test_training_evaluation_survives_references_that_normalise_to_nothing(uh_run: Run) -> None:
    (metrics,) = uh_run.evaluations
    assert "eval/wer" not in metrics
    assert 0.0 <= metrics["eval/hallucination_rate"] <= 1.0
    assert [p["reference"] for p in metrics["eval/predictions"]] == ["Uh.", "[noise]", "Hmm."]


def test_transcribe_gives_silence_an_empty_line_and_goes_on_past_a_bad_file(uh_run: Run, tmp_path: Path) -> None:
    silent, speech, broken = (
        tmp_path / "silent.wav",
        uh_run.root / "data" / "train" / "clip_0000.wav",
        tmp_path / "x.wav",
    )
    sf.write(silent, np.zeros(8000, dtype=np.float32), 16000)
    broken.write_bytes(b"RIFF not really")
    args = ["transcribe", str(uh_run.checkpoint), str(silent), str(broken), str(speech), "--max-new-tokens", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == f"{silent}\t" and lines[1].startswith(f"{speech}\t") and len(lines) == 2
    assert f"cannot transcribe {broken}: unreadable_audio" in result.stderr
    assert "1 of 3 files could not be transcribed" in result.stderr


def test_transcribing_only_silence_needs_no_model(tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, dtype=np.float32), 16000)
    # A Hub id that does not exist: loading it would fail, so passing shows that nothing was loaded.
    result = CliRunner().invoke(app, ["transcribe", "nobody-here/no-such-model", str(silent)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{silent}\t\n"
