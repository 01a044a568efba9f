"""`ta eval` across models and test sets: two checkpoints of a real tiny run on two local test sets.

The tiny models have random weights and write gibberish: these tests check the table's shape and
that every number in it follows from the per-sample transcripts, not the model's quality.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from huggingface_hub import constants as hub_constants
from typer.testing import CliRunner

from tests.data_helpers import sentence, write_audiofolder, write_corrupt_audiofolder
from tests.training_helpers import short_run_config
from tiny_audio.data import skips
from tiny_audio.data.skips import SkipLedger
from tiny_audio.evaluation.cli import app
from tiny_audio.evaluation.compare import Result, model_ref, order_models
from tiny_audio.evaluation.dataset import EvalSample, LoadedTestSet, load_test_set
from tiny_audio.evaluation.normalize import raw
from tiny_audio.evaluation.registry import ESB, GROUPS, TEST_SETS, TestSet, UnknownTestSet, resolve
from tiny_audio.evaluation.report import RATES, details_table, result_row, results_json, wer_table, worst_samples
from tiny_audio.evaluation.wer import score
from tiny_audio.recipe.run import run

ROW_KEYS = {
    "model",
    "step",
    "test_set",
    "num_samples",
    "reference_words",
    "speech_samples",
    "non_speech_samples",
    "hallucination_rate",
    "hallucinated_words_per_clip",
    "wer",
    "substitution_rate",
    "insertion_rate",
    "deletion_rate",
    "raw_wer",
    "raw_substitution_rate",
    "raw_insertion_rate",
    "raw_deletion_rate",
    "wer_interval",
    "empty_rate",
    "looping_rate",
    "audio_seconds",
    "decode_seconds",
    "real_time_factor",
    "samples_per_second",
}


@dataclass
class TwoCheckpoints:
    run_dir: Path
    set_a: Path
    set_b: Path


@pytest.fixture(scope="module")
def two_checkpoints(tiny_model_config, tmp_path_factory: pytest.TempPathFactory) -> TwoCheckpoints:
    """Four training steps saving checkpoint-2 and checkpoint-4, and two local test sets."""
    root = tmp_path_factory.mktemp("compare")
    train = write_audiofolder(root / "train_data", {"train": 8, "validation": 2})
    cfg = short_run_config(
        "compare",
        tiny_model_config(),
        train,
        root / "run",
        max_steps=4,
        save_steps=2,
        eval_steps=1000,
        logging_steps=2,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        eval_wer_samples=0,
    )
    run(cfg, log=lambda line: None)
    set_a = write_audiofolder(root / "set_a", {"test": 4})
    set_b = write_audiofolder(root / "set_b", {"validation": 3}, seconds=0.5, text_prefix="the colour ")
    return TwoCheckpoints(root / "run", set_a, set_b)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["eval", *args, "--max-new-tokens", "6"])


@pytest.fixture(scope="module")
def table(two_checkpoints: TwoCheckpoints, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One call: both checkpoints (given newest first, as a glob would not sort them) on both sets."""
    out = tmp_path_factory.mktemp("eval_out")
    models = [str(two_checkpoints.run_dir / f"checkpoint-{step}") for step in (4, 2)]
    result = invoke(
        *models, "-d", str(two_checkpoints.set_a), "-d", str(two_checkpoints.set_b), "-n", "3", "--worst", "2",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {
        "stdout": result.stdout,
        "models": models[::-1],
        "json": json.loads((out / "results.json").read_text()),
        "md": (out / "results.md").read_text(),
        "samples": [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()],
        "steps": json.loads((out / "wer_vs_step.json").read_text()),
        "steps_csv": list(csv.DictReader((out / "wer_vs_step.csv").open())),
        "run": str(two_checkpoints.run_dir),
    }


def test_one_row_per_checkpoint_and_test_set_sorted_by_step(table: dict[str, Any]) -> None:
    document = table["json"]
    assert document["schema_version"] == 1
    assert [m["step"] for m in document["models"]] == [2, 4]
    assert [m["model"] for m in document["models"]] == table["models"]
    assert all(m["run"] == table["run"] and m["device"] == "cpu" for m in document["models"])
    assert [(t["name"], t["split"], t["num_samples"]) for t in document["test_sets"]] == [
        ("set_a:test", "test", 3),  # -n 3 of 4
        ("set_b:validation", "validation", 3),
    ]
    assert document["test_sets"][1]["audio_seconds"] == pytest.approx(1.5)
    rows = document["results"]
    assert [(r["step"], r["test_set"]) for r in rows] == [
        (2, "set_a:test"),
        (2, "set_b:validation"),
        (4, "set_a:test"),
        (4, "set_b:validation"),
    ]
    assert all(set(row) == ROW_KEYS for row in rows)


def test_every_rate_follows_from_the_per_sample_transcripts(table: dict[str, Any]) -> None:
    samples = table["samples"]
    assert len(samples) == 4 * 3
    for row in table["json"]["results"]:
        mine = [s for s in samples if s["model"] == row["model"] and s["test_set"] == row["test_set"]]
        assert len(mine) == row["num_samples"] == 3
        errors = sum(s["substitutions"] + s["insertions"] + s["deletions"] for s in mine)
        words = sum(s["reference_words"] for s in mine)
        assert row["reference_words"] == words
        assert row["wer"] == pytest.approx(errors / words)
        for kind in ("substitution", "insertion", "deletion"):
            assert row[f"{kind}_rate"] == pytest.approx(sum(s[f"{kind}s"] for s in mine) / words)
        references, predictions = [s["reference"] for s in mine], [s["prediction"] for s in mine]
        raw_report = score(references, predictions, normalizer=raw)
        assert [row[f"raw_{name}"] for name in RATES] == pytest.approx([getattr(raw_report, name) for name in RATES])
        assert [s["raw_wer"] for s in mine] == pytest.approx([s.wer for s in raw_report.samples])
        assert row["empty_rate"] == pytest.approx(sum(s["empty"] for s in mine) / 3)
        assert row["looping_rate"] == pytest.approx(sum(s["looping"] for s in mine) / 3)
        assert row["decode_seconds"] > 0
        assert row["real_time_factor"] == pytest.approx(row["decode_seconds"] / row["audio_seconds"])
        assert row["samples_per_second"] == pytest.approx(3 / row["decode_seconds"])
    set_b = [s for s in samples if s["test_set"] == "set_b:validation"]
    assert [s["reference"] for s in set_b[:3]] == [sentence(i, "the colour ") for i in range(3)]
    # References keep their casing and punctuation ("The colour ... number 0."), so raw WER
    # counts errors that the normalised WER does not; with gibberish output both are high.
    assert all(s["raw_wer"] >= 0 and s["wer"] >= 0 for s in samples)


def test_markdown_holds_the_same_numbers_as_the_json(table: dict[str, Any]) -> None:
    md, rows = table["md"], table["json"]["results"]
    wer_header = "| model | step | set_a:test | set_b:validation |"
    assert wer_header in md and wer_header in table["stdout"]
    for model, step in zip(table["models"], (2, 4), strict=True):
        cells = [f"{100 * r['wer']:.1f}%" for r in rows if r["model"] == model]
        assert f"| {model} | {step} | {cells[0]} | {cells[1]} |" in md
    details = [line for line in md.splitlines() if line.startswith(f"| {table['models'][0]} | 2 | set_")]
    assert len(details) == 2
    first = rows[0]
    low, high = first["wer_interval"]
    assert low <= first["wer"] <= high
    scored = [x for x in table["samples"] if (x["model"], x["test_set"]) == (first["model"], first["test_set"])]
    again = score([x["reference"] for x in scored], [x["prediction"] for x in scored])
    assert [low, high] == list(again.wer_interval())
    expected = [first["raw_wer"], first["substitution_rate"], first["insertion_rate"]]
    cells = details[0].split(" | ")
    assert cells[4:6] == [f"{100 * first['wer']:.1f}%", f"{100 * low:.1f}%–{100 * high:.1f}%"]
    assert cells[6:9] == [f"{100 * v:.1f}%" for v in expected]
    assert details[0].split(" | ")[-2] == f"{first['real_time_factor']:.3f}"


def test_worst_lists_the_highest_wer_samples_aligned(table: dict[str, Any]) -> None:
    worst = table["json"]["worst"]
    assert len(worst) == 4 * 2
    samples = table["samples"]
    for row in table["json"]["results"]:
        mine = [w for w in worst if w["model"] == row["model"] and w["test_set"] == row["test_set"]]
        assert [w["rank"] for w in mine] == [1, 2]
        wers = sorted(s["wer"] for s in samples if s["model"] == row["model"] and s["test_set"] == row["test_set"])
        assert [w["wer"] for w in mine] == wers[::-1][:2]
        for entry in mine:
            ref_line, hyp_line = entry["alignment"].splitlines()[:2]
            assert ref_line.startswith("REF: ") and hyp_line.startswith("HYP: ")
            assert len(ref_line) == len(hyp_line), "jiwer pads each aligned word pair to one width"
    assert "## Highest-WER samples" in table["md"] and "REF: " in table["stdout"]


def test_wer_vs_step_is_written_for_a_plot(table: dict[str, Any]) -> None:
    points = table["steps"]["points"]
    assert table["steps"]["schema_version"] == 1
    assert [(p["test_set"], p["step"]) for p in points] == [
        ("set_a:test", 2),
        ("set_a:test", 4),
        ("set_b:validation", 2),
        ("set_b:validation", 4),
    ]
    by_key = {(r["model"], r["test_set"]): r["wer"] for r in table["json"]["results"]}
    assert all(p["run"] == table["run"] and p["wer"] == by_key[(p["model"], p["test_set"])] for p in points)
    assert [(row["test_set"], int(row["step"])) for row in table["steps_csv"]] == [
        (p["test_set"], p["step"]) for p in points
    ]


def test_order_models_groups_runs_and_sorts_by_step() -> None:
    given = ["a/checkpoint-10000", "hub/model", "a/checkpoint-2000", "b/checkpoint-5", "a/checkpoint-2000"]
    ordered = order_models(given)
    assert [(m.model, m.step) for m in ordered] == [
        ("a/checkpoint-2000", 2000),
        ("a/checkpoint-10000", 10000),
        ("hub/model", None),
        ("b/checkpoint-5", 5),
    ]


# --- the registry --------------------------------------------------------------------------------

ESB_CONFIGS = {"ami", "common_voice", "earnings22", "gigaspeech", "librispeech", "spgispeech", "tedlium", "voxpopuli"}


def test_registry_entries_match_their_dataset_cards() -> None:
    for name, entry in TEST_SETS.items():
        assert entry.name == name
        assert entry.path.count("/") == 1 and entry.config and entry.split
        assert entry.audio_column and entry.text_column
    loquacious = [TEST_SETS["loquacious-dev"], TEST_SETS["loquacious-test"]]
    assert [(t.path, t.config, t.split) for t in loquacious] == [
        ("speechbrain/LoquaciousSet", "medium", "dev"),
        ("speechbrain/LoquaciousSet", "medium", "test"),
    ]
    assert all((t.audio_column, t.text_column) == ("wav", "text") for t in loquacious)
    librispeech = [TEST_SETS["librispeech-clean"], TEST_SETS["librispeech-other"]]
    assert [(t.path, t.config, t.split, t.audio_column) for t in librispeech] == [
        ("openslr/librispeech_asr", "clean", "test", "audio"),
        ("openslr/librispeech_asr", "other", "test", "audio"),
    ]
    esb = [t for t in TEST_SETS.values() if t.path == ESB]
    assert len(esb) == 7 and {t.config for t in esb} <= ESB_CONFIGS
    assert all(t.split == "test" and (t.audio_column, t.text_column) == ("audio", "text") and t.gated for t in esb)
    assert not any(t.gated for t in TEST_SETS.values() if t.path != ESB)


def test_groups_name_registered_entries() -> None:
    assert all(name in TEST_SETS for names in GROUPS.values() for name in names)
    assert [t.name for t in resolve(["all"])] == list(TEST_SETS)
    assert [t.name for t in resolve(["librispeech", "librispeech-clean", "loquacious"])] == [
        "librispeech-clean",
        "librispeech-other",
        "loquacious-dev",
    ]


def test_resolve_reads_local_directories_and_hub_ids(tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "mine", {"train": 1, "validation": 1})
    (local,) = resolve([str(data)])
    assert (local.name, local.path, local.split) == ("mine:validation", str(data), "validation")
    (chosen,) = resolve([str(data)], split="train")
    assert chosen.split == "train"
    (hub,) = resolve(["someone/speech"], config="en", audio_column="wav")
    assert (hub.name, hub.config, hub.split, hub.audio_column) == ("someone/speech:test", "en", "test", "wav")


def test_unknown_test_set_lists_the_known_names(two_checkpoints: TwoCheckpoints) -> None:
    with pytest.raises(UnknownTestSet, match="unknown test set 'libirspeech'"):
        resolve(["libirspeech"])
    result = invoke(str(two_checkpoints.run_dir / "checkpoint-2"), "-d", "libirspeech")
    assert result.exit_code == 1
    assert "unknown test set 'libirspeech'" in result.output
    assert all(name in result.output for name in [*TEST_SETS, *GROUPS])


def test_unreachable_hub_test_set_fails_at_once_naming_it(
    two_checkpoints: TwoCheckpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No Hub can be reached here or in CI; a closed local port makes that certain and immediate.
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    # The model does not exist: the test set is checked before any model loads.
    result = invoke(str(two_checkpoints.run_dir / "checkpoint-999"), "-d", "librispeech-other")
    assert time.perf_counter() - start < 10
    assert result.exit_code == 1
    message = result.output
    assert "cannot reach test set 'librispeech-other' (openslr/librispeech_asr (config other, split test))" in message
    assert "HF_HUB_OFFLINE=1" in message
    gated = invoke(str(two_checkpoints.run_dir / "checkpoint-999"), "-d", "tedlium")
    assert "'tedlium'" in gated.output and "accept the terms" in gated.output


def test_undecodable_samples_are_skipped_and_counted(two_checkpoints: TwoCheckpoints, tmp_path: Path) -> None:
    expected = write_corrupt_audiofolder(tmp_path / "corrupt", good=5)
    out = tmp_path / "out"
    model = str(two_checkpoints.run_dir / "checkpoint-4")
    result = invoke(model, "-d", str(tmp_path / "corrupt"), "--split", "validation", "-n", "0", "--out", str(out))
    assert result.exit_code == 0, result.output
    document = json.loads((out / "results.json").read_text())
    (test_set,) = document["test_sets"]
    # Untranscribed clips are scored, not skipped: their reference is empty, so any output is a hallucination.
    untranscribed = expected.pop(skips.EMPTY_TEXT)
    assert test_set["num_samples"] == 5 + untranscribed
    assert document["results"][0]["non_speech_samples"] == untranscribed
    assert test_set["skipped"] == dict(sorted(expected.items(), key=lambda item: (-item[1], item[0])))
    assert f"skipped {sum(expected.values())} samples" in result.output
    assert "## Skipped samples" in (out / "results.md").read_text()


# --- the report from hand-made transcripts (no model), where each WER is known ------------------


def hand_made(model: str, set_name: str, pairs: list[tuple[str, str]], decode_seconds: float = 2.0) -> Result:
    second = np.zeros(16000, dtype=np.float32)
    samples = [EvalSample(f"{set_name}/{i}", second, ref) for i, (ref, _) in enumerate(pairs)]
    loaded = LoadedTestSet(TestSet(set_name, "/data", None, "test"), samples, SkipLedger(), 16000)
    references, predictions = [ref for ref, _ in pairs], [pred for _, pred in pairs]
    return Result(
        model=model_ref(model),
        test_set=loaded,
        predictions=predictions,
        report=score(references, predictions),
        raw_report=score(references, predictions, normalizer=raw),
        decode_seconds=decode_seconds,
    )


def test_worst_ranks_samples_by_wer_then_errors() -> None:
    result = hand_made(
        "run/checkpoint-5",
        "s",
        [
            ("a b c d", "a b c d"),  # 0
            ("a b c d", "a b x y"),  # 0.5
            ("a b", "x y"),  # 1.0, 2 errors
            ("a b c d", "w x y z"),  # 1.0, 4 errors
            ("a", "x y z"),  # 3.0
        ],
    )
    worst = worst_samples(result, 3)
    assert [(w["id"], w["wer"], w["errors"]) for w in worst] == [("s/4", 3.0, 3), ("s/3", 1.0, 4), ("s/2", 1.0, 2)]
    assert worst[0]["alignment"].splitlines() == ["REF: * * a", "HYP: x y z", "     I I S"]
    assert worst_samples(result, 0) == []


def test_tables_put_each_wer_in_its_model_row_and_test_set_column() -> None:
    results = [
        hand_made("run/checkpoint-1", "first", [("a b c d", "a b c x")]),  # 25%
        hand_made("run/checkpoint-1", "second", [("a b", "a x")]),  # 50%
        hand_made("run/checkpoint-2", "first", [("a b c d", "a b c d")]),  # 0%
        hand_made("run/checkpoint-2", "second", [("A b.", "a b")], decode_seconds=0.5),  # 0%, raw 100%
    ]
    models = [(model_ref("run/checkpoint-1"), "cpu"), (model_ref("run/checkpoint-2"), "cpu")]
    document = results_json(results, models, [results[0].test_set, results[1].test_set], {"num_samples": 1}, 0)
    assert wer_table(document) == [
        "| model | step | first | second |",
        "| --- | --- | --- | --- |",
        "| run/checkpoint-1 | 1 | 25.0% | 50.0% |",
        "| run/checkpoint-2 | 2 | 0.0% | 0.0% |",
    ]
    # WER and its interval (one clip: every draw is that clip), raw WER, sub, ins, del, empty,
    # looping, then RTF (0.5 s for 1 s of audio) and samples/s
    assert details_table(document)[-1] == (
        "| run/checkpoint-2 | 2 | second | 1 | 0.0% | 0.0%–0.0% | 100.0% | 0.0% | 0.0% | 0.0% | 0.0% | 0.0% | 0.500 "
        "| 2.00 |"
    )
    assert details_table(document)[2].split(" | ")[4:6] == ["25.0%", "25.0%–25.0%"]
    mixed = hand_made("run/checkpoint-1", "first", [("a b c d", "a b c x"), ("a b", "a b"), ("a b c", "x y z")])
    low, high = result_row(mixed)["wer_interval"]
    assert [low, high] == list(mixed.report.wer_interval()) and low < mixed.report.wer < high


def test_loquacious_entry_reads_a_copy_laid_out_like_the_hub(tmp_path: Path) -> None:
    """The README's `-d loquacious` with the Hub swapped for a local copy of the same layout and columns."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    from tests.data_helpers import tone

    wavs = []
    for i in range(3):
        buffer = io.BytesIO()
        sf.write(buffer, tone(1.0), 16000, format="WAV")
        wavs.append({"bytes": buffer.getvalue(), "path": f"utt{i}.wav"})
    (tmp_path / "dev").mkdir()
    table = pa.table({"ID": [f"utt{i}" for i in range(3)], "wav": wavs, "text": [sentence(i) for i in range(3)]})
    pq.write_table(table, tmp_path / "dev" / "dev-00000-of-00001.parquet")
    entry = dataclasses.replace(TEST_SETS["loquacious-dev"], path=str(tmp_path))
    loaded = load_test_set(entry, 16000, limit=2)
    assert [s.text for s in loaded.samples] == [sentence(0), sentence(1)]
    assert loaded.audio_seconds == pytest.approx(2.0) and loaded.skipped.total == 0


def test_a_missing_model_fails_before_anything_runs(two_checkpoints: TwoCheckpoints, tmp_path: Path) -> None:
    missing = str(two_checkpoints.run_dir / "checkpoint-3")
    good = str(two_checkpoints.run_dir / "checkpoint-2")
    result = invoke(good, missing, "-d", str(two_checkpoints.set_a), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert f"cannot load model '{missing}': no such directory" in result.output
    assert not (tmp_path / "out").exists()
