"""A Gradio demo of a tiny-audio model: upload or record audio, watch the transcript appear token by token.

Standalone on purpose: `ta space` copies this file verbatim as a Hugging Face Space's app.py, where
only gradio and transformers (with the model's own code, loaded by trust_remote_code) are installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from typing import Any

import gradio as gr
import torch
from transformers import AutoConfig, pipeline

from tiny_audio.hardware import cpu_runs_natively, emulated_reason

# A Space sets it in its settings, or `ta space` writes the repo id here.
MODEL_ID = os.environ.get("TINY_AUDIO_MODEL", "")
# Requests waiting beyond those running; past it a visitor is told at once that the queue is full, so a
# crowd costs a refusal rather than memory and minutes-long waits.
QUEUE_SIZE = 32
# Transcriptions running at once: on a CPU, two share its cores and neither finishes sooner.
CONCURRENCY = 1
# Uploads above this are refused before they reach the disk; 30 s of 48 kHz stereo float WAV is 12 MB.
MAX_UPLOAD = "50mb"
# Uploaded clips older than an hour are deleted every ten minutes, so a demo left running keeps its disk.
DELETE_CACHE = (600, 3600)


# glibc's mallopt parameter number (malloc.h) and the arenas a server keeps; see bound_memory.
M_ARENA_MAX, MALLOC_ARENAS = -8, 2


def _glibc() -> Any:
    """glibc, where the server runs on it; None elsewhere (macOS, musl), where there is nothing to tune."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


GLIBC = _glibc()


def bound_memory() -> None:
    """Keep the server's resident memory flat under load.

    glibc gives each thread that allocates an arena of its own (up to 8 per core), and gradio runs each
    step of a generator on whichever of its worker threads is free, so memory freed in one arena is not
    reused by the next request: measured on a 2-core CPU (`ta serve-bench`), 16 clients grew the server by
    11% in 200 requests. With two arenas and the freed memory returned after each request, by under 2%.
    """
    if GLIBC is not None:
        GLIBC.mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def release_freed_memory() -> None:
    if GLIBC is not None:
        GLIBC.malloc_trim(0)


def load(model: str) -> Any:
    """The exported pipeline; in float32 on a CPU that would emulate the model's half precision."""
    options: dict[str, Any] = {}
    if not torch.cuda.is_available():
        dtype = AutoConfig.from_pretrained(model, trust_remote_code=True).speech_llm.get("dtype", "float32")
        if not cpu_runs_natively(dtype):
            print(emulated_reason(dtype, "Serving", "a GPU or a CPU with native support"), file=sys.stderr)
            options["dtype"] = torch.float32
    return pipeline("automatic-speech-recognition", model=model, trust_remote_code=True, **options)


def build_demo(
    asr: Any,
    title: str = "Speech recognition",
    max_new_tokens: int = 128,
    queue_size: int = QUEUE_SIZE,
    concurrency: int = CONCURRENCY,
) -> gr.Blocks:
    info = asr.model.describe()
    bound_memory()

    def transcribe(path: str | None) -> Iterator[str]:
        if not path:
            raise gr.Error("Upload or record some audio first.")
        try:
            audio = asr.load_audio(path, label=os.path.basename(path))
        except (ValueError, TypeError) as error:
            # Digital silence is a recording in which nothing was said, not a mistake to report.
            if getattr(error, "reason", None) == "silent_audio":
                yield ""
                return
            raise gr.Error(str(error)) from None
        try:
            yield from asr.model.stream(audio, max_new_tokens=max_new_tokens)
        finally:
            release_freed_memory()

    with gr.Blocks(title=title, delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(f"# {title}\nUpload a clip or record one (at most {info['max audio per clip']}), then transcribe.")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
                button = gr.Button("Transcribe", variant="primary", elem_id="transcribe")
            with gr.Column():
                text = gr.Textbox(label="Transcript", elem_id="transcript", lines=4, interactive=False)
                gr.Markdown("\n".join(["| model | |", "|---|---|", *(f"| {k} | `{v}` |" for k, v in info.items())]))
        button.click(transcribe, audio, text)
    return demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)


if __name__ == "__main__":
    build_demo(load(MODEL_ID), title=MODEL_ID).launch(max_file_size=MAX_UPLOAD)
