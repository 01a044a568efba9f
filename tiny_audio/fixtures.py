"""Random-weight checkpoints with the real architectures, for tests and offline runs.

`build_fixtures` writes three directories that load through `from_pretrained` exactly as the hub ids
they stand in for: GLM-ASR-Nano-2512 (`glm-asr/`), a Whisper encoder-decoder (`whisper/`) and
Qwen3 with its ChatML tokenizer (`qwen3/`). "tiny" builds in seconds; "full" has the real encoder
and LLM shapes (for memory and speed measurements) but a tiny language model wherever the project
only reads the encoder.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    GlmAsrConfig,
    GlmAsrForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

from tiny_audio.data.sentences import ADJECTIVES, NAMES, NOUNS, PLACES, PRESENT, make_sentence
from tiny_audio.tokenizer import embedding_rows, train_chatml_tokenizer

SHAPES = ("tiny", "full")
_MARKER = ".complete"
# Bump when what a build writes changes, so directories built by older code are rebuilt.
FIXTURE_VERSION = 3

# Real checkpoints are published in bf16; "full" follows so its files are the real size on disk.
_DTYPE = {"tiny": torch.float32, "full": torch.bfloat16}

# Small enough that the tiny GLM-ASR checkpoint spans several shards, some without `audio_tower.*`,
# so encoder loading can be tested on reading only the shards it needs.
_GLM_SHARD_SIZE = {"tiny": "200KB", "full": "1GB"}

_TINY_BPE_VOCAB = 995  # + 5 added tokens = 1000


def build_fixtures(out_dir: Path, shape: str = "tiny", seed: int = 0) -> dict[str, Path]:
    """Write (or reuse) the three fixture checkpoints under `out_dir` and return their paths.

    A directory holding a marker for the same shape and seed is reused; anything else there is
    treated as an interrupted build and rebuilt. Weights and tokenizer depend only on `seed`.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown fixture shape {shape!r}; choose one of {', '.join(SHAPES)}")
    builders: dict[str, tuple[str, Callable[[Path, str, int], None]]] = {
        "glm_asr": ("glm-asr", _build_glm_asr),
        "whisper": ("whisper", _build_whisper),
        "qwen3": ("qwen3", _build_qwen3),
    }
    paths = {}
    for key, (dirname, build) in builders.items():
        path = Path(out_dir) / dirname
        _build_once(path, build, shape, seed)
        paths[key] = path
    return paths


def _build_once(path: Path, build: Callable[[Path, str, int], None], shape: str, seed: int) -> None:
    stamp = f"version={FIXTURE_VERSION} shape={shape} seed={seed}\n"
    marker = path / _MARKER
    if marker.is_file() and marker.read_text() == stamp:
        return
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    build(path, shape, seed)
    # Written last: a directory without it was interrupted mid-build.
    marker.write_text(stamp)


def _tiny_llama(vocab_size: int) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "vocab_size": vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _build_glm_asr(path: Path, shape: str, seed: int) -> None:
    # "full" keeps GlmAsrConfig's encoder defaults, which are GLM-ASR-Nano-2512's encoder.
    audio = (
        {}
        if shape == "full"
        else {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "intermediate_size": 256,
            "num_mel_bins": 128,
            "max_position_embeddings": 1500,
        }
    )
    # The language model is never loaded by the project, only its keys must exist: keep it tiny.
    config = GlmAsrConfig(audio_config=audio, text_config=_tiny_llama(1024), audio_token_id=1000)
    torch.manual_seed(seed)
    model = GlmAsrForConditionalGeneration(config).to(_DTYPE[shape])  # type: ignore[arg-type]  # @wraps hides self
    # transformers names these `model.audio_tower.*` in memory but saves the checkpoint's legacy
    # `audio_tower.*`, `language_model.*`, `multi_modal_projector.*` keys, as the real repo has.
    model.save_pretrained(path, max_shard_size=_GLM_SHARD_SIZE[shape])
    _feature_extractor(128).save_pretrained(path)


def _build_whisper(path: Path, shape: str, seed: int) -> None:
    # "full" is whisper-large-v3's encoder; the decoder shares d_model but is one layer deep.
    dims: dict[str, Any] = (
        {
            "d_model": 1280,
            "encoder_layers": 32,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "num_mel_bins": 128,
        }
        if shape == "full"
        else {
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 256,
            "num_mel_bins": 80,
        }
    )
    config = WhisperConfig(
        **dims,
        decoder_layers=1,
        decoder_attention_heads=dims["encoder_attention_heads"],
        decoder_ffn_dim=dims["encoder_ffn_dim"],
        max_source_positions=1500,
        max_target_positions=448,
        vocab_size=1024,
        # Whisper's defaults point at ids of its 51k vocabulary; keep every id inside the small one.
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=1,
        decoder_start_token_id=2,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).to(_DTYPE[shape])  # type: ignore[arg-type]  # @wraps hides self
    model.save_pretrained(path)
    _feature_extractor(dims["num_mel_bins"]).save_pretrained(path)


def _feature_extractor(n_mels: int) -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=16000, hop_length=160, chunk_length=30)


def _build_qwen3(path: Path, shape: str, seed: int) -> None:
    tokenizer = train_chatml_tokenizer(_corpus(seed), _TINY_BPE_VOCAB)
    tokenizer.save_pretrained(path)
    pad_id: int = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # type: ignore[assignment]  # one token, one id
    eos_id: int = tokenizer.convert_tokens_to_ids("<|im_end|>")  # type: ignore[assignment]  # one token, one id
    dims: dict[str, Any] = (
        {
            "hidden_size": 1024,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 3072,
            "vocab_size": 151_936,
        }
        if shape == "full"
        else {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "intermediate_size": 128,
            "vocab_size": embedding_rows(len(tokenizer)),
        }
    )
    # Ids follow Qwen3-0.6B's config: `<|endoftext|>` is bos and pad, `<|im_end|>` ends a turn.
    config = Qwen3Config(
        **dims,
        tie_word_embeddings=True,
        max_position_embeddings=40_960,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        # A tiny random LM with the usual 0.02 init is nearly uniform whatever its input, so
        # nothing a projector learns could show in the loss; a wider init gives it a voice.
        initializer_range=0.02 if shape == "full" else 0.3,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(_DTYPE[shape])  # type: ignore[arg-type]  # @wraps hides self
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    model.save_pretrained(path)


def _corpus(seed: int, n_sentences: int = 4000) -> Iterator[str]:
    """The speech grammar's sentences (data/sentences.py), a share of them rewritten in the forms a
    tokenizer meets in real transcripts: digits, money, dates, percentages, quotes, contractions."""
    rng = random.Random(seed)
    written: tuple[Callable[[], str], ...] = (
        lambda: make_sentence(rng),
        lambda: make_sentence(rng),
        lambda: f"{rng.choice(NAMES)} waited {rng.randint(2, 999)} minutes near the {rng.choice(PLACES)}, then left.",
        lambda: (
            f"it's {rng.choice(ADJECTIVES)}; {rng.choice(NAMES)} won't {rng.choice(PRESENT)} the {rng.choice(NOUNS)}!"
        ),
        lambda: (
            f"on {rng.randint(1, 28)}/{rng.randint(1, 12)}/{rng.randint(1950, 2030)} {rng.choice(NAMES)} "
            f"paid ${rng.randint(1, 500)}.{rng.randint(10, 99)} for the {rng.choice(NOUNS)}."
        ),
        lambda: (
            f'"{rng.choice(ADJECTIVES)} and {rng.choice(ADJECTIVES)}," said {rng.choice(NAMES)} '
            f"({rng.randint(10, 99)}% sure)."
        ),
        lambda: f"hello world, {rng.choice(NAMES)} would like to transcribe the {rng.choice(ADJECTIVES)} speech.",
    )
    for _ in range(n_sentences):
        sentence = rng.choice(written)()
        yield sentence[0].upper() + sentence[1:] if rng.random() < 0.7 else sentence
