"""Shared fixtures: tiny real-architecture models, built once per test session."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from transformers.utils import logging as hf_logging

from tiny_audio.config import Config, DatasetConfig, ModelConfig
from tiny_audio.fixtures import build_fixtures

hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_fixtures(tmp_path_factory.mktemp("fixtures"), shape="tiny")


@pytest.fixture(scope="session")
def tiny_model_config(tiny_fixtures: dict[str, Path]):
    """A factory: ModelConfig on the tiny fixtures, float32, with any field overridden."""

    def make(**overrides: object) -> ModelConfig:
        base = ModelConfig(
            audio_model_id=str(tiny_fixtures["glm_asr"]),
            text_model_id=str(tiny_fixtures["qwen3"]),
            projector_hidden_dim=64,
            dtype="float32",
        )
        base.mosa.router_hidden_dim = 16
        base.qformer.hidden_size, base.qformer.num_heads = 32, 4
        return dataclasses.replace(base, **overrides)

    return make


def tone(seconds: float, rate: int = 16000, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    """A short noisy tone: enough signal for the feature extractor, deterministic."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(t.shape) * 0.01
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


@pytest.fixture
def tiny_run_config(tiny_model_config, tmp_path: Path):
    """A factory: a full Config training the tiny fixtures on a local audiofolder under tmp_path."""

    def make(data_dir: Path, model: dict | None = None, data: dict | None = None, **training: object) -> Config:
        cfg = Config(experiment="test")
        cfg.model = tiny_model_config(**(model or {}))
        data_defaults = {
            "streaming": True,
            "min_words": 1,
            "num_workers": 0,
            "shuffle_buffer": 0,
            "max_eval_samples": 8,
        }
        cfg.data = dataclasses.replace(
            cfg.data,
            datasets=[DatasetConfig(path=str(data_dir), train_splits=["train"], eval_splits=["validation"])],
            **{**data_defaults, **(data or {})},
        )
        defaults = {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 30,
            "learning_rate": 3e-3,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "warmup_steps": 0,
            "lr_scheduler_type": "constant",
            "save_steps": 1000,
            "eval_steps": 1000,
            "logging_steps": 5,
            "bf16": False,
            "report_to": "none",
            "eval_wer_samples": 0,
        }
        cfg.training = dataclasses.replace(cfg.training, **{**defaults, **training})
        return cfg.validate()

    return make
