"""Training-audio augmentation (`data.augment`): noise, babble, rooms, speed, gain, non-speech.

Applied to each train batch before its features are computed (the train collator only; evaluation
never augments). Every draw for a clip comes from generators seeded by (data.seed, the clip's
`augment_key`, the effect), where the train stream sets the key to (dataset index, pass, the
record's id): a clip's augmentation is a function of where it is in the data, never of what ran
before, so a resumed run augments exactly as an uninterrupted one with no state saved, and
turning one effect on does not change another's draws. With `data.augment.variants` K, the pass
enters the key as pass mod K: each clip has K fixed draws, and an augmented clip comes back as it
was, which lets the encoder cache keep its encoding. Babble is the one effect that depends on
the batch (it mixes the batch's other clips), and a restored run rebuilds the same batches.

The effects are the pure functions of tiny_audio/data/effects.py.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from tiny_audio.config import NOISE_FILE_KIND, AugmentConfig, DataConfig
from tiny_audio.data import effects, skips
from tiny_audio.data.effect_files import EffectFiles
from tiny_audio.runtime.collator import ONE_OFF

# One generator per effect, so that each effect's draws are independent of the others'.
_NON_SPEECH, _SPEED, _REVERB, _NOISE, _GAIN = range(5)
NOISE_SOURCES = ("coloured", "babble", "files")
RIR_SOURCES = ("generated", "files")
COLOURED_TAKE_SECONDS = 60


def augment_key(source: int, pass_number: int, sample_id: str) -> list[int]:
    """The seed words of one record in one pass (the record's id is hashed: stable across runs)."""
    digest = int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little")
    return [source, pass_number, digest]


class AudioAugmenter:
    """Augments the samples of one train batch: `{"audio", "text", "augment_key", ...}` -> same keys.

    Each sample comes back with `ONE_OFF`: whether no later pass gives its audio again. A clip every
    effect skipped is the same clip next pass, and so, with `variants`, is one augmented without
    babble; the encoder cache may keep their encodings, not a one-off's.
    """

    def __init__(self, cfg: AugmentConfig, *, seed: int, sample_rate: int, max_duration: float) -> None:
        self.cfg = cfg
        self.seed = seed
        self.sample_rate = sample_rate
        self.max_samples = int(max_duration * sample_rate)
        self.noise_files = EffectFiles(cfg.noise.dir, sample_rate) if cfg.noise.dir else None
        self.rir_files = EffectFiles(cfg.reverb.dir, sample_rate) if cfg.reverb.dir else None
        self._coloured_takes: dict[str, np.ndarray] = {}

    def __call__(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        clean = [np.asarray(sample["audio"], dtype=np.float32) for sample in samples]
        return [self._augment(sample, i, clean) for i, sample in enumerate(samples)]

    def _augment(self, sample: dict[str, Any], index: int, clean: list[np.ndarray]) -> dict[str, Any]:
        if "augment_key" not in sample:
            raise KeyError("a train sample without 'augment_key': augmentation needs the train stream's samples")
        source, pass_number, record = sample["augment_key"]
        if self.cfg.variants:
            pass_number %= self.cfg.variants
        key = [self.seed, source, pass_number, record]
        skipped: list[tuple[str, str]] = list(sample.get("skipped", ()))
        audio = clean[index]
        cfg = self.cfg
        # An effect that is off draws nothing: turning it on leaves the other effects' draws as they were.
        if cfg.non_speech.prob > 0:
            silent = self._non_speech(audio.size, _rng(key, _NON_SPEECH), skipped)
            if silent is not None:
                return {**sample, "audio": silent, "text": "", "skipped": skipped, ONE_OFF: not cfg.variants}
        if cfg.speed.prob > 0:
            audio = self._speed(audio, _rng(key, _SPEED))
        if cfg.reverb.prob > 0:
            audio = self._reverb(audio, _rng(key, _REVERB), skipped)
        babbled = False
        if cfg.noise.prob > 0:
            others = [clip for i, clip in enumerate(clean) if i != index]
            audio, babbled = self._noise(audio, others, _rng(key, _NOISE), skipped)
        if cfg.gain.prob > 0:
            audio = self._gain(audio, _rng(key, _GAIN))
        # An effect that leaves the clip as it was returns the very array it was given.
        one_off = babbled or (audio is not clean[index] and not cfg.variants)
        return {**sample, "audio": audio, "skipped": skipped, ONE_OFF: one_off}

    def _non_speech(self, length: int, rng: np.random.Generator, skipped: list) -> np.ndarray | None:
        """A clip of the same length without speech, or None when this sample stays speech."""
        cfg = self.cfg.non_speech
        if not rng.random() < cfg.prob:
            return None
        kind = cfg.kinds[int(rng.integers(len(cfg.kinds)))]
        if kind == NOISE_FILE_KIND:
            assert self.noise_files is not None  # validated: noise_file needs data.augment.noise.dir
            noise = self._file(self.noise_files, rng, skipped)
            if noise is not None:
                return effects.set_level(effects.loop_to(noise, length, rng), float(rng.uniform(-45, -20)))
            kind = "low_noise"
        fast = _fast_length(length)  # coloured noise is shaped by FFT: slow at a prime length
        return effects.non_speech(kind, fast / self.sample_rate, self.sample_rate, rng)[:length]

    def _speed(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg.speed
        if not rng.random() < cfg.prob:
            return audio
        factor = float(cfg.factors[int(rng.integers(len(cfg.factors)))])
        # Slowing a clip near the encoder's window down would push it past data.max_duration.
        if audio.size / factor > self.max_samples:
            return audio
        return effects.change_speed(audio, factor, self.sample_rate)

    def _reverb(self, audio: np.ndarray, rng: np.random.Generator, skipped: list) -> np.ndarray:
        cfg = self.cfg.reverb
        if not rng.random() < cfg.prob:
            return audio
        source = _choose(rng, RIR_SOURCES, vars(cfg.sources))
        rir = None
        if source == "files":
            assert self.rir_files is not None
            rir = self._file(self.rir_files, rng, skipped)
        if rir is None:
            rt60 = _uniform(rng, cfg.rt60)
            rir = effects.room_impulse_response(rt60, _uniform(rng, cfg.room_size), self.sample_rate, rng)
        return effects.reverberate(audio, rir)

    def _noise(
        self, audio: np.ndarray, others: list[np.ndarray], rng: np.random.Generator, skipped: list
    ) -> tuple[np.ndarray, bool]:
        """The clip, noisy or not, and whether its noise is babble (the batch's other clips)."""
        cfg = self.cfg.noise
        if not rng.random() < cfg.prob:
            return audio, False
        snr = _uniform(rng, cfg.snr_db)
        source = _choose(rng, NOISE_SOURCES, vars(cfg.sources))
        noise = None
        babbled = source == "babble" and bool(others)
        if babbled:
            low, high = cfg.babble_talkers
            talkers = min(int(rng.integers(low, high + 1)), len(others))
            chosen = rng.choice(len(others), size=talkers, replace=False)
            noise = effects.babble([others[int(i)] for i in chosen], audio.size, rng)
        elif source == "files":
            assert self.noise_files is not None
            noise = self._file(self.noise_files, rng, skipped)
        if noise is None:
            # Coloured noise also stands in for babble in a batch of one and for an unreadable file.
            colours = cfg.colours or list(effects.NOISE_COLOURS)
            colour = colours[int(rng.integers(len(colours)))]
            noise = effects.loop_to(self._coloured(colour), audio.size, rng)
        return effects.mix_at_snr(audio, noise, snr, rng), babbled

    def _coloured(self, colour: str) -> np.ndarray:
        """A minute of one colour of noise, made once per process from the seed; clips take windows of it.

        Shaping fresh noise for every clip costs an FFT of the clip's length (more than the rest of
        its augmentation); a random window of a long seeded take sounds the same and costs a copy.
        """
        if colour not in self._coloured_takes:
            rng = np.random.default_rng([self.seed, effects.NOISE_COLOURS.index(colour), _NOISE])
            self._coloured_takes[colour] = effects.coloured_noise(COLOURED_TAKE_SECONDS * self.sample_rate, colour, rng)
        return self._coloured_takes[colour]

    def _gain(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg.gain
        if not rng.random() < cfg.prob:
            return audio
        return effects.gain(audio, _uniform(rng, cfg.db))

    @staticmethod
    def _file(files: EffectFiles, rng: np.random.Generator, skipped: list) -> np.ndarray | None:
        audio, path = files.draw(rng)
        if audio is None:
            skipped.append((skips.UNREADABLE_EFFECT_FILE, path))
        return audio


def _rng(key: list[int], effect: int) -> np.random.Generator:
    return np.random.default_rng([*key, effect])


def _uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    """A draw from a [low, high] pair of the config (validated to be two numbers)."""
    low, high = bounds
    return float(rng.uniform(low, high))


def _fast_length(length: int) -> int:
    """The next power of two: numpy's FFT takes ~50x longer at a length with a large prime factor."""
    return 1 << max(length - 1, 0).bit_length()


def _choose(rng: np.random.Generator, names: tuple[str, ...], weights: dict[str, float]) -> str:
    p = np.asarray([weights[name] for name in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def train_audio_augmenter(cfg: DataConfig) -> AudioAugmenter | None:
    """The train collator's audio augmentation, or None when every `data.augment.*.prob` is 0."""
    if not cfg.augment.enabled:
        return None
    return AudioAugmenter(cfg.augment, seed=cfg.seed, sample_rate=cfg.sample_rate, max_duration=cfg.max_duration)
