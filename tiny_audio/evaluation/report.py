"""What `ta eval` writes: one comparison table as Markdown and JSON, every transcript, WER against step.

Files in the output directory (`--out`):

results.json  (schema_version 1; rates are fractions, 0.25 = 25%)
  schema_version  1; a field is only ever added under the same version
  created         UTC time, ISO 8601
  settings        {num_samples: requested per test set (null = all), max_new_tokens, batch_size,
                   normalizer: "whisper-english", worst: K}
  models          [{model, run, step, device}] in table order (checkpoints of a run by step;
                   step is null for anything that is not a checkpoint-N directory)
  test_sets       [{name, path, config, split, audio_column, text_column, num_samples,
                   audio_seconds, skipped: {reason: count},
                   split_size: records in the split (scored + skipped) when it was read to its
                   end, null when --num-samples stopped before it}]
  results         one per (model, test set), models outer:
                  {model, step, test_set, num_samples, reference_words,
                   speech_samples, non_speech_samples (with and without reference words),
                   wer, substitution_rate, insertion_rate, deletion_rate   (Whisper-normalised text)
                   raw_wer, raw_substitution_rate, raw_insertion_rate, raw_deletion_rate
                   (text as written: casing and punctuation count),
                   empty_rate, looping_rate (shares of the speech samples),
                   wer_interval [low, high]: the WER's 95% interval, by bootstrap over the
                   speech samples (WerReport.wer_interval): differences inside it are noise;
                   these eleven over the speech samples only, null when there are none;
                   hallucination_rate (share of non-speech samples with any output),
                   hallucinated_words_per_clip, both null when there are no non-speech samples,
                   audio_seconds, decode_seconds, real_time_factor (decode_seconds / audio_seconds),
                   samples_per_second}
  worst           [{model, step, test_set, rank, id, wer, errors, reference, prediction, alignment}]
                  the K highest-WER samples per result (empty without --worst)
results.md    the same tables for people: WER by test set (models x test sets; "-" where a set has no
              reference words), then details, then hallucinations on sets with empty references
samples.jsonl one line per (model, test set, sample): {model, step, test_set, id, reference,
              prediction, wer, substitutions, insertions, deletions, reference_words, raw_wer,
              empty, looping}
wer_vs_step.json / wer_vs_step.csv   only when some model is a checkpoint-N directory:
              points [{run, step, model, test_set, wer, raw_wer}] sorted by run, test set, step,
              one series per (run, test set) for a plot of WER against training steps
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tiny_audio.evaluation.compare import ModelRef, Result
from tiny_audio.evaluation.dataset import LoadedTestSet
from tiny_audio.evaluation.wer import SampleScore, WerReport, align

SCHEMA_VERSION = 1
RATES = ("wer", "substitution_rate", "insertion_rate", "deletion_rate")


def results_json(
    results: list[Result],
    models: list[tuple[ModelRef, str]],
    test_sets: list[LoadedTestSet],
    settings: dict[str, Any],
    worst: int,
) -> dict[str, Any]:
    """The document described in the module docstring; `models` pairs each model with its device."""
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {**settings, "normalizer": "whisper-english", "worst": worst},
        "models": [{"model": m.model, "run": m.run, "step": m.step, "device": device} for m, device in models],
        "test_sets": [_test_set_json(loaded) for loaded in test_sets],
        "results": [result_row(result) for result in results],
        "worst": [entry for result in results for entry in worst_samples(result, worst)],
    }


def result_row(result: Result) -> dict[str, Any]:
    report, raw_report = result.report, result.raw_report

    def rate(of: WerReport, name: str) -> float | None:
        return getattr(of, name) if name in of.defined_metrics() else None

    return {
        "model": result.model.model,
        "step": result.model.step,
        "test_set": result.test_set.test_set.name,
        "num_samples": len(report.samples),
        "reference_words": report.reference_words,
        "speech_samples": len(report.speech),
        "non_speech_samples": len(report.non_speech),
        **{name: rate(report, name) for name in RATES},
        **{f"raw_{name}": rate(raw_report, name) for name in RATES},
        "wer_interval": list(report.wer_interval()) if report.speech else None,
        "empty_rate": rate(report, "empty_rate"),
        "looping_rate": rate(report, "looping_rate"),
        "hallucination_rate": rate(report, "hallucination_rate"),
        "hallucinated_words_per_clip": rate(report, "hallucinated_words_per_clip"),
        "audio_seconds": result.test_set.audio_seconds,
        "decode_seconds": result.decode_seconds,
        "real_time_factor": result.real_time_factor,
        "samples_per_second": result.samples_per_second,
    }


def _test_set_json(loaded: LoadedTestSet) -> dict[str, Any]:
    test_set = loaded.test_set
    return {
        "name": test_set.name,
        "path": test_set.path,
        "config": test_set.config,
        "split": test_set.split,
        "audio_column": test_set.audio_column,
        "text_column": test_set.text_column,
        "num_samples": len(loaded.samples),
        "audio_seconds": loaded.audio_seconds,
        "skipped": loaded.skipped.counts(),
        "split_size": loaded.split_size,
    }


def worst_samples(result: Result, k: int) -> list[dict[str, Any]]:
    """The `k` highest-WER samples (most errors first among equals), with their aligned words."""
    scored = list(zip(result.test_set.samples, result.report.samples, strict=True))
    ranked = sorted(scored, key=lambda pair: (-pair[1].wer, -pair[1].errors))[:k]
    return [
        {
            "model": result.model.model,
            "step": result.model.step,
            "test_set": result.test_set.test_set.name,
            "rank": rank,
            "id": sample.sample_id,
            "wer": score.wer,
            "errors": score.errors,
            "reference": score.reference,
            "prediction": score.prediction,
            "alignment": align(score.reference, score.prediction),
        }
        for rank, (sample, score) in enumerate(ranked, start=1)
    ]


def sample_lines(results: list[Result]) -> list[dict[str, Any]]:
    lines = []
    for result in results:
        pairs = zip(result.test_set.samples, result.report.samples, result.raw_report.samples, strict=True)
        for sample, score, raw_score in pairs:
            lines.append(
                {
                    "model": result.model.model,
                    "step": result.model.step,
                    "test_set": result.test_set.test_set.name,
                    "id": sample.sample_id,
                    **_sample_fields(score),
                    "raw_wer": raw_score.wer,
                }
            )
    return lines


def _sample_fields(score: SampleScore) -> dict[str, Any]:
    return {
        "reference": score.reference,
        "prediction": score.prediction,
        "wer": score.wer,
        "substitutions": score.substitutions,
        "insertions": score.insertions,
        "deletions": score.deletions,
        "reference_words": score.reference_words,
        "empty": score.empty,
        "looping": score.looping,
    }


def wer_vs_step(results: list[Result]) -> list[dict[str, Any]]:
    points = [
        {
            "run": r.model.run,
            "step": r.model.step,
            "model": r.model.model,
            "test_set": r.test_set.test_set.name,
            "wer": r.report.wer,
            "raw_wer": r.raw_report.wer,
        }
        for r in results
        if r.model.step is not None and r.report.speech
    ]
    return sorted(points, key=lambda p: (p["run"], p["test_set"], p["step"]))


# --- Markdown ------------------------------------------------------------------------------------


def markdown(document: dict[str, Any]) -> str:
    """results.md from the results.json document, so both always say the same."""
    settings = document["settings"]
    requested = settings["num_samples"]
    lines = [
        "# Evaluation",
        "",
        f"{'Every' if requested is None else f'The first {requested}'} usable samples of each test set, greedy "
        f"decoding (max_new_tokens={settings['max_new_tokens']}, batch size {settings['batch_size']}). "
        "WER uses Whisper's English normaliser; raw WER compares the text as written. "
        "RTF is decoding time over audio duration, measured in this run.",
        "",
        "## WER by test set",
        "",
        *wer_table(document),
        "",
        "## Details",
        "",
        *details_table(document),
    ]
    hallucination = hallucination_table(document)
    if hallucination:
        lines += ["", "## Non-speech: hallucinations", "", *hallucination]
    skipped = [t for t in document["test_sets"] if t["skipped"]]
    if skipped:
        lines += ["", "## Skipped samples", "", "| test set | skipped |", "|---|---|"]
        lines += [f"| {t['name']} | {_counts(t['skipped'])} |" for t in skipped]
    if document["worst"]:
        lines += ["", "## Highest-WER samples", "", *worst_markdown(document["worst"])]
    return "\n".join(lines) + "\n"


def wer_table(document: dict[str, Any]) -> list[str]:
    names = [t["name"] for t in document["test_sets"]]
    wer = {(r["model"], r["test_set"]): r["wer"] for r in document["results"]}
    rows = [_row(["model", "step", *names]), _row(["---"] * (len(names) + 2))]
    for model in document["models"]:
        cells = [_pct(wer[(model["model"], name)]) for name in names]
        rows.append(_row([model["model"], _step(model["step"]), *cells]))
    return rows


def details_table(document: dict[str, Any]) -> list[str]:
    header = ["model", "step", "test set", "samples", "WER", "WER 95% interval", "raw WER", "sub", "ins", "del"]
    header += ["empty", "looping", "RTF", "samples/s"]
    rows = [_row(header), _row(["---"] * len(header))]
    for r in document["results"]:
        rates = [r[k] for k in ("raw_wer", "substitution_rate", "insertion_rate", "deletion_rate")]
        rates += [r["empty_rate"], r["looping_rate"]]
        speed = [f"{r['real_time_factor']:.3f}", f"{r['samples_per_second']:.2f}"]
        names = [r["model"], _step(r["step"]), r["test_set"], str(r["num_samples"])]
        rows.append(_row([*names, _pct(r["wer"]), _interval(r["wer_interval"]), *map(_pct, rates), *speed]))
    return rows


def hallucination_table(document: dict[str, Any]) -> list[str]:
    """Per result with empty references: how often the model wrote something where there was nothing to hear."""
    rows = [r for r in document["results"] if r["non_speech_samples"]]
    if not rows:
        return []
    header = ["model", "step", "test set", "non-speech samples", "hallucination rate", "words per clip"]
    lines = [_row(header), _row(["---"] * len(header))]
    for r in rows:
        cells = [r["model"], _step(r["step"]), r["test_set"], str(r["non_speech_samples"])]
        lines.append(_row([*cells, _pct(r["hallucination_rate"]), f"{r['hallucinated_words_per_clip']:.1f}"]))
    return lines


def worst_markdown(worst: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    heading = None
    for entry in worst:
        if (entry["model"], entry["test_set"]) != heading:
            heading = (entry["model"], entry["test_set"])
            lines += [f"### {entry['model']} on {entry['test_set']}", ""]
        lines += [
            f"{entry['rank']}. `{entry['id']}`: WER {_pct(entry['wer'])} ({entry['errors']} errors)",
            "",
            "```",
            entry["alignment"],
            "```",
            "",
        ]
    return lines


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _interval(bounds: list[float] | None) -> str:
    return "-" if bounds is None else f"{_pct(bounds[0])}–{_pct(bounds[1])}"


def _step(step: int | None) -> str:
    return "" if step is None else str(step)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.items())


# --- files ---------------------------------------------------------------------------------------


def write_outputs(out: Path, document: dict[str, Any], results: list[Result]) -> list[Path]:
    """Write every file named in the module docstring; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md", out / "samples.jsonl"]
    written[0].write_text(json.dumps(document, indent=2) + "\n")
    written[1].write_text(markdown(document))
    written[2].write_text("".join(json.dumps(line) + "\n" for line in sample_lines(results)))
    points = wer_vs_step(results)
    if points:
        as_json, as_csv = out / "wer_vs_step.json", out / "wer_vs_step.csv"
        as_json.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "points": points}, indent=2) + "\n")
        with open(as_csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(points[0]))
            writer.writeheader()
            writer.writerows(points)
        written += [as_json, as_csv]
    return written
