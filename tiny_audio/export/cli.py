"""`ta export` and `ta push`: share a trained model the transformers way.

Heavy imports wait inside the commands so that `ta --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

app = typer.Typer(no_args_is_help=True)

CheckpointArg = Annotated[Path, typer.Argument(help="A training checkpoint, e.g. outputs/<experiment>/checkpoint-N.")]
MergeLoraOpt = Annotated[
    bool, typer.Option("--merge-lora", help="Fold the LoRA adapter into the LLM's weights (the LLM is then saved).")
]
IncludeFrozenOpt = Annotated[
    bool,
    typer.Option(
        "--include-frozen-weights",
        help="Copy the frozen encoder and LLM into the export: self-contained and offline, but GBs. "
        "Default: reference them by id (a few MB).",
    ),
]
EvalResultsOpt = Annotated[
    Path | None,
    typer.Option(help="WER results (JSON, see the README) to put in the model card's table and model-index."),
]
IndexSubsetsOpt = Annotated[
    bool,
    typer.Option(
        "--index-subsets",
        help="Also list results that scored only part of their split in the model-index (marked as subsets).",
    ),
]


@app.command("export")
def export_command(
    checkpoint: CheckpointArg,
    out: Annotated[Path, typer.Argument(help="Directory to write the export to (replaced if it is an export).")],
    merge_lora: MergeLoraOpt = False,
    include_frozen_weights: IncludeFrozenOpt = False,
    eval_results: EvalResultsOpt = None,
    index_subsets: IndexSubsetsOpt = False,
) -> None:
    """A directory that loads with transformers: pipeline(..., trust_remote_code=True) and AutoModel."""
    from tiny_audio.export.export import ExportError, export_model

    try:
        result = export_model(
            checkpoint,
            out,
            merge_lora=merge_lora,
            include_frozen_weights=include_frozen_weights,
            eval_results=eval_results,
            index_subsets=index_subsets,
        )
    except (ExportError, ValueError, OSError) as error:
        _fail(str(error))
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"Exported {checkpoint} to {result.directory}")
    typer.echo(f'Use it: pipeline("automatic-speech-recognition", model="{result.directory}", trust_remote_code=True)')


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@app.command("push")
def push_command(
    checkpoint: Annotated[Path, typer.Argument(help="A training checkpoint, or a directory written by `ta export`.")],
    repo_id: Annotated[str, typer.Argument(help="The Hub model repo, OWNER/NAME (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    merge_lora: MergeLoraOpt = False,
    include_frozen_weights: IncludeFrozenOpt = False,
    eval_results: EvalResultsOpt = None,
    index_subsets: IndexSubsetsOpt = False,
    license: Annotated[str, typer.Option(help="License in the model card's metadata.")] = "other",
) -> None:
    """Export CHECKPOINT with its model card and upload it (token: HF_TOKEN or `hf auth login`; resumable)."""
    from tiny_audio.export.export import ExportError
    from tiny_audio.export.push import PushError, push_model

    try:
        url = push_model(
            checkpoint,
            repo_id,
            private=private,
            merge_lora=merge_lora,
            include_frozen_weights=include_frozen_weights,
            eval_results=eval_results,
            index_subsets=index_subsets,
            license=license,
        )
    except (PushError, ExportError, ValueError, OSError) as error:
        _fail(str(error))
    typer.echo(f"Pushed to {url}")
    typer.echo(f'Use it: pipeline("automatic-speech-recognition", model="{repo_id}", trust_remote_code=True)')
