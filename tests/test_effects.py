"""Acoustic effects: each condition is what it claims to be (SNR, spectrum, decay time, band, level)."""

from __future__ import annotations

import numpy as np
import pytest

from tiny_audio.data import effects

RATE = 16000


def _speech_like(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    # A few harmonics under a syllable-rate envelope: enough structure for level and band checks.
    voiced = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 8))
    return (0.1 * voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def _band_power(audio: np.ndarray, low: float, high: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1.0 / RATE)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


@pytest.mark.parametrize("colour", effects.NOISE_COLOURS)
@pytest.mark.parametrize("snr_db", [20.0, 10.0, 5.0, 0.0])
def test_mix_at_snr_gives_the_asked_ratio(colour: str, snr_db: float) -> None:
    rng = np.random.default_rng(0)
    speech = _speech_like()
    mixed = effects.mix_at_snr(speech, effects.coloured_noise(RATE // 2, colour, rng), snr_db, rng)
    assert mixed.shape == speech.shape and mixed.dtype == np.float32
    measured = 20 * np.log10(effects.rms(speech) / effects.rms(mixed - speech))
    assert measured == pytest.approx(snr_db, abs=0.01)


def test_noise_colours_have_their_slopes() -> None:
    rng = np.random.default_rng(1)
    # Power in two octaves a decade apart: per Hz flat (white), per octave flat (pink), ~1/f^2 (brown).
    ratios = {}
    for colour in effects.NOISE_COLOURS:
        noise = effects.coloured_noise(RATE * 8, colour, rng)
        assert effects.rms(noise) == pytest.approx(1.0, rel=1e-6)
        ratios[colour] = _band_power(noise, 200, 400) / _band_power(noise, 2000, 4000)
    assert ratios["white"] == pytest.approx(0.1, rel=0.2)  # same power per Hz: a tenth of the bandwidth
    assert ratios["pink"] == pytest.approx(1.0, rel=0.2)  # same power per octave
    assert ratios["brown"] == pytest.approx(10.0, rel=0.2)  # power ~ 1/f^2


@pytest.mark.parametrize("rt60", [0.3, 0.9])
def test_room_impulse_response_decays_in_its_rt60(rt60: float) -> None:
    rir = effects.room_impulse_response(rt60, room_size=6.0, sample_rate=RATE, rng=np.random.default_rng(2))
    assert rir[0] == 1.0  # the direct path first
    # Schroeder backward integration of the tail: the time from -5 dB to -25 dB, times three.
    tail = rir.astype(np.float64) ** 2
    tail[0] = 0.0
    energy = np.cumsum(tail[::-1])[::-1]
    decay_db = 10 * np.log10(energy / energy[0] + 1e-20)
    t5, t25 = np.argmax(decay_db <= -5), np.argmax(decay_db <= -25)
    assert 3 * (t25 - t5) / RATE == pytest.approx(rt60, rel=0.15)


def test_longer_decay_means_more_reverberant_energy() -> None:
    def reverberant(rt60: float) -> float:
        rir = effects.room_impulse_response(rt60, 6.0, RATE, np.random.default_rng(3))
        return float(np.sum(rir[1:] ** 2))

    assert reverberant(0.2) < reverberant(0.6) < reverberant(1.2)


def test_reverberate_keeps_length_and_level() -> None:
    speech = _speech_like()
    wet = effects.reverberate(speech, effects.room_impulse_response(0.8, 8.0, RATE, np.random.default_rng(4)))
    assert wet.shape == speech.shape
    assert effects.rms(wet) == pytest.approx(effects.rms(speech), rel=1e-4)
    assert not np.allclose(wet, speech, atol=1e-3)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_change_speed_changes_duration(factor: float) -> None:
    speech = _speech_like()
    assert effects.change_speed(speech, factor, RATE).size == pytest.approx(speech.size / factor, abs=2)
    assert effects.change_speed(speech, 1.0, RATE) is speech


def test_telephone_keeps_only_the_narrow_band() -> None:
    noise = effects.coloured_noise(RATE * 2, "white", np.random.default_rng(5)) * 0.1
    call = effects.telephone(noise, RATE)
    assert call.shape == noise.shape
    inside = _band_power(call, 500, 3000) / _band_power(noise, 500, 3000)
    assert inside > 0.8
    assert _band_power(call, 4500, 8000) < 1e-3 * _band_power(noise, 4500, 8000)
    assert _band_power(call, 20, 200) < 0.05 * _band_power(noise, 20, 200)


def test_set_level_and_gain() -> None:
    speech = _speech_like()
    assert 20 * np.log10(effects.rms(effects.set_level(speech, -35.0))) == pytest.approx(-35.0, abs=1e-3)
    assert effects.rms(effects.gain(speech, -6.0)) == pytest.approx(effects.rms(speech) / 10 ** (6 / 20), rel=1e-5)
    loud = effects.gain(speech, 40.0)
    assert float(np.abs(loud).max()) == pytest.approx(1.0)  # scaled down, never clipped


def test_babble_sums_other_talkers_at_equal_level() -> None:
    rng = np.random.default_rng(6)
    voices = [_speech_like(1.0) * 3, _speech_like(1.5) * 0.01]
    mix = effects.babble(voices, RATE * 3, rng)
    assert mix.shape == (RATE * 3,)
    assert effects.rms(mix) > 0
    with pytest.raises(ValueError, match="at least one clip"):
        effects.babble([], RATE, rng)


@pytest.mark.parametrize("kind", sorted(effects.NON_SPEECH))
def test_non_speech_clips(kind: str) -> None:
    clip = effects.non_speech(kind, 1.5, RATE, np.random.default_rng(7))
    again = effects.non_speech(kind, 1.5, RATE, np.random.default_rng(7))
    assert clip.shape == (int(1.5 * RATE),) and clip.dtype == np.float32
    assert np.array_equal(clip, again)  # seeded, no global state
    assert np.isfinite(clip).all() and float(np.abs(clip).max()) <= 1.0
    if kind == "silence":
        assert not clip.any()
    else:
        assert effects.rms(clip) > 1e-4


def test_unknown_names_are_refused_with_the_choices() -> None:
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match="unknown non-speech kind 'sirens'; choose one of silence"):
        effects.non_speech("sirens", 1.0, RATE, rng)
    with pytest.raises(ValueError, match="unknown noise colour 'blue'"):
        effects.coloured_noise(100, "blue", rng)
