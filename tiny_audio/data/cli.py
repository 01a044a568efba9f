"""`ta data ...`: build and inspect audio datasets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("synth")
def synth(
    out_dir: Annotated[
        Path, typer.Argument(help="Writes OUT_DIR/train, OUT_DIR/validation and OUT_DIR/validation_new_voice.")
    ],
    train: Annotated[int, typer.Option(min=0, help="Number of training clips.")] = 400,
    validation: Annotated[int, typer.Option(min=0, help="Clips of held-out sentences spoken by training voices.")] = 40,
    new_voice: Annotated[
        int, typer.Option(min=0, help="Clips of the same held-out sentences spoken by an accent train never has.")
    ] = 40,
    seed: Annotated[int, typer.Option(help="The same seed writes the same sentences, voices and audio.")] = 0,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes (default: one per CPU).")] = None,
) -> None:
    """Generate a small English speech dataset with espeak-ng from pip (audiofolders, 16 kHz mono WAV)."""
    from tiny_audio.data.synth import SynthError, is_complete, synthesize

    start = time.perf_counter()
    counts = {"train": train, "validation": validation, "new_voice": new_voice, "seed": seed}
    reused = is_complete(out_dir, **counts)
    try:
        written = synthesize(out_dir, **counts, workers=workers)
    except SynthError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    summary = ", ".join(f"{split} {count}" for split, count in written.items())
    if reused:
        typer.echo(f"reused {summary} clips in {out_dir} (written earlier with the same arguments)")
        return
    elapsed = time.perf_counter() - start
    rate = sum(written.values()) / max(elapsed, 1e-9)
    typer.echo(f"wrote {summary} clips to {out_dir} in {elapsed:.1f} s ({rate:.0f} clips/s)")


@app.command("robust")
def robust(
    out_dir: Annotated[Path, typer.Argument(help="Writes OUT_DIR/<condition>/ for every condition.")],
    clips: Annotated[int, typer.Option(min=1, help="Clips per condition.")] = 40,
    seed: Annotated[int, typer.Option(help="The same seed writes the same sentences, voices and audio.")] = 0,
    condition: Annotated[
        list[str] | None, typer.Option("--condition", "-c", help="Only these conditions (repeatable; default: all).")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes (default: one per CPU).")] = None,
) -> None:
    """Robustness test sets: held-out sentences under new voices, speeds, noise, babble, rooms, and non-speech."""
    from tiny_audio.data.robust import CONDITIONS, build_robust, is_complete
    from tiny_audio.data.synth import SynthError

    conditions = tuple(condition) if condition else None
    unknown = [name for name in conditions or () if name not in CONDITIONS]
    if unknown:
        typer.echo(f"error: unknown condition '{unknown[0]}'; choose from {', '.join(CONDITIONS)}", err=True)
        raise typer.Exit(1)
    start = time.perf_counter()
    reused = is_complete(out_dir, clips=clips, seed=seed, conditions=conditions)
    try:
        written = build_robust(out_dir, clips=clips, seed=seed, conditions=conditions, workers=workers)
    except SynthError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    total = sum(written.values())
    if reused:
        typer.echo(
            f"reused {len(written)} conditions ({total} clips) in {out_dir} (written earlier with the same arguments)"
        )
        return
    elapsed = time.perf_counter() - start
    typer.echo(f"wrote {len(written)} conditions, {total} clips, to {out_dir} in {elapsed:.1f} s: {', '.join(written)}")
