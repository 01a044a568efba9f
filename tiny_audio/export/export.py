"""`ta export`: a training checkpoint -> a directory that transformers loads with trust_remote_code.

Layout of an export:
  config.json                 model_type tiny_audio, auto_map, custom_pipelines, the frozen models' ids
  model.safetensors           the trained projector (keys `projector.*`)
  lora/                       the PEFT LoRA adapter, if the model has one and it is not merged
  text_model/                 the LLM, when it was trained, LoRA is merged into it or frozen weights are included
  audio_model/                the encoder alone (no GLM-ASR language model), when frozen weights are included
  tokenizer files, preprocessor_config.json
  *.py                        the modelling, configuration and pipeline code, and tiny_audio.runtime's modules
  README.md                   the model card
By default the frozen encoder and LLM are referenced by id: the export is a few MB and downloads
them on first use; a decoder trained whole (model.decoder_trainable) exists only in the checkpoint
and is always written out. `include_frozen_weights` makes it self-contained (works offline, ~2.5 GB
for the course's models).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
import transformers
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoFeatureExtractor, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from tiny_audio import runtime
from tiny_audio.config import ModelConfig
from tiny_audio.export.card import DEFAULT_LICENSE, read_eval_results, write_model_card
from tiny_audio.folders import staging_folder, swap_in
from tiny_audio.model import decoder_weights
from tiny_audio.model.build import LORA_DIR, MODEL_CONFIG_FILE, PROJECTOR_FILE, read_model_config
from tiny_audio.quiet import peft_wrapping
from tiny_audio.runtime.assembly import PROJECTOR_PREFIX, WEIGHTS_FILE, token_embeddings
from tiny_audio.runtime.encoder import encoder_layout, load_audio_encoder

HUB_CODE_DIR = Path(__file__).resolve().parent / "hub_code"
RUNTIME_DIR = Path(runtime.__file__).resolve().parent
MODEL_TYPE = "tiny_audio"
AUDIO_DIR, TEXT_DIR = "audio_model", "text_model"
MAX_AUDIO_SECONDS = 30.0  # GLM-ASR's and Whisper's window
AUTO_MAP = {
    "AutoConfig": "configuration_tiny_audio.TinyAudioConfig",
    "AutoModel": "modeling_tiny_audio.TinyAudioModel",
}
CUSTOM_PIPELINES = {
    "automatic-speech-recognition": {
        "impl": "pipeline_tiny_audio.TinyAudioASRPipeline",
        "pt": ["AutoModel"],
        "type": "audio",
    }
}


class ExportError(ValueError):
    """The checkpoint or the destination cannot be exported as asked."""


@dataclass
class ExportResult:
    directory: Path
    notes: list[str] = field(default_factory=list)  # what a person should know (local paths, nothing to merge)


def is_export(directory: Path) -> bool:
    config = directory / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == MODEL_TYPE


def require_checkpoint(checkpoint: Path) -> None:
    if not checkpoint.is_dir():
        raise ExportError(
            f"{checkpoint} is not a directory; pass a local checkpoint such as outputs/<experiment>/checkpoint-N"
        )
    if is_export(checkpoint):
        raise ExportError(f"{checkpoint} is already an export (config.json with model_type {MODEL_TYPE})")
    if not (checkpoint / MODEL_CONFIG_FILE).is_file():
        raise ExportError(
            f"{checkpoint} is not a tiny-audio checkpoint (no {MODEL_CONFIG_FILE}); pass a checkpoint written by "
            "training, such as outputs/<experiment>/checkpoint-N"
        )


def export_model(
    checkpoint: Path,
    out: Path,
    *,
    merge_lora: bool = False,
    include_frozen_weights: bool = False,
    card: bool = True,
    eval_results: Path | None = None,
    model_id: str | None = None,
    license: str | None = None,
    index_subsets: bool = False,
) -> ExportResult:
    """Write the export of `checkpoint` to `out` (replacing an earlier export there) and return it."""
    require_checkpoint(checkpoint)
    if eval_results is not None:  # checked before anything is written
        read_eval_results(eval_results)
    if out.exists() and any(out.iterdir()) and not is_export(out):
        raise ExportError(f"{out} exists and is not an earlier export; choose an empty or new directory")
    cfg = read_model_config(checkpoint)
    staging = staging_folder(out)
    try:
        notes = _write_contents(staging, checkpoint, cfg, merge_lora, include_frozen_weights)
        if card:
            write_model_card(
                staging,
                checkpoint,
                # The model's name, never a local path: the Hub id, else the folder's own name.
                model_id=model_id or out.resolve().name,
                eval_results=eval_results,
                license=license or DEFAULT_LICENSE,
                index_subsets=index_subsets,
            )
        swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, notes)


def _write_contents(
    staging: Path, checkpoint: Path, cfg: ModelConfig, merge_lora: bool, include_frozen_weights: bool
) -> list[str]:
    """Everything but the model card; returns the notes for the person exporting."""
    notes: list[str] = []
    projector = load_file(str(checkpoint / PROJECTOR_FILE))
    save_file({PROJECTOR_PREFIX + key: value for key, value in projector.items()}, str(staging / WEIGHTS_FILE))
    AutoTokenizer.from_pretrained(str(checkpoint)).save_pretrained(str(staging))
    AutoFeatureExtractor.from_pretrained(cfg.audio_model_id).save_pretrained(str(staging))
    adapter = checkpoint / LORA_DIR
    has_lora = cfg.lora.enabled and (adapter / "adapter_model.safetensors").is_file()
    lora, text_model, audio_model = None, cfg.text_model_id, cfg.audio_model_id
    # A trained decoder exists nowhere but in the checkpoint: it goes into the export.
    trained = _trained_llm(cfg, checkpoint) if decoder_weights.has_decoder(checkpoint) else None
    if has_lora and merge_lora:
        _merged_llm(cfg, adapter, trained).save_pretrained(str(staging / TEXT_DIR))
        text_model = TEXT_DIR
    elif trained is not None:
        trained.save_pretrained(str(staging / TEXT_DIR))
        text_model = TEXT_DIR
    if has_lora and not merge_lora:
        shutil.copytree(adapter, staging / LORA_DIR)
        lora = LORA_DIR
    elif merge_lora and not has_lora:
        notes.append("the model has no LoRA adapter: nothing to merge")
    if include_frozen_weights:
        if text_model != TEXT_DIR:
            _load_llm(cfg).save_pretrained(str(staging / TEXT_DIR))
            text_model = TEXT_DIR
        _save_encoder(cfg, staging / AUDIO_DIR)
        audio_model = AUDIO_DIR
    for reference in {audio_model, text_model} - {AUDIO_DIR, TEXT_DIR}:
        if Path(reference).is_absolute() or Path(reference).exists():
            notes.append(
                f"{reference} is referenced by a local path: the export loads only on this machine; "
                "pass --include-frozen-weights to share it"
            )
    _write_config(staging, cfg, audio_model, text_model, lora, checkpoint, merge_lora and has_lora)
    for source in code_files():
        shutil.copy2(source, staging / source.name)
    return notes


def code_files() -> list[Path]:
    """The modelling, configuration and pipeline code, and the runtime's modules as they are: transformers
    loads them as flat siblings, which is how the runtime's modules import one another."""
    runtime_files = [path for path in sorted(RUNTIME_DIR.glob("*.py")) if path.name != "__init__.py"]
    return sorted(HUB_CODE_DIR.glob("*.py")) + runtime_files


def _write_config(
    directory: Path,
    cfg: ModelConfig,
    audio_model: str,
    text_model: str,
    lora: str | None,
    checkpoint: Path,
    merged: bool,
) -> None:
    config = {
        "model_type": MODEL_TYPE,
        "architectures": ["TinyAudioModel"],
        "auto_map": AUTO_MAP,
        "custom_pipelines": CUSTOM_PIPELINES,
        "audio_model": audio_model,
        "text_model": text_model,
        "lora": lora,
        "max_audio_seconds": MAX_AUDIO_SECONDS,
        "speech_llm": OmegaConf.to_container(OmegaConf.structured(cfg)),
        "exported_from": {"checkpoint": checkpoint.name, "lora_merged": merged},
        "transformers_version": transformers.__version__,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _load_llm(cfg: ModelConfig) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(cfg.text_model_id, dtype=getattr(torch, cfg.dtype))


def _trained_llm(cfg: ModelConfig, checkpoint: Path) -> PreTrainedModel:
    """`model.text_model_id`'s architecture with the checkpoint's trained decoder weights, in `model.dtype`."""
    llm = _load_llm(cfg)
    vocabulary = len(AutoTokenizer.from_pretrained(str(checkpoint)))
    if vocabulary > token_embeddings(llm).num_embeddings:  # as build_model grew it for `<audio>`
        llm.resize_token_embeddings(vocabulary, mean_resizing=False)
    decoder_weights.load_decoder(llm, checkpoint)
    return llm


def _merged_llm(cfg: ModelConfig, adapter: Path, base: PreTrainedModel | None = None) -> PreTrainedModel:
    """The LLM (`base`, else the id's) with W + (alpha/r)·BA folded into its weights: no PEFT at inference,
    same outputs up to rounding."""
    llm = base if base is not None else _load_llm(cfg)
    with peft_wrapping():
        # peft types the unwrapped model as any module; it is the PreTrainedModel it wrapped.
        return cast(PreTrainedModel, PeftModel.from_pretrained(llm, str(adapter)).merge_and_unload())


def _save_encoder(cfg: ModelConfig, directory: Path) -> None:
    """Only the encoder (GLM-ASR's 0.6B audio tower, not its 1.5B whole), in a layout load_audio_encoder reads."""
    encoder = load_audio_encoder(cfg.audio_model_id, getattr(torch, cfg.dtype), cfg.attn_implementation)
    config = encoder.module.config
    layout, _ = encoder_layout(config)
    prefix = layout.prefixes[-1]  # "" for a GLM-ASR encoder config, "encoder." for Whisper's
    directory.mkdir(parents=True)
    config.save_pretrained(str(directory))
    state = {prefix + key: value.detach().contiguous().cpu() for key, value in encoder.module.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    encoder.feature_extractor.save_pretrained(str(directory))
