"""Config errors are one line naming the key, the value and what is allowed; shipped configs validate."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from tiny_audio.compose import load_config
from tiny_audio.config import CONFIG_DIR, ConfigError, DataConfig, ModelConfig, TrainingConfig

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_experiment_validates(experiment: str) -> None:
    cfg = load_config([f"+experiments={experiment}"])
    assert cfg.experiment == experiment
    assert cfg.training.output_dir == f"outputs/{experiment}"


def test_course_defaults() -> None:
    cfg = load_config(["+experiments=mlp"])
    t, m = cfg.training, cfg.model
    assert (t.max_steps, t.learning_rate, t.per_device_train_batch_size) == (50000, 1e-4, 4)
    assert (t.gradient_accumulation_steps, t.warmup_steps, t.save_steps) == (4, 1000, 1000)
    assert (m.audio_model_id, m.text_model_id) == ("zai-org/GLM-ASR-Nano-2512", "Qwen/Qwen3-0.6B")
    assert (m.projector_type, m.projector_pool_stride) == ("mlp", 5)
    assert cfg.data.datasets[0].path == "speechbrain/LoquaciousSet"
    assert (cfg.data.datasets[0].audio_column, cfg.data.datasets[0].name) == ("wav", "medium")


def _drift(yaml_node: Any, default: Any, prefix: str) -> list[str]:
    """Each key of `yaml_node` whose value differs from the dataclass default, with both values, and
    each dataclass field the YAML lacks (Hydra refuses an override of a key its YAML does not hold)."""
    found = [
        f"{prefix}.{field.name}: in the dataclass, missing from the YAML (an override of it would be refused)"
        for field in dataclasses.fields(default)
        if field.name not in yaml_node and field.name not in ("defaults", "datasets")
    ]
    for key, value in yaml_node.items():
        full, expected = f"{prefix}.{key}", getattr(default, str(key))
        if dataclasses.is_dataclass(expected) and isinstance(value, DictConfig):
            found += _drift(value, expected, full)
            continue
        plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if dataclasses.is_dataclass(expected):
            expected = dataclasses.asdict(expected)
        if plain != expected:
            found.append(f"{full}: {plain!r} in the YAML, {expected!r} in the dataclass")
    return found


# Each YAML that repeats a schema's defaults, its section in that file and the dataclass that owns them.
# data.datasets is left out: the course's data file names its own dataset there, which has no default.
REPEATED_DEFAULTS = [
    ("config.yaml", "model", ModelConfig()),
    ("training/default.yaml", None, TrainingConfig()),
    ("data/loquacious.yaml", None, DataConfig()),
]


@pytest.mark.parametrize(("file", "section", "default"), REPEATED_DEFAULTS)
def test_yaml_defaults_match_the_dataclasses(file: str, section: str | None, default: Any) -> None:
    """The dataclasses hold the defaults; the YAML repeats them for the reader and must not drift from them."""
    node = OmegaConf.load(CONFIG_DIR / file)
    node = node[section] if section else node
    prefix = section or file.split("/")[0]
    node = OmegaConf.masked_copy(node, [k for k in node if k not in ("defaults", "datasets")])
    assert _drift(node, default, prefix) == []


def test_stages_declare_what_trains() -> None:
    stage1, stage2, stage3 = (load_config([f"+experiments={e}"]).model for e in ("mlp", "mlp_lora", "mlp_fine_tune"))
    assert (stage1.projector_trainable, stage1.lora.enabled) == (True, False)
    assert (stage2.projector_trainable, stage2.lora.enabled) == (False, True)
    assert (stage3.projector_trainable, stage3.lora.enabled) == (True, True)
    assert [m.decoder_mode for m in (stage1, stage2, stage3)] == ["frozen", "lora", "lora"]


def test_full_decoder_experiment_trains_the_decoder_at_its_own_rate() -> None:
    cfg = load_config(["+experiments=mlp_full_decoder"])
    assert (cfg.model.projector_trainable, cfg.model.decoder_trainable, cfg.model.lora.enabled) == (True, True, False)
    assert cfg.model.decoder_mode == "full"
    assert (cfg.training.learning_rate, cfg.training.decoder_learning_rate) == (1e-4, 2e-5)
    assert cfg.training.decoder_weight_decay == 0.01
    assert load_config(["+experiments=mlp"]).training.decoder_learning_rate is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["training.lerning_rate=1e-4"],
            "unknown config key 'training.lerning_rate': did you mean 'training.learning_rate'?",
        ),
        (
            ["+training.lerning_rate=1e-4"],
            "unknown config key 'training.lerning_rate': did you mean 'training.learning_rate'?",
        ),
        (
            ["model.projector_type=mpl"],
            "model.projector_type='mpl' is not allowed: choose one of mlp, mosa, moe, qformer",
        ),
        (["training.learning_rate=-1"], "training.learning_rate=-1.0 is not allowed: a positive number"),
        (["training.max_steps=ten"], "training.max_steps='ten' is not allowed: expected integer"),
        (["+experiments=nope"], "no config 'experiments/nope' in configs/: choose one of"),
        (["training.save_total_limit=0"], "training.save_total_limit=0 is not allowed: a positive integer"),
        (
            ["data.augment.noise.snr_db=[20,5]"],
            "data.augment.noise.snr_db=[20.0, 5.0] is not allowed: [low, high] with -30 <= low <= high <= 60",
        ),
        (
            ["+experiments=mlp_lora", "model.decoder_trainable=true"],
            "model.decoder_trainable=True is not allowed: false while model.lora.enabled=true",
        ),
        (
            ["+experiments=mlp", "training.decoder_learning_rate=2e-5"],
            "training.decoder_learning_rate=2e-05 is not allowed: null unless model.decoder_trainable=true",
        ),
        (
            ["+experiments=mlp_lora", "training.decoder_weight_decay=0.1"],
            "training.decoder_weight_decay=0.1 is not allowed: null unless model.decoder_trainable=true",
        ),
        (
            ["+experiments=mlp_full_decoder", "training.decoder_learning_rate=0"],
            "training.decoder_learning_rate=0.0 is not allowed: null (= training.learning_rate) or a positive",
        ),
        (
            ["model.projector_trainable=false"],
            "model.projector_trainable=False is not allowed: true unless model.lora.enabled or model.decoder_trainable",
        ),
    ],
)
def test_config_errors_name_key_value_and_fix(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_typo_in_a_copied_experiment_file_is_caught(tmp_path: Path) -> None:
    config_dir = tmp_path / "configs"
    import shutil

    shutil.copytree(CONFIG_DIR, config_dir)
    text = (config_dir / "experiments" / "mlp.yaml").read_text().replace("projector_type", "projecter_type")
    (config_dir / "experiments" / "my_experiment.yaml").write_text(text)
    with pytest.raises(
        ConfigError, match=r"unknown config key 'model\.projecter_type': did you mean 'model\.projector_type'"
    ):
        load_config(["+experiments=my_experiment"], config_dir=config_dir)


def test_train_script_prints_one_line_and_exits_non_zero() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "+experiments=mlp", "training.lerning_rate=1e-4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "config error: unknown config key 'training.lerning_rate': did you mean 'training.learning_rate'?"
    )
    assert "Traceback" not in result.stderr and result.stdout == ""
