"""Transcription, the WER callback in a real short run, and `ta transcribe` / `ta eval` on its checkpoint.

The tiny models have random weights and write gibberish: these tests assert structure, not quality.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.data_helpers import sentence, tone, write_audiofolder
from tests.training_helpers import short_run_config
from tiny_audio.evaluation.cli import app
from tiny_audio.model.build import build_model
from tiny_audio.recipe.run import run
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.speech_llm import SpeechLLM
from tiny_audio.runtime.transcribe import decode, transcribe
from tiny_audio.training.trainer import Callback, Trainer

RATE = 16000
WER_KEYS = {
    "eval/wer",
    "eval/substitution_rate",
    "eval/insertion_rate",
    "eval/deletion_rate",
    "eval/empty_rate",
    "eval/looping_rate",
}


@pytest.fixture(scope="module")
def model(tiny_model_config) -> SpeechLLM:
    return build_model(tiny_model_config())


def clips(*seconds: float) -> list[np.ndarray]:
    return [tone(s, RATE, freq=200.0 + 50 * i) for i, s in enumerate(seconds)]


def test_transcribe_returns_one_string_per_clip_in_input_order(model: SpeechLLM) -> None:
    audios = clips(1.0, 0.6, 1.4)
    texts = transcribe(model, audios, RATE, batch_size=2, max_new_tokens=6)
    assert len(texts) == 3 and all(isinstance(t, str) and "\n" not in t for t in texts)
    # Batches are formed by length, so the same clips in another order give the same transcripts.
    assert transcribe(model, audios[::-1], RATE, batch_size=2, max_new_tokens=6) == texts[::-1]
    assert transcribe(model, [], RATE) == []


def test_transcribe_with_longest_padding_encodes_a_clip_as_it_does_alone(tiny_model_config) -> None:
    """The encoder takes no attention mask: a short clip batched with a long one must not encode its padding.

    Training encodes each clip on its own frames; inference batched to the longest clip once cost the
    course's model 10-30 points of WER on short clips.
    """
    model = build_model(tiny_model_config(encoder_padding="longest"))
    seen: list[torch.Tensor] = []
    model.encoder.register_forward_hook(lambda _module, _args, output: seen.append(output))
    short, long = clips(0.5, 2.0)
    transcribe(model, [short], RATE, max_new_tokens=1)
    transcribe(model, [short, long], RATE, batch_size=2, max_new_tokens=1)
    alone, batched = seen
    frames = alone.shape[1]
    assert batched.shape[1] > frames
    torch.testing.assert_close(batched[0, :frames], alone[0])
    assert not batched[0, frames:].any()


def test_transcribe_prompts_are_the_training_prompts(model: SpeechLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    real_generate = model.generate

    def spy(**inputs: Any) -> torch.Tensor:
        seen.append({**inputs, "training": model.training})
        return real_generate(**inputs)

    monkeypatch.setattr(model, "generate", spy)
    audios = clips(1.0, 0.6, 1.4)
    model.train()
    transcribe(model, audios, RATE, batch_size=3, max_new_tokens=2)
    assert model.training, "transcribe must give the model back in the mode it found it"
    (batch,) = seen
    assert batch["training"] is False
    counts = model.audio_token_counts(batch["encoder_lengths"]).tolist()
    training_batch = collator_for(model, RATE)([{"audio": a, "text": "a b"} for a in sorted(audios, key=len)])
    for row, n_audio in enumerate(counts):
        prompt = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert prompt == model.prompts.prompt_ids(n_audio)
        # Training puts the transcript right after exactly this prompt.
        assert training_batch["input_ids"][row, : len(prompt)].tolist() == prompt
    assert (batch["input_ids"][:, -1] == batch["input_ids"][0, -1]).all(), "prompts must be left-padded"


def test_decode_drops_special_tokens_padding_and_an_empty_think_block(model: SpeechLLM) -> None:
    tokenizer = model.tokenizer
    ids = tokenizer("<think>\n\n</think>\n\nhello world<|im_end|>", add_special_tokens=False)["input_ids"]
    padded = torch.tensor([ids + [tokenizer.pad_token_id] * 2])
    assert decode(tokenizer, padded) == ["hello world"]


# --- a short run with the callback, and the CLI on its checkpoint ---------------------------------


class Recorder(Callback):
    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.metrics.append(dict(metrics))


@dataclass
class ShortRun:
    data: Path
    checkpoint: Path
    evaluations: list[dict[str, Any]]
    lines: list[str]


@pytest.fixture(scope="module")
def short_run(tiny_model_config, tmp_path_factory: pytest.TempPathFactory) -> ShortRun:
    """Four steps, evaluating at steps 2 and 4 with WER on 4 samples; saves checkpoint-4."""
    root = tmp_path_factory.mktemp("wer_run")
    data = write_audiofolder(root / "data", {"train": 8, "validation": 6})
    cfg = short_run_config(
        "wer",
        tiny_model_config(),
        data,
        root / "run",
        data_options={"max_eval_samples": 6},
        max_steps=4,
        eval_steps=2,
        logging_steps=2,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        eval_wer_samples=4,
    )
    recorder, lines = Recorder(), []
    run(cfg, callbacks=[recorder], log=lines.append)
    return ShortRun(data, root / "run" / "checkpoint-4", recorder.metrics, lines)


def test_wer_callback_adds_wer_metrics_and_predictions_at_every_evaluation(short_run: ShortRun) -> None:
    assert len(short_run.evaluations) == 2
    for metrics in short_run.evaluations:
        assert metrics.keys() >= WER_KEYS
        assert all(metrics[key] >= 0 for key in WER_KEYS)
        predictions = metrics["eval/predictions"]
        assert [p["reference"] for p in predictions] == [sentence(i) for i in range(4)]
        assert all(isinstance(p["prediction"], str) for p in predictions)


def test_wer_callback_logs_three_examples_per_evaluation(short_run: ShortRun) -> None:
    examples = [line for line in short_run.lines if line.startswith("Example ")]
    assert len(examples) == 6
    assert examples[0].startswith(f"Example 1 | reference: {sentence(0)!r} | prediction: ")


def test_ta_transcribe_prints_one_line_per_file(short_run: ShortRun) -> None:
    files = [short_run.data / "validation" / f"clip_000{i}.wav" for i in (0, 1)]
    result = CliRunner().invoke(
        app, ["transcribe", str(short_run.checkpoint), *map(str, files), "--max-new-tokens", "6"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]


def test_ta_eval_writes_per_sample_results(short_run: ShortRun, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["eval", str(short_run.checkpoint), "--dataset", str(short_run.data), "-n", "3", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("| model | step | data:validation |")
    assert f"written: {out / 'results.json'}, {out / 'results.md'}, {out / 'samples.jsonl'}" in result.stdout
    results = json.loads((out / "results.json").read_text())
    (test_set,) = results["test_sets"]
    assert test_set["num_samples"] == 3 and test_set["split"] == "validation" and test_set["skipped"] == {}
    (row,) = results["results"]
    assert {"wer", "substitution_rate", "insertion_rate", "deletion_rate", "empty_rate", "looping_rate"} <= set(row)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["reference"] for s in samples] == [sentence(i) for i in range(3)]
    assert all(s["id"].endswith(f"clip_000{i}.wav") for i, s in enumerate(samples))
    assert all({"prediction", "wer", "substitutions", "insertions", "deletions"} <= s.keys() for s in samples)


def test_cli_errors_name_the_problem(short_run: ShortRun, tmp_path: Path) -> None:
    runner = CliRunner()
    clip = short_run.data / "validation" / "clip_0000.wav"  # readable: files are read before the model loads
    not_a_model = runner.invoke(app, ["transcribe", str(short_run.data), str(clip)])
    assert not_a_model.exit_code == 1
    assert "cannot load model" in not_a_model.output and "checkpoint directory" in not_a_model.output
    missing = runner.invoke(app, ["transcribe", str(short_run.checkpoint), str(tmp_path / "missing.wav")])
    assert (
        missing.exit_code == 1 and f"cannot transcribe {tmp_path / 'missing.wav'}: unreadable_audio" in missing.output
    )
    no_split = runner.invoke(
        app, ["eval", str(short_run.checkpoint), "--dataset", str(short_run.data), "--split", "test"]
    )
    assert no_split.exit_code == 1 and "has no split 'test'" in no_split.output
