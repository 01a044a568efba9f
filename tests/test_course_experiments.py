"""The course's stages as experiment files: each stage resolves to exactly the settings of the
override list it replaced, and a user running a stage file with only the paths gets the course's stage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tiny_audio.compose import load_config
from tiny_audio.miniature.course import (
    STAGE_RECORD,
    CourseMismatch,
    CourseSettings,
    Stage,
    claim_stage_folder,
    course_experiment,
    stage_overrides,
    with_full_decoder,
)
from tiny_audio.miniature.standins import Miniature
from tiny_audio.training import checkpoints


def old_stage_overrides(miniature: Miniature, settings: CourseSettings, stage: Stage, output_dir: Path) -> list[str]:
    """The reference: the stage's overrides as the course wrote them before its experiment files."""
    dataset = f'{{path:"{miniature.speech}",train_splits:[train],eval_splits:[validation]}}'
    return [
        f"+experiments={stage.experiment}",
        f"model.audio_model_id={miniature.encoder}",
        f"model.text_model_id={miniature.llm}",
        "model.projector_hidden_dim=1024",
        "model.dtype=float32",
        "model.encoder_padding=longest",
        "model.encoder_cache_gib=1",
        f"data.datasets=[{dataset}]",
        "data.num_workers=0",
        f"data.max_eval_samples={settings.eval_clips}",
        f"training.output_dir={output_dir}",
        f"training.max_steps={stage.steps}",
        f"training.learning_rate={stage.learning_rate}",
        *([f"training.decoder_learning_rate={stage.decoder_learning_rate}"] if stage.decoder_learning_rate else []),
        f"training.warmup_steps={stage.warmup_steps}",
        f"training.per_device_train_batch_size={settings.batch_size}",
        f"training.per_device_eval_batch_size={settings.batch_size}",
        "training.gradient_accumulation_steps=1",
        f"training.eval_steps={settings.eval_steps}",
        "training.eval_on_start=true",
        f"training.eval_wer_samples={settings.eval_clips}",
        f"training.save_steps={stage.steps}",
        "training.logging_steps=10",
        "training.bf16=false",
        "training.report_to=none",
        "training.preflight=false",
        f"training.seed={settings.seed}",
        *settings.augmentation,
        *settings.extra_overrides,
    ]


@pytest.fixture
def miniature(tmp_path: Path) -> Miniature:
    root = tmp_path / "miniature-v1-abc"
    return Miniature(root, root / "speech", root / "qwen3", root / "glm-asr", root / "robust")


def resolved(overrides: list[str]) -> dict[str, Any]:
    """Every setting of the composed config but the experiment's name, which names the file run."""
    settings = dataclasses.asdict(load_config(overrides))
    del settings["experiment"]
    return settings


SETTINGS = {
    "default": CourseSettings(),
    "full decoder": with_full_decoder(CourseSettings()),
    "changed knobs": with_full_decoder(
        CourseSettings(
            batch_size=4,
            eval_steps=7,
            eval_clips=5,
            seed=3,
            augmentation=(),
            extra_overrides=("training.adam_beta2=0.95", "model.encoder_cache_gib=0"),
        )
    ),
}


@pytest.mark.parametrize("name", SETTINGS)
def test_every_stage_resolves_to_the_settings_of_its_old_overrides(name: str, miniature: Miniature) -> None:
    settings = SETTINGS[name]
    for number, stage in enumerate(settings.stages, start=1):
        output_dir = miniature.root / "course" / f"stage{number}-{stage.experiment}"
        new = load_config(stage_overrides(miniature, settings, stage, output_dir))
        assert new.experiment == course_experiment(stage) == f"course_{stage.experiment}"
        assert resolved(stage_overrides(miniature, settings, stage, output_dir)) == resolved(
            old_stage_overrides(miniature, settings, stage, output_dir)
        ), stage.name


@pytest.mark.parametrize("settings", [CourseSettings(), with_full_decoder(CourseSettings())], ids=["lora", "full"])
def test_a_stage_file_given_only_the_paths_is_the_course_stage(settings: CourseSettings, miniature: Miniature) -> None:
    """The files' own steps, rates, batch, evaluation and seed are CourseSettings' defaults (augmentation aside)."""
    plain = dataclasses.replace(settings, augmentation=())
    for stage in settings.stages:
        paths = stage_overrides(miniature, plain, stage, miniature.root / "out")[:4]
        assert paths[0] == f"+experiments={course_experiment(stage)}"
        own = resolved([*paths, f"training.output_dir={miniature.root / 'out'}"])
        assert own == resolved(stage_overrides(miniature, plain, stage, miniature.root / "out")), stage.name


def test_a_stage_folder_trained_with_the_old_overrides_is_kept(miniature: Miniature, tmp_path: Path) -> None:
    settings = CourseSettings()
    stage = settings.stages[0]
    folder = tmp_path / "course" / "stage1-mlp"
    (folder / "checkpoint-1000").mkdir(parents=True)
    (folder / "checkpoint-1000" / checkpoints.STATE_FILE).write_text("{}")
    (folder / STAGE_RECORD).write_text(json.dumps(old_stage_overrides(miniature, settings, stage, folder)))
    overrides = stage_overrides(miniature, settings, stage, folder)
    claim_stage_folder(folder, overrides)
    assert json.loads((folder / STAGE_RECORD).read_text()) == overrides
    (folder / STAGE_RECORD).write_text(json.dumps(old_stage_overrides(miniature, settings, stage, folder)))
    other = stage_overrides(miniature, dataclasses.replace(settings, seed=7), stage, folder)
    with pytest.raises(CourseMismatch, match=r"training.seed=42 \(now 7\)"):
        claim_stage_folder(folder, other)
