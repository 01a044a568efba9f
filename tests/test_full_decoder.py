"""Training the whole decoder: which parameters learn, at which rate, and what checkpoints keep of it."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from tests.conftest import tone
from tests.data_helpers import write_audiofolder
from tests.test_resume import start_child, wait_for
from tiny_audio.config import LoraConfig, TrainingConfig
from tiny_audio.model import decoder_weights
from tiny_audio.model.build import build_model, load_pretrained, load_weights, parameter_counts, save_pretrained
from tiny_audio.recipe.run import describe_parameters, run
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.speech_llm import MODEL_INPUTS
from tiny_audio.training import checkpoints
from tiny_audio.training.optim import build_optimizer, build_scheduler, parameter_groups, recompute_decoder_layers
from tiny_audio.training.trainer import Trainer

SAMPLES = [
    {"audio": tone(0.7, seed=1), "text": "a short one"},
    {"audio": tone(1.6, seed=2), "text": "a longer clip of speech"},
]
quiet = lambda _: None  # noqa: E731


def batch_for(model) -> dict:
    batch = collator_for(model, 16000)(SAMPLES)
    return {k: batch[k] for k in MODEL_INPUTS}


def decoder_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    return decoder_weights._read_shards(checkpoint)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_audiofolder(tmp_path / "data", {"train": 24, "validation": 4})


def test_gradients_reach_every_decoder_weight_and_nothing_frozen(tiny_model_config) -> None:
    model = build_model(tiny_model_config(decoder_trainable=True)).train()
    lm = model.causal_lm
    assert lm.training and all(p.dtype == torch.float32 for p in lm.parameters())
    model(**batch_for(model)).loss.backward()
    for name, parameter in lm.named_parameters():
        assert parameter.requires_grad and parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for name, parameter in model.encoder.named_parameters():
        assert not parameter.requires_grad and parameter.grad is None, name
    assert all(p.grad is not None for p in model.projector.parameters())
    # Qwen3 ties its LM head to the embedding: one tensor, trained through both uses.
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight


def test_frozen_projector_with_a_trained_decoder_gets_no_gradient(tiny_model_config) -> None:
    model = build_model(tiny_model_config(decoder_trainable=True, projector_trainable=False)).train()
    assert not model.projector.training and model.causal_lm.training
    model(**batch_for(model)).loss.backward()
    assert all(p.grad is None for p in model.projector.parameters())


def test_trainable_count_has_the_whole_decoder_with_tied_weights_once(tiny_model_config) -> None:
    model = build_model(tiny_model_config(decoder_trainable=True))
    lm = model.causal_lm
    unique = {id(p): p.numel() for p in lm.parameters()}
    embedding = lm.get_input_embeddings().weight.numel()
    every_name = sum(t.numel() for t in lm.state_dict().values())  # the tied head counted a second time
    assert every_name == sum(unique.values()) + embedding
    assert parameter_counts(model)["llm"] == (sum(unique.values()), sum(unique.values()))
    assert f"llm        trainable {sum(unique.values()):>13,} of" in describe_parameters(model)


def test_two_groups_carry_their_rates_and_the_schedule_scales_both(tiny_model_config) -> None:
    model = build_model(tiny_model_config(decoder_trainable=True))
    args = TrainingConfig(
        learning_rate=1e-3,
        weight_decay=0.0,
        decoder_learning_rate=2e-5,
        decoder_weight_decay=0.1,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        max_steps=10,
    )
    groups = parameter_groups(model, args)
    assert [g["name"] for g in groups] == ["main", "decoder"]
    main, decoder = ({id(p) for p in g["params"]} for g in groups)
    assert main == {id(p) for p in model.projector.parameters()}
    assert decoder == {id(p) for p in model.causal_lm.parameters()}
    optimizer = build_optimizer(groups, args, torch.device("cpu"))
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(1e-3, 0.0), (2e-5, 0.1)]
    scheduler = build_scheduler(optimizer, args)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
        main_lr, decoder_lr = scheduler.get_last_lr()
        assert decoder_lr == pytest.approx(main_lr * 2e-5 / 1e-3, abs=1e-15)
    assert scheduler.get_last_lr()[1] < 2e-5 * 0.05  # cosine has decayed the decoder's rate too

    defaults = parameter_groups(model, TrainingConfig(learning_rate=3e-4, weight_decay=0.01))
    assert [(g["lr"], g["weight_decay"]) for g in defaults[1:]] == [(3e-4, 0.01)]


def test_lora_and_frozen_decoders_keep_one_group(tiny_model_config) -> None:
    lora = build_model(tiny_model_config(lora=LoraConfig(enabled=True)))
    (group,) = parameter_groups(lora, TrainingConfig())
    assert group["name"] == "main" and len(group["params"]) == sum(1 for p in lora.parameters() if p.requires_grad)


def test_gradient_checkpointing_gives_the_same_decoder_gradients(tiny_model_config) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(decoder_trainable=True)).eval()  # no dropout: same two passes
    batch = batch_for(model)
    model(**batch).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.causal_lm.named_parameters()}
    model.zero_grad()
    recompute_decoder_layers(model)
    model(**batch).loss.backward()
    for name, parameter in model.causal_lm.named_parameters():
        torch.testing.assert_close(parameter.grad, plain[name], rtol=1e-5, atol=1e-7, msg=name)


def perturbed(model) -> None:
    """Decoder weights unlike the base model's, as training leaves them."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.causal_lm.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)


def test_checkpoint_round_trip_restores_the_decoder(tiny_model_config, tmp_path: Path) -> None:
    model = build_model(tiny_model_config(decoder_trainable=True))
    perturbed(model)
    save_pretrained(model, tmp_path / "saved")
    assert (tmp_path / "saved" / decoder_weights.SINGLE_FILE).is_file()
    assert "lm_head.weight" not in load_file(str(tmp_path / "saved" / decoder_weights.SINGLE_FILE))  # tied: once
    fresh = build_model(tiny_model_config(decoder_trainable=True))
    assert load_weights(fresh, tmp_path / "saved") == ["projector", "decoder"]
    expected = model.causal_lm.state_dict()
    for name, tensor in fresh.causal_lm.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    loaded = load_pretrained(str(tmp_path / "saved"), device="cpu")
    assert torch.equal(loaded.causal_lm.get_input_embeddings().weight, model.causal_lm.get_input_embeddings().weight)


def test_a_frozen_decoder_is_not_saved(tiny_model_config, tmp_path: Path) -> None:
    save_pretrained(build_model(tiny_model_config(lora=LoraConfig(enabled=True))), tmp_path / "lora")
    assert not decoder_weights.has_decoder(tmp_path / "lora")


def test_a_large_decoder_is_sharded_with_an_index_and_loads(tiny_model_config, tmp_path: Path) -> None:
    model = build_model(tiny_model_config(decoder_trainable=True))
    perturbed(model)
    decoder_weights.save_decoder(model.causal_lm, tmp_path, max_shard_size=200_000)
    shards = sorted(tmp_path.glob("decoder-*-of-*.safetensors"))
    assert len(shards) >= 2 and (tmp_path / decoder_weights.INDEX_FILE).is_file()
    assert not (tmp_path / decoder_weights.SINGLE_FILE).exists()
    fresh = build_model(tiny_model_config(decoder_trainable=True))
    decoder_weights.load_decoder(fresh.causal_lm, tmp_path)
    expected = model.causal_lm.state_dict()
    assert all(torch.equal(t, expected[n]) for n, t in fresh.causal_lm.state_dict().items())

    # A checkpoint copied without one of its shards is refused before anything loads.
    (tmp_path / "tiny_audio_model.json").write_text("{}")
    shards[-1].unlink()
    with pytest.raises(checkpoints.CheckpointMismatchError, match=rf"incomplete decoder weights: {shards[-1].name}"):
        checkpoints.check_compatible(tmp_path, tiny_model_config(decoder_trainable=True))


def test_decoder_weights_of_another_llm_are_refused(tiny_model_config, tmp_path: Path) -> None:
    model = build_model(tiny_model_config(decoder_trainable=True))
    state = decoder_weights.decoder_state(model.causal_lm)
    state["model.layers.99.mlp.up_proj.weight"] = torch.zeros(1)  # a deeper model's layer
    del state["model.norm.weight"]
    save_file(
        {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}, str(tmp_path / "decoder.safetensors")
    )
    with pytest.raises(ValueError, match=r"unexpected \['model.layers.99.mlp.up_proj.weight'\], missing \['model.norm"):
        decoder_weights.load_decoder(model.causal_lm, tmp_path)


def test_sigkill_then_resume_matches_an_uninterrupted_full_decoder_run(
    tiny_run_config, data: Path, tmp_path: Path
) -> None:
    settings = {
        "model": {"decoder_trainable": True},
        "max_steps": 8,
        "save_steps": 4,
        "learning_rate": 1e-3,
        "decoder_learning_rate": 1e-4,
        "decoder_weight_decay": 0.01,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 2,
    }
    run(tiny_run_config(data, output_dir=str(tmp_path / "reference"), **settings), log=quiet)

    killed = tiny_run_config(data, output_dir=str(tmp_path / "killed"), save_total_limit=10, **settings)
    child = start_child(killed, tmp_path)
    try:
        wait_for(tmp_path / "killed" / "checkpoint-4" / checkpoints.STATE_FILE, child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    interrupted_at = checkpoints.latest_checkpoint(tmp_path / "killed")
    assert interrupted_at is not None and interrupted_at.name != "checkpoint-8"
    assert checkpoints.read_trainer_state(interrupted_at)["trainable"] == {
        "projector": True,
        "lora": False,
        "decoder": True,
    }
    killed.training.resume_from_checkpoint = "latest"
    lines: list[str] = []
    assert run(killed, log=lines.append).step == 8
    assert any(line.startswith(f"Resumed from {interrupted_at}") for line in lines)
    final, expected = tmp_path / "killed" / "checkpoint-8", tmp_path / "reference" / "checkpoint-8"
    for read in (decoder_tensors, lambda c: load_file(str(c / "projector.safetensors"))):
        got, want = read(final), read(expected)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    # It trained: the decoder is no longer the base model's.
    base = build_model(killed.model).causal_lm.state_dict()
    assert not torch.equal(decoder_tensors(final)["model.norm.weight"], base["model.norm.weight"])


def test_stage_hand_off_through_a_full_decoder_and_back_to_lora(tiny_run_config, data: Path, tmp_path: Path) -> None:
    stage1 = tiny_run_config(data, output_dir=str(tmp_path / "stage1"), max_steps=2)
    run(stage1, log=quiet)
    assert not decoder_weights.has_decoder(tmp_path / "stage1" / "checkpoint-2")

    full = tiny_run_config(
        data,
        model={"decoder_trainable": True},
        output_dir=str(tmp_path / "full"),
        max_steps=2,
        decoder_learning_rate=1e-3,
        resume_from_checkpoint=str(tmp_path / "stage1" / "checkpoint-2"),
    )
    lines: list[str] = []
    run(full, log=lines.append)
    assert any("loaded projector weights; now training projector, decoder" in line for line in lines)
    trained = decoder_tensors(tmp_path / "full" / "checkpoint-2")

    # A LoRA stage on top of the trained decoder: it loads it, keeps it frozen, and saves it again.
    lora = tiny_run_config(
        data,
        model={"projector_trainable": False, "lora": LoraConfig(enabled=True)},
        output_dir=str(tmp_path / "lora"),
        max_steps=2,
        resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"),
    )
    lines.clear()
    run(lora, log=lines.append)
    assert any("loaded projector, decoder weights; now training lora" in line for line in lines)
    saved = tmp_path / "lora" / "checkpoint-2"
    assert (saved / "lora" / "adapter_model.safetensors").is_file()
    again = decoder_tensors(saved)
    assert again.keys() == trained.keys() and all(torch.equal(again[k], trained[k]) for k in trained)

    # Loading it for inference gives the trained decoder under the adapter.
    model = load_pretrained(str(saved), device="cpu")
    base = model.causal_lm.state_dict()
    assert torch.equal(base["model.norm.weight"], trained["model.norm.weight"])
    assert torch.equal(
        base["model.layers.0.self_attn.q_proj.base_layer.weight"], trained["model.layers.0.self_attn.q_proj.weight"]
    )


def test_a_full_decoder_stage_from_a_lora_checkpoint_merges_the_adapter(tiny_model_config, tmp_path: Path) -> None:
    torch.manual_seed(0)
    with_lora = build_model(tiny_model_config(lora=LoraConfig(enabled=True)))
    for name, parameter in with_lora.llm.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)  # B starts at zero: make the adapter matter
    checkpoint = checkpoints.write_checkpoint(
        tmp_path, 2, lambda d: save_pretrained(with_lora, d), {"step": 2, "trainable": {}}, {}
    )
    batch = batch_for(with_lora)
    with torch.no_grad():
        expected = with_lora.eval()(**batch).lm_loss_sum

    cfg = tiny_model_config(decoder_trainable=True)
    full = build_model(cfg)
    from tiny_audio.config import Config

    run_cfg = Config(model=cfg, training=TrainingConfig(report_to="none", decoder_learning_rate=1e-5))
    trainer = Trainer(run_cfg, full, Accelerator(cpu=True), None, None, [], log=quiet)
    before = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    lines: list[str] = []
    trainer.log = lines.append
    trainer.resume(checkpoint)
    assert "loaded projector, lora merged into the decoder weights" in lines[-1]
    assert not any("lora_" in name for name, _ in full.named_parameters())
    assert {id(p) for p in full.causal_lm.parameters()} <= before  # the optimizer still holds them
    assert all(p.requires_grad for p in full.causal_lm.parameters())
    with torch.no_grad():
        merged = full.eval()(**batch).lm_loss_sum
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)
    assert full.decoder_changed  # its checkpoints will hold the merged decoder


def test_preflight_counts_the_whole_decoder_from_configs_alone_and_its_adam_moments(
    tiny_run_config, tmp_path: Path
) -> None:
    from tiny_audio.training.preflight import adam_state_bytes, run_preflight

    data = write_audiofolder(tmp_path / "data", {"train": 4, "validation": 2})
    cfg = tiny_run_config(data, model={"decoder_trainable": True})
    results = run_preflight(cfg, log=quiet)
    model = build_model(cfg.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    (models,) = [r for r in results if r.name == "models"]
    assert f"{trainable:,} trainable parameters" in models.detail  # the meta-device skeleton's count
    assert adam_state_bytes(model) == 2 * 4 * trainable


def test_the_course_switch_makes_stage_three_train_the_whole_decoder(tmp_path: Path) -> None:
    from tiny_audio.compose import load_config
    from tiny_audio.miniature.cli import _scaled
    from tiny_audio.miniature.course import CourseSettings, stage_overrides, with_full_decoder
    from tiny_audio.miniature.standins import Miniature

    default = CourseSettings()
    assert [s.experiment for s in default.stages] == ["mlp", "mlp_lora", "mlp_fine_tune"]  # unchanged
    settings = with_full_decoder(default)
    assert [s.experiment for s in settings.stages] == ["mlp", "mlp_lora", "mlp_full_decoder"]
    assert settings.stages[-1].steps == default.stages[-1].steps
    miniature = Miniature(tmp_path, tmp_path / "speech", tmp_path / "llm", tmp_path / "encoder", tmp_path / "robust")
    stage3 = load_config(stage_overrides(miniature, settings, settings.stages[-1], tmp_path / "out"))
    assert stage3.model.decoder_mode == "full" and stage3.experiment == "course_mlp_full_decoder"
    assert (stage3.training.learning_rate, stage3.training.decoder_learning_rate) == (1e-4, 2e-5)
    faster = dataclasses.replace(settings.stages[-1], decoder_learning_rate=5e-5)
    assert load_config(stage_overrides(miniature, settings, faster, tmp_path)).training.decoder_learning_rate == 5e-5
    # The LoRA stage before it takes no decoder rate (it would be refused).
    stage2 = load_config(stage_overrides(miniature, settings, settings.stages[1], tmp_path / "out"))
    assert stage2.model.decoder_mode == "lora" and stage2.training.decoder_learning_rate is None
    assert _scaled(settings, 200)[-1].decoder_learning_rate == 2e-5


def test_a_trained_decoder_of_other_frozen_models_is_refused_naming_it(tiny_run_config, tmp_path: Path) -> None:
    saved_cfg = tiny_run_config(tmp_path / "unused", model={"decoder_trainable": True})
    model = build_model(saved_cfg.model)
    checkpoint = checkpoints.write_checkpoint(
        tmp_path / "full", 2, lambda d: save_pretrained(model, d), {"step": 2, "trainable": {}}, {}
    )
    other = tiny_run_config(tmp_path / "unused", model={"decoder_trainable": True, "encoder_padding": "longest"})
    trainer = Trainer(other, model, Accelerator(cpu=True), None, None, [], log=quiet)
    with pytest.raises(checkpoints.CheckpointMismatchError, match="its projector and decoder weights only fit those"):
        trainer.resume(checkpoint)
