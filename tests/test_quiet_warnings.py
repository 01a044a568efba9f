"""Known-harmless library warnings are silenced at the call that raises them, and only there."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from transformers import AutoModelForCausalLM

from tests.data_helpers import write_audiofolder
from tiny_audio.model import decoder_weights
from tiny_audio.model.build import build_model
from tiny_audio.quiet import peft_wrapping
from tiny_audio.recipe.run import run

DEPRECATED = "`is_gradient_checkpointing` is deprecated"


def _messages(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record]


def test_building_and_merging_lora_prints_no_deprecation_warning(tiny_model_config, tmp_path: Path) -> None:
    cfg = tiny_model_config()
    cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, enabled=True))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = build_model(cfg)
        model.llm.save_pretrained(str(tmp_path / "lora"))
        lm = AutoModelForCausalLM.from_pretrained(cfg.text_model_id)
        decoder_weights.merge_lora(lm, tmp_path / "lora")
    assert not [m for m in _messages(record) if DEPRECATED in m]


def test_a_short_lora_run_prints_no_deprecation_warning(tiny_run_config, tiny_model_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 4, "validation": 2})
    lora = dataclasses.replace(tiny_model_config().lora, enabled=True)
    cfg = tiny_run_config(
        data, model={"lora": lora, "projector_trainable": False}, max_steps=2, per_device_train_batch_size=2
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run(cfg, log=lambda _: None)
    assert not [m for m in _messages(record) if "deprecated" in m]


def test_the_filter_is_narrow_and_scoped() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with peft_wrapping():
            warnings.warn(DEPRECATED + " and will be removed in v6.", FutureWarning, stacklevel=1)
            warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
        warnings.warn(DEPRECATED + " and will be removed in v6.", FutureWarning, stacklevel=1)
    assert _messages(record) == ["another FutureWarning", DEPRECATED + " and will be removed in v6."]
