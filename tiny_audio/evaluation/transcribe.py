"""Batched transcription's name where miniature/course.py imports it; it lives in
tiny_audio.runtime.transcribe. This module goes once that importer names the runtime."""

from tiny_audio.runtime.transcribe import transcribe

__all__ = ["transcribe"]
