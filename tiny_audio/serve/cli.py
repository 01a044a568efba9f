"""`ta serve` (the web demo) and `ta space` (the same demo as a Hugging Face Space)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

APP_FILE = Path(__file__).resolve().parent / "app.py"
SPACE_REQUIREMENTS = ["gradio>=5", "transformers>=5,<6", "torch", "peft", "accelerate", "soundfile", "soxr"]

# The app's own defaults (app.py imports gradio, which `ta --help` must not wait for).
DEFAULT_QUEUE_SIZE, DEFAULT_CONCURRENCY, DEFAULT_MAX_UPLOAD_MB = 32, 1, 50

app = typer.Typer(no_args_is_help=True)


def resolve_model(model: str) -> str:
    """An export dir or repo id as given; a training checkpoint is exported to a temp dir first."""
    from tiny_audio.export.export import ExportError, export_model, is_export
    from tiny_audio.model.build import MODEL_CONFIG_FILE

    path = Path(model)
    if not path.is_dir() or is_export(path):
        return model
    if (path / MODEL_CONFIG_FILE).is_file():
        return str(export_model(path, Path(tempfile.mkdtemp(prefix="tiny-audio-serve-")) / "export").directory)
    raise ExportError(
        f"{model} is neither an export (config.json with model_type tiny_audio) nor a tiny-audio checkpoint; "
        "pass outputs/<experiment>/export, a checkpoint, or a Hub repo id"
    )


def launch(
    model: str,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
    max_new_tokens: int = 128,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
) -> Any:
    from tiny_audio.serve.app import build_demo, load

    asr = load(resolve_model(model))
    demo = build_demo(asr, title=model, max_new_tokens=max_new_tokens, queue_size=queue_size, concurrency=concurrency)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, max_file_size=f"{max_upload_mb}mb")
    return demo


@app.command("serve")
def serve_command(
    model: Annotated[str, typer.Argument(help="An export (ta export), a checkpoint, or a Hub repo id.")],
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Stop each transcript after this many tokens.")] = 128,
    queue_size: Annotated[
        int, typer.Option(min=1, help="Requests waiting beyond those running; past it one is refused at once.")
    ] = DEFAULT_QUEUE_SIZE,
    concurrency: Annotated[int, typer.Option(min=1, help="Transcriptions running at once.")] = DEFAULT_CONCURRENCY,
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Refuse uploads larger than this many MB.")] = (
        DEFAULT_MAX_UPLOAD_MB
    ),
) -> None:
    """A web demo: upload or record audio, see the transcript as it is generated."""
    from tiny_audio.export.export import ExportError

    try:
        launch(
            model,
            host,
            port,
            max_new_tokens=max_new_tokens,
            queue_size=queue_size,
            concurrency=concurrency,
            max_upload_mb=max_upload_mb,
        )
    except (ExportError, OSError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


@app.command("serve-bench")
def serve_bench_command(
    model: Annotated[str, typer.Argument(help="An export (ta export), a checkpoint, or a Hub repo id.")],
    clients: Annotated[int, typer.Option(min=1, help="Clients uploading at once.")] = 16,
    uploads: Annotated[int, typer.Option(min=1, help="Uploads per client, one after another.")] = 10,
    warmup: Annotated[int, typer.Option(min=1, help="Sequential uploads before the load; memory is read after.")] = 20,
    total: Annotated[int, typer.Option(help="Requests in all; memory is read again after the last.")] = 200,
    out: Annotated[Path, typer.Option(help="Where to write the figures (JSON).")] = Path("serve-bench.json"),
    queue_size: Annotated[int, typer.Option(min=1, help="Passed to ta serve.")] = DEFAULT_QUEUE_SIZE,
    concurrency: Annotated[int, typer.Option(min=1, help="Passed to ta serve.")] = DEFAULT_CONCURRENCY,
) -> None:
    """Load-test `ta serve MODEL` on 127.0.0.1: latency percentiles, failures and the server's memory."""
    from tiny_audio.serve.bench import run_bench, write_report

    serve_args = ["--queue-size", str(queue_size), "--concurrency", str(concurrency)]
    try:
        with tempfile.TemporaryDirectory(prefix="tiny-audio-serve-bench-") as workdir:
            result = run_bench(model, Path(workdir), clients, uploads, warmup, total, serve_args)
    except (ValueError, RuntimeError, TimeoutError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    summary = write_report(result, out)
    for key, value in summary.items():
        typer.echo(f"{key}: {value}")
    typer.echo(f"wrote {out}")
    if summary["failed"]:
        raise typer.Exit(1)


@app.command("space")
def space_command(
    repo_id: Annotated[str, typer.Argument(help="The model repo the Space demonstrates, OWNER/NAME.")],
    out: Annotated[Path, typer.Option(help="Directory to write app.py, requirements.txt and README.md to.")] = Path(
        "space"
    ),
) -> None:
    """Write a Hugging Face Space (Gradio) that demonstrates REPO_ID; upload it with `hf upload --repo-type space`."""
    write_space(repo_id, out)
    typer.echo(f"Wrote {out}/app.py, requirements.txt, README.md; create the Space and upload it with:")
    typer.echo(f"  hf repo create {repo_id}-demo --repo-type space --space_sdk gradio")
    typer.echo(f"  hf upload {repo_id}-demo {out} . --repo-type space")


def write_space(repo_id: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    source = APP_FILE.read_text()
    default = 'os.environ.get("TINY_AUDIO_MODEL", "")'
    assert default in source, "app.py must read its model id from TINY_AUDIO_MODEL"
    (out / "app.py").write_text(source.replace(default, f'os.environ.get("TINY_AUDIO_MODEL", "{repo_id}")'))
    (out / "requirements.txt").write_text("\n".join(SPACE_REQUIREMENTS) + "\n")
    (out / "README.md").write_text(
        f"---\ntitle: {repo_id.split('/')[-1]}\nsdk: gradio\napp_file: app.py\nmodels:\n- {repo_id}\n---\n\n"
        f"Speech recognition demo of [{repo_id}](https://huggingface.co/{repo_id}).\n"
    )
