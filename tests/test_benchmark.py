"""The step benchmark: FLOP formulas against hand counts and torch's own counter; a run on the tiny fixtures."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import tone
from tiny_audio.benchmark import run_benchmark
from tiny_audio.benchmark.ceiling import matmul_ceiling, tf32_matmuls
from tiny_audio.benchmark.counted import counted_step_flops, flop_counter
from tiny_audio.benchmark.flops import (
    TransformerShape,
    batch_shapes,
    encoder_forward_flops,
    encoder_shape,
    llm_shape,
    lm_head_train_flops,
    mlp_projector_train_flops,
    step_flops,
)
from tiny_audio.benchmark.run import matmul_precision
from tiny_audio.config import Config, ModelConfig, TrainingConfig
from tiny_audio.model.build import attach_encoder_cache, build_model
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.speech_llm import MODEL_INPUTS
from tiny_audio.training.optim import apply_speed_settings
from tiny_audio.training.precision import resolve_precision


def test_transformer_flops_by_hand() -> None:
    shape = TransformerShape(layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, ffn=16, gated=True)
    # Per layer and token: q 2*8*8 + k,v 2*(2*8*4) + o 2*8*8 + gated MLP 3*(2*8*16) = 128+128+128+768.
    assert shape.linear_flops_per_token() == 2 * 1152
    # QK^T and AV over 10 x 10 positions, 2 heads x 4 dims, 2 layers: 2 * 2*(2*10*10*8).
    assert shape.attention_flops(10) == 6400
    assert shape.forward_flops(10) == 10 * 2304 + 6400
    assert shape.frozen_backward_flops(10) == 10 * 2304 + 2 * 6400
    # mlp projector, 3 tokens, 20 -> 6 -> 8: forward 2*3*(120 + 48); backward dW1 + dW2 + dX2.
    assert mlp_projector_train_flops(3, 20, 6, 8) == 2 * 3 * (120 + 48) + 2 * 3 * (120 + 2 * 48)
    assert lm_head_train_flops(5, 8, 100) == 2 * (2 * 5 * 8 * 100)
    # Encoder on 9 mel frames of 4 bins: conv1 on 9 frames, conv2 and the layers on 5.
    plain = dataclasses.replace(shape, gated=False)
    assert encoder_forward_flops(plain, 4, 9) == 2 * 9 * 4 * 3 * 8 + 2 * 5 * 3 * 8 * 8 + plain.forward_flops(5)


def test_encoder_and_llm_formulas_match_torchs_flop_counter(tiny_model_config) -> None:
    model = build_model(tiny_model_config(encoder_padding="longest"))
    batch = collator_for(model, 16000)([{"audio": tone(1.3), "text": "one two three"}])
    features = batch["input_features"]
    shape, n_mels = encoder_shape(model.encoder.module.config)
    # torch's own table lacks the CPU attention kernel: flop_counter() adds it.
    with flop_counter() as counter:
        model.encoder.module(features)
    assert counter.get_total_flops() == encoder_forward_flops(shape, n_mels, features.shape[-1])
    decoder = getattr(model.causal_lm, model.causal_lm.base_model_prefix)
    ids = batch["input_ids"]
    with flop_counter() as counter:
        decoder(input_ids=ids)
    llm = llm_shape(model.causal_lm.config)
    assert counter.get_total_flops() == llm.forward_flops(ids.shape[1])


def test_benchmark_reports_every_figure_on_the_tiny_fixtures(tiny_model_config, tmp_path: Path) -> None:
    cfg = Config(experiment="bench")
    cfg.model = tiny_model_config()
    cfg.training = dataclasses.replace(
        cfg.training, per_device_train_batch_size=2, per_device_eval_batch_size=3, bf16=False
    )
    out = tmp_path / "bench.json"
    report = run_benchmark(cfg, steps=2, warmup=1, workers=1, ceiling_seconds=0.1, out=out, log=print)
    assert json.loads(out.read_text()) == report
    by_mode = {r["config"]["encoder_padding"]: r for r in report["runs"]}
    assert set(report["matmul_ceiling_flops_per_second"]) == {"bfloat16", "float32"}
    assert report["matmul_ceiling_tf32"] is False
    for run in report["runs"]:
        assert run["steps"] == 2 and len(run["step_seconds"]["all"]) == 2
        assert run["step_seconds"]["p90"] >= run["step_seconds"]["median"] > 0
        assert set(run["time_breakdown_seconds_per_step"]) == {
            "encoder_forward",
            "projector_forward",
            "llm_forward",
            "forward_rest",
            "backward",
            "optimizer",
            "data_wait",
        }
        assert sum(run["time_breakdown_seconds_per_step"].values()) > 0
        as_run, useful = run["flops_per_step"]["as_run"], run["flops_per_step"]["useful"]
        assert as_run["total"] == sum(v for k, v in as_run.items() if k != "total")
        assert useful["encoder_forward"] <= as_run["encoder_forward"] and useful["lm_head"] == as_run["lm_head"]
        assert run["data_loader"]["ratio_to_step"] > 0 and run["projected_course_stage1_hours"] > 0
        assert 0 < run["fraction_of_matmul_ceiling"]["useful"] <= run["fraction_of_matmul_ceiling"]["as_run"]
        # As run is torch's count of the step; the formulas agree with it on these models.
        counted = run["flops_per_step"]["counted"]["total"]
        assert run["flops_counted_over_formula"] == pytest.approx(counted / as_run["total"])
        assert 0.9 < run["flops_counted_over_formula"] < 1.1
        seconds = sum(run["step_seconds"]["all"]) + 2 * run["time_breakdown_seconds_per_step"]["data_wait"]
        assert run["flops_per_second"]["as_run"] == pytest.approx(2 * counted / seconds)
        assert run["config"]["matmul_dtype"] == "float32" and run["config"]["tf32"] is False
        # Each mode in its own process: launch time and peaks are its own; evaluation can only add.
        assert run["launch_to_first_step_seconds"] > run["build_to_first_step_seconds"] > 0
        assert run["evaluation"]["clips"] == 3 and run["evaluation"]["seconds"] > 0
        assert run["evaluation"]["peak_memory_gib"]["rss"] >= run["peak_memory_gib"]["rss"] > 0
        assert 0 < run["step_seconds"]["at_ceiling"] < run["step_seconds"]["median"]
        # fp32 run: every FLOP it runs, at the fp32 matmul rate measured in the same run.
        fp32_ceiling = report["matmul_ceiling_flops_per_second"]["float32"]
        assert run["step_seconds"]["at_ceiling"] == pytest.approx(counted / fp32_ceiling)
    # 2-7 s clips padded to 30 s: at least 23/30 of the frames are padding; far less padded to the longest.
    assert by_mode["max_length"]["padding"]["audio_frames"] > 23 / 30 - 0.01
    assert by_mode["longest"]["padding"]["audio_frames"] < 0.5
    assert (
        by_mode["max_length"]["flops_per_step"]["as_run"]["encoder_forward"]
        > 4 * (by_mode["longest"]["flops_per_step"]["as_run"]["encoder_forward"])
    )


@pytest.mark.parametrize("bad", ["--padding=sideways"])
def test_benchmark_cli_rejects_a_bad_padding(bad: str) -> None:
    from typer.testing import CliRunner

    from tiny_audio.cli import app

    result = CliRunner().invoke(app, ["benchmark", bad])
    assert result.exit_code == 2 and "--padding='sideways' is not allowed" in result.output


def test_flop_counter_sees_the_mlp_projector_as_written(tiny_model_config) -> None:
    model = build_model(tiny_model_config())
    net = model.projector.net
    x = torch.randn(1, 3 * model.projector.stride, net[0].in_features // model.projector.stride)
    with FlopCounterMode(display=False) as counter:
        model.projector(x, torch.tensor([x.shape[1]]))[0].sum().backward()
    assert counter.get_total_flops() == mlp_projector_train_flops(
        3, net[0].in_features, net[0].out_features, net[2].out_features
    )


def _one_step(tiny_model_config, *, checkpointing: bool = False, **overrides: object) -> tuple:
    """A training step on two clips of different lengths: counted FLOPs, formula as run, formula useful,
    the model and its inputs."""
    cfg = tiny_model_config(encoder_padding="longest", **overrides)
    model = build_model(cfg)
    apply_speed_settings(model, TrainingConfig(gradient_checkpointing=checkpointing, tf32=False), log=print)
    attach_encoder_cache(model, cfg)
    model.train()
    clips = [{"audio": tone(1.3), "text": "one two three"}, {"audio": tone(2.6, seed=1), "text": "four five"}]
    batch = collator_for(model, 16000)(clips)
    inputs = {k: batch[k] for k in MODEL_INPUTS}
    counted = counted_step_flops(model, inputs, contextlib.nullcontext())
    hop = model.encoder.feature_extractor.hop_length
    shapes = batch_shapes(model, batch, [len(c["audio"]) // hop for c in clips])
    formula = step_flops(model, shapes, recompute=checkpointing)
    return counted, formula["as_run"], formula["useful"], model, inputs


# The formulas leave out norms, activations, the loss and LoRA's low-rank products, and count
# attention over the full square: on the tiny models they stay within this of torch's count.
FORMULA_TOLERANCE = 0.1


def test_counted_step_matches_the_formulas_and_sees_what_the_step_runs(tiny_model_config) -> None:
    plain, plain_run, plain_useful, *_ = _one_step(tiny_model_config)
    assert plain == pytest.approx(plain_run["total"], rel=FORMULA_TOLERANCE)

    # Checkpointing: the decoder layers' forward runs again in the backward; counted grows by it.
    recomputed, recomputed_run, recomputed_useful, *_ = _one_step(tiny_model_config, checkpointing=True)
    assert recomputed == pytest.approx(recomputed_run["total"], rel=FORMULA_TOLERANCE)
    assert recomputed_useful == plain_useful
    rerun = recomputed_run["llm"] - plain_run["llm"]  # the layers' forward, less each MLP's down projection
    assert rerun > 0 and recomputed - plain == rerun

    # Stage 2 (frozen projector, LoRA) against stage 3 (both train): no projector backward.
    lora = dataclasses.replace(ModelConfig().lora, enabled=True)
    frozen, frozen_run, *_ = _one_step(tiny_model_config, projector_trainable=False, lora=lora)
    both, both_run, *_ = _one_step(tiny_model_config, lora=lora)
    assert frozen == pytest.approx(frozen_run["total"], rel=FORMULA_TOLERANCE)
    projector_backward = both_run["projector"] - frozen_run["projector"]
    assert projector_backward > 0 and both - frozen >= projector_backward

    # `longest` encodes each clip on its own frames, with a cache or without: the encoder runs no padding.
    _, _, _, plain_model, plain_inputs = _one_step(tiny_model_config)
    features = plain_inputs["input_features"]
    with flop_counter() as own:
        plain_model.encoder(features, plain_inputs["encoder_lengths"], plain_inputs["mel_lengths"])
    with flop_counter() as padded:
        plain_model.encoder.encode(features)
    assert own.get_total_flops() < padded.get_total_flops()
    assert plain_run["encoder_forward"] == pytest.approx(own.get_total_flops(), rel=FORMULA_TOLERANCE)
    cached, cached_run, cached_useful, model, inputs = _one_step(tiny_model_config, encoder_cache_gib=0.01)
    assert (cached, cached_run, cached_useful) == (plain, plain_run, plain_useful)
    # Counted after the timed step on the same batch, as the benchmark counts: the clips are
    # encoded as that step encoded them, not served from the cache it filled, which stays as it was.
    model(**inputs)
    assert len(model.encoder.cache.entries) == 2
    assert counted_step_flops(model, inputs, contextlib.nullcontext()) == cached
    assert len(model.encoder.cache.entries) == 2


@pytest.mark.parametrize(
    ("dtype", "bf16", "device", "expected"),
    [
        ("bfloat16", True, "cuda", "bfloat16"),
        ("float32", True, "cuda", "bfloat16"),  # autocast on a GPU
        ("float32", True, "cpu", "float32"),  # fp32 weights on a CPU: no autocast (as resolved on AVX2)
        ("bfloat16", False, "cpu", "bfloat16"),  # no autocast, but bf16 weights: bf16 products
        ("float32", False, "cuda", "float32"),
    ],
)
def test_ceiling_precision_is_the_runs_resolved_precision(dtype: str, bf16: bool, device: str, expected: str) -> None:
    cfg = Config()
    cfg.model = dataclasses.replace(cfg.model, dtype=dtype)
    cfg.training = dataclasses.replace(cfg.training, bf16=bf16)
    assert matmul_precision(cfg, torch.device(device)) == expected


def test_a_run_that_falls_back_to_fp32_is_held_to_the_fp32_ceiling() -> None:
    cfg = Config()
    cfg.model = dataclasses.replace(cfg.model, dtype="bfloat16")
    cfg.training = dataclasses.replace(cfg.training, bf16=True, cpu_precision="auto")
    cpu = torch.device("cpu")
    assert matmul_precision(resolve_precision(cfg, cpu, log=lambda _: None, native=frozenset()), cpu) == "float32"
    native = resolve_precision(cfg, cpu, log=lambda _: None, native=frozenset({"bfloat16"}))
    assert matmul_precision(native, cpu) == "bfloat16"


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_matmuls_set_the_runs_setting_and_restore_it(tf32: bool) -> None:
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32_matmuls(tf32):
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


@pytest.mark.parametrize("tf32", [True, False])
def test_ceiling_measures_the_runs_dtype_under_its_tf32_setting(tf32: bool) -> None:
    ceiling, seen = matmul_ceiling(torch.device("cpu"), size=256, seconds=0.01, tf32=tf32, extra=("float16",))
    assert set(ceiling) == {"bfloat16", "float32", "float16"} and all(v > 0 for v in ceiling.values())
    assert seen is tf32
