"""Gradient accumulation weighs every target token alike, and the MoE auxiliary loss is optimised."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from tests.conftest import tone
from tiny_audio.model.build import build_model
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.speech_llm import MODEL_INPUTS
from tiny_audio.training.trainer import Trainer

# Transcripts of very different lengths, so micro-batch means and token means differ.
TEXTS = [
    "a",
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet alpha bravo",
    "bravo",
    "charlie delta",
    "echo foxtrot golf hotel india juliet alpha bravo charlie delta echo foxtrot golf",
    "golf",
    "hotel india juliet",
    "india",
]
SAMPLES = [{"audio": tone(0.5 + 0.1 * i, seed=i), "text": text} for i, text in enumerate(TEXTS)]


def make_trainer(tiny_run_config, tmp_path: Path, projector_type: str, accumulation: int) -> Trainer:
    cfg = tiny_run_config(
        tmp_path / "unused", model={"projector_type": projector_type}, gradient_accumulation_steps=accumulation
    )
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.train()
    return Trainer(cfg, model, Accelerator(cpu=True), train_loader=None, eval_loader_factory=None, callbacks=[])


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulating_four_micro_batches_gives_the_gradient_of_one_batch(tiny_run_config, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_run_config, tmp_path, "mlp", accumulation=4)
    model = trainer.model
    collate = collator_for(model, 16000)
    micro_batches = [collate(SAMPLES[i : i + 2]) for i in range(0, 8, 2)]
    lm_loss_sum, _, tokens = trainer.accumulate_gradients(micro_batches)
    accumulated = gradients(model)

    model.zero_grad(set_to_none=True)
    whole = collate(SAMPLES)
    output = model(**{k: whole[k] for k in MODEL_INPUTS})
    output.lm_loss.backward()  # the mean over every target token of the 8 samples
    expected = gradients(model)

    assert tokens == output.num_target_tokens
    assert lm_loss_sum == pytest.approx(float(output.lm_loss_sum.detach()), rel=1e-5)
    assert accumulated.keys() == expected.keys() and expected
    for name in expected:
        torch.testing.assert_close(accumulated[name], expected[name], rtol=1e-4, atol=1e-7)


def test_the_moe_auxiliary_loss_reaches_the_router_through_the_trainer(tiny_run_config, tmp_path: Path) -> None:
    trainer = make_trainer(tiny_run_config, tmp_path, "moe", accumulation=2)
    model = trainer.model
    collate = collator_for(model, 16000)
    micro_batches = [collate(SAMPLES[:3]), collate(SAMPLES[3:5])]
    _, aux_loss_sum, tokens = trainer.accumulate_gradients(micro_batches)
    trained = model.projector.router.weight.grad.clone()
    assert aux_loss_sum is not None and aux_loss_sum > 0

    def router_gradient(part: str) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        for batch in micro_batches:
            output = model(**{k: batch[k] for k in MODEL_INPUTS})
            loss = output.lm_loss_sum / tokens if part == "lm" else output.aux_loss / len(micro_batches)
            loss.backward()
        return model.projector.router.weight.grad.clone()

    from_lm, from_aux = router_gradient("lm"), router_gradient("aux")
    assert from_aux.abs().sum() > 0  # the balance and z-losses are not detached from the router
    torch.testing.assert_close(trained, from_lm + from_aux, rtol=1e-4, atol=1e-8)
