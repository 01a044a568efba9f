"""`ta serve` (the web demo) and `ta space` (the same demo as a Hugging Face Space)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

APP_FILE = Path(__file__).resolve().parent / "app.py"
SPACE_REQUIREMENTS = ["gradio>=5", "transformers>=5,<6", "torch", "peft", "accelerate", "soundfile", "soxr"]

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


def launch(model: str, host: str = "127.0.0.1", port: int = 7860, block: bool = True, max_new_tokens: int = 128) -> Any:
    from tiny_audio.serve.app import build_demo, load

    demo = build_demo(load(resolve_model(model)), title=model, max_new_tokens=max_new_tokens)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block)
    return demo


@app.command("serve")
def serve_command(
    model: Annotated[str, typer.Argument(help="An export (ta export), a checkpoint, or a Hub repo id.")],
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Stop each transcript after this many tokens.")] = 128,
) -> None:
    """A web demo: upload or record audio, see the transcript as it is generated."""
    from tiny_audio.export.export import ExportError

    try:
        launch(model, host, port, max_new_tokens=max_new_tokens)
    except (ExportError, OSError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


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
