"""A saved tiny model with a non-trivial LoRA adapter, audio files, and `ta transcribe`'s output for them."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
import torch
from typer.testing import CliRunner

from tests.data_helpers import tone
from tiny_audio.evaluation.cli import app as evaluation_app
from tiny_audio.model.build import build_model, save_pretrained

MAX_NEW_TOKENS = 8


def save_tiny_model(model_config, directory: Path) -> Path:
    """An untrained tiny model saved as training saves it; LoRA B is random so the adapter changes the output."""
    torch.manual_seed(0)
    cfg = model_config()
    cfg.lora.enabled = True
    model = build_model(cfg)
    for name, parameter in model.llm.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.5)
    save_pretrained(model, directory)
    return directory


def save_tiny_full_decoder_model(model_config, directory: Path) -> Path:
    """An untrained tiny model whose whole decoder "trained": its weights moved away from the base LLM's."""
    torch.manual_seed(0)
    model = build_model(model_config(decoder_trainable=True))
    with torch.no_grad():
        for parameter in model.causal_lm.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    save_pretrained(model, directory)
    return directory


def write_clips(directory: Path) -> list[Path]:
    """A 16 kHz mono clip, a 44.1 kHz stereo one (resampled and mixed by both paths) and a FLAC."""
    directory.mkdir(parents=True, exist_ok=True)
    specs = [("a.wav", 1.0, 16000, 1, 220.0), ("b.wav", 1.3, 44100, 2, 330.0), ("c.flac", 0.8, 16000, 1, 440.0)]
    paths = []
    for name, seconds, rate, channels, freq in specs:
        sf.write(directory / name, tone(seconds, rate, channels, freq=freq), rate)
        paths.append(directory / name)
    return paths


def ta_transcribe(model: Path | str, files: list[Path]) -> list[str]:
    """Transcripts printed by `ta transcribe MODEL FILES...`, in file order."""
    result = CliRunner().invoke(
        evaluation_app, ["transcribe", str(model), *map(str, files), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    )
    assert result.exit_code == 0, result.output
    return [line.split("\t", 1)[1] for line in result.stdout.splitlines()]
