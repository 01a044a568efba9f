"""Checkpoint state assembly, driven alone: what a save records, and a resume putting it back."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch

from tiny_audio.config import Config
from tiny_audio.data.skips import SkipLedger
from tiny_audio.training import snapshot
from tiny_audio.training.callback import Callback
from tiny_audio.training.checkpoints import CheckpointMismatchError
from tiny_audio.training.snapshot import TrainState


class Counter(Callback):
    def __init__(self, count: int = 0) -> None:
        self.count = count

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]


class Loader:
    def __init__(self, position: int = 0) -> None:
        self.position = position

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = state["position"]


def parts(lr: float) -> tuple[torch.nn.Linear, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))


def test_the_record_names_step_stage_losses_and_layout() -> None:
    cfg = Config(experiment="stage1")
    cfg.training.max_steps, cfg.data.num_workers = 100, 2
    state = TrainState(step=40, history={"train_loss": [3.0, 2.5], "eval_loss": []})
    assert snapshot.trainer_record(cfg, state, processes=2, wandb_run_id=None) == {
        "step": 40,
        "max_steps": 100,
        "experiment": "stage1",
        "trainable": {"projector": True, "lora": False},
        "train_loss": [2.5],
        "eval_loss": None,
        "layout": {"processes": 2, "data.num_workers": 2},
        "wandb_run_id": None,
    }


def test_a_trained_decoder_is_named_and_a_frozen_one_is_not() -> None:
    cfg = Config()
    cfg.model.decoder_trainable = True
    assert snapshot.trainable_components(cfg.model) == {"projector": True, "lora": False, "decoder": True}


def test_resume_needs_the_same_processes_and_workers() -> None:
    saved = {"layout": snapshot.layout(processes=2, num_workers=2)}
    snapshot.check_same_layout(Path("checkpoint-5"), saved, snapshot.layout(2, 2))
    snapshot.check_same_layout(Path("checkpoint-5"), {}, snapshot.layout(1, 4))  # saved before layouts were kept
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint-5 was saved with .*'processes': 2.* but this run"):
        snapshot.check_same_layout(Path("checkpoint-5"), saved, snapshot.layout(1, 2))


def test_training_state_round_trips_into_fresh_parts_for_each_rank() -> None:
    model, optimizer, scheduler = parts(lr=1e-2)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    skips = SkipLedger()
    skips.add("too_long", "clip-7")
    rank0 = snapshot.rank_state(Loader(position=12), skips)
    rank1 = {"dataloader": {"position": 30}, "skips": {"empty_text": ["clip-9"]}, "rng": {"rank": 1}}
    state = TrainState(step=5, samples_seen=20, best_step=5, history={"train_loss": [2.0], "eval_loss": [2.5]})
    saved = snapshot.training_state(optimizer, scheduler, [rank0, rank1], state, [Counter(3)])
    buffer = io.BytesIO()
    torch.save(saved, buffer)  # as a checkpoint stores it
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    _, fresh_optimizer, fresh_scheduler = parts(lr=1.0)
    loader, fresh_skips, counter = Loader(), SkipLedger(), Counter()
    restored, rng = snapshot.restore(saved, 1, fresh_optimizer, fresh_scheduler, loader, fresh_skips, [counter])
    assert restored == state
    assert rng == {"rank": 1}
    assert (loader.position, fresh_skips.counts(), counter.count) == (30, {"empty_text": 1}, 3)
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert fresh_optimizer.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert set(rank0) == {"dataloader", "skips", "rng"} and rank0["skips"] == {"too_long": ["clip-7"]}
