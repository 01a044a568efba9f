"""Two processes on the CPU (torchrun, gloo): train, checkpoint, resume; one console voice.

The driver records, per rank, the texts of every batch its loader built, its first batch, its
gradient after the first update and its final projector weights, so the test can check that
the ranks read disjoint data, that the update is the token mean over both ranks' batches, and
that the replicas end identical, even after a non-finite loss that only one rank saw.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from omegaconf import OmegaConf

from tests.data_helpers import write_audiofolder
from tiny_audio.model.build import build_model
from tiny_audio.runtime.speech_llm import MODEL_INPUTS, count_targets
from tiny_audio.training import checkpoints

REPO = Path(__file__).resolve().parent.parent
DRIVER = """
import json, os, sys
from pathlib import Path
import torch
from omegaconf import OmegaConf
from tiny_audio.config import to_config
from tiny_audio.runtime.speech_llm import SpeechLLM
from tiny_audio.recipe import run as run_module
from tiny_audio.training.trainer import Callback, Trainer

out = Path(sys.argv[2])
rank = os.environ["RANK"]
real_collator_for = run_module.collator_for

def recording_collator_for(*args, **kwargs):
    collate = real_collator_for(*args, **kwargs)
    def record(samples):
        batch = collate(samples)
        if kwargs.get("with_targets", True) and len(batch["texts"]) == 2:  # train batches (eval ones hold 1)
            with open(out / f"texts-{rank}.jsonl", "a") as f:
                f.write(json.dumps(batch["texts"]) + "\\n")
            first = out / f"first-batch-{rank}.pt"
            if not first.exists():
                torch.save({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, first)
        return batch
    return record

class Record(Callback):
    def on_step_end(self, trainer):
        if trainer.state.step == 1:
            model = trainer.accelerator.unwrap_model(trainer.model)
            grads = {n: p.grad.clone() for n, p in model.projector.named_parameters() if p.grad is not None}
            torch.save(grads, out / f"grads-{rank}.pt")
    def on_train_end(self, trainer, status):
        model = trainer.accelerator.unwrap_model(trainer.model)
        torch.save(model.projector.state_dict(), out / f"weights-{rank}.pt")

real_forward = SpeechLLM.forward
calls = [0]

def forward(self, *args, **kwargs):
    output = real_forward(self, *args, **kwargs)
    if self.training:
        calls[0] += 1
        if rank == "1" and calls[0] == 2:
            # An infinite loss with a finite gradient, on this rank alone: both must skip the update.
            output.lm_loss_sum = output.lm_loss_sum + (float("inf") - output.lm_loss_sum.detach())
    return output

SpeechLLM.forward = forward

real_accumulate = Trainer.accumulate_gradients

def accumulate(self, micro_batches):
    with open(out / f"consumed-{rank}.jsonl", "a") as f:
        f.write(json.dumps([[len(b["texts"]), b["audio_seconds"]] for b in micro_batches]) + "\\n")
    return real_accumulate(self, micro_batches)

Trainer.accumulate_gradients = accumulate
run_module.collator_for = recording_collator_for
run_module.run(to_config(OmegaConf.load(sys.argv[1])), callbacks=[Record()])
"""


def torchrun(tmp_path: Path, cfg, records: Path) -> subprocess.CompletedProcess:
    config, driver = tmp_path / "cfg.yaml", tmp_path / "driver.py"
    OmegaConf.save(OmegaConf.structured(cfg), config)
    driver.write_text(DRIVER)
    records.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(driver),
        str(config),
        str(records),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)


def test_two_processes_train_save_and_resume(tiny_run_config, tmp_path: Path) -> None:
    # One eval clip: rank 1 has no eval batch at all, and must not hang rank 0's evaluation.
    data = write_audiofolder(tmp_path / "data", {"train": 16, "validation": 1})
    cfg = tiny_run_config(
        data,
        model={"projector_type": "moe"},
        max_steps=6,
        save_steps=3,
        eval_steps=3,
        per_device_train_batch_size=2,
        max_grad_norm=1e9,  # no clipping: the recorded gradient is the raw one
        data={"num_workers": 1},
    )
    records = tmp_path / "records"
    first = torchrun(tmp_path, cfg, records)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.count("Step 6/6 |") == 1  # the main process alone prints progress
    assert "Eval at step 3 | eval/loss: " in first.stdout
    assert "Step 2: non-finite loss (inf)" in first.stdout  # rank 1's infinite loss, skipped by both ranks
    # Throughput: each rank's own, and the run's as their sum.
    progress = re.search(r"Step 6/6 \|.*Samples/s: ([\d.]+)", first.stdout)
    assert progress, first.stdout[-3000:]
    per_rank = re.search(
        r"^Samples/s per rank: 0: ([\d.]+), 1: ([\d.]+) \(slowest at \d+% of the fastest\)",
        first.stdout[progress.end() :],
        re.MULTILINE,
    )
    assert per_rank, first.stdout[-3000:]
    rates = [float(per_rank.group(1)), float(per_rank.group(2))]
    assert min(rates) > 0 and float(progress.group(1)) == pytest.approx(sum(rates), abs=0.011)
    saved = checkpoints.load_training_state(tmp_path / "run" / "checkpoint-6")
    assert len(saved["ranks"]) == 2  # each rank's data position and random state
    # Samples and audio are the run's totals over both ranks, not rank 0's share.
    consumed = [_consumed(records / f"consumed-{rank}.jsonl") for rank in (0, 1)]
    assert saved["train_state"]["samples_seen"] == sum(n for n, _ in consumed) == 6 * 2 * 2
    assert saved["train_state"]["audio_seconds"] == pytest.approx(sum(s for _, s in consumed))

    # Each rank reads its own share of the data.
    texts = {rank: _texts(records / f"texts-{rank}.jsonl") for rank in (0, 1)}
    assert texts[0] and texts[1] and not texts[0] & texts[1]
    # Both replicas end with the same weights.
    weights = [torch.load(records / f"weights-{rank}.pt") for rank in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # The first update's gradient is that of the mean token loss over both ranks' batches.
    grads = [torch.load(records / f"grads-{rank}.pt") for rank in (0, 1)]
    expected = _reference_gradient(cfg, [torch.load(records / f"first-batch-{rank}.pt") for rank in (0, 1)])
    assert grads[0].keys() == grads[1].keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(grads[0][name], value, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grads[1][name], value, rtol=1e-4, atol=1e-7)

    cfg.training.max_steps, cfg.training.resume_from_checkpoint = 9, "latest"
    second = torchrun(tmp_path, cfg, tmp_path / "records-resumed")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Resumed from" in second.stdout and second.stdout.count("Step 9/9 |") == 1
    assert checkpoints.read_trainer_state(tmp_path / "run" / "checkpoint-9")["layout"]["processes"] == 2
    resumed = checkpoints.load_training_state(tmp_path / "run" / "checkpoint-9")["train_state"]
    assert resumed["samples_seen"] == 9 * 2 * 2


def _consumed(path: Path) -> tuple[int, float]:
    """Samples and audio seconds of the micro-batches a rank trained on."""
    batches = [batch for line in path.read_text().splitlines() for batch in json.loads(line)]
    return sum(n for n, _ in batches), sum(seconds for _, seconds in batches)


def _texts(path: Path) -> set[str]:
    return {text for line in path.read_text().splitlines() for text in json.loads(line)}


def _reference_gradient(cfg, batches: list[dict]) -> dict[str, torch.Tensor]:
    """One process, the same initial weights: sum of both batches' token losses over all their tokens."""
    set_seed(cfg.training.seed)
    model = build_model(cfg.model)
    model.train()
    tokens = sum(count_targets(batch["labels"]) for batch in batches)
    for batch in batches:
        output = model(**{k: batch[k] for k in MODEL_INPUTS})
        # The MoE auxiliary loss: a per-batch statistic, averaged over the two ranks.
        (output.lm_loss_sum / tokens + output.aux_loss / len(batches)).backward()
    return {n: p.grad for n, p in model.projector.named_parameters() if p.grad is not None}
