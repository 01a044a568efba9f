"""Precision: bf16/fp16 where the hardware runs them natively, float32 on CPUs that would emulate them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.data_helpers import write_audiofolder
from tiny_audio.config import Config
from tiny_audio.recipe.run import run
from tiny_audio.training import precision
from tiny_audio.training.precision import Precision, choose_precision, native_dtypes, resolve_precision
from tiny_audio.training.preflight import run_preflight
from tiny_audio.training.trainer import Callback, Trainer

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
ZEN4 = AVX2_ONLY | {"avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16", "avx512_fp16"}
APPLE_M2 = frozenset({"fp", "asimd", "fphp", "asimdhp", "bf16"})


def test_native_dtypes_come_from_the_cpu_flags() -> None:
    assert native_dtypes(AVX2_ONLY) == frozenset()
    assert native_dtypes(ZEN4) == {"bfloat16"}
    assert native_dtypes(SAPPHIRE_RAPIDS) == {"bfloat16", "float16"}
    assert native_dtypes(APPLE_M2) == {"bfloat16", "float16"}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_cpu_without_native_half_precision_runs_float32_and_says_why(dtype: str) -> None:
    chosen = choose_precision(dtype, True, "auto", "cpu", native_dtypes(AVX2_ONLY))
    assert (chosen.dtype, chosen.bf16) == ("float32", False)
    assert chosen.reason is not None
    assert f"model.dtype={dtype}" in chosen.reason and "training.cpu_precision=as_configured" in chosen.reason


@pytest.mark.parametrize(
    ("dtype", "cpu_precision", "device", "flags"),
    [
        ("bfloat16", "auto", "cpu", ZEN4),  # native bf16
        ("float16", "auto", "cpu", SAPPHIRE_RAPIDS),  # native fp16
        ("bfloat16", "auto", "cuda", AVX2_ONLY),  # a GPU: the CPU's flags do not matter
        ("bfloat16", "as_configured", "cpu", AVX2_ONLY),  # forced
        ("float32", "auto", "cpu", AVX2_ONLY),  # nothing to fall back from
    ],
)
def test_the_configured_precision_stands_where_it_runs_natively_or_is_forced(
    dtype: str, cpu_precision: str, device: str, flags: frozenset[str]
) -> None:
    assert choose_precision(dtype, True, cpu_precision, device, native_dtypes(flags)) == Precision(dtype, True)


def test_float16_without_native_fp16_falls_back_even_with_native_bf16() -> None:
    assert choose_precision("float16", False, "auto", "cpu", native_dtypes(ZEN4)).dtype == "float32"


def test_the_shipped_defaults_become_float32_on_an_avx2_cpu_and_stay_bf16_on_a_gpu() -> None:
    cfg = Config()
    assert (cfg.model.dtype, cfg.training.bf16, cfg.training.cpu_precision) == ("bfloat16", True, "auto")
    lines: list[str] = []
    on_cpu = resolve_precision(cfg, torch.device("cpu"), lines.append, native=native_dtypes(AVX2_ONLY))
    assert (on_cpu.model.dtype, on_cpu.training.bf16) == ("float32", False)
    assert len(lines) == 1 and lines[0].startswith("Precision: float32 instead of model.dtype=bfloat16")
    assert (cfg.model.dtype, cfg.training.bf16) == ("bfloat16", True)  # the caller's config is left alone
    assert resolve_precision(cfg, torch.device("cuda"), lines.append, native=frozenset()) is cfg
    assert len(lines) == 1


class RecordDtypes(Callback):
    def on_train_start(self, trainer: Trainer) -> None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        self.llm = next(model.llm.parameters()).dtype
        self.encoder = next(model.encoder.parameters()).dtype


def _bf16_run(tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **training: object):
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)
    data = write_audiofolder(tmp_path / "data", {"train": 4, "validation": 4})
    cfg = tiny_run_config(data, model={"dtype": "bfloat16"}, bf16=True, max_steps=1, **training)
    recorder, lines = RecordDtypes(), []
    run(cfg, [recorder], log=lines.append)
    return recorder, lines


def test_a_run_on_a_cpu_without_native_bf16_trains_in_float32_with_one_line_saying_why(
    tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, lines = _bf16_run(tiny_run_config, tmp_path, monkeypatch)
    assert (recorder.llm, recorder.encoder) == (torch.float32, torch.float32)
    said = [line for line in lines if "Precision: float32" in line]
    assert len(said) == 1 and "training.cpu_precision=as_configured keeps bfloat16" in said[0], lines
    # The preflight checklist reports what was chosen.
    assert any(line.startswith("✓ precision: float32 weights, no autocast on cpu") for line in lines), lines


def test_cpu_precision_as_configured_keeps_bf16(
    tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder, lines = _bf16_run(tiny_run_config, tmp_path, monkeypatch, cpu_precision="as_configured")
    assert (recorder.llm, recorder.encoder) == (torch.bfloat16, torch.bfloat16)
    assert not any("Precision: float32" in line for line in lines)
    assert any(line.startswith("✓ precision: bfloat16 weights, bf16 autocast on cpu") for line in lines), lines


def test_preflight_alone_reports_the_fallback_and_why(
    tiny_run_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)
    data = write_audiofolder(tmp_path / "data", {"train": 4, "validation": 4})
    cfg = tiny_run_config(data, model={"dtype": "bfloat16"}, bf16=True)
    lines: list[str] = []
    results = run_preflight(cfg, log=lines.append)
    check = next(r for r in results if r.name == "precision")
    assert check.ok and check.detail.startswith("float32 weights, no autocast on cpu; Precision: float32 instead")


def test_a_saved_bf16_model_loads_in_float32_on_a_cpu_that_would_emulate_it(tiny_model_config, tmp_path: Path) -> None:
    from tiny_audio.model.build import build_model, load_pretrained, save_pretrained

    save_pretrained(build_model(tiny_model_config(dtype="bfloat16")), tmp_path / "saved")
    lines: list[str] = []
    emulating = load_pretrained(str(tmp_path / "saved"), device="cpu", log=lines.append, native=frozenset())
    assert {p.dtype for p in emulating.llm.parameters()} == {torch.float32}
    assert {p.dtype for p in emulating.encoder.parameters()} == {torch.float32}
    assert len(lines) == 1 and "Loading: float32 instead of model.dtype=bfloat16" in lines[0]
    assert "load_pretrained(..., dtype=...)" in lines[0]
    # Where the CPU runs bf16 natively, or when asked for it, the saved precision stands, silently.
    native = load_pretrained(str(tmp_path / "saved"), device="cpu", log=lines.append, native=frozenset({"bfloat16"}))
    forced = load_pretrained(
        str(tmp_path / "saved"), device="cpu", log=lines.append, native=frozenset(), dtype="bfloat16"
    )
    for model in (native, forced):
        assert torch.bfloat16 in {p.dtype for p in model.llm.parameters()}
    assert len(lines) == 1
