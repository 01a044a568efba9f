"""Training-audio augmentation (`data.augment`): each effect, its seeding, its config and its input checks."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from data_helpers import write_audiofolder
from torchdata.stateful_dataloader import StatefulDataLoader

from tiny_audio.compose import load_config
from tiny_audio.config import (
    NOISE_COLOURS,
    NON_SPEECH_KINDS,
    AugmentConfig,
    ConfigError,
    DataConfig,
    DatasetConfig,
)
from tiny_audio.data import effects, skips
from tiny_audio.data.audio_augment import AudioAugmenter, augment_key, train_audio_augmenter
from tiny_audio.data.effect_files import EffectFilesError, require_effect_dirs
from tiny_audio.data.stream import build_train_stream
from tiny_audio.model.build import build_model
from tiny_audio.recipe.run import run
from tiny_audio.runtime.collator import ONE_OFF, collator_for
from tiny_audio.runtime.speech_llm import IGNORE_INDEX
from tiny_audio.training.loaders import AugmentingCollate
from tiny_audio.training.metrics_file import read_metrics

REPO = Path(__file__).resolve().parent.parent
RATE = 16000


def speech_like(seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    wobble = np.random.default_rng(seed).standard_normal(t.size) * 0.01
    return (0.2 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + wobble).astype(np.float32)


def sample(audio: np.ndarray, key: list[int] | None = None, text: str = "alpha bravo") -> dict[str, Any]:
    return {"audio": audio, "text": text, "skipped": [], "augment_key": key or [0, 0, 7]}


def augmenter(
    seed: int = 42, max_duration: float = 30.0, variants: int = 0, **blocks: dict[str, Any]
) -> AudioAugmenter:
    cfg = AugmentConfig(variants=variants)
    for name, given in blocks.items():
        block = getattr(cfg, name)
        settings = dict(given)
        sources = settings.pop("sources", None)
        block = dataclasses.replace(block, **settings)
        if sources is not None:
            block = dataclasses.replace(block, sources=dataclasses.replace(block.sources, **sources))
        setattr(cfg, name, block)
    cfg.validate("data.augment")
    return AudioAugmenter(cfg, seed=seed, sample_rate=RATE, max_duration=max_duration)


def band_energy(audio: np.ndarray, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(audio.size, 1 / RATE)
    return float(spectrum[(freqs > freq - 5) & (freqs < freq + 5)].sum())


# --- config ----------------------------------------------------------------------------------


def test_config_lists_match_the_effects_module() -> None:
    assert NOISE_COLOURS == effects.NOISE_COLOURS
    assert tuple(effects.NON_SPEECH) == NON_SPEECH_KINDS


def test_shipped_yaml_mirrors_the_defaults_and_everything_is_off() -> None:
    cfg = load_config(["+experiments=mlp"])
    assert cfg.data.augment == AugmentConfig()
    assert not cfg.data.augment.enabled
    assert train_audio_augmenter(cfg.data) is None


def test_course_style_overrides_switch_effects_on() -> None:
    overrides = ["data.augment.noise.prob=0.5", "data.augment.speed.prob=1", "data.augment.noise.snr_db=[5,15]"]
    cfg = load_config(["+experiments=mlp", *overrides])
    assert (cfg.data.augment.noise.prob, cfg.data.augment.speed.prob) == (0.5, 1.0)
    assert cfg.data.augment.noise.snr_db == [5.0, 15.0]
    assert isinstance(train_audio_augmenter(cfg.data), AudioAugmenter)


def test_the_course_augments_every_stage_and_set_or_no_augment_change_it(tmp_path: Path) -> None:
    """The course trains on its measured augmentation; `--set` overrides a key of it, `--no-augment` drops it."""
    from tiny_audio.miniature.course import AUGMENTATION, CourseSettings, stage_overrides
    from tiny_audio.miniature.standins import Miniature

    miniature = Miniature(tmp_path, tmp_path / "speech", tmp_path / "qwen3", tmp_path / "glm-asr", tmp_path / "robust")

    def augment_of(settings: CourseSettings) -> list[tuple[float, ...]]:
        configs = [load_config(stage_overrides(miniature, settings, s, tmp_path / "out")) for s in settings.stages]
        for cfg in configs:
            assert cfg.model.encoder_cache_gib == 1  # the course's cache stays on with augmentation
        return [
            (a.noise.prob, a.reverb.prob, a.speed.prob, a.gain.prob, a.non_speech.prob, a.variants)
            for a in (cfg.data.augment for cfg in configs)
        ]

    assert AUGMENTATION and augment_of(CourseSettings()) == [(0.25, 0.15, 0.3, 0.2, 0.05, 3)] * 3
    assert load_config(
        stage_overrides(miniature, CourseSettings(), CourseSettings().stages[0], tmp_path)
    ).data.augment.gain.db == [-18.0, 6.0]
    extra = ("data.augment.noise.prob=0.5", "data.augment.non_speech.prob=0.1")
    assert augment_of(CourseSettings(extra_overrides=extra)) == [(0.5, 0.15, 0.3, 0.2, 0.1, 3)] * 3
    assert augment_of(CourseSettings(augmentation=())) == [(0.0,) * 5 + (0,)] * 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.augment.noise.snr_db=[20,5]", "data.augment.noise.snr_db=[20.0, 5.0] is not allowed: [low, high]"),
        ("data.augment.noise.prob=1.5", "data.augment.noise.prob=1.5 is not allowed: a probability in [0, 1]"),
        ("data.augment.reverb.rt60=[0.5]", "data.augment.reverb.rt60=[0.5] is not allowed: [low, high]"),
        ("data.augment.reverb.room_size=[0,3]", "data.augment.reverb.room_size=[0.0, 3.0] is not allowed"),
        ("data.augment.gain.db=[6,-6]", "data.augment.gain.db=[6.0, -6.0] is not allowed"),
        ("data.augment.speed.factors=[0.1]", "data.augment.speed.factors=[0.1] is not allowed"),
        ("data.augment.noise.colours=[red]", "data.augment.noise.colours=['red'] is not allowed: a subset of white"),
        ("data.augment.noise.babble_talkers=[3,1]", "data.augment.noise.babble_talkers=[3, 1] is not allowed"),
        ("data.augment.noise.sources.babble=-1", "data.augment.noise.sources.babble=-1.0 is not allowed: >= 0"),
        ("data.augment.noise.sources.files=1", "data.augment.noise.sources.files=1.0 is not allowed: 0 unless"),
        ("data.augment.reverb.sources.files=1", "data.augment.reverb.sources.files=1.0 is not allowed: 0 unless"),
        ("data.augment.noise.dir=/n", "data.augment.noise.dir='/n' is not allowed: used only with"),
        ("data.augment.non_speech.kinds=[noise_file]", "'noise_file' only with data.augment.noise.dir set"),
        ("data.augment.non_speech.kinds=[speech]", "data.augment.non_speech.kinds=['speech'] is not allowed"),
        ("data.augment.nosie.prob=1", "unknown config key 'data.augment.nosie.prob': did you mean"),
        ("data.augment.variants=-1", "data.augment.variants=-1 is not allowed: a whole number >= 0"),
        ("data.augment.variants=1.5", "data.augment.variants='1.5' is not allowed: expected integer"),
    ],
)
def test_bad_augment_settings_are_one_line_errors_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(["+experiments=mlp", override])
    assert message in str(error.value)
    assert "\n" not in str(error.value)


# --- determinism -----------------------------------------------------------------------------


ALL_ON = {
    "noise": {"prob": 1.0},
    "reverb": {"prob": 0.5},
    "speed": {"prob": 0.5},
    "gain": {"prob": 0.5},
    "non_speech": {"prob": 0.2},
}


def batch(keys: list[list[int]]) -> list[dict[str, Any]]:
    return [sample(speech_like(1.0 + 0.1 * i, 200 + 50 * i, seed=i), key) for i, key in enumerate(keys)]


def test_same_seed_and_keys_give_identical_audio_and_other_keys_differ() -> None:
    keys = [augment_key(0, 0, f"clip{i}") for i in range(6)]
    first = augmenter(**ALL_ON)(batch(keys))
    again = augmenter(**ALL_ON)(batch(keys))
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a["audio"], b["audio"]) and a["text"] == b["text"]
    next_pass = augmenter(**ALL_ON)(batch([augment_key(0, 1, f"clip{i}") for i in range(6)]))
    other_seed = augmenter(seed=43, **ALL_ON)(batch(keys))
    for a, b, c in zip(first, next_pass, other_seed, strict=True):
        assert not np.array_equal(a["audio"], b["audio"])
        assert not np.array_equal(a["audio"], c["audio"])


def test_with_variants_pass_p_repeats_pass_p_mod_k_and_only_babbled_clips_are_one_off() -> None:
    """K fixed draws per clip: the encoder cache may keep an augmented clip, unless babble mixed
    in its batch mates (another batch next time)."""
    settings = {**ALL_ON, "non_speech": {"prob": 0.1}}

    def augmented(pass_number: int, variants: int) -> list[dict[str, Any]]:
        keys = [augment_key(0, pass_number, f"clip{i}") for i in range(40)]
        return augmenter(variants=variants, **settings)(batch(keys))

    first, second, third, fifth = (augmented(p, 2) for p in (0, 1, 2, 4))
    for a, c, e in zip(first, third, fifth, strict=True):
        assert np.array_equal(a["audio"], c["audio"]) and np.array_equal(a["audio"], e["audio"])
        assert a["text"] == c["text"]
    assert sum(not np.array_equal(a["audio"], b["audio"]) for a, b in zip(first, second, strict=True)) > 30
    # Variant 0 of K is pass 0 of the every-pass draws: switching variants on keeps the first pass.
    for a, b in zip(first, augmented(0, 0), strict=True):
        assert np.array_equal(a["audio"], b["audio"])
    clean = batch([augment_key(0, 0, f"clip{i}") for i in range(40)])
    babbled = augmenter(variants=2, noise={"prob": 1.0, "sources": {"coloured": 0.0}})(clean)
    assert all(s[ONE_OFF] for s in babbled)
    coloured = augmenter(variants=2, noise={"prob": 1.0, "sources": {"babble": 0.0}}, non_speech={"prob": 0.3})(clean)
    assert not any(s[ONE_OFF] for s in coloured)
    assert any(s["text"] == "" for s in coloured)  # non-speech draws repeat too: cacheable
    marks = [s[ONE_OFF] for s in first]
    assert any(marks) and not all(marks)


def test_the_key_hashes_the_record_id_stably() -> None:
    assert augment_key(1, 2, "synth/train/a.wav") == augment_key(1, 2, "synth/train/a.wav")
    assert augment_key(1, 2, "synth/train/a.wav")[:2] == [1, 2]
    assert augment_key(1, 2, "synth/train/a.wav") != augment_key(1, 2, "synth/train/b.wav")


def test_one_effects_draws_do_not_depend_on_another_being_on() -> None:
    """Gain alone, and gain after noise at +200 dB SNR (noise inaudible): the same gain is drawn."""
    clip = [sample(speech_like(1.0, 300))]
    gained = augmenter(gain={"prob": 1.0})(clip)[0]["audio"]
    both = augmenter(gain={"prob": 1.0}, noise={"prob": 1.0, "snr_db": [60, 60]})(clip)[0]["audio"]
    assert effects.rms(gained) != pytest.approx(effects.rms(clip[0]["audio"]), rel=1e-3)
    assert effects.rms(both) == pytest.approx(effects.rms(gained), rel=1e-3)


def test_a_sample_without_a_key_is_refused() -> None:
    with pytest.raises(KeyError, match="augment_key"):
        augmenter(gain={"prob": 1.0})([{"audio": speech_like(1.0, 300), "text": "a b"}])


# --- each effect -----------------------------------------------------------------------------


@pytest.mark.parametrize("snr", [0.0, 10.0])
def test_coloured_noise_is_mixed_at_the_drawn_snr(snr: float) -> None:
    clean = speech_like(1.0, 300)
    noisy = augmenter(noise={"prob": 1.0, "snr_db": [snr, snr], "sources": {"babble": 0.0}})([sample(clean)])
    added = noisy[0]["audio"] - clean
    assert 20 * np.log10(effects.rms(clean) / effects.rms(added)) == pytest.approx(snr, abs=0.01)


def test_babble_mixes_the_other_clips_of_the_batch_and_falls_back_alone() -> None:
    clips = [sample(speech_like(1.0, 300, seed=0), [0, 0, 1]), sample(speech_like(1.0, 1100, seed=1), [0, 0, 2])]
    noise = {"prob": 1.0, "snr_db": [5, 5], "sources": {"coloured": 0.0, "babble": 1.0}}
    mixed = augmenter(noise=noise)(clips)
    # The first clip now holds the second's 1100 Hz voice, and the other way round.
    assert band_energy(mixed[0]["audio"], 1100) > 50 * band_energy(clips[0]["audio"], 1100)
    assert band_energy(mixed[1]["audio"], 300) > 50 * band_energy(clips[1]["audio"], 300)
    alone = augmenter(noise=noise)(clips[:1])[0]["audio"]
    assert not np.array_equal(alone, clips[0]["audio"])  # coloured noise stands in


def test_noise_files_are_resampled_once_and_unreadable_ones_counted(tmp_path: Path) -> None:
    noise_dir = tmp_path / "noise" / "sub"
    noise_dir.mkdir(parents=True)
    t = np.arange(8000) / 8000
    sf.write(noise_dir / "hum.flac", (0.3 * np.sin(2 * np.pi * 700 * t)).astype(np.float32), 8000)
    (noise_dir / "broken.wav").write_bytes(b"RIFF not audio")
    (noise_dir / "notes.txt").write_text("ignored")
    files_only = {"coloured": 0.0, "babble": 0.0, "files": 1.0}
    aug = augmenter(noise={"prob": 1.0, "snr_db": [0, 0], "dir": str(tmp_path / "noise"), "sources": files_only})
    assert [p.name for p in aug.noise_files.files] == ["broken.wav", "hum.flac"]
    out = aug(batch([[0, 0, k] for k in range(12)]))
    reasons = {pair for s in out for pair in s["skipped"]}
    assert reasons == {(skips.UNREADABLE_EFFECT_FILE, str(noise_dir / "broken.wav"))}
    # Every clip got noise: the file's 700 Hz tone (at 16 kHz now) or, for the broken file, coloured noise.
    quiet_at_700 = band_energy(speech_like(1.0, 200), 700)
    with_file = [s for s in out if not s["skipped"]]
    assert with_file and all(band_energy(s["audio"], 700) > 20 * quiet_at_700 for s in with_file)
    assert len(aug.noise_files._decoded) == 1  # decoded once, kept


def test_generated_reverb_keeps_the_level_and_a_unit_impulse_file_keeps_the_clip(tmp_path: Path) -> None:
    clean = speech_like(1.0, 300)
    wet = augmenter(reverb={"prob": 1.0})([sample(clean)])[0]["audio"]
    assert not np.allclose(wet, clean, atol=1e-3)
    assert effects.rms(wet) == pytest.approx(effects.rms(clean), rel=1e-3)
    rirs = tmp_path / "rirs"
    rirs.mkdir()
    impulse = np.zeros(400, dtype=np.float32)
    impulse[0] = 1.0
    sf.write(rirs / "dry.wav", impulse, 16000)
    dry = augmenter(reverb={"prob": 1.0, "dir": str(rirs), "sources": {"generated": 0.0, "files": 1.0}})
    assert np.allclose(dry([sample(clean)])[0]["audio"], clean, atol=1e-5)


def test_speed_changes_length_but_never_past_max_duration() -> None:
    clean = speech_like(2.0, 300)
    fast = augmenter(speed={"prob": 1.0, "factors": [1.25]})([sample(clean)])[0]["audio"]
    assert fast.size == pytest.approx(clean.size / 1.25, abs=2)
    slow = augmenter(max_duration=2.1, speed={"prob": 1.0, "factors": [0.8]})([sample(clean)])[0]["audio"]
    assert np.array_equal(slow, clean)  # 2.5 s would exceed data.max_duration=2.1


def test_gain_scales_by_the_drawn_decibels() -> None:
    clean = speech_like(1.0, 300)
    louder = augmenter(gain={"prob": 1.0, "db": [6.0, 6.0]})([sample(clean)])[0]["audio"]
    assert effects.rms(louder) == pytest.approx(effects.rms(clean) * 10 ** (6 / 20), rel=1e-4)


def test_prob_zero_effects_leave_the_clip_alone_and_prob_is_a_share() -> None:
    clips = batch([[0, 0, k] for k in range(200)])
    out = augmenter(gain={"prob": 0.3})(clips)
    changed = sum(not np.array_equal(a["audio"], b["audio"]) for a, b in zip(clips, out, strict=True))
    assert 40 <= changed <= 80
    unchanged = augmenter(gain={"prob": 0.0}, speed={"prob": 0.0})(clips[:3])
    assert all(np.array_equal(a["audio"], b["audio"]) for a, b in zip(clips, unchanged, strict=False))


def test_the_augmenter_marks_the_clips_it_changed_and_not_the_ones_it_left_alone() -> None:
    """The encoder cache keeps only unmarked clips: a clip every effect skipped is the same next pass."""
    clips = batch([[0, 0, k] for k in range(40)])
    out = augmenter(gain={"prob": 0.3}, reverb={"prob": 0.3}, non_speech={"prob": 0.1})(clips)
    marks = [s[ONE_OFF] for s in out]
    assert marks == [not np.array_equal(a["audio"], b["audio"]) for a, b in zip(clips, out, strict=True)]
    assert any(marks) and not all(marks)
    untouched = augmenter(gain={"prob": 0.0}, speed={"prob": 0.0})(clips[:3])
    assert not any(s[ONE_OFF] for s in untouched)
    # Drawn, but skipped: slowing the clip down would pass data.max_duration.
    clean = speech_like(2.0, 300)
    slow = augmenter(max_duration=2.1, speed={"prob": 1.0, "factors": [0.8]})([sample(clean)])[0]
    assert np.array_equal(slow["audio"], clean) and not slow[ONE_OFF]
    silent = augmenter(non_speech={"prob": 1.0})(clips[:3])
    assert all(s[ONE_OFF] for s in silent)


def test_the_collator_passes_the_marks_on_as_encoder_cacheable(tiny_model_config) -> None:
    model = build_model(tiny_model_config())
    clips = batch([[0, 0, k] for k in range(8)])
    augment = augmenter(gain={"prob": 0.5})
    marks = [s[ONE_OFF] for s in augment(clips)]
    augmented = AugmentingCollate(augment, collator_for(model, RATE))(clips)
    assert augmented["encoder_cacheable"].tolist() == [not m for m in marks] and any(marks) and not all(marks)
    assert collator_for(model, RATE)(clips)["encoder_cacheable"].all()  # no augmenter: every clip


def test_non_speech_replaces_the_clip_and_empties_the_transcript() -> None:
    clips = batch([[0, 0, k] for k in range(40)])
    out = augmenter(non_speech={"prob": 1.0}, noise={"prob": 1.0})(clips)
    for before, after in zip(clips, out, strict=True):
        assert after["text"] == "" and after["audio"].size == before["audio"].size
        assert after["audio"].dtype == np.float32
    assert any(effects.rms(s["audio"]) == 0 for s in out)  # silence is one of the kinds
    assert len({effects.rms(s["audio"]) for s in out}) > 5


def test_a_non_speech_target_is_only_the_end_of_the_turn(tiny_model_config) -> None:
    model = build_model(tiny_model_config())
    collate = AugmentingCollate(augmenter(non_speech={"prob": 1.0}), collator_for(model, RATE))
    out = collate(batch([[0, 0, 1], [0, 0, 2]]))
    for row in out["labels"]:
        assert row[row != IGNORE_INDEX].tolist() == [model.prompts.end_of_turn_id]
    assert out["texts"] == ["", ""]


# --- through the train stream and loader ------------------------------------------------------


def data_config(path: Path, **augment: dict[str, Any]) -> DataConfig:
    cfg = DataConfig(
        datasets=[DatasetConfig(path=str(path))], shuffle_buffer=4, num_workers=0, min_words=5, max_eval_samples=None
    )
    for name, settings in augment.items():
        setattr(cfg.augment, name, dataclasses.replace(getattr(cfg.augment, name), **settings))
    cfg.validate()
    return cfg


@pytest.fixture(scope="module")
def eight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_audiofolder(tmp_path_factory.mktemp("eight"), {"train": 8, "validation": 4}, seconds=0.6)


def test_non_speech_is_injected_after_the_text_filters(eight: Path) -> None:
    """min_words=5 keeps the 5-word transcripts; their non-speech stand-ins have none and still train."""
    cfg = data_config(eight, non_speech={"prob": 1.0})
    loader = StatefulDataLoader(
        build_train_stream(cfg), batch_size=4, collate_fn=AugmentingCollate(train_audio_augmenter(cfg), list)
    )
    batches = iter(loader)
    texts = [s["text"] for _ in range(4) for s in next(batches)]
    assert texts == [""] * 16


def test_a_restored_loader_augments_exactly_as_an_uninterrupted_one(eight: Path) -> None:
    cfg = data_config(eight, noise={"prob": 1.0}, reverb={"prob": 0.5}, speed={"prob": 0.5}, gain={"prob": 0.5})

    def loader() -> StatefulDataLoader:
        collate = AugmentingCollate(train_audio_augmenter(cfg), list)
        return StatefulDataLoader(build_train_stream(cfg), batch_size=3, collate_fn=collate)

    reference = iter(loader())
    expected = [next(reference) for _ in range(7)]
    first = loader()
    batches = iter(first)
    for _ in range(3):
        next(batches)
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    got = [b for _, b in zip(range(4), resumed, strict=False)]
    for want, have in zip(expected[3:], got, strict=True):
        assert [s["text"] for s in want] == [s["text"] for s in have]
        for a, b in zip(want, have, strict=True):
            assert np.array_equal(a["audio"], b["audio"])


# --- directories checked before any model loads -----------------------------------------------


def test_missing_empty_and_unreadable_directories_name_the_key_path_and_fix(tmp_path: Path) -> None:
    cfg = AugmentConfig()
    cfg.reverb = dataclasses.replace(cfg.reverb, prob=1.0, dir=str(tmp_path / "absent"))
    cfg.reverb.sources.files = 1.0
    with pytest.raises(EffectFilesError, match=r"data.augment.reverb.dir='.*absent' is not a directory"):
        require_effect_dirs(cfg)
    (tmp_path / "empty").mkdir()
    cfg.reverb.dir = str(tmp_path / "empty")
    with pytest.raises(EffectFilesError, match=r"reverb.dir='.*empty' holds no .wav/.flac/.ogg files; add"):
        require_effect_dirs(cfg)
    (tmp_path / "empty" / "bad.wav").write_bytes(b"junk")
    with pytest.raises(EffectFilesError, match=r"none of its 1 audio files can be read"):
        require_effect_dirs(cfg)
    cfg.reverb.prob = 0.0  # a directory no effect uses is not checked
    require_effect_dirs(cfg)


def test_training_stops_on_a_bad_directory_before_loading_a_model(tmp_path: Path) -> None:
    overrides = [
        "+experiments=mlp",
        "model.audio_model_id=/nonexistent/encoder",
        "training.report_to=none",
        f"training.output_dir={tmp_path / 'run'}",
        "data.augment.noise.prob=0.5",
        "data.augment.noise.sources.files=1",
        f"data.augment.noise.dir={tmp_path / 'musan'}",
    ]
    result = subprocess.run(
        [sys.executable, "scripts/train.py", *overrides], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: data.augment.noise.dir='{tmp_path / 'musan'}' is not a directory")
    assert "Traceback" not in result.stderr


# --- in a training run ------------------------------------------------------------------------


def test_evaluation_is_never_augmented_and_the_encoder_cache_still_works(tiny_run_config, tmp_path: Path) -> None:
    """The same step-0 eval loss with every clip augmented as without; training with the cache on runs."""
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    loud = AugmentConfig()
    loud.noise.prob, loud.noise.snr_db = 1.0, [0.0, 0.0]
    loud.reverb.prob = 1.0
    losses = {}
    for name, augment in (("plain", AugmentConfig()), ("augmented", loud)):
        cfg = tiny_run_config(
            data,
            model={"encoder_cache_gib": 0.01},
            data={"augment": augment},
            output_dir=str(tmp_path / name),
            max_steps=2,
            eval_on_start=True,
            eval_steps=2,
            logging_steps=1,
        )
        lines: list[str] = []
        run(cfg, log=lines.append)
        evals = [m for m in read_metrics(tmp_path / name) if m["event"] == "eval"]
        losses[name] = [m["eval/loss"] for m in evals]
        train = [m["train/loss"] for m in read_metrics(tmp_path / name) if "train/loss" in m]
        losses[f"{name} train"] = train
        (cache_line,) = [line for line in lines if line.startswith("Encoder cache:")]
        fresh = int(re.search(r"\((\d+) one-off augmented clips encoded fresh\)", cache_line).group(1))
        # Every train clip of the loud run is augmented (2 steps x 4 clips); evaluation's are not.
        assert fresh == (8 if name == "augmented" else 0), cache_line
    assert losses["plain"][0] == losses["augmented"][0]
    assert losses["plain train"] != losses["augmented train"]  # the train batches were augmented


def test_with_variants_the_encoder_cache_serves_augmented_clips_on_later_passes(
    tiny_run_config, tmp_path: Path
) -> None:
    """Every train clip reverberated, one fixed draw each: the second pass over 8 clips is all hits."""
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    lines: list[str] = []
    for variants in (0, 1):
        augment = AugmentConfig(variants=variants)
        augment.reverb.prob = 1.0
        cfg = tiny_run_config(
            data,
            model={"encoder_cache_gib": 0.01},
            data={"augment": augment},
            output_dir=str(tmp_path / f"variants{variants}"),
            max_steps=4,  # two passes of two batches of 4
        )
        run(cfg, log=lines.append)
    every_pass, fixed = [line for line in lines if line.startswith("Encoder cache:")]
    # The 4 validation clips of the final evaluation go through the cache too.
    assert "4 clips" in every_pass and "0% of 4 repeatable clip encodings reused (16 one-off" in every_pass
    assert "12 clips" in fixed and "40% of 20 repeatable clip encodings reused (0 one-off" in fixed, fixed
