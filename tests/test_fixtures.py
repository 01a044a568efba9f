import json
from pathlib import Path

import pytest
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSpeechSeq2Seq,
    AutoTokenizer,
)

from tiny_audio.fixtures import build_fixtures

LEGACY_PREFIXES = ("audio_tower.", "language_model.", "multi_modal_projector.")


@pytest.fixture(scope="session")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="session")
def tokenizer(paths: dict[str, Path]):
    return AutoTokenizer.from_pretrained(paths["qwen3"])


def test_glm_asr_loads_as_hub_checkpoint(paths: dict[str, Path]) -> None:
    config = AutoConfig.from_pretrained(paths["glm_asr"])
    assert config.model_type == "glmasr"
    assert config.audio_config.hidden_size == 64
    assert config.audio_config.max_position_embeddings == 1500
    model = AutoModelForSeq2SeqLM.from_pretrained(paths["glm_asr"])
    assert type(model).__name__ == "GlmAsrForConditionalGeneration"
    assert AutoFeatureExtractor.from_pretrained(paths["glm_asr"]).feature_size == 128


def test_glm_asr_is_sharded_with_legacy_keys(paths: dict[str, Path]) -> None:
    index = json.loads((paths["glm_asr"] / "model.safetensors.index.json").read_text())
    weight_map: dict[str, str] = index["weight_map"]
    assert all(key.startswith(LEGACY_PREFIXES) for key in weight_map)
    for prefix in LEGACY_PREFIXES:
        assert any(key.startswith(prefix) for key in weight_map)
    shards = set(weight_map.values())
    audio_shards = {shard for key, shard in weight_map.items() if key.startswith("audio_tower.")}
    assert len(shards) >= 2
    assert audio_shards < shards  # an encoder loader can skip the other shards
    assert all((paths["glm_asr"] / shard).is_file() for shard in shards)


def test_whisper_loads_with_encoder_under_model_prefix(paths: dict[str, Path]) -> None:
    model = AutoModelForSpeechSeq2Seq.from_pretrained(paths["whisper"])
    assert model.config.max_source_positions == 1500
    assert model.config.num_mel_bins == 80
    assert any(key.startswith("model.encoder.") for key in model.state_dict())
    assert AutoFeatureExtractor.from_pretrained(paths["whisper"]).feature_size == 80


def test_qwen3_ties_embeddings_and_leaves_spare_rows(paths: dict[str, Path], tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(paths["qwen3"])
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0
    assert len(tokenizer) < rows


def test_qwen3_special_token_ids_agree_with_configs(paths: dict[str, Path], tokenizer) -> None:
    model = AutoModelForCausalLM.from_pretrained(paths["qwen3"])
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token_id == model.config.pad_token_id == end_of_text
    assert tokenizer.eos_token_id == model.config.eos_token_id == im_end
    assert im_end in model.generation_config.eos_token_id
    for token in ("<|im_start|>", "<think>", "</think>"):
        assert tokenizer.tokenize(token) == [token]


def test_tokenizer_round_trips_text(tokenizer) -> None:
    text = "On 12/3/2024 the doctor paid $45.50, didn't she? Naïve café!"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_generation_prompt_is_prefix_of_training_target(tokenizer) -> None:
    user = {"role": "user", "content": "Transcribe the audio."}
    prompt = tokenizer.apply_chat_template([user], add_generation_prompt=True, enable_thinking=False, tokenize=False)
    target = tokenizer.apply_chat_template(
        [user, {"role": "assistant", "content": "hello world"}], enable_thinking=False, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert target == prompt + "hello world<|im_end|>\n"


def test_rebuild_is_skipped_when_complete(paths: dict[str, Path]) -> None:
    config = paths["qwen3"] / "config.json"
    before = config.stat().st_mtime_ns
    assert build_fixtures(paths["qwen3"].parent) == paths
    assert config.stat().st_mtime_ns == before


def test_interrupted_build_is_redone(tmp_path: Path) -> None:
    partial = tmp_path / "whisper"
    partial.mkdir()
    (partial / "config.json").write_text("{")
    build_fixtures(tmp_path)
    assert AutoConfig.from_pretrained(partial).model_type == "whisper"


def test_unknown_shape_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'huge'.*tiny, full"):
        build_fixtures(tmp_path, shape="huge")
