"""Directories of recordings used by augmentation: noise (MUSAN-like) and room impulse responses.

A directory is checked once before any model loads (`require_effect_dirs`): missing, empty or
wholly unreadable is a one-line error naming the config key, the path and the fix. During
training each file is decoded and resampled once, on first use, then kept in memory up to a
budget; a file that fails to decode then is skipped and counted (reason `unreadable_effect_file`),
and the clip gets the draw's fallback instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from tiny_audio.config import NOISE_FILE_KIND, AugmentConfig
from tiny_audio.data.sources import DataSourceError
from tiny_audio.runtime.audio import check_signal, read_audio, resample, to_mono
from tiny_audio.runtime.unusable import Unusable

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
# Decoded files kept per reader process; beyond it a file is decoded again at each use.
MEMORY_BUDGET_BYTES = 512 * 2**20


class EffectFilesError(DataSourceError):
    """A configured noise or impulse-response directory that cannot be used."""


def audio_files(directory: Path) -> list[Path]:
    """Audio files under `directory`, recursively, in a fixed (sorted) order so draws are reproducible."""
    return sorted(p for p in directory.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def check_effect_dir(path: str, key: str) -> list[Path]:
    """The directory's audio files, or EffectFilesError naming `key`, `path` and the fix."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise EffectFilesError(f"{key}='{path}' is not a directory (seen from {Path.cwd()}); point it at one")
    try:
        files = audio_files(directory)
    except OSError as error:
        raise EffectFilesError(f"{key}='{path}' cannot be listed ({error.strerror}); check its permissions") from None
    if not files:
        suffixes = "/".join(AUDIO_SUFFIXES)
        raise EffectFilesError(f"{key}='{path}' holds no {suffixes} files; add recordings or unset {key}")
    for file in files:
        try:
            sf.info(str(file))
            return files
        except (sf.SoundFileError, OSError, RuntimeError):
            continue
    raise EffectFilesError(
        f"{key}='{path}': none of its {len(files)} audio files can be read by soundfile; "
        "check they are WAV/FLAC/OGG and readable"
    )


def require_effect_dirs(cfg: AugmentConfig, prefix: str = "data.augment") -> None:
    """Check every configured directory before any model loads (only those an effect will use)."""
    uses_noise_files = cfg.noise.prob > 0 or (cfg.non_speech.prob > 0 and NOISE_FILE_KIND in cfg.non_speech.kinds)
    if cfg.noise.dir and uses_noise_files:
        check_effect_dir(cfg.noise.dir, f"{prefix}.noise.dir")
    if cfg.reverb.dir and cfg.reverb.prob > 0:
        check_effect_dir(cfg.reverb.dir, f"{prefix}.reverb.dir")


class EffectFiles:
    """One directory's recordings, drawn at random, each decoded and resampled once (lazily)."""

    def __init__(self, directory: str, sample_rate: int) -> None:
        self.files = audio_files(Path(directory).expanduser())
        self.sample_rate = sample_rate
        self._decoded: dict[int, np.ndarray] = {}
        self._bytes = 0

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray | None, str]:
        """(mono float32 at sample_rate, file path); audio is None when the file cannot be decoded."""
        index = int(rng.integers(len(self.files)))
        path = str(self.files[index])
        if index in self._decoded:
            return self._decoded[index], path
        try:
            samples, rate = read_audio(None, path)
            check_signal(samples)
        except Unusable:
            return None, path
        audio = resample(to_mono(samples), rate, self.sample_rate)
        if self._bytes + audio.nbytes <= MEMORY_BUDGET_BYTES:
            self._decoded[index] = audio
            self._bytes += audio.nbytes
        return audio, path
