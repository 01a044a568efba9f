"""Recipe knobs: schedules, SpecAugment, audio-token dropout, gradient checkpointing, compile, encoder chunking."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from data_helpers import write_audiofolder

from tests.conftest import tone
from tiny_audio.config import Config, ConfigError, DatasetConfig, SpecAugmentConfig, TrainingConfig
from tiny_audio.data.augment import SpecAugment
from tiny_audio.model.build import build_model
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.speech_llm import MODEL_INPUTS
from tiny_audio.training import optim
from tiny_audio.training.loaders import build_train_loader, train_collator
from tiny_audio.training.optim import apply_speed_settings, build_optimizer, build_scheduler

SAMPLES = [
    {"audio": tone(0.7, seed=1), "text": "a short one"},
    {"audio": tone(2.3, seed=2), "text": "a much longer clip of speech"},
]


def lrs(args: TrainingConfig, steps: list[int]) -> dict[int, float]:
    params = [torch.nn.Parameter(torch.zeros(1))]
    scheduler = build_scheduler(build_optimizer(params, args, torch.device("cpu")), args)
    seen = {}
    for step in range(max(steps) + 1):
        seen[step] = scheduler.get_last_lr()[0]
        scheduler.optimizer.step()
        scheduler.step()
    return {s: seen[s] for s in steps}


def test_schedulers_follow_their_shapes() -> None:
    base = TrainingConfig(learning_rate=1.0, warmup_steps=10, max_steps=100, min_lr_ratio=0.1, decay_ratio=0.2)
    cosine = lrs(dataclasses.replace(base, lr_scheduler_type="cosine_with_min_lr"), [5, 10, 55, 100])
    assert cosine == pytest.approx({5: 0.5, 10: 1.0, 55: 0.55, 100: 0.1})  # halfway: (1 + 0.1) / 2
    poly = lrs(dataclasses.replace(base, lr_scheduler_type="polynomial"), [10, 55, 100])
    assert poly == pytest.approx({10: 1.0, 55: 0.55, 100: 0.1})  # linear from 1 to 0.1
    # Warm-up 10 (from the floor, as transformers does), flat until step 80, cosine decay to 0.1 over 20 steps.
    wsd = lrs(dataclasses.replace(base, lr_scheduler_type="warmup_stable_decay"), [5, 10, 50, 80, 90, 100])
    assert wsd == pytest.approx({5: 0.55, 10: 1.0, 50: 1.0, 80: 1.0, 90: 0.55, 100: 0.1})
    flat = lrs(dataclasses.replace(base, lr_scheduler_type="constant_with_warmup"), [5, 99])
    assert flat == pytest.approx({5: 0.5, 99: 1.0})


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("training", {"lr_scheduler_type": "cosin"}, "training.lr_scheduler_type='cosin' is not allowed: one of"),
        ("training", {"min_lr_ratio": 1.5}, "training.min_lr_ratio=1.5 is not allowed"),
        (
            "training",
            {"lr_scheduler_type": "warmup_stable_decay", "max_steps": 100, "warmup_steps": 95},
            "training.warmup_steps=95 is not allowed: at most max_steps - decay steps (100 - 10)",
        ),
        ("model", {"audio_token_dropout": 1.0}, "model.audio_token_dropout=1.0 is not allowed: 0 <= p < 1"),
        ("data", {"bucket_buffer": 0, "datasets": [DatasetConfig(path="x")]}, "data.bucket_buffer=0 is not allowed"),
    ],
)
def test_bad_knob_values_fail_in_one_line(section: str, values: dict, message: str) -> None:
    part = dataclasses.replace(getattr(Config(), section), **values)
    with pytest.raises(ConfigError) as error:
        part.validate()
    assert message in str(error.value)


def test_spec_augment_width_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"data.spec_augment.time_mask_width=-1 is not allowed"):
        SpecAugmentConfig(time_mask_width=-1).validate("data.spec_augment")


def test_spec_augment_masks_only_real_frames_within_bounds() -> None:
    features = torch.randn(2, 16, 300)
    lengths = torch.tensor([120, 300])
    cfg = SpecAugmentConfig(enabled=True, time_masks=2, time_mask_width=10, freq_masks=2, freq_mask_width=3)
    out = SpecAugment(cfg, torch.Generator().manual_seed(0))(features, lengths)
    assert torch.equal(out[0, :, 120:], features[0, :, 120:])  # padding untouched
    for clip, length in enumerate(lengths.tolist()):
        changed = out[clip, :, :length] != features[clip, :, :length]  # n_mels, L
        bins = changed.all(dim=1).sum()  # a frequency mask covers a whole row of real frames
        frames = changed.all(dim=0).sum()
        assert changed.sum() > 0 and bins <= 2 * 3 and frames <= 2 * 10
        # Every changed cell lies in a masked row or column.
        assert torch.equal(changed, changed.all(dim=1, keepdim=True) | changed.all(dim=0, keepdim=True))


def test_only_the_train_loader_augments(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 4, "validation": 2}, seconds=1.0)
    cfg = tiny_run_config(data, data={"spec_augment": SpecAugmentConfig(enabled=True, time_mask_width=20)})
    model = build_model(cfg.model)
    loader = build_train_loader(cfg, train_collator(cfg, model))
    plain = collator_for(model, cfg.data.sample_rate)  # what evaluation uses
    batch = next(iter(loader))
    # The same first samples, collated without augmentation (shuffle_buffer 0: arrival order).
    samples = [{"audio": s, "text": t} for s, t in zip(_audio_of(cfg), batch["texts"], strict=False)]
    reference = plain(samples)
    assert not torch.equal(batch["input_features"], reference["input_features"])
    assert plain.augment is None
    assert torch.equal(batch["input_ids"], reference["input_ids"])  # same samples, only features differ


def _audio_of(cfg: Config) -> list:
    from tiny_audio.data.stream import build_train_stream

    stream = iter(build_train_stream(cfg.data))
    return [next(stream)["audio"] for _ in range(cfg.training.per_device_train_batch_size)]


def _embeds(model, batch) -> torch.Tensor:
    embeds, _ = model.embed_inputs(batch["input_features"], batch["encoder_lengths"], batch["input_ids"])
    return embeds


def test_audio_token_dropout_drops_whole_audio_tokens_in_training_only(tiny_model_config) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(audio_token_dropout=0.5))
    batch = collator_for(model, 16000)(SAMPLES)
    audio = batch["input_ids"] == model.prompts.audio_token_id
    model.eval()
    clean = _embeds(model, batch)
    model.train()
    dropped = _embeds(model, batch)
    assert torch.equal(dropped[~audio], clean[~audio])  # text positions untouched
    zeroed = (dropped[audio] == 0).all(dim=-1)
    assert 0 < zeroed.sum() < audio.sum()  # some audio tokens dropped, whole vectors
    assert torch.allclose(dropped[audio][~zeroed], clean[audio][~zeroed] * 2)  # the rest scaled by 1/(1-p)
    model.eval()
    assert torch.equal(_embeds(model, batch), clean)


def _loss_and_grads(model, batch) -> tuple[float, list[torch.Tensor]]:
    model.train()
    model.zero_grad()
    loss = model(**{k: batch[k] for k in MODEL_INPUTS}).loss
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("stage", ["projector (frozen LLM in eval mode)", "LoRA (LLM in train mode)"])
def test_gradient_checkpointing_recomputes_every_layer_with_the_same_gradients(tiny_model_config, stage: str) -> None:
    torch.manual_seed(0)
    lora = stage.startswith("LoRA")
    cfg = tiny_model_config(projector_trainable=not lora)
    cfg.lora.enabled, cfg.lora.dropout = lora, 0.0
    model = build_model(cfg)
    batch = collator_for(model, 16000)(SAMPLES)
    layers = getattr(model.causal_lm, model.causal_lm.base_model_prefix).layers
    calls = []
    for layer in layers:
        # Its first module: recomputation stops once the backward has what it needs, before the end.
        layer.input_layernorm.register_forward_pre_hook(lambda *_: calls.append(1))
    loss, grads = _loss_and_grads(model, batch)
    assert len(calls) == len(layers)
    apply_speed_settings(model, TrainingConfig(gradient_checkpointing=True), log=print)
    calls.clear()
    loss_ckpt, grads_ckpt = _loss_and_grads(model, batch)
    assert len(calls) == 2 * len(layers)  # each layer's forward again in the backward pass
    assert loss_ckpt == pytest.approx(loss, rel=1e-6)
    assert len(grads) == len(grads_ckpt) > 0
    for a, b in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    calls.clear()
    with torch.no_grad():
        model(**{k: batch[k] for k in MODEL_INPUTS})
    assert len(calls) == len(layers)  # nothing to recompute without gradients


def test_torch_compile_wraps_llm_and_projector_or_warns(tiny_model_config, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(tiny_model_config())
    decoder = getattr(model.causal_lm, model.causal_lm.base_model_prefix)
    monkeypatch.setattr(optim, "compile_unsupported_reason", lambda: "no compiler here")
    lines: list[str] = []
    with pytest.warns(UserWarning, match="training.torch_compile=true ignored: no compiler here"):
        apply_speed_settings(model, TrainingConfig(torch_compile=True), log=lines.append)
    assert decoder._compiled_call_impl is None and lines
    monkeypatch.setattr(optim, "compile_unsupported_reason", lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_speed_settings(model, TrainingConfig(torch_compile=True), log=lines.append)
    assert not [w for w in caught if "torch_compile" in str(w.message)] and len(lines) == 1
    assert decoder._compiled_call_impl is not None and model.projector._compiled_call_impl is not None


@pytest.mark.parametrize("projector_type", ["mlp", "qformer"])
def test_chunked_encoder_and_trimmed_projector_change_nothing(tiny_model_config, projector_type: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(projector_type=projector_type, encoder_padding="max_length")).eval()
    batch = collator_for(model, 16000)(SAMPLES)
    embeds = _embeds(model, batch)
    # Reference: the projector over every (30 s) encoder frame, read at the real positions only.
    hidden = model.encoder.module(batch["input_features"]).last_hidden_state
    full, _ = model.projector(hidden, batch["encoder_lengths"])
    counts = model.audio_token_counts(batch["encoder_lengths"])
    audio = batch["input_ids"] == model.prompts.audio_token_id
    expected = torch.cat([full[i, : counts[i]] for i in range(len(counts))])
    torch.testing.assert_close(embeds[audio], expected, rtol=1e-5, atol=1e-5)
    model.encoder.max_batch = 1
    torch.testing.assert_close(_embeds(model, batch), embeds, rtol=1e-5, atol=1e-5)
