"""Compose the Hydra config from configs/ plus command-line overrides, with readable errors."""

from __future__ import annotations

import re
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from tiny_audio.config import CONFIG_DIR, Config, ConfigError, suggest_key, to_config


def experiment_name(overrides: list[str]) -> str:
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "experiments" and value:
            return value
    return "default"


def find_config_dir() -> Path:
    """The configs/ of the project being run: the working directory's, else the one beside this package."""
    local = Path.cwd() / "configs"
    return local if (local / "config.yaml").is_file() else CONFIG_DIR


def load_config(overrides: list[str], config_dir: Path | None = None) -> Config:
    """Compose configs/config.yaml with `overrides` and validate it; raises ConfigError."""
    config_dir = config_dir or find_config_dir()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            raw = compose(config_name="config", overrides=list(overrides))
    except HydraException as error:
        raise ConfigError(_describe_hydra_error(error, config_dir)) from None
    name = experiment_name(overrides)
    OmegaConf.set_struct(raw, False)
    raw.experiment = name
    config = to_config(raw)
    if config.training.output_dir is None:
        config.training.output_dir = str(Path("outputs") / name)
    return config


def _describe_hydra_error(error: HydraException, config_dir: Path) -> str:
    text = str(error)
    missing = re.search(r"Could not override '([^']+)'", text)
    if missing and missing.group(1) == "experiments":
        return "choose an experiment with a leading '+': +experiments=NAME (e.g. +experiments=mlp)"
    if missing:
        key = missing.group(1)
        close = suggest_key(key)
        hint = f"did you mean '{close}'?" if close else "check the spelling, or add it with a leading '+'"
        return f"unknown config key '{key}': {hint}"
    option = re.search(r"Could not find '([^']+)'", text)
    if option:
        group = option.group(1).split("/")[0]
        available = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        return f"no config '{option.group(1)}' in configs/: choose one of {', '.join(available)}"
    return " ".join(text.split())
