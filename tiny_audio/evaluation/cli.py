"""`ta transcribe` and `ta eval`: use a trained model.

Heavy imports (torch, transformers) wait inside the commands so that `ta --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from tiny_audio.evaluation.registry import known_names
from tiny_audio.runtime.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS

if TYPE_CHECKING:
    from tiny_audio.runtime.speech_llm import SpeechLLM

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
    """Print one line per file: its path, a tab, and its transcript (greedy decoding).

    Digital silence gets an empty transcript. A file that cannot be read is named on stderr and the
    others are still transcribed; the exit status is then 1.
    """
    import numpy as np

    from tiny_audio.config import DataConfig
    from tiny_audio.runtime.audio import SILENCE_PEAK, decode_audio
    from tiny_audio.runtime.transcribe import transcribe
    from tiny_audio.runtime.unusable import Unusable

    _check_model_name(model)
    # Every file is read before the model loads, so a batch of bad paths fails in a second.
    defaults = DataConfig()  # every supported encoder takes its 16 kHz
    clips: dict[Path, np.ndarray] = {}
    failed = 0
    for path in audio:
        try:
            clips[path] = decode_audio(
                None, path, sample_rate=defaults.sample_rate, max_duration=defaults.max_duration, allow_silence=True
            )
        except Unusable as unusable:
            typer.echo(f"error: cannot transcribe {path}: {unusable}", err=True)
            failed += 1
    # Nothing to hear, nothing to write: silence is not worth a model call (and a model may hallucinate on it).
    speech = {path: clip for path, clip in clips.items() if float(np.abs(clip).max()) >= SILENCE_PEAK}
    texts = dict.fromkeys(clips, "")
    if speech:
        speech_llm = _load(model)
        sample_rate = _sample_rate(speech_llm)
        if sample_rate != defaults.sample_rate:
            for path in speech:
                speech[path] = decode_audio(None, path, sample_rate=sample_rate, allow_silence=True)
        found = transcribe(
            speech_llm, list(speech.values()), sample_rate, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
        texts.update(zip(speech, found, strict=True))
    for path, text in texts.items():
        typer.echo(f"{path}\t{text}")
    if failed:
        typer.echo(f"error: {failed} of {len(audio)} files could not be transcribed (named above)", err=True)
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    models: Annotated[
        list[str],
        typer.Argument(
            help="Checkpoints (outputs/<experiment>/checkpoint-N; a glob gives one row per step), saved model "
            "directories or Hub repo ids."
        ),
    ],
    dataset: Annotated[
        list[str],
        typer.Option(
            "-d",
            "--dataset",
            help=f"Test sets, repeatable: one of {known_names()}; a local directory; or a Hub id (owner/name).",
        ),
    ],
    split: Annotated[
        str | None,
        typer.Option(
            help="Split of a local directory (default: test, validation or dev; 'all': every split; a `ta data "
            "robust` set: every condition) or Hub id (default: test)."
        ),
    ] = None,
    config: Annotated[str | None, typer.Option("--config", "--name", help="Config of a Hub id, e.g. 'clean'.")] = None,
    audio_column: Annotated[str, typer.Option(help="Audio column of a local directory or Hub id.")] = "audio",
    text_column: Annotated[str, typer.Option(help="Transcript column of a local directory or Hub id.")] = "text",
    num_samples: Annotated[
        int, typer.Option("-n", "--num-samples", min=0, help="Score the first N usable samples of each set; 0: all.")
    ] = 100,
    out: Annotated[
        Path, typer.Option(help="Directory for results.json, results.md, samples.jsonl and wer_vs_step.*")
    ] = Path("outputs/eval"),
    worst: Annotated[
        int, typer.Option(min=0, help="List the K highest-WER samples per model and test set, words aligned.")
    ] = 0,
    max_new_tokens: MaxNewTokensOpt = DEFAULT_MAX_NEW_TOKENS,
    batch_size: BatchSizeOpt = DEFAULT_BATCH_SIZE,
) -> None:
    """WER (Whisper-normalised and raw, with S/I/D), empty/looping rates and real-time factor: models x test sets."""
    from tiny_audio.evaluation.registry import TestSetUnavailable, UnknownTestSet, probe_hub, resolve

    # Names, models and Hub access are checked before the heavy imports, so a typo or an
    # unreachable set fails in a second rather than after torch loads.
    try:
        test_sets = resolve(dataset, split=split, config=config, audio_column=audio_column, text_column=text_column)
        for test_set in test_sets:
            probe_hub(test_set)
    except (UnknownTestSet, TestSetUnavailable) as error:
        _fail(str(error))
    for model in models:  # a mistyped checkpoint fails now, not after the models before it have run
        _check_model_name(model)

    from tiny_audio.evaluation.compare import compare, order_models
    from tiny_audio.evaluation.report import (
        details_table,
        hallucination_table,
        results_json,
        wer_table,
        worst_markdown,
        write_outputs,
    )

    limit = num_samples or None
    try:
        comparison = compare(
            order_models(models),
            test_sets,
            _load,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            log=lambda line: typer.echo(line, err=True),
        )
    except TestSetUnavailable as error:
        _fail(str(error))
    settings = {"num_samples": limit, "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    document = results_json(comparison.results, comparison.devices, comparison.test_sets, settings, worst)
    written = write_outputs(out, document, comparison.results)
    hallucination = hallucination_table(document)
    tables = [*wer_table(document), "", *details_table(document), *(["", *hallucination] if hallucination else [])]
    typer.echo("\n".join(tables))
    if worst:
        typer.echo("\n".join(worst_markdown(document["worst"])))
    typer.echo("written: " + ", ".join(map(str, written)))


def _check_model_name(model: str) -> None:
    """A model that is neither a directory nor shaped like a Hub id fails before anything loads."""
    if not Path(model).is_dir() and (model.count("/") != 1 or model.startswith((".", "/", "~"))):
        _fail(f"cannot load model '{model}': no such directory, and not a Hub repo id (owner/name)")


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
