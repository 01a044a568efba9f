"""The SpeechLLM on tiny real-architecture checkpoints: prompts, stages, encoder loading, save/load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from tests.conftest import tone
from tiny_audio.model.build import build_model, load_pretrained, parameter_counts, save_pretrained
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.encoder import load_audio_encoder, read_prefixed_tensors
from tiny_audio.runtime.prompts import PromptBuilder
from tiny_audio.runtime.speech_llm import IGNORE_INDEX, MODEL_INPUTS

SAMPLES = [
    {"audio": tone(0.7, seed=1), "text": "a short one"},
    {"audio": tone(2.3, seed=2), "text": "a much longer clip of speech"},
    {"audio": tone(1.2, seed=3), "text": "middle"},
]


def inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS}


@pytest.mark.parametrize("projector_type", ["mlp", "mosa", "moe", "qformer"])
def test_mixed_length_batch_has_one_audio_token_per_projected_frame(tiny_model_config, projector_type: str) -> None:
    model = build_model(tiny_model_config(projector_type=projector_type))
    batch = collator_for(model, 16000)(SAMPLES)
    per_prompt = (batch["input_ids"] == model.prompts.audio_token_id).sum(dim=1)
    expected = model.projector.output_lengths(batch["encoder_lengths"])
    assert per_prompt.tolist() == expected.tolist()
    assert len(set(per_prompt.tolist())) == 3  # three lengths, three counts
    # 100 mel frames per second, halved by the encoder's strided conv.
    assert batch["encoder_lengths"].tolist() == [35, 115, 60]
    model(**inputs(batch)).loss.backward()


def test_labels_cover_only_the_transcript(tiny_model_config) -> None:
    model = build_model(tiny_model_config())
    batch = collator_for(model, 16000)(SAMPLES)
    tokenizer = model.tokenizer
    for row, sample in zip(range(3), SAMPLES, strict=True):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert tokenizer.decode(labelled[:-1]) == sample["text"]
        assert int(labelled[-1]) == model.prompts.end_of_turn_id
        prompt_len = len(model.prompts.prompt_ids(int(model.audio_token_counts(batch["encoder_lengths"])[row])))
        assert (batch["labels"][row, :prompt_len] == IGNORE_INDEX).all()


def test_prompt_renders_like_the_chat_template_target(tiny_model_config) -> None:
    model = build_model(tiny_model_config())
    builder = PromptBuilder(model.tokenizer)
    rendered = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<audio>\nTranscribe the audio."}, {"role": "assistant", "content": "hi there"}],
        tokenize=False,
        enable_thinking=False,
    )
    ours = model.tokenizer.decode(builder.prompt_ids(1) + builder.target_ids("hi there"))
    assert rendered.startswith(ours)
    assert "<think>\n\n</think>" in ours  # thinking is off in every prompt


def test_audio_token_mismatch_names_both_numbers(tiny_model_config) -> None:
    model = build_model(tiny_model_config())
    batch = collator_for(model, 16000)(SAMPLES)
    batch["encoder_lengths"] = batch["encoder_lengths"] + 10  # projector would now emit more
    with pytest.raises(ValueError, match=r"sample 0 has 7 <audio> tokens .* emits 9 embeddings"):
        model(**inputs(batch))


STAGES = {
    "projector only (stage 1)": ({"projector_trainable": True}, False, {"projector"}),
    "lora only (stage 2)": ({"projector_trainable": False}, True, {"lora"}),
    "projector and lora (stage 3)": ({"projector_trainable": True}, True, {"projector", "lora"}),
}


def _component(name: str) -> str:
    if name.startswith("projector."):
        return "projector"
    if "lora_" in name:
        return "lora"
    return "encoder" if name.startswith("encoder.") else "llm"


@pytest.mark.parametrize("stage", list(STAGES))
def test_only_the_stages_parameters_get_gradients_and_frozen_weights_stay_put(tiny_model_config, stage: str) -> None:
    overrides, lora, expected = STAGES[stage]
    cfg = tiny_model_config(**overrides)
    cfg.lora.enabled = lora
    torch.manual_seed(0)
    model = build_model(cfg)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if _component(n) in ("encoder", "llm")}
    batch = collator_for(model, 16000)(SAMPLES)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(**inputs(batch)).loss.backward()
        with_grad = {
            _component(n) for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
        }
        assert with_grad == expected
        optimizer.step()
    for name, p in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name
    counts = parameter_counts(model)
    assert counts["encoder"][0] == 0 and counts["llm"][0] == 0
    assert (counts["projector"][0] > 0) == ("projector" in expected)


def test_lora_adds_adapters_on_the_configured_modules(tiny_model_config) -> None:
    cfg = tiny_model_config()
    cfg.lora.enabled = True
    model = build_model(cfg)
    lora_modules = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in model.llm.named_parameters() if "lora_" in n}
    assert lora_modules == {"q_proj", "v_proj"}


def test_encoder_reads_only_the_audio_tower_shards(tiny_fixtures, tmp_path: Path) -> None:
    source = tiny_fixtures["glm_asr"]
    copy = tmp_path / "glm"
    shutil.copytree(source, copy)
    index = json.loads((copy / "model.safetensors.index.json").read_text())["weight_map"]
    audio_shards = {f for k, f in index.items() if k.startswith("audio_tower.")}
    for shard in set(index.values()) - audio_shards:
        (copy / shard).unlink()  # the language model's shards are never needed
    tensors = read_prefixed_tensors(str(copy), ("audio_tower.",))
    assert tensors and all(not k.startswith(("language_model", "multi_modal")) for k in tensors)
    encoder = load_audio_encoder(str(copy), torch.float32)
    assert encoder.hidden_size == 64 and encoder.fixed_frames is None
    assert torch.equal(encoder.module.conv1.weight, tensors["conv1.weight"])


def test_whisper_encoder_pads_to_thirty_seconds(tiny_fixtures, tiny_model_config) -> None:
    model = build_model(tiny_model_config(audio_model_id=str(tiny_fixtures["whisper"])))
    assert model.encoder.fixed_frames == 3000
    batch = collator_for(model, 16000)(SAMPLES)
    assert batch["input_features"].shape[-1] == 3000
    assert batch["encoder_lengths"].tolist() == [35, 115, 60]
    model(**inputs(batch)).loss.backward()


def test_tied_embeddings_stay_tied_and_audio_token_fits(tiny_model_config) -> None:
    model = build_model(tiny_model_config())
    lm = model.causal_lm
    assert lm.get_input_embeddings().weight.data_ptr() == lm.get_output_embeddings().weight.data_ptr()
    rows = AutoConfig.from_pretrained(model.config.text_model_id).vocab_size  # the saved stand-in's rows
    assert lm.get_input_embeddings().num_embeddings == rows  # not resized: <audio> fits the spare rows
    assert model.prompts.audio_token_id < rows


@pytest.mark.parametrize("lora", [False, True])
def test_save_then_load_gives_identical_logits(tiny_model_config, tmp_path: Path, lora: bool) -> None:
    cfg = tiny_model_config(projector_type="moe")
    cfg.lora.enabled = lora
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = collator_for(model, 16000)(SAMPLES)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # move LoRA's B matrices off zero so the adapter matters
        optimizer.zero_grad()
        model(**inputs(batch)).loss.backward()
        optimizer.step()
    model.eval()
    save_pretrained(model, tmp_path / "saved")
    assert (tmp_path / "saved" / "projector.safetensors").exists()
    assert (tmp_path / "saved" / "lora" / "adapter_model.safetensors").exists() == lora
    assert not list((tmp_path / "saved").glob("model*.safetensors"))  # frozen parts are referenced, not copied
    loaded = load_pretrained(str(tmp_path / "saved"))
    with torch.no_grad():
        before = model(**inputs(batch)).lm_loss
        after = loaded(**inputs(batch)).lm_loss
        embeds_before, _ = model.embed_inputs(batch["input_features"], batch["encoder_lengths"], batch["input_ids"])
        embeds_after, _ = loaded.embed_inputs(batch["input_features"], batch["encoder_lengths"], batch["input_ids"])
        logits_before = model.llm(inputs_embeds=embeds_before, attention_mask=batch["attention_mask"]).logits
        logits_after = loaded.llm(inputs_embeds=embeds_after, attention_mask=batch["attention_mask"]).logits
    assert torch.equal(logits_before, logits_after)
    assert torch.equal(before, after)


def test_generate_returns_text_for_each_clip(tiny_model_config) -> None:
    model = build_model(tiny_model_config()).eval()
    batch = collator_for(model, 16000, with_targets=False)(SAMPLES)
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padded for generation
    new_tokens = model.generate(
        batch["input_features"], batch["encoder_lengths"], batch["input_ids"], batch["attention_mask"], max_new_tokens=5
    )
    assert new_tokens.shape[0] == 3 and new_tokens.shape[1] <= 5


def test_a_clips_audio_token_count_does_not_depend_on_its_batch(tiny_model_config) -> None:
    model = build_model(tiny_model_config(encoder_padding="longest"))
    collate = collator_for(model, 16000)
    odd = {"audio": tone(16001 / 16000), "text": "odd length"}  # one sample past a whole hop
    alone = collate([odd])["encoder_lengths"]
    batched = collate([odd, {"audio": tone(2.0), "text": "longer"}])["encoder_lengths"][:1]
    assert alone.tolist() == batched.tolist() == [50]


def test_vocabulary_logits_are_computed_only_at_label_positions(tiny_model_config) -> None:
    model = build_model(tiny_model_config())
    batch = collator_for(model, 16000)(SAMPLES)
    rows_seen: list[int] = []
    head = model.causal_lm.get_output_embeddings()
    hook = head.register_forward_hook(lambda _module, args, _out: rows_seen.append(args[0].shape[0]))
    try:
        model(**inputs(batch))
    finally:
        hook.remove()
    targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert rows_seen == [targets]  # one LM-head call, one row per target token, none for audio or prompt
    assert targets < batch["input_ids"].numel() / 4


def test_labels_only_loss_equals_the_causal_lms_own_full_logit_loss(tiny_model_config) -> None:
    """Our LM head runs only at target positions; transformers' loss (shift, then mean) must agree."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    batch = collator_for(model, 16000)(SAMPLES)
    with torch.no_grad():
        ours = model(**inputs(batch))
        embeds, _ = model.embed_inputs(batch["input_features"], batch["encoder_lengths"], batch["input_ids"])
        reference = model.causal_lm(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
    torch.testing.assert_close(ours.lm_loss, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.lm_loss_sum / ours.num_target_tokens, reference, rtol=1e-5, atol=1e-5)


def test_batched_generation_equals_one_by_one_generation(tiny_model_config) -> None:
    """Clips of different lengths, in an unsorted order, left-padded into one batch."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    collate = collator_for(model, 16000, with_targets=False)
    samples = [{"audio": s["audio"], "text": ""} for s in SAMPLES]  # 0.7 s, 2.3 s, 1.2 s
    batch = collate(samples)
    assert len(set(batch["attention_mask"].sum(dim=1).tolist())) == 3  # three prompt lengths: padding matters
    keys = ("input_features", "encoder_lengths", "input_ids", "attention_mask")
    batched = model.generate(**{k: batch[k] for k in keys}, max_new_tokens=8)
    for row, sample in enumerate(samples):
        alone = collate([sample])
        single = model.generate(**{k: alone[k] for k in keys}, max_new_tokens=8)
        assert batched[row, : single.shape[1]].tolist() == single[0].tolist(), row


@pytest.mark.parametrize("mel_frames", [1, 2, 3, 7, 8, 99, 100, 101])
def test_encoder_length_formula_matches_the_encoders_output(tiny_model_config, mel_frames: int) -> None:
    """Odd mel lengths included: the strided conv rounds up, and the formula must too."""
    model = build_model(tiny_model_config())
    n_mels = model.encoder.feature_extractor.feature_size
    hidden = model.encoder(torch.randn(1, n_mels, mel_frames))
    assert int(model.encoder.output_lengths(torch.tensor([mel_frames]))[0]) == hidden.shape[1]


QWEN3_TEMPLATE = Path(__file__).parent / "data" / "qwen3_chat_template.jinja"


def test_prompts_render_like_qwen3s_published_chat_template(tiny_model_config) -> None:
    """The fixtures carry the project's own template; this one is Qwen/Qwen3-0.6B's, verbatim.

    tests/data/qwen3_chat_template.jinja is the `chat_template` of Qwen3's tokenizer_config.json
    (the release version, as keyed verbatim in optimum-intel's exporters/openvino/utils.py).
    """
    model = build_model(tiny_model_config())
    tokenizer = model.tokenizer
    ours = PromptBuilder(tokenizer)
    messages = [
        {"role": "user", "content": "<audio>\nTranscribe the audio."},
        {"role": "assistant", "content": "hi there"},
    ]
    real_template = QWEN3_TEMPLATE.read_text()
    real_prompt = tokenizer.apply_chat_template(
        messages[:1], chat_template=real_template, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    real_training_text = tokenizer.apply_chat_template(
        messages, chat_template=real_template, tokenize=False, enable_thinking=False
    )
    # Inference prompt and training target render as Qwen3 itself renders them.
    assert tokenizer.decode(ours.prompt_ids(1)) == real_prompt
    assert real_training_text == tokenizer.decode(ours.prompt_ids(1) + ours.target_ids("hi there")) + "\n"
    # And a builder on the real template gives the very ids the fixtures' template gives.
    tokenizer.chat_template = real_template
    assert PromptBuilder(tokenizer).prompt_ids(5) == ours.prompt_ids(5)


@pytest.mark.parametrize("projector_type", ["qformer", "mlp"])
def test_frozen_modules_stay_in_eval_mode_when_the_model_trains(tiny_model_config, projector_type: str) -> None:
    """Stage 2: a frozen projector (Q-Former dropout 0.1) must not drop out; LoRA dropout must."""
    cfg = tiny_model_config(projector_type=projector_type, projector_trainable=False)
    cfg.lora.enabled, cfg.lora.dropout = True, 0.5
    model = build_model(cfg)
    model.train()
    assert not any(m.training for m in model.projector.modules())
    assert not any(m.training for m in model.encoder.modules())
    lora_dropout = [m for n, m in model.llm.named_modules() if n.endswith("lora_dropout.default")]
    assert lora_dropout and all(m.training for m in lora_dropout)
    batch = collator_for(model, 16000)(SAMPLES)
    hidden = model.encoder(batch["input_features"])
    first, _ = model.projector(hidden, batch["encoder_lengths"])
    second, _ = model.projector(hidden, batch["encoder_lengths"])
    assert torch.equal(first, second)

    stage1 = build_model(tiny_model_config(projector_type=projector_type))
    stage1.train()
    assert stage1.projector.training and not stage1.llm.training  # the LLM without LoRA is frozen


def test_a_decoder_that_post_processes_its_logits_is_refused(tiny_fixtures, tiny_model_config, tmp_path: Path) -> None:
    """Gemma-style soft-capping happens in the decoder's forward, which the labels-only head bypasses."""
    decoder = tmp_path / "softcapped"
    shutil.copytree(tiny_fixtures["qwen3"], decoder)
    config = json.loads((decoder / "config.json").read_text())
    (decoder / "config.json").write_text(json.dumps({**config, "final_logit_softcapping": 30.0}))
    with pytest.raises(ValueError, match=r"post-processes its logits \(final_logit_softcapping=30.0\)"):
        build_model(tiny_model_config(text_model_id=str(decoder)))
