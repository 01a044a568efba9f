"""The audio encoder's name where miniature/encoder.py imports it; the encoder lives in
tiny_audio.runtime.encoder. This module goes once that importer names the runtime."""

from tiny_audio.runtime.encoder import AudioEncoder

__all__ = ["AudioEncoder"]
