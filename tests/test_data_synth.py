"""Synthetic speech from the espeakng-loader wheel: splits, determinism, audio, safe writes, errors."""

import csv
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from tiny_audio.cli import app
from tiny_audio.config import DataConfig, DatasetConfig
from tiny_audio.data import espeak, synth
from tiny_audio.data.espeak import Espeak, SynthError
from tiny_audio.data.local import find_local_splits
from tiny_audio.data.sentences import HELD_OUT_FRACTION, is_held_out, make_sentence, normalize
from tiny_audio.data.stream import build_eval_stream

SMALL = {"train": 5, "validation": 3, "new_voice": 2}


def metadata(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metadata.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "set"
    assert synth.synthesize(out, **SMALL, seed=3, workers=2) == {
        "train": 5,
        "validation": 3,
        "validation_new_voice": 2,
    }
    return out


def test_same_seed_writes_identical_files_whatever_the_worker_count(dataset: Path, tmp_path: Path) -> None:
    arguments = ["--train", "5", "--validation", "3", "--new-voice", "2", "--seed", "3", "--workers", "1"]
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "b"), *arguments])
    assert result.exit_code == 0, result.output
    assert "wrote train 5, validation 3, validation_new_voice 2 clips" in result.output
    assert tree(tmp_path / "b") == tree(dataset)  # every WAV, metadata.csv and the marker
    synth.synthesize(tmp_path / "c", **SMALL, seed=4, workers=1)
    assert metadata(tmp_path / "c" / "train") != metadata(dataset / "train")


def test_splits_are_audiofolders_with_exactly_the_three_names(dataset: Path) -> None:
    assert sorted(find_local_splits(dataset)) == sorted(synth.SPLITS)  # the marker is not a split
    for split, count in (("train", 5), ("validation", 3), ("validation_new_voice", 2)):
        rows = metadata(dataset / split)
        assert len(rows) == count and list(rows[0]) == ["file_name", "text"]
        assert sorted(path.name for path in (dataset / split).glob("*.wav")) == [row["file_name"] for row in rows]


def test_clips_are_speech_of_sensible_length(dataset: Path) -> None:
    for path in sorted(dataset.rglob("*.wav")):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        audio, _ = sf.read(path, dtype="float32")
        assert 1.0 < len(audio) / 16000 < 8.0, path
        assert float(np.sqrt(np.mean(audio**2))) > 0.02, path  # silence or a click would be far below
        # Speech rises and falls between syllables; a steady tone or noise would not.
        frames = np.sqrt(np.mean(audio[: len(audio) // 320 * 320].reshape(-1, 320) ** 2, axis=1))  # 20 ms
        assert np.percentile(frames, 90) > 4 * np.percentile(frames, 10), path


def test_both_validation_splits_stream_through_the_pipeline(dataset: Path) -> None:
    cfg = DataConfig(
        datasets=[DatasetConfig(path=str(dataset), eval_splits=["validation", "validation_new_voice"])],
        streaming=False,
    )
    items = list(build_eval_stream(cfg))
    expected = metadata(dataset / "validation") + metadata(dataset / "validation_new_voice")
    assert [item["text"] for item in items] == [row["text"] for row in expected]
    assert all(item["audio"].dtype == np.float32 and np.abs(item["audio"]).max() > 0.05 for item in items)


def test_validation_sentences_are_held_out_and_distinct_and_the_new_voice_is_unseen() -> None:
    train = synth.plan("train", 400, seed=0)
    validation = synth.plan("validation", 200, seed=0)
    new_voice = synth.plan("validation_new_voice", 60, seed=0)
    assert not any(is_held_out(clip.text) for clip in train)
    assert all(is_held_out(clip.text) for clip in validation)
    assert len({clip.text for clip in validation}) == 200
    # The same sentences in both validation splits: only the voice differs.
    assert [clip.text for clip in new_voice] == [clip.text for clip in validation[:60]]
    assert {clip.voice for clip in train + validation} <= set(synth.TRAIN_VOICES)
    assert {clip.voice for clip in new_voice} == {synth.HELD_OUT_VOICE}
    held_out_accent = synth.HELD_OUT_VOICE.split("+")[0]
    assert held_out_accent not in {voice.split("+")[0] for voice in synth.TRAIN_VOICES}
    assert len({clip.voice.split("+")[0] for clip in train}) >= 15
    assert len({clip.voice for clip in train}) >= 200
    foreign = sum(clip.voice.split("+")[0] in synth.FOREIGN_ACCENTS for clip in train)
    assert 0.08 * len(train) < foreign < 0.25 * len(train)  # a share, not most of the set
    assert len({clip.rate for clip in train}) > 60 and len({clip.pitch for clip in train}) > 40
    assert all(120 <= clip.rate <= 215 for clip in train + validation)
    assert len({clip.text for clip in train}) > 390
    # Deterministic per seed; a longer plan extends a shorter one.
    assert synth.plan("train", 400, seed=0) == train and synth.plan("train", 10, seed=0) == train[:10]
    assert synth.plan("train", 400, seed=1) != train


def test_training_voices_avoid_those_reserved_for_test_sets_and_all_exist() -> None:
    accents = {voice.split("+")[0] for voice in synth.TRAIN_VOICES}
    variants = {"+" + voice.split("+")[1] for voice in synth.TRAIN_VOICES if "+" in voice}
    assert not accents & set(synth.RESERVED_ACCENTS)
    assert not variants & set(synth.RESERVED_VARIANTS)
    assert synth.HELD_OUT_VOICE in synth.RESERVED_ACCENTS
    with Espeak() as engine:
        assert all(engine.has_voice(accent + variant) for accent in accents for variant in synth.VARIANTS[:2])
        assert all(engine.has_voice("en" + variant) for variant in synth.VARIANTS)


def test_is_held_out_is_a_stable_eighth_of_the_sentences() -> None:
    rng = random.Random(0)
    sentences = [make_sentence(rng) for _ in range(4000)]
    fraction = sum(map(is_held_out, sentences)) / len(sentences)
    assert abs(fraction - HELD_OUT_FRACTION) < 0.02
    # Case and punctuation do not matter, so normalised transcripts can be checked too.
    for sentence in sentences[:200]:
        assert is_held_out(sentence) == is_held_out(normalize(sentence)) == is_held_out(sentence.upper())
    # Pinned: a change of the hash would silently move sentences between train and validation.
    assert [is_held_out(s) for s in sentences[:40]].count(True) == 7
    assert is_held_out("Frank said that the letter was too small for the harbour.")


def test_a_complete_set_is_reused_and_other_arguments_rebuild(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "set"
    synth.synthesize(out, **SMALL, seed=3, workers=1)
    assert synth.is_complete(out, **SMALL, seed=3)
    monkeypatch.setattr(synth, "_render_all", lambda *args: pytest.fail("re-synthesised a complete set"))
    assert synth.synthesize(out, **SMALL, seed=3)["train"] == 5
    monkeypatch.undo()
    assert not synth.is_complete(out, **{**SMALL, "train": 2}, seed=3)
    assert synth.synthesize(out, **{**SMALL, "train": 2}, seed=3, workers=1)["train"] == 2
    assert len(metadata(out / "train")) == 2 and synth.is_complete(out, **{**SMALL, "train": 2}, seed=3)
    assert [path.name for path in tmp_path.iterdir()] == ["set"]  # no staging or old copies left


def test_an_interrupted_run_leaves_nothing_that_is_reused(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "set"
    rendered = []
    render = synth._render_lane

    def interrupt_after_one_lane(lane):
        if rendered:
            raise KeyboardInterrupt
        rendered.append(render(lane))

    monkeypatch.setattr(synth, "_render_lane", interrupt_after_one_lane)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(out, **SMALL, workers=1)
    assert rendered and list(tmp_path.iterdir()) == []  # the half-written staging directory is gone
    monkeypatch.undo()
    # A run killed outright leaves its staging directory; the next run removes it.
    stale = tmp_path / ".set.partial-999999999-abc"
    (stale / "train").mkdir(parents=True)
    synth.synthesize(out, **SMALL, workers=1)
    assert not stale.exists() and synth.is_complete(out, **SMALL)


def test_no_espeak_ng_program_is_needed(tmp_path: Path) -> None:
    # PATH holds only the Python environment, and starting any program fails: the library and
    # voices come from the espeakng-loader wheel.
    script = textwrap.dedent(
        f"""
        import os, subprocess, sys
        def refuse(*args, **kwargs):
            raise AssertionError(f"started a program: {{args}}")
        subprocess.Popen = refuse
        os.system = refuse
        for name in ("execv", "execve", "execvp", "execvpe", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                setattr(os, name, refuse)
        from tiny_audio.data import espeak, synth
        print(synth.synthesize({str(tmp_path / "out")!r}, train=2, validation=1, new_voice=1, workers=2))
        """
    )
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": os.pathsep.join(sys.path), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "'train': 2" in result.stdout
    assert len(list((tmp_path / "out").rglob("*.wav"))) == 4


def test_fresh_engines_speak_identically() -> None:
    with Espeak() as first, Espeak() as second:
        assert first.sample_rate == 22050
        kwargs = {"voice": "en-us+f2", "rate": 160, "pitch": 40, "noise_seed": 7}
        a = first.speak("Why is the river so quiet at noon?", **kwargs)
        second.speak("Please open the small window.", voice="en-029", rate=190, pitch=70, noise_seed=1)
        with Espeak() as third:
            assert np.array_equal(third.speak("Why is the river so quiet at noon?", **kwargs), a)
        assert a.dtype == np.int16 and 1.0 < len(a) / 22050 < 8.0


def test_unknown_voice_names_the_voice(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(synth, "HELD_OUT_VOICE", "en-atlantis")
    with pytest.raises(SynthError, match="unknown espeak-ng voice 'en-atlantis'"):
        synth.synthesize(tmp_path / "out", **SMALL, workers=1)
    with Espeak() as engine, pytest.raises(SynthError, match="variant 'nobody' in voice 'en-us\\+nobody'"):
        engine.speak("Hello.", voice="en-us+nobody", rate=150, pitch=50, noise_seed=0)
    assert not (tmp_path / "out").exists()


def test_missing_package_names_the_pip_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # makes `import espeakng_loader` fail
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "pip install espeakng-loader" in result.output


def test_unwritable_output_names_the_path(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a-file").write_text("")
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "a-file" / "out"), "--train", "1"])
    assert result.exit_code == 1
    assert f"cannot write {tmp_path / 'a-file'}" in result.output
    # A full disk (simulated: this machine's disk is not full) names the file being written.
    import errno

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(synth.sf, "write", full)
    with pytest.raises(SynthError, match=r"cannot write .*train_00000\.wav: No space left on device"):
        synth.synthesize(tmp_path / "out", **SMALL, workers=1)
    assert list(tmp_path.iterdir()) == [tmp_path / "a-file"]


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SynthError, match="did not write"):
        synth.synthesize(tmp_path / "mine", **SMALL, workers=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads worker pids from Linux /proc")
def test_a_killed_run_stops_its_workers_and_the_next_run_rebuilds(tmp_path: Path) -> None:
    script = f"from tiny_audio.data import synth; synth.synthesize({str(tmp_path / 'set')!r}, train=3000, workers=2)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".set.partial-*/train/*.wav")) and time.monotonic() < deadline:
            time.sleep(0.2)
        children = Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()
        assert len(children) == 2, children
    finally:
        run.kill()  # no cleanup can run: like a crash or a power cut
        run.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children), "orphaned workers still running"
    assert not (tmp_path / "set").exists() and list(tmp_path.glob(".set.partial-*"))
    synth.synthesize(tmp_path / "set", **SMALL, workers=1)
    assert [path.name for path in tmp_path.iterdir()] == ["set"] and synth.is_complete(tmp_path / "set", **SMALL)
    # The killed workers' private library copies are gone too.
    scratch = Path(tempfile.gettempdir())
    assert not [path for pid in children for path in scratch.glob(f"{espeak.SCRATCH_PREFIX}{pid}-*")]
