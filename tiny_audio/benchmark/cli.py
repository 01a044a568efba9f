"""`ta benchmark`: any experiment and model ids, as Hydra overrides; a fixtures directory as a shortcut."""

from __future__ import annotations

from pathlib import Path

import typer

PADDINGS = ("max_length", "longest")


def benchmark(
    ctx: typer.Context,
    fixtures: str | None = typer.Option(
        None, help="A `ta fixtures build DIR` output: sets model.audio_model_id=DIR/glm-asr, text_model_id=DIR/qwen3."
    ),
    padding: str = typer.Option("both", help="Encoder padding to time: max_length, longest or both."),
    batch_size: int | None = typer.Option(None, help="Clips per step (default: training.per_device_train_batch_size)."),
    steps: int = typer.Option(4, help="Timed steps per run, after --warmup steps."),
    warmup: int = typer.Option(1, help="Untimed steps first (kernel selection, allocator)."),
    workers: int | None = typer.Option(None, help="Data-loader workers (default: data.num_workers)."),
    eval_clips: int | None = typer.Option(
        None, help="Clips of the evaluation timed after the steps (default: per_device_eval_batch_size; 0: none)."
    ),
    min_seconds: float = typer.Option(2.0, help="Shortest synthetic clip."),
    max_seconds: float = typer.Option(7.0, help="Longest synthetic clip."),
    out: str = typer.Option("outputs/benchmark.json", help="Where to write the figures as JSON."),
) -> None:
    """Time real training steps: throughput, time per part, FLOPs vs this device's matmul ceiling.

    Extra arguments are config overrides, as for `ta train`: `ta benchmark --fixtures .fixtures/full
    +experiments=mlp training.gradient_checkpointing=true`. A bare directory as the first argument is
    taken as --fixtures.
    """
    from tiny_audio.benchmark.run import run_benchmark
    from tiny_audio.compose import load_config
    from tiny_audio.config import ConfigError

    overrides = list(ctx.args)
    if overrides and "=" not in overrides[0] and Path(overrides[0]).is_dir():
        fixtures = overrides.pop(0)
    if fixtures:
        root = Path(fixtures)
        overrides += [f"model.audio_model_id={root / 'glm-asr'}", f"model.text_model_id={root / 'qwen3'}"]
    if batch_size is not None:
        overrides.append(f"training.per_device_train_batch_size={batch_size}")
    paddings = PADDINGS if padding == "both" else (padding,)
    if not set(paddings) <= set(PADDINGS):
        typer.echo(f"error: --padding={padding!r} is not allowed: one of max_length, longest, both", err=True)
        raise typer.Exit(2)
    try:
        cfg = load_config(overrides)
    except ConfigError as error:
        typer.echo(f"config error: {error}", err=True)
        raise typer.Exit(2) from None
    run_benchmark(
        cfg,
        paddings=paddings,
        steps=steps,
        warmup=warmup,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
        workers=workers,
        eval_clips=eval_clips,
        out=Path(out),
    )
