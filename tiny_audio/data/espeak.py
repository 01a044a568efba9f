"""espeak-ng speech from the `espeakng-loader` wheel (library + voice data), driven through ctypes.

No system package is needed: the wheel ships libespeak-ng and espeak-ng-data for Linux, macOS and
Windows, and `get_library_path()` names the right file for each.

Why every `Espeak` loads its own copy of the library: libespeak-ng keeps synthesis state in
static variables (the pitch-flutter position, the automatic gain, the cycle counter) that
`espeak_Terminate`/`espeak_Initialize` do not reset, so the same call gives different samples
depending on what was spoken before in the process. A fresh copy of the file has fresh statics
(the dynamic loader shares one instance per file, so a copy cannot be affected by anyone else's
handle), which makes the output a function of the calls made on this instance only.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tiny_audio.folders import process_alive

AUDIO_OUTPUT_SYNCHRONOUS = 2  # samples go to the callback; espeak_Synth returns when done
ESPEAK_CHARS_UTF8 = 1
ESPEAK_RATE = 1  # words per minute, 80-450
ESPEAK_PITCH = 3  # 0-99, 50 is the voice's own
EE_NOT_FOUND = 2
PACKAGE = "espeakng-loader"
SCRATCH_PREFIX = "tiny-audio-espeak-"  # + pid: each instance's private copy of the library

# int callback(short *wav, int numsamples, espeak_EVENT *events); returning 0 continues.
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SynthError(RuntimeError):
    """Speech synthesis cannot run or failed; the message names the package, voice or path."""


def _loader():  # -> the espeakng_loader module
    try:
        import espeakng_loader
    except ImportError as error:
        raise SynthError(
            f"the Python package {PACKAGE} is not installed (it ships the espeak-ng library and voices): "
            f"pip install {PACKAGE}"
        ) from error
    return espeakng_loader


def data_path() -> Path:
    return Path(_loader().get_data_path())


def voice_error(voice: str) -> str | None:
    """Why `voice` ("accent" or "accent+variant") is not usable, or None. Needs no library."""
    accent, _, variant = voice.partition("+")
    if variant and not (data_path() / "voices" / "!v" / variant).is_file():
        variants = sorted(path.name for path in (data_path() / "voices" / "!v").iterdir())
        return f"unknown espeak-ng voice variant '{variant}' in voice '{voice}'; choose one of {', '.join(variants)}"
    if not accent:
        return f"empty espeak-ng voice name in '{voice}'"
    return None


def remove_stale_copies() -> None:
    """Delete the library copies left by processes that were killed (called once per dataset)."""
    for path in Path(tempfile.gettempdir()).glob(SCRATCH_PREFIX + "*"):
        if not process_alive(path.name[len(SCRATCH_PREFIX) :].split("-", 1)[0]):
            shutil.rmtree(path, ignore_errors=True)


class Espeak:
    """One private espeak-ng instance at its native rate (22050 Hz). Not thread-safe; use processes."""

    def __init__(self) -> None:
        loader = _loader()
        self._scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
        self._lib: ctypes.CDLL | None = None
        try:
            source = Path(loader.get_library_path())
            private = self._scratch / source.name
            shutil.copyfile(source, private)
            self._lib = lib = ctypes.CDLL(str(private))
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_Synth.argtypes = [
                ctypes.c_char_p,  # text
                ctypes.c_size_t,  # size in bytes, with the terminating NUL
                ctypes.c_uint,  # position
                ctypes.c_int,  # position type
                ctypes.c_uint,  # end position
                ctypes.c_uint,  # flags
                ctypes.c_void_p,  # unique identifier (out)
                ctypes.c_void_p,  # user data
            ]
            self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, bytes(data_path()), 0)
            if self.sample_rate <= 0:
                raise SynthError(f"espeak-ng could not load its voice data from {data_path()} (reinstall {PACKAGE})")
            self._chunks: list[np.ndarray] = []
            self._callback = SYNTH_CALLBACK(self._collect)  # kept on self: ctypes must not free it
            lib.espeak_SetSynthCallback(self._callback)
        except BaseException:
            self.close()
            raise

    def _collect(self, wav, count: int, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def speak(self, text: str, *, voice: str, rate: int, pitch: int, noise_seed: int) -> np.ndarray:
        """int16 samples at self.sample_rate. `noise_seed` fixes espeak's random breath noise."""
        assert self._lib is not None, "Espeak used after close()"
        problem = voice_error(voice)
        if problem or self._lib.espeak_SetVoiceByName(voice.encode()) == EE_NOT_FOUND:
            raise SynthError(problem or f"unknown espeak-ng voice '{voice}' (accents look like en-us, en-gb-x-rp)")
        # Rate and pitch persist across calls, so every clip sets both. espeak_Initialize seeds the
        # breath-noise generator from the clock; a seed per clip makes the noise reproducible.
        self._lib.espeak_SetParameter(ESPEAK_RATE, rate, 0)
        self._lib.espeak_SetParameter(ESPEAK_PITCH, pitch, 0)
        self._lib.espeak_ng_SetRandSeed(noise_seed)
        self._chunks = []
        data = text.encode()
        status = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, ESPEAK_CHARS_UTF8, None, None)
        self._lib.espeak_Synchronize()
        if status != 0 or not self._chunks:
            raise SynthError(f"espeak-ng produced no audio for {text!r} with voice '{voice}' (status {status})")
        return np.concatenate(self._chunks)

    def has_voice(self, voice: str) -> bool:
        assert self._lib is not None, "Espeak used after close()"
        return voice_error(voice) is None and self._lib.espeak_SetVoiceByName(voice.encode()) != EE_NOT_FOUND

    def close(self) -> None:
        if self._lib is not None:
            self._lib.espeak_Terminate()
            handle = self._lib._handle
            self._lib = None
            # Unload the copy so a long run does not keep one mapped library per instance.
            import _ctypes

            if hasattr(_ctypes, "dlclose"):
                _ctypes.dlclose(handle)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> Espeak:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
