"""The model's settings as the runtime reads them.

In tiny_audio they are a `tiny_audio.config.ModelConfig`; in an export, whose receiver has no
tiny_audio, a namespace of the same fields read from config.json. The runtime reads only fields.
"""

from __future__ import annotations

from typing import Any

ModelSettings = Any
