"""Acoustic conditions as pure functions of (audio, numpy Generator): noise, rooms, speed, level, band.

Used twice: to build the robustness test sets (`ta data robust`) and to augment training audio.
Every function draws only from the generator it is given, so a seeded generator gives the same
output on any machine and in any process; none touches a global random state (which is why
these are our own few lines rather than a library that draws from `random`/`np.random`).
Audio is mono float32 in [-1, 1]; results are scaled down, never clipped, when they would exceed it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tiny_audio.runtime.audio import resample

NOISE_COLOURS = ("white", "pink", "brown")
SPEED_OF_SOUND = 343.0  # m/s


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def fit_range(audio: np.ndarray) -> np.ndarray:
    """Scale down (never clip) audio whose peak exceeds full scale."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    audio = audio.astype(np.float32, copy=False)
    return audio / peak if peak > 1.0 else audio


def set_level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale to an RMS level in dB relative to full scale (e.g. -35 for quiet speech)."""
    level = rms(audio)
    if level == 0.0:
        return audio.astype(np.float32, copy=False)
    return fit_range(audio * (10.0 ** (dbfs / 20.0) / level))


def gain(audio: np.ndarray, db: float) -> np.ndarray:
    return fit_range(audio * 10.0 ** (db / 20.0))


def coloured_noise(length: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power falls as 1/f^0 (white), 1/f (pink) or 1/f^2 (brown)."""
    if colour not in NOISE_COLOURS:
        raise ValueError(f"unknown noise colour {colour!r}; choose one of {', '.join(NOISE_COLOURS)}")
    white = rng.standard_normal(length)
    if colour == "white" or length < 2:
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.arange(spectrum.size, dtype=np.float64)
        freqs[0] = 1.0  # keep DC finite; it is removed below
        exponent = {"pink": 0.5, "brown": 1.0}[colour]  # amplitude ~ f^-(power exponent / 2)
        noise = np.fft.irfft(spectrum / freqs**exponent, n=length)
        noise -= noise.mean()
    level = rms(noise)
    return (noise / level if level > 0 else noise).astype(np.float32)


def loop_to(audio: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """`length` samples of `audio` from a random offset, repeated if it is shorter."""
    if audio.size == 0:
        return np.zeros(length, dtype=np.float32)
    reps = -(-(length + audio.size) // audio.size)
    start = int(rng.integers(audio.size))
    return np.tile(audio, reps)[start : start + length].astype(np.float32, copy=False)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Speech plus noise scaled so that RMS(speech) / RMS(noise) is `snr_db` decibels."""
    noise = loop_to(noise, speech.size, rng)
    speech_level, noise_level = rms(speech), rms(noise)
    if speech_level == 0.0 or noise_level == 0.0:
        return fit_range(speech + noise)
    scale = speech_level / (noise_level * 10.0 ** (snr_db / 20.0))
    return fit_range(speech + scale * noise)


def babble(voices: list[np.ndarray], length: int, rng: np.random.Generator) -> np.ndarray:
    """Other talkers summed, each at unit RMS from a random offset: crowd noise under a speaker."""
    if not voices:
        raise ValueError("babble needs at least one clip of other speech")
    mix = np.zeros(length, dtype=np.float64)
    for voice in voices:
        level = rms(voice)
        if level > 0:
            mix += loop_to(voice, length, rng) / level
    return mix.astype(np.float32)


def room_impulse_response(rt60: float, room_size: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A room's impulse response: a direct path, sparse early reflections, then a decaying noise tail.

    `rt60` is the time (s) for the tail's energy to fall by 60 dB; `room_size` (m) sets when the
    first reflections arrive (distances of about one room size) and when the diffuse tail begins.
    """
    if rt60 <= 0 or room_size <= 0:
        raise ValueError(f"rt60 ({rt60}) and room_size ({room_size}) must be > 0")
    length = int(sample_rate * rt60 * 1.2) + 1
    t = np.arange(length) / sample_rate
    envelope = np.exp(-6.9078 * t / rt60)  # amplitude: 60 dB of energy = 3 decades of amplitude
    mixing_time = 2.0 * room_size / SPEED_OF_SOUND
    tail = rng.standard_normal(length) * envelope * (t >= mixing_time)
    # Reverberant energy relative to the direct path grows with the decay time: about equal at
    # rt60 = 0.15 s, 8 dB above it at 1 s (a talker a few metres from the microphone).
    tail_energy = float(np.sum(tail**2))
    rir = tail * np.sqrt(rt60 / 0.15 / tail_energy) if tail_energy > 0 else tail
    for _ in range(6):  # early reflections: walls at 0.5-1.5 room sizes, weaker with distance
        delay = rng.uniform(0.5, 1.5) * room_size / SPEED_OF_SOUND
        index = int(delay * sample_rate)
        if index < length:
            rir[index] += rng.choice((-1.0, 1.0)) * 0.6 * envelope[index] / max(1.0, delay * SPEED_OF_SOUND)
    rir[0] = 1.0  # the direct path
    return rir.astype(np.float32)


def reverberate(speech: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Speech convolved with an impulse response, cut to the speech's length, at the speech's RMS."""
    if rir.size == 0:
        return speech
    size = speech.size + rir.size - 1
    n_fft = 1 << (size - 1).bit_length()
    wet = np.fft.irfft(np.fft.rfft(speech, n_fft) * np.fft.rfft(rir, n_fft), n_fft)[: speech.size]
    level = rms(wet)
    return fit_range(wet * (rms(speech) / level) if level > 0 else wet)


def change_speed(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Play `factor` times faster (tempo and pitch together), as Kaldi's and NeMo's speed perturbation."""
    if factor <= 0:
        raise ValueError(f"speed factor must be > 0, got {factor}")
    if factor == 1.0:
        return audio
    return resample(audio, round(sample_rate * factor), sample_rate)


def telephone(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A narrow-band call: 300-3400 Hz at 8 kHz, back at the input's rate."""
    narrow = resample(audio, sample_rate, 8000)
    spectrum = np.fft.rfft(narrow)
    freqs = np.fft.rfftfreq(narrow.size, 1.0 / 8000)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0.0
    band = np.fft.irfft(spectrum, n=narrow.size).astype(np.float32)
    return fit_range(resample(band, 8000, sample_rate))


# --- Non-speech: what a recognizer must answer with nothing --------------------------------------


def _silence(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    return np.zeros(length, dtype=np.float32)


def _low_noise(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    colour = NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))]
    return set_level(coloured_noise(length, colour, rng), float(rng.uniform(-60, -35)))


def _hum(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    mains = 50.0 if rng.random() < 0.5 else 60.0
    t = np.arange(length) / sample_rate
    wave = sum(np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 5))
    return set_level(np.asarray(wave), float(rng.uniform(-40, -20)))


def _tone(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(length) / sample_rate
    return set_level(np.sin(2 * np.pi * rng.uniform(200, 2000) * t), float(rng.uniform(-30, -12)))


def _clicks(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    audio = np.zeros(length, dtype=np.float32)
    for at in rng.integers(0, length, size=int(rng.integers(3, 20))):
        width = int(rng.integers(8, 80))
        click = np.hanning(width + 2)[1:-1][: length - at]
        audio[at : at + click.size] += rng.uniform(-0.8, 0.8) * click
    return fit_range(audio)


def _tone_sequence(length: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    audio = np.zeros(length, dtype=np.float64)
    beep = int(0.12 * sample_rate)
    step = int(0.25 * sample_rate)
    t = np.arange(beep) / sample_rate
    for start in range(int(rng.integers(0, step)), length - beep, step):
        pair = rng.choice((697, 770, 852, 941)), rng.choice((1209, 1336, 1477))  # telephone keypad tones
        audio[start : start + beep] = np.hanning(beep) * sum(np.sin(2 * np.pi * f * t) for f in pair)
    return set_level(audio, float(rng.uniform(-30, -15)))


NON_SPEECH: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "silence": _silence,
    "low_noise": _low_noise,
    "hum": _hum,
    "tone": _tone,
    "clicks": _clicks,
    "tone_sequence": _tone_sequence,
}


def non_speech(kind: str, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A clip with no speech in it: `kind` is one of NON_SPEECH."""
    if kind not in NON_SPEECH:
        raise ValueError(f"unknown non-speech kind {kind!r}; choose one of {', '.join(NON_SPEECH)}")
    return NON_SPEECH[kind](max(1, int(seconds * sample_rate)), sample_rate, rng).astype(np.float32, copy=False)
