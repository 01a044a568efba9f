"""`ta`: the command line. Each area keeps its own sub-commands beside its code."""

from __future__ import annotations

import typer

from tiny_audio.data.cli import app as data_app
from tiny_audio.remote.cli import app as runpod_app

app = typer.Typer(
    help="Train speech-recognition models: frozen encoder + projector + frozen LLM.", no_args_is_help=True
)
app.add_typer(data_app, name="data", help="Build and inspect audio datasets.")
app.add_typer(runpod_app, name="runpod", help="Deploy and run training on a RunPod GPU over SSH.")


@app.command(
    "train",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def train(ctx: typer.Context) -> None:
    """Train with Hydra overrides, exactly as scripts/train.py: `ta train +experiments=mlp training.max_steps=10`."""
    from tiny_audio.training.run import main

    raise typer.Exit(main(list(ctx.args)))


@app.command("fixtures")
def fixtures(
    out_dir: str = typer.Argument(..., help="Directory to write the fixture checkpoints into."),
    shape: str = typer.Option("tiny", help="'tiny' for tests, 'full' for benchmarks (real model shapes)."),
) -> None:
    """Build random-weight models with real architectures (no downloads)."""
    from pathlib import Path

    from tiny_audio.fixtures import build_fixtures

    paths = build_fixtures(Path(out_dir), shape=shape)
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")
