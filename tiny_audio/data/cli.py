"""`ta data ...`: build and inspect audio datasets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("synth")
def synth(
    out_dir: Annotated[Path, typer.Argument(help="Writes OUT_DIR/train and OUT_DIR/validation.")],
    train: Annotated[int, typer.Option(min=0, help="Number of training clips.")] = 400,
    validation: Annotated[int, typer.Option(min=0, help="Number of validation clips.")] = 40,
    seed: Annotated[int, typer.Option(help="The same seed writes the same sentences, voices and speeds.")] = 0,
) -> None:
    """Generate a small English speech dataset with espeak-ng (an audiofolder, 16 kHz mono WAV)."""
    from tiny_audio.data.synth import SynthError, synthesize

    start = time.perf_counter()
    try:
        written = synthesize(out_dir, train=train, validation=validation, seed=seed)
    except SynthError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    counts = ", ".join(f"{split} {count}" for split, count in written.items())
    typer.echo(f"wrote {counts} clips to {out_dir} in {time.perf_counter() - start:.1f} s")
