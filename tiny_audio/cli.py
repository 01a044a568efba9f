"""`ta`: the command line. Each area keeps its own sub-commands beside its code."""

from __future__ import annotations

import typer
from transformers.utils import logging as transformers_logging

from tiny_audio.benchmark.cli import benchmark
from tiny_audio.data.cli import app as data_app
from tiny_audio.evaluation.cli import app as evaluation_app
from tiny_audio.export.cli import app as export_app
from tiny_audio.miniature.cli import app as miniature_app
from tiny_audio.remote.cli import app as runpod_app
from tiny_audio.serve.cli import app as serve_app

# Per-shard progress bars drown the training log, in tmux captures above all.
transformers_logging.disable_progress_bar()

app = typer.Typer(
    help="Train speech-recognition models: frozen encoder + projector + frozen LLM.", no_args_is_help=True
)
app.add_typer(data_app, name="data", help="Build and inspect audio datasets.")
app.add_typer(runpod_app, name="runpod", help="Deploy and run training on a RunPod GPU over SSH.")
app.registered_commands.extend(evaluation_app.registered_commands)  # `ta transcribe`, `ta eval`
app.registered_commands.extend(miniature_app.registered_commands)  # `ta course`, `ta plot`
app.registered_commands.extend(export_app.registered_commands)  # `ta export`, `ta push`
app.registered_commands.extend(serve_app.registered_commands)  # `ta serve`, `ta serve-bench`, `ta space`


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def train(
    ctx: typer.Context,
    preflight: bool = typer.Option(
        False, "--preflight", help="Only check config, models, data, memory, disk, Hub and tracker; then exit."
    ),
    nproc: int | None = typer.Option(None, help="Processes (GPUs) on this node, under torchrun."),
    nnodes: int = typer.Option(1, help="Nodes in the run (with --nproc); every node runs the same command."),
    node_rank: int = typer.Option(0, help="This node's rank, 0 to nnodes - 1 (with --nnodes > 1)."),
    rdzv_endpoint: str | None = typer.Option(None, help="HOST:PORT of node 0, where the nodes meet (--nnodes > 1)."),
) -> None:
    """Train with Hydra overrides, exactly as scripts/train.py: `ta train +experiments=mlp training.max_steps=10`."""
    if nproc is not None:
        import subprocess

        from tiny_audio.recipe.launch import torchrun_command

        try:
            command = torchrun_command(
                nproc, list(ctx.args), nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint
            )
        except ValueError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None
        raise typer.Exit(subprocess.call(command))
    if preflight:
        from tiny_audio.training.preflight import preflight_main

        raise typer.Exit(preflight_main(list(ctx.args)))
    from tiny_audio.recipe.run import main

    raise typer.Exit(main(list(ctx.args)))


fixtures_app = typer.Typer(no_args_is_help=True)
app.add_typer(fixtures_app, name="fixtures", help="Random-weight models with real architectures (no downloads).")


@fixtures_app.command("build")
def build_fixtures_command(
    out_dir: str = typer.Argument(..., help="Directory to write the fixture checkpoints into."),
    shape: str = typer.Option("tiny", help="'tiny' for tests and the demo, 'full' for benchmarks (real shapes)."),
) -> None:
    """Build a GLM-ASR, a Whisper and a Qwen3 checkpoint with random weights."""
    from pathlib import Path

    from tiny_audio.fixtures import build_fixtures

    try:
        paths = build_fixtures(Path(out_dir), shape=shape)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


app.command(
    "benchmark",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)(benchmark)
