"""`ta data robust`: deterministic robustness sets from held-out sentences, with reserved voices."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from tiny_audio.cli import app
from tiny_audio.data import effects, robust, synth
from tiny_audio.data.local import find_local_splits
from tiny_audio.data.sentences import is_held_out
from tiny_audio.data.synth import SynthError

# Enough to cover every kind of condition in a couple of seconds.
SOME = ("clean", "new_variant", "foreign_voice", "fast", "noise_pink_10db", "babble_5db", "reverb_large", "non_speech")


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def robust_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("robust") / "set"
    robust.build_robust(out, clips=7, seed=3, conditions=SOME, workers=1)
    return out


def test_reserved_voices_and_rates_are_never_trained_on() -> None:
    unseen_voices = [robust.NEW_ACCENT, *robust.CONDITIONS["new_variant"].voices, *robust.FOREIGN_VOICES]
    assert not set(unseen_voices) & set(synth.TRAIN_VOICES)
    trained_variants = {voice.partition("+")[2] for voice in synth.TRAIN_VOICES}
    assert not {variant.lstrip("+") for variant in robust.UNSEEN_VARIANTS} & trained_variants
    unseen_accents = [robust.NEW_ACCENT, *robust.FOREIGN_VOICES]
    assert not set(unseen_accents) & set(synth.TRAIN_ACCENTS)
    # Slow and fast lie outside every training rate.
    assert robust.SLOW_RATES[1] < min(synth.RATES) and robust.FAST_RATES[0] > max(synth.RATES)
    # The conditions that change something else speak with training voices, so only that thing changes.
    assert set(robust.CLEAN_VOICES) <= set(synth.TRAIN_VOICES)
    assert set(robust.BABBLE_VOICES) <= set(synth.TRAIN_VOICES)
    assert set(robust.VARIANT_ACCENTS) <= set(synth.TRAIN_ACCENTS)


def test_each_condition_is_an_audiofolder_split_of_held_out_sentences(robust_set: Path) -> None:
    assert list(find_local_splits(robust_set)) == sorted(SOME)
    assert robust.robust_conditions(robust_set) == list(SOME)
    sentences = {name: [row["text"] for row in _rows(robust_set / name)] for name in SOME}
    assert sentences["non_speech"] == [""] * 7
    speech = [name for name in SOME if name != "non_speech"]
    # The same sentences in every speech condition: only the condition differs.
    assert all(sentences[name] == sentences["clean"] for name in speech)
    assert all(is_held_out(text) for text in sentences["clean"]) and len(set(sentences["clean"])) == 7
    for name in SOME:
        for row in _rows(robust_set / name):
            audio, rate = sf.read(robust_set / name / row["file_name"], dtype="float32")
            assert rate == 16000 and audio.ndim == 1
            if name != "non_speech":
                assert 0.8 < len(audio) / rate < 10 and effects.rms(audio) > 0.01


def test_non_speech_holds_every_kind_and_digital_silence(robust_set: Path) -> None:
    folder = robust_set / "non_speech"
    audios = [sf.read(folder / row["file_name"], dtype="float32")[0] for row in _rows(folder)]
    assert not np.any(audios[0])  # kinds in turn: silence first
    assert all(np.any(audio) for audio in audios[1:6])
    levels = [effects.rms(audio) for audio in audios[1:6]]
    assert len({round(level, 6) for level in levels}) == 5


def test_conditions_draw_their_own_voices(robust_set: Path) -> None:
    plans = {name: robust.plan(name, 7, seed=3) for name in SOME}
    assert {clip.voice for clip in plans["foreign_voice"]} <= set(robust.FOREIGN_VOICES)
    assert {clip.voice for clip in plans["new_variant"]} <= set(robust.CONDITIONS["new_variant"].voices)
    assert all(robust.FAST_RATES[0] <= clip.rate <= robust.FAST_RATES[1] for clip in plans["fast"])
    # A longer set starts with the shorter one's clips.
    assert robust.plan("babble_5db", 12, seed=3)[:7] == plans["babble_5db"]


def test_same_arguments_write_identical_files_whatever_the_worker_count(robust_set: Path, tmp_path: Path) -> None:
    arguments = ["--clips", "7", "--seed", "3", "--workers", "2", *(f"--condition={name}" for name in SOME)]
    result = CliRunner().invoke(app, ["data", "robust", str(tmp_path / "b"), *arguments])
    assert result.exit_code == 0, result.output
    assert "wrote 8 conditions, 56 clips" in result.output
    files = sorted(p.relative_to(robust_set) for p in robust_set.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((robust_set / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    # Another seed speaks other clips.
    other = tmp_path / "c"
    robust.build_robust(other, clips=2, seed=4, conditions=("clean",), workers=1)
    assert _rows(other / "clean") != _rows(robust_set / "clean")[:2]


def test_noise_conditions_mix_at_their_snr() -> None:
    rng = np.random.default_rng(0)
    speech = np.sin(np.linspace(0, 400, 16000)).astype(np.float32) * 0.3
    noisy = robust.CONDITIONS["noise_pink_10db"].effect(speech, rng, 16000, [])
    snr = 20 * np.log10(effects.rms(speech) / effects.rms(noisy - speech))
    assert snr == pytest.approx(10, abs=0.01)
    talkers = [np.sin(np.linspace(0, f, 8000)).astype(np.float32) for f in (100, 200, 300, 500, 700)]
    crowded = robust.CONDITIONS["babble_5db"].effect(speech, rng, 16000, talkers)
    assert 20 * np.log10(effects.rms(speech) / effects.rms(crowded - speech)) == pytest.approx(5, abs=0.01)


def test_a_complete_set_is_reused_and_a_foreign_directory_is_refused(robust_set: Path, tmp_path: Path) -> None:
    stamp = (robust_set / "clean" / "clean_00000.wav").stat().st_mtime_ns
    arguments = ["--clips", "7", "--seed", "3", *(f"-c{name}" for name in SOME)]
    result = CliRunner().invoke(app, ["data", "robust", str(robust_set), *arguments])
    assert result.exit_code == 0 and "reused 8 conditions (56 clips)" in result.output
    assert (robust_set / "clean" / "clean_00000.wav").stat().st_mtime_ns == stamp
    assert not robust.is_complete(robust_set, clips=8, seed=3, conditions=SOME)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SynthError, match="ta data robust"):
        robust.build_robust(tmp_path / "mine", clips=1, conditions=("clean",))
    result = CliRunner().invoke(app, ["data", "robust", str(tmp_path / "x"), "-c", "loud"])
    assert result.exit_code == 1 and "unknown condition 'loud'" in result.output
