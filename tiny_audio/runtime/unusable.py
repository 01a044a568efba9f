"""Why a clip cannot be transcribed: the audio reasons, and the error that carries one.

The names are short and stable: data streams count skipped samples by them (tiny_audio.data.skips
adds the reasons that concern transcripts), and the exported pipeline hands them to its callers.
"""

from __future__ import annotations

UNREADABLE_AUDIO = "unreadable_audio"  # the bytes/file does not decode (corrupt, truncated, missing file)
MISSING_AUDIO = "missing_audio"  # the audio cell is null
EMPTY_AUDIO = "empty_audio"  # decodes to zero samples
NON_FINITE_AUDIO = "non_finite_audio"  # NaN or Inf samples
SILENT_AUDIO = "silent_audio"  # every sample below one 16-bit step
TOO_SHORT = "too_short"  # shorter than data.min_duration
TOO_LONG = "too_long"  # longer than data.max_duration (the encoder's 30 s window)


class Unusable(ValueError):
    """A record that cannot be used; `reason` is one of the skip names (these, or tiny_audio.data.skips')."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
