"""`ta transcribe` and `ta eval`: use a trained model.

Heavy imports (torch, transformers) wait inside the commands so that `ta --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from tiny_audio.evaluation import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS

if TYPE_CHECKING:
    from tiny_audio.model.speech_llm import SpeechLLM

app = typer.Typer(no_args_is_help=True)

ModelArg = Annotated[
    str,
    typer.Argument(help="A checkpoint (outputs/<experiment>/checkpoint-N), a saved model directory, or a Hub repo id."),
]
MaxNewTokensOpt = Annotated[int, typer.Option(min=1, help="Stop each transcript after this many tokens.")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Clips decoded together.")]


@app.command("transcribe")
def transcribe_files(
    model: ModelArg,
    audio: Annotated[list[Path], typer.Argument(help="Audio files (WAV, FLAC, OGG, MP3), up to 30 s each.")],
    max_new_tokens: MaxNewTokensOpt = DEFAULT_MAX_NEW_TOKENS,
    batch_size: BatchSizeOpt = DEFAULT_BATCH_SIZE,
) -> None:
    """Print one line per file: its path, a tab, and its transcript (greedy decoding)."""
    from tiny_audio.config import DataConfig
    from tiny_audio.data.audio import decode_audio
    from tiny_audio.data.skips import Unusable
    from tiny_audio.evaluation.transcribe import transcribe

    speech_llm = _load(model)
    sample_rate = _sample_rate(speech_llm)
    clips = []
    for path in audio:
        try:
            clips.append(decode_audio(None, path, sample_rate=sample_rate, max_duration=DataConfig().max_duration))
        except Unusable as unusable:
            _fail(f"cannot transcribe {path}: {unusable}")
    texts = transcribe(speech_llm, clips, sample_rate, batch_size=batch_size, max_new_tokens=max_new_tokens)
    for path, text in zip(audio, texts, strict=True):
        typer.echo(f"{path}\t{text}")


@app.command("eval")
def evaluate_dataset(
    model: ModelArg,
    dataset: Annotated[
        str, typer.Option(help="Hub dataset id or local directory (audiofolder, parquet, jsonl or csv).")
    ],
    name: Annotated[str | None, typer.Option(help="Dataset configuration, e.g. 'clean'.")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "validation",
    audio_column: Annotated[str, typer.Option(help="Column holding the audio.")] = "audio",
    text_column: Annotated[str, typer.Option(help="Column holding the reference transcript.")] = "text",
    num_samples: Annotated[
        int, typer.Option("-n", "--num-samples", min=1, help="Score the first N usable samples.")
    ] = 100,
    output: Annotated[Path, typer.Option(help="Per-sample results are written here as JSON.")] = Path("results.json"),
    max_new_tokens: MaxNewTokensOpt = DEFAULT_MAX_NEW_TOKENS,
    batch_size: BatchSizeOpt = DEFAULT_BATCH_SIZE,
) -> None:
    """Word error rate (normalised text, with substitution/insertion/deletion rates) on a dataset split."""
    from tiny_audio.config import ConfigError
    from tiny_audio.data.sources import DataSourceError
    from tiny_audio.evaluation.dataset import eval_data_config, load_eval_samples, results_json
    from tiny_audio.evaluation.transcribe import transcribe
    from tiny_audio.evaluation.wer import score

    speech_llm = _load(model)
    sample_rate = _sample_rate(speech_llm)
    try:
        cfg = eval_data_config(dataset, name, split, audio_column, text_column, sample_rate)
        samples, skipped = load_eval_samples(cfg, num_samples)
    except (ConfigError, DataSourceError) as error:
        _fail(str(error))
    if skipped.total:
        typer.echo(skipped.summary())
    if not samples:
        _fail(f"split '{split}' of {dataset} has no usable samples to evaluate")
    predictions = transcribe(
        speech_llm, [s.audio for s in samples], sample_rate, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    report = score([s.text for s in samples], predictions)
    typer.echo(report.summary())
    settings = {"model": model, "dataset": dataset, "name": name, "split": split, "max_new_tokens": max_new_tokens}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results_json(report, samples, skipped, settings), indent=2) + "\n")
    typer.echo(f"per-sample results: {output}")


def _load(model: str) -> SpeechLLM:
    from huggingface_hub.errors import HFValidationError

    from tiny_audio.model.build import load_pretrained

    try:
        return load_pretrained(model)
    except (OSError, HFValidationError) as error:
        _fail(
            f"cannot load model '{model}': {error}\nMODEL is a checkpoint directory "
            "(outputs/<experiment>/checkpoint-N), a saved model directory, or a Hub repo id."
        )


def _sample_rate(model: SpeechLLM) -> int:
    return int(model.encoder.feature_extractor.sampling_rate)


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
