"""`ta course` (the whole recipe on miniature pretrained models) and `ta plot` (any run's curves)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer()


@app.command("course")
def course_command(
    out: str = typer.Option("outputs/course", help="Where the stages' checkpoints, plot and summary go."),
    steps: int | None = typer.Option(
        None, "--steps", help="Stage-1 steps (later stages shrink in proportion); default: the full lesson, 1400."
    ),
    seed: int = typer.Option(0, help="Seed of the miniature models and their speech."),
    cache: str | None = typer.Option(
        None, help="Cache for the miniature models (default: TINY_AUDIO_CACHE or ~/.cache/tiny-audio)."
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Build the miniature models again even if cached."),
    full_decoder: bool = typer.Option(
        False, "--full-decoder", help="Stage 3 trains the whole decoder (mlp_full_decoder) instead of LoRA."
    ),
    augment: bool = typer.Option(
        True, "--augment/--no-augment", help="Train on augmented audio (noise, rooms, speed, gain, non-speech)."
    ),
    override: Annotated[
        list[str] | None,
        typer.Option("--set", help="Extra config override for every stage, e.g. --set training.adam_beta2=0.95."),
    ] = None,
) -> None:
    """Train a working speech recognizer on a laptop CPU: stand-in models, synthetic speech, three stages."""
    from tiny_audio.miniature.cache import CacheError, cache_root
    from tiny_audio.miniature.course import (
        CourseInterrupted,
        CourseMismatch,
        CourseSettings,
        run_course,
        summary_table,
        with_full_decoder,
        write_outputs,
    )
    from tiny_audio.miniature.standins import MiniatureSpec, build_miniature

    started = time.perf_counter()
    settings = CourseSettings(extra_overrides=tuple(override or ()))
    if not augment:
        settings = dataclasses.replace(settings, augmentation=())
    if full_decoder:
        settings = with_full_decoder(settings)
    if steps is not None:
        if steps < 1:
            typer.echo(f"error: --steps must be >= 1, got {steps}", err=True)
            raise typer.Exit(2)
        settings = dataclasses.replace(settings, stages=_scaled(settings, steps))
    try:
        miniature = build_miniature(MiniatureSpec(seed=seed), Path(cache) if cache else cache_root(), rebuild=rebuild)
    except CacheError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    try:
        results = run_course(miniature, settings, Path(out))
    except CourseInterrupted as error:
        typer.echo(f"\n{error}", err=True)
        raise typer.Exit(130) from None
    except CourseMismatch as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    seconds = time.perf_counter() - started
    plot, summary = write_outputs(results, miniature, Path(out), seconds)
    typer.echo("\n" + summary_table(results))
    typer.echo(f"\nModels: {miniature.encoder} (encoder), {miniature.llm} (LLM); speech: {miniature.speech}")
    typer.echo(f"Final model: {results[-1].checkpoint}  (ta transcribe {results[-1].checkpoint} clip.wav)")
    typer.echo(f"Plot: {plot}\nSummary: {summary}\nTotal time: {seconds / 60:.1f} min")


def _scaled(settings, steps: int):
    """Every stage shortened in proportion, so `--steps 200` is a fifth of the whole lesson."""
    scale = steps / settings.stages[0].steps
    stages = []
    for stage in settings.stages:
        n = max(1, round(stage.steps * scale))
        stages.append(dataclasses.replace(stage, steps=n, warmup_steps=min(stage.warmup_steps, n // 10)))
    return tuple(stages)


@app.command("plot")
def plot_command(
    output_dirs: Annotated[
        list[Path], typer.Argument(help="Run output directories (with metrics.jsonl), in stage order.")
    ],
    out: str | None = typer.Option(None, help="PNG to write (default: training.png in the last directory)."),
) -> None:
    """Draw train/eval loss and eval WER against steps; several directories are drawn as consecutive stages."""
    from tiny_audio.miniature.plot import plot_stages, stage_curves

    try:
        stages = stage_curves(output_dirs)
    except FileNotFoundError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    path = plot_stages(
        stages, Path(out) if out else output_dirs[-1] / "training.png", title=" -> ".join(s.name for s in stages)
    )
    typer.echo(f"Plot: {path}")
