"""Robustness test sets: the held-out sentences under conditions training never has.

`ta data robust OUT` writes one audiofolder split per condition (OUT/<condition>/metadata.csv
beside 16 kHz mono WAVs). Every speech condition reads the same held-out sentences
(`sentences.is_held_out`), so the gap between a condition's error rate and `clean`'s is the cost
of the condition alone:
  clean            training voices, as the synthetic validation split
  new_accent       Scottish English (synth.HELD_OUT_VOICE)
  new_variant      training accents with espeak voice variants training never uses
  foreign_voice    English read by other languages' voices (French, Spanish, Hindi, ...)
  slow, fast       95-115 and 230-260 words per minute (training speaks 120-215)
  noise_<colour>_<snr>db   white, pink or brown noise at a signal-to-noise ratio
  babble_<snr>db   other talkers (training sentences) mixed under the speaker
  reverb_small/medium/large   rooms of growing size and decay time (rt60 0.2-0.4, 0.5-0.7, 0.8-1.2 s)
  quiet            -35 dBFS;  telephone  300-3400 Hz narrow band
  non_speech       silence, low noise, hum, tones, clicks, keypad tones: the reference is EMPTY,
                   so any transcript is a hallucination
The voices and rates here are reserved for testing: tests check that training never uses them.

The same arguments write byte-identical files: every draw comes from generators seeded by
(seed, condition, clip), rendering reuses `synth`'s lanes (one fresh espeak-ng instance per lane),
and the set is written to a temporary directory and renamed when complete, with a marker
(MARKER) that lets the next call with the same arguments reuse it and lets `ta eval` recognise it.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from tiny_audio.data import effects
from tiny_audio.data.espeak import PACKAGE, Espeak, remove_stale_copies
from tiny_audio.data.sentences import held_out_sentences, training_sentence
from tiny_audio.data.synth import (
    HELD_OUT_VOICE,
    PITCHES,
    RATES,
    Clip,
    _check_replaceable,
    _check_voices,
    _guarded,
    _make_staging,
    _package_version,
    _read_marker,
    _render_all,
    _swap_in,
    _write_metadata,
    speak_clip,
    write_wav,
)

VERSION = 1  # bump when the same arguments would write different audio or text
MARKER = "robust-complete.json"  # the dash keeps it from being read as a split by data/local.py
COMMAND = "ta data robust"
LANE_SIZE = 32

# Voices reserved for testing (training promises never to use them; tests/test_robust_sets.py checks).
NEW_ACCENT = HELD_OUT_VOICE
VARIANT_ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-029")  # training accents, under new timbres
UNSEEN_VARIANTS = (
    "+m7", "+m8", "+f5", "+klatt4", "+klatt5", "+croak", "+edward",
    "+linda", "+steph", "+norbert", "+Michael", "+anika", "+whisperf",
)  # fmt: skip
FOREIGN_VOICES = ("fr", "fr-be", "es", "es-419", "it", "hi", "pl", "pt", "pt-br", "ru", "tr", "vi")
SLOW_RATES = (95, 115)  # words per minute; training stays within 120-215
FAST_RATES = (230, 260)
# The clean and noisy conditions use training voices: the condition is the only change.
CLEAN_VOICES = ("en-us", "en", "en-gb-x-rp", "en-029", "en-us+m3", "en+f2", "en-gb-x-rp+f4", "en-029+m3")
BABBLE_VOICES = ("en-us+f2", "en+m3", "en-gb-x-rp", "en-029+f4", "en-us-nyc", "en-gb-x-gbclan+m3")
BABBLE_TALKERS = 4  # voices summed under each babble clip
NON_SPEECH_SECONDS = (1.0, 4.0)
QUIET_DBFS = -35.0
NON_SPEECH_CONDITION = "non_speech"  # its references are empty

SpeechEffect = Callable[[np.ndarray, np.random.Generator, int, list[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Condition:
    name: str
    voices: tuple[str, ...]  # empty: a non-speech condition
    rates: tuple[int, int] = RATES
    effect: SpeechEffect | None = None  # (speech, rng, sample_rate, babble talkers) -> audio

    @property
    def speech(self) -> bool:
        return bool(self.voices)


def _noise(
    speech: np.ndarray,
    rng: np.random.Generator,
    sample_rate: int,
    talkers: list[np.ndarray],
    *,
    colour: str,
    snr_db: float,
) -> np.ndarray:
    return effects.mix_at_snr(speech, effects.coloured_noise(speech.size, colour, rng), snr_db, rng)


def _babble(
    speech: np.ndarray, rng: np.random.Generator, sample_rate: int, talkers: list[np.ndarray], *, snr_db: float
) -> np.ndarray:
    chosen = rng.choice(len(talkers), size=min(BABBLE_TALKERS, len(talkers)), replace=False)
    crowd = effects.babble([talkers[i] for i in chosen], speech.size, rng)
    return effects.mix_at_snr(speech, crowd, snr_db, rng)


def _reverb(
    speech: np.ndarray,
    rng: np.random.Generator,
    sample_rate: int,
    talkers: list[np.ndarray],
    *,
    rt60: tuple[float, float],
    size: tuple[float, float],
) -> np.ndarray:
    rir = effects.room_impulse_response(float(rng.uniform(*rt60)), float(rng.uniform(*size)), sample_rate, rng)
    return effects.reverberate(speech, rir)


def _quiet(speech: np.ndarray, rng: np.random.Generator, sample_rate: int, talkers: list[np.ndarray]) -> np.ndarray:
    return effects.set_level(speech, QUIET_DBFS)


def _telephone(speech: np.ndarray, rng: np.random.Generator, sample_rate: int, talkers: list[np.ndarray]) -> np.ndarray:
    return effects.telephone(speech, sample_rate)


def _conditions() -> dict[str, Condition]:
    new_variants = tuple(accent + variant for accent in VARIANT_ACCENTS for variant in UNSEEN_VARIANTS)
    found = [
        Condition("clean", CLEAN_VOICES),
        Condition("new_accent", (NEW_ACCENT,)),
        Condition("new_variant", new_variants),
        Condition("foreign_voice", FOREIGN_VOICES),
        Condition("slow", CLEAN_VOICES, SLOW_RATES),
        Condition("fast", CLEAN_VOICES, FAST_RATES),
    ]
    noises = [("white", 10), ("white", 5), ("pink", 20), ("pink", 10), ("pink", 5), ("pink", 0)]
    noises += [("brown", 10), ("brown", 5)]
    for colour, snr in noises:
        found.append(
            Condition(f"noise_{colour}_{snr}db", CLEAN_VOICES, effect=partial(_noise, colour=colour, snr_db=snr))
        )
    for snr in (20, 10, 5, 0):
        found.append(Condition(f"babble_{snr}db", CLEAN_VOICES, effect=partial(_babble, snr_db=snr)))
    rooms = {
        "small": ((0.2, 0.4), (3.0, 5.0)),
        "medium": ((0.5, 0.7), (6.0, 10.0)),
        "large": ((0.8, 1.2), (12.0, 20.0)),
    }
    for room, (rt60, size) in rooms.items():
        found.append(Condition(f"reverb_{room}", CLEAN_VOICES, effect=partial(_reverb, rt60=rt60, size=size)))
    found.append(Condition("quiet", CLEAN_VOICES, effect=_quiet))
    found.append(Condition("telephone", CLEAN_VOICES, effect=_telephone))
    found.append(Condition(NON_SPEECH_CONDITION, ()))
    return {condition.name: condition for condition in found}


CONDITIONS = _conditions()
# A handful that covers each kind of shift, for scoring often (the course scores every stage on it).
COMPACT = ("clean", "new_accent", "noise_pink_10db", "babble_10db", "reverb_medium", NON_SPEECH_CONDITION)


def plan(condition: str, count: int, seed: int) -> list[Clip]:
    """The clips of one condition. A longer set starts with the clips of a shorter one."""
    spec = _condition(condition)
    rng = random.Random(f"{seed}-robust-{condition}")
    # Every speech condition reads the same sentences, so that only the condition differs.
    sentences = held_out_sentences(count, random.Random(f"{seed}-robust-sentences")) if spec.speech else []
    clips = []
    for index in range(count):
        speech = spec.speech
        clips.append(
            Clip(
                file_name=f"{condition}_{index:05d}.wav",
                text=sentences[index] if speech else "",
                voice=rng.choice(spec.voices) if speech else "",
                rate=rng.randint(*spec.rates) if speech else 0,
                pitch=rng.randint(*PITCHES) if speech else 0,
                noise_seed=rng.randrange(1 << 31),  # espeak's breath noise and the effect's generator
            )
        )
    return clips


def build_robust(
    out_dir: Path,
    *,
    clips: int = 40,
    seed: int = 0,
    conditions: tuple[str, ...] | None = None,
    sample_rate: int = 16000,
    workers: int | None = None,
) -> dict[str, int]:
    """Write one split per condition (default: all of CONDITIONS) under `out_dir`, or reuse a complete set.

    Returns clips per condition. The output does not depend on `workers`.
    """
    out_dir = Path(out_dir)
    names = tuple(conditions or CONDITIONS)
    for name in names:
        _condition(name)
    if clips < 1:
        raise ValueError(f"clips per condition must be >= 1, got {clips}")
    marker = _marker(clips, seed, names, sample_rate)
    if _read_marker(out_dir, MARKER) == marker:
        return marker["counts"]
    _check_replaceable(out_dir, MARKER, COMMAND)
    remove_stale_copies()
    plans = {name: plan(name, clips, seed) for name in names}
    _check_voices({clip.voice for found in plans.values() for clip in found if clip.voice} | set(BABBLE_VOICES))

    staging = _make_staging(out_dir)
    try:
        talkers = _babble_talkers(seed, sample_rate) if any("babble" in name for name in names) else []
        lanes = []
        for name, found in plans.items():
            folder = staging / name
            _guarded(folder, lambda folder=folder: folder.mkdir())
            _write_metadata(folder, found)
            for i in range(0, len(found), LANE_SIZE):
                lanes.append((folder, name, i, found[i : i + LANE_SIZE], sample_rate, talkers))
        _render_all(lanes, workers, _render_lane)
        text = json.dumps(marker, indent=1) + "\n"
        _guarded(staging / MARKER, lambda: (staging / MARKER).write_text(text))
        _swap_in(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return marker["counts"]


def is_complete(
    out_dir: Path,
    *,
    clips: int = 40,
    seed: int = 0,
    conditions: tuple[str, ...] | None = None,
    sample_rate: int = 16000,
) -> bool:
    """Whether `out_dir` holds a complete set written with these arguments (build_robust would reuse it)."""
    return _read_marker(Path(out_dir), MARKER) == _marker(clips, seed, tuple(conditions or CONDITIONS), sample_rate)


def robust_conditions(directory: Path) -> list[str] | None:
    """The conditions of a complete robustness set at `directory`, in order; None if it is not one."""
    found = _read_marker(Path(directory), MARKER)
    return list(found["counts"]) if found and isinstance(found.get("counts"), dict) else None


def _marker(clips: int, seed: int, names: tuple[str, ...], sample_rate: int) -> dict:
    arguments = {"clips": clips, "seed": seed, "sample_rate": sample_rate}
    # The library version is part of the key: another espeak-ng may speak differently.
    counts = {name: clips for name in names}
    return {"version": VERSION, PACKAGE: _package_version(), "arguments": arguments, "counts": counts}


def _condition(name: str) -> Condition:
    if name not in CONDITIONS:
        raise ValueError(f"unknown robustness condition '{name}'; choose from {', '.join(CONDITIONS)}")
    return CONDITIONS[name]


def _babble_talkers(seed: int, sample_rate: int) -> list[np.ndarray]:
    """One clip per babble voice, each two training sentences long: held-out sentences stay the target's."""
    rng = random.Random(f"{seed}-robust-babble")
    with Espeak() as engine:
        talkers = []
        for index, voice in enumerate(BABBLE_VOICES):
            text = f"{training_sentence(rng)} {training_sentence(rng)}"
            clip = Clip(f"babble_{index}", text, voice, rng.randint(*RATES), rng.randint(*PITCHES), index)
            talkers.append(speak_clip(engine, clip, sample_rate))
    return talkers


def _render_lane(lane: tuple[Path, str, int, list[Clip], int, list[np.ndarray]]) -> None:
    folder, name, start, found, sample_rate, talkers = lane
    spec = CONDITIONS[name]
    kinds = tuple(effects.NON_SPEECH)
    with Espeak() as engine:
        for index, clip in enumerate(found, start=start):
            rng = np.random.default_rng(clip.noise_seed)
            if spec.speech:
                audio = speak_clip(engine, clip, sample_rate)
                if spec.effect is not None:
                    audio = spec.effect(audio, rng, sample_rate, talkers)
            else:
                kind = kinds[index % len(kinds)]  # each kind in turn
                audio = effects.non_speech(kind, float(rng.uniform(*NON_SPEECH_SECONDS)), sample_rate, rng)
            write_wav(folder / clip.file_name, audio, sample_rate)
