"""Short real training runs on the tiny fixtures and small local audio sets."""

from __future__ import annotations

from pathlib import Path

from tests.data_helpers import write_audiofolder, write_corrupt_audiofolder
from tiny_audio.config import LoraConfig
from tiny_audio.recipe.run import run
from tiny_audio.training.trainer import Callback, Trainer


def test_thirty_steps_lower_the_training_loss(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 16, "validation": 4})
    lines: list[str] = []
    state = run(tiny_run_config(data), log=lines.append)
    losses = state.history["train_loss"]
    assert state.step == 30 and len(losses) == 6
    assert losses[-1] < losses[0] * 0.9, losses
    progress = [line for line in lines if line.startswith("Step ")]
    assert progress[0].startswith("Step 5/30 | Loss: ")
    assert " | Grad Norm: " in progress[0] and " | LR: 3e-3 | ETA: " in progress[0]
    assert (tmp_path / "run" / "checkpoint-30" / "projector.safetensors").exists()


def test_stage_two_run_writes_a_lora_adapter(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    cfg = tiny_run_config(data, model={"projector_trainable": False, "lora": LoraConfig(enabled=True)}, max_steps=3)
    run(cfg, log=lambda _: None)
    adapter = tmp_path / "run" / "checkpoint-3" / "lora"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    assert '"r": 8' in (adapter / "adapter_config.json").read_text()


def test_bad_samples_are_skipped_counted_and_training_completes(tiny_run_config, tmp_path: Path) -> None:
    expected = write_corrupt_audiofolder(tmp_path / "data")
    lines: list[str] = []
    cfg = tiny_run_config(tmp_path / "data", max_steps=12)
    state = run(cfg, log=lines.append)
    assert state.step == 12
    from tiny_audio.training import checkpoints

    saved = checkpoints.load_training_state(tmp_path / "run" / "checkpoint-12")
    from tiny_audio.data.skips import SkipLedger

    ledger = SkipLedger()
    ledger.load_state_dict(saved["ranks"][0]["skips"])
    assert ledger.counts() == expected
    assert any(line.startswith("skipped ") for line in lines)


class RecordMetrics(Callback):
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.logged.append(dict(metrics))


def test_moe_router_loss_is_added_and_logged(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    recorder = RecordMetrics()
    run(tiny_run_config(data, model={"projector_type": "moe"}, max_steps=4, logging_steps=2), [recorder], print)
    assert all(m["train/aux_loss"] > 0 for m in recorder.logged)
    assert all(m["train/loss"] > m["train/aux_loss"] for m in recorder.logged)


def test_bf16_run_with_wer_evaluation_completes(tiny_run_config, tmp_path: Path) -> None:
    """The course's defaults (bf16 weights and autocast) with WER decoding, on the CPU."""
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    cfg = tiny_run_config(
        data,
        model={"dtype": "bfloat16"},
        bf16=True,
        cpu_precision="as_configured",  # bf16 even where this CPU would fall back to float32
        max_steps=2,
        eval_steps=2,
        eval_wer_samples=2,
    )
    lines: list[str] = []
    state = run(cfg, log=lines.append)
    assert state.step == 2
    assert any(line.startswith("Eval at step 2 | eval/loss: ") and "eval/wer: " in line for line in lines), lines
    assert (tmp_path / "run" / "checkpoint-2" / "projector.safetensors").exists()
