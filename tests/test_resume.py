"""Checkpoints that can't be lost: kill and resume, interrupted saves, signals, stage hand-off, NaN skips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from tests.data_helpers import write_audiofolder
from tests.training_helpers import StopAt
from tiny_audio.config import AugmentConfig, Config, LoraConfig, ModelConfig, MoeConfig, MosaConfig
from tiny_audio.recipe import run as run_module
from tiny_audio.recipe.run import run
from tiny_audio.runtime.speech_llm import SpeechLLM
from tiny_audio.training import checkpoints
from tiny_audio.training.trainer import Callback, NonFiniteLossError, Trainer

REPO = Path(__file__).resolve().parent.parent
CHILD = (
    "import sys; from omegaconf import OmegaConf; from tiny_audio.config import to_config; "
    "from tiny_audio.recipe.run import run; run(to_config(OmegaConf.load(sys.argv[1])))"
)
quiet = lambda _: None  # noqa: E731


def start_child(cfg: Config, tmp_path: Path) -> subprocess.Popen:
    path = tmp_path / "child.yaml"
    OmegaConf.save(OmegaConf.structured(cfg), path)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, as a terminal's foreground job has
    )


def wait_for(path: Path, child: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert child.poll() is None, child.stdout.read() if child.stdout else ""
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def projector_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "projector.safetensors"))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_audiofolder(tmp_path / "data", {"train": 40, "validation": 4})


def test_sigkill_then_resume_latest_matches_an_uninterrupted_run(tiny_run_config, data: Path, tmp_path: Path) -> None:
    settings = {"max_steps": 14, "save_steps": 5, "per_device_train_batch_size": 4, "lr_scheduler_type": "cosine"}
    settings["warmup_steps"] = 3
    # The shipped data settings: streaming, 2 loader workers, a shuffle buffer larger than the
    # 40 clips (a worker's whole pass sits in it). At step 5 one worker has served 3 batches, the
    # other 2; the resumed run crosses into the next pass at step 10.
    settings["data"] = {"num_workers": 2, "shuffle_buffer": 1000}
    reference = tiny_run_config(data, output_dir=str(tmp_path / "reference"), **settings)
    run(reference, log=quiet)

    killed = tiny_run_config(data, output_dir=str(tmp_path / "killed"), save_total_limit=10, **settings)
    child = start_child(killed, tmp_path)
    try:
        wait_for(tmp_path / "killed" / "checkpoint-5" / checkpoints.STATE_FILE, child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    interrupted_at = checkpoints.latest_checkpoint(tmp_path / "killed")
    assert interrupted_at is not None and interrupted_at.name != "checkpoint-14"

    killed.training.resume_from_checkpoint = "latest"
    lines: list[str] = []
    state = run(killed, log=lines.append)
    assert any(line.startswith(f"Resumed from {interrupted_at}") for line in lines)
    assert state.step == 14
    final, expected = (
        projector_weights(tmp_path / "killed" / "checkpoint-14"),
        projector_weights(tmp_path / "reference" / "checkpoint-14"),
    )
    # Bit-identical on CPU: same data position, RNG, optimizer and schedule after the restore.
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key


def test_resume_with_dropout_workers_and_reshuffled_passes_matches_an_uninterrupted_run(
    tiny_run_config, tmp_path: Path
) -> None:
    """Q-Former and LoRA dropout, 2 loader workers, a shuffle per pass, two passes before the checkpoint.

    12 clips, batch 2, 2 workers: a pass is 6 steps. The run stops at step 12, the end of the
    second pass, and resumes in the third, whose shuffle depends on the restored pass number.
    Dropout masks depend on the restored random state, and on nothing drawing from it before the
    first resumed step.
    """
    data = write_audiofolder(tmp_path / "data", {"train": 12, "validation": 2})
    settings = {
        "model": {"projector_type": "qformer", "lora": LoraConfig(enabled=True, dropout=0.3)},
        "data": {"num_workers": 2, "shuffle_buffer": 4},
        "max_steps": 16,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 2,
    }
    run(tiny_run_config(data, output_dir=str(tmp_path / "reference"), **settings), log=quiet)

    interrupted = tiny_run_config(data, output_dir=str(tmp_path / "resumed"), **settings)
    run(interrupted, callbacks=[StopAt(12)], log=quiet)
    assert checkpoints.latest_checkpoint(tmp_path / "resumed") == tmp_path / "resumed" / "checkpoint-12"
    interrupted.training.resume_from_checkpoint = "latest"
    assert run(interrupted, log=quiet).step == 16

    for name in ("projector.safetensors", "lora/adapter_model.safetensors"):
        final = load_file(str(tmp_path / "resumed" / "checkpoint-16" / name))
        expected = load_file(str(tmp_path / "reference" / "checkpoint-16" / name))
        assert final.keys() == expected.keys()
        for key in expected:
            assert torch.equal(final[key], expected[key]), (name, key)


def test_resume_continues_the_stream_without_replaying_samples(
    tiny_run_config, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_collator_for = run_module.collator_for

    def recording_collator_for(*args, **kwargs):
        collate = real_collator_for(*args, **kwargs)

        def record(samples):
            batch = collate(samples)
            seen.extend(batch["texts"])
            return batch

        return record

    monkeypatch.setattr(run_module, "collator_for", recording_collator_for)
    # Record training batches only: no evaluation.
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {})
    cfg = tiny_run_config(data, max_steps=16, per_device_train_batch_size=2, save_steps=100, logging_steps=1)
    stop_at_six = StopAt(6)
    run(cfg, callbacks=[stop_at_six], log=quiet)
    first_part = list(seen)
    assert len(first_part) == 12 and len(set(first_part)) == 12

    seen.clear()
    cfg.training.resume_from_checkpoint = "latest"
    state = run(cfg, log=quiet)
    assert state.step == 16 and state.samples_seen == 32
    # 40 clips per pass: the 20 read after resuming are all new, none of the 12 replayed.
    assert len(seen) == 20
    assert not set(seen) & set(first_part)


@pytest.mark.parametrize("interrupt", ["SIGTERM to the process", "Ctrl+C to the process group"])
def test_an_interrupt_saves_a_complete_checkpoint_and_says_how_to_resume(
    tiny_run_config, data: Path, tmp_path: Path, interrupt: str
) -> None:
    # Two loader workers: a terminal's Ctrl+C reaches them too, and they must keep serving batches.
    cfg = tiny_run_config(data, max_steps=100000, save_steps=100000, logging_steps=1, data={"num_workers": 2})
    child = start_child(cfg, tmp_path)
    try:
        deadline = time.monotonic() + 120
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("Step 3/"):
                break
            assert time.monotonic() < deadline
        if interrupt.startswith("SIGTERM"):
            child.send_signal(signal.SIGTERM)
        else:
            os.killpg(child.pid, signal.SIGINT)
        output = child.communicate(timeout=60)[0]
    finally:
        child.kill()
    name = "SIGTERM" if interrupt.startswith("SIGTERM") else "SIGINT"
    assert child.returncode == 0, output
    assert output.count(f"{name} received: finishing this step, saving a checkpoint") == 1, output
    assert "Resume with: training.resume_from_checkpoint=latest" in output
    saved = checkpoints.latest_checkpoint(tmp_path / "run")
    assert saved is not None and checkpoints.read_trainer_state(saved)["step"] >= 3


def test_half_written_checkpoints_are_never_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"

    def write_model(directory: Path) -> None:
        (directory / "projector.safetensors").write_bytes(b"x")

    checkpoints.write_checkpoint(out, 10, write_model, {"step": 10}, {"k": 1})
    (out / ".checkpoint-20.tmp").mkdir()  # a save cut off before its rename
    (out / "checkpoint-30").mkdir()  # a directory without trainer_state.json
    monkeypatch.setattr(checkpoints.torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        checkpoints.write_checkpoint(out, 40, write_model, {"step": 40}, {"k": 1})
    assert not (out / "checkpoint-40").exists()
    assert checkpoints.latest_checkpoint(out) == out / "checkpoint-10"
    assert checkpoints.resolve_resume("latest", out) == out / "checkpoint-10"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoints.resolve_resume(str(out / "checkpoint-30"), out)


def test_pruning_keeps_the_newest_and_the_protected_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for step in (1, 2, 3, 4, 5):
        checkpoints.write_checkpoint(out, step, lambda d: None, {"step": step}, {})
    checkpoints.prune_checkpoints(out, keep=2, protect=out / "checkpoint-1")
    assert [p.name for p in checkpoints.complete_checkpoints(out)] == ["checkpoint-1", "checkpoint-4", "checkpoint-5"]


def test_stage_two_from_stage_one_trains_only_lora_and_keeps_the_projector(
    tiny_run_config, data: Path, tmp_path: Path
) -> None:
    stage1 = tiny_run_config(data, output_dir=str(tmp_path / "stage1"), max_steps=4)
    run(stage1, log=quiet)
    stage1_projector = projector_weights(tmp_path / "stage1" / "checkpoint-4")

    stage2 = tiny_run_config(
        data,
        model={"projector_trainable": False, "lora": LoraConfig(enabled=True)},
        output_dir=str(tmp_path / "stage2"),
        max_steps=4,
        resume_from_checkpoint=str(tmp_path / "stage1" / "checkpoint-4"),
    )
    lines: list[str] = []
    state = run(stage2, log=lines.append)
    assert state.step == 4  # a new stage starts its own schedule
    assert any("Starting a new stage" in line and "now training lora with a fresh optimizer" in line for line in lines)
    saved = tmp_path / "stage2" / "checkpoint-4"
    for key, value in projector_weights(saved).items():
        assert torch.equal(value, stage1_projector[key]), key
    adapter = load_file(str(saved / "lora" / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero: it trained
    assert checkpoints.read_trainer_state(saved)["trainable"] == {"projector": False, "lora": True}

    stage3 = tiny_run_config(
        data,
        model={"projector_trainable": True, "lora": LoraConfig(enabled=True)},
        output_dir=str(tmp_path / "stage3"),
        max_steps=2,
        resume_from_checkpoint=str(saved),
    )
    lines.clear()
    run(stage3, log=lines.append)
    assert any("loaded projector, lora weights" in line for line in lines)


def test_a_stage_from_a_checkpoint_without_its_run_record_says_the_card_loses_earlier_stages(
    tiny_run_config, data: Path, tmp_path: Path
) -> None:
    run(tiny_run_config(data, output_dir=str(tmp_path / "stage1"), max_steps=2), log=quiet)
    copied = tmp_path / "stage1" / "checkpoint-2"
    (copied / checkpoints.TRAINING_STATE_FILE).unlink()  # only the model files were kept
    stage2 = tiny_run_config(
        data,
        model={"projector_trainable": False, "lora": LoraConfig(enabled=True)},
        output_dir=str(tmp_path / "stage2"),
        max_steps=1,
        resume_from_checkpoint=str(copied),
    )
    lines: list[str] = []
    run(stage2, log=lines.append)
    warning = [line for line in lines if line.startswith("warning: cannot read the run record")]
    assert len(warning) == 1 and str(copied) in warning[0] and "this stage only" in warning[0], lines


def test_non_finite_updates_are_skipped_counted_then_stop(
    tiny_run_config, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_forward = SpeechLLM.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        output = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in (3, 4):
            output.lm_loss_sum = output.lm_loss_sum * float("nan")
        return output

    monkeypatch.setattr(SpeechLLM, "forward", poisoned)
    lines: list[str] = []
    rates = RecordLearningRate()
    state = run(tiny_run_config(data, max_steps=8, lr_scheduler_type="linear"), [rates], log=lines.append)
    assert state.step == 8 and state.nonfinite_total == 2
    assert sum("update skipped" in line for line in lines) == 2
    # The schedule follows the step count, skipped updates included (linear decay from 3e-3 to 0).
    assert rates.by_step == pytest.approx({step: 3e-3 * (1 - step / 8) for step in range(1, 9)})

    monkeypatch.setattr(SpeechLLM, "forward", lambda self, *a, **k: _nan_output(real_forward(self, *a, **k)))
    with pytest.raises(NonFiniteLossError, match=r"3 non-finite updates in a row \(training.max_nonfinite_steps=3\)"):
        run(tiny_run_config(data, max_steps=8, max_nonfinite_steps=3), log=quiet)


class RecordLearningRate(Callback):
    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def on_step_end(self, trainer: Trainer) -> None:
        self.by_step[trainer.state.step] = trainer.scheduler.get_last_lr()[0]


def _nan_output(output):
    output.lm_loss_sum = output.lm_loss_sum * float("nan")
    return output


class CountLogs(Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.count += 1

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


def test_callback_state_survives_a_resume(tiny_run_config, data: Path) -> None:
    cfg = tiny_run_config(data, max_steps=8, logging_steps=1, save_steps=100)
    first = CountLogs()
    run(cfg, callbacks=[first, StopAt(3)], log=quiet)
    assert first.count == 3
    cfg.training.resume_from_checkpoint = "latest"
    second = CountLogs()
    run(cfg, callbacks=[second], log=quiet)
    assert second.count == 8  # 3 restored + 5 more


def saved_model_config(directory: Path, cfg: ModelConfig) -> Path:
    directory.mkdir(parents=True)
    (directory / "tiny_audio_model.json").write_text(json.dumps(OmegaConf.to_container(OmegaConf.structured(cfg))))
    return directory


def test_a_projector_of_other_settings_is_refused_naming_each_key_and_the_fix(tmp_path: Path) -> None:
    checkpoint = saved_model_config(
        tmp_path / "ckpt", ModelConfig(projector_type="mosa", mosa=MosaConfig(num_experts=8))
    )
    with pytest.raises(
        checkpoints.CheckpointMismatchError,
        match=r"model.mosa.num_experts=8 \(config: 4\); its projector only fits those, so set "
        r"model.mosa.num_experts=8 \(",
    ):
        checkpoints.check_compatible(checkpoint, ModelConfig(projector_type="mosa"))
    # Another projector's block does not shape a mosa projector's weights.
    checkpoints.check_compatible(
        checkpoint,
        ModelConfig(
            projector_type="mosa", mosa=MosaConfig(num_experts=8), moe=MoeConfig(num_experts=2, num_experts_per_tok=1)
        ),
    )


def test_a_checkpoint_of_another_projector_type_is_refused_naming_the_fix(tmp_path: Path) -> None:
    checkpoint = saved_model_config(
        tmp_path / "ckpt", ModelConfig(projector_type="qformer", projector_output_norm=True)
    )
    with pytest.raises(
        checkpoints.CheckpointMismatchError,
        match=r"model.projector_type='qformer' \(config: 'mlp'\), model.projector_output_norm=True \(config: False\);"
        r".*set model.projector_type=qformer model.projector_output_norm=true \(",
    ):
        checkpoints.check_compatible(checkpoint, ModelConfig())


def test_a_checkpoint_of_other_frozen_models_is_refused_naming_both_values(tiny_run_config, tmp_path: Path) -> None:
    from accelerate import Accelerator

    from tiny_audio.model.build import build_model, save_pretrained

    saved_cfg = tiny_run_config(tmp_path / "unused", max_steps=2)
    model = build_model(saved_cfg.model)
    checkpoint = checkpoints.write_checkpoint(
        tmp_path / "stage1", 2, lambda d: save_pretrained(model, d), {"step": 2, "trainable": {}}, {}
    )
    stage2 = tiny_run_config(tmp_path / "unused", model={"encoder_padding": "longest"})
    trainer = Trainer(stage2, model, Accelerator(cpu=True), None, None, [])
    with pytest.raises(
        checkpoints.CheckpointMismatchError,
        match=r"model.encoder_padding='max_length' \(config: 'longest'\).*set model.encoder_padding=max_length",
    ):
        trainer.resume(checkpoint)


def test_a_resumed_run_continues_the_same_wandb_run(
    tiny_run_config, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B in offline mode (no server here): it writes its real run files, named by run id."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny_run_config(data, max_steps=4, logging_steps=1, report_to="wandb")
    run(cfg, callbacks=[StopAt(2)], log=quiet)
    run_id = checkpoints.read_trainer_state(tmp_path / "run" / "checkpoint-2")["wandb_run_id"]
    assert run_id
    cfg.training.resume_from_checkpoint = "latest"
    run(cfg, log=quiet)
    assert checkpoints.read_trainer_state(tmp_path / "run" / "checkpoint-4")["wandb_run_id"] == run_id
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(path.name.endswith(f"-{run_id}") for path in runs), runs


def test_checkpoint_files_are_flushed_to_disk_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Atomic against a power loss, not only a kill: every file reaches the disk before it is published."""
    out = tmp_path / "run"
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def write_model(directory: Path) -> None:
        (directory / "projector.safetensors").write_bytes(b"x")
        (directory / "lora").mkdir()
        (directory / "lora" / "adapter_model.safetensors").write_bytes(b"y")

    monkeypatch.setattr(checkpoints.os, "fsync", recording_fsync)
    checkpoints.write_checkpoint(out, 7, write_model, {"step": 7}, {"k": 1})
    staging = str(out / ".checkpoint-7.tmp")
    for name in ("projector.safetensors", "lora/adapter_model.safetensors", "training_state.pt", "trainer_state.json"):
        assert f"{staging}/{name}" in synced, name
    assert staging in synced and str(out) in synced  # the directory entries too


def test_resume_with_audio_augmentation_matches_an_uninterrupted_run(tiny_run_config, tmp_path: Path) -> None:
    """Every effect on, 2 loader workers, a pass reshuffled: augmentation is drawn from (seed, record,
    pass) alone, so the resumed run augments the clips after the checkpoint exactly as the reference."""
    data = write_audiofolder(tmp_path / "data", {"train": 12, "validation": 2})
    augment = AugmentConfig()
    for block in (augment.noise, augment.reverb, augment.speed, augment.gain):
        block.prob = 0.5
    augment.non_speech.prob = 0.2
    settings = {
        "data": {"num_workers": 2, "shuffle_buffer": 4, "augment": augment},
        "max_steps": 10,
        "per_device_train_batch_size": 2,
        "logging_steps": 1,
    }
    run(tiny_run_config(data, output_dir=str(tmp_path / "reference"), **settings), log=quiet)
    interrupted = tiny_run_config(data, output_dir=str(tmp_path / "resumed"), **settings)
    run(interrupted, callbacks=[StopAt(7)], log=quiet)
    assert checkpoints.latest_checkpoint(tmp_path / "resumed") == tmp_path / "resumed" / "checkpoint-7"
    interrupted.training.resume_from_checkpoint = "latest"
    assert run(interrupted, log=quiet).step == 10

    final = projector_weights(tmp_path / "resumed" / "checkpoint-10")
    expected = projector_weights(tmp_path / "reference" / "checkpoint-10")
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
