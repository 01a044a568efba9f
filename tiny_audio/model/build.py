"""All model I/O: build a SpeechLLM from ids, save what was trained, load it back.

A saved model holds its config, the projector weights, the LoRA adapter if any, the decoder's
weights once they were trained (model.decoder_trainable), and the tokenizer; the frozen encoder and
an untrained LLM are referenced by id or path, never copied.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from omegaconf import OmegaConf
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AddedToken, AutoTokenizer, PreTrainedModel

from tiny_audio.config import ModelConfig
from tiny_audio.hardware import cpu_runs_natively, emulated_reason
from tiny_audio.model import decoder_weights
from tiny_audio.model.encoder_cache import EncoderCache
from tiny_audio.quiet import peft_wrapping
from tiny_audio.runtime.assembly import assemble_speech_llm
from tiny_audio.runtime.prompts import AUDIO_TOKEN
from tiny_audio.runtime.speech_llm import SpeechLLM

MODEL_CONFIG_FILE = "tiny_audio_model.json"
PROJECTOR_FILE = "projector.safetensors"
LORA_DIR = "lora"


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)  # stdout may be a transcript


def build_model(cfg: ModelConfig) -> SpeechLLM:
    """Load the frozen encoder and LLM, add a fresh projector (and LoRA), set trainability."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.text_model_id)
    tokenizer.add_tokens([AddedToken(AUDIO_TOKEN, special=True, normalized=False)], special_tokens=True)

    def prepare_llm(llm: PreTrainedModel) -> PreTrainedModel | PeftModel:
        if cfg.decoder_trainable:
            # float32 master weights, as the projector keeps: an AdamW update of 2e-5 x a bf16 weight
            # is below bf16's resolution and would round away. bf16 autocast still does the compute.
            # (The ignore: transformers' @wraps(nn.Module.to) hides `self` from type checkers.)
            llm.to(torch.float32).requires_grad_(True)  # type: ignore[arg-type]
        if not cfg.lora.enabled:
            return llm
        lora = PeftLoraConfig(
            r=cfg.lora.rank,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        with peft_wrapping():
            return get_peft_model(llm, lora)

    dtype = getattr(torch, cfg.dtype)
    model = assemble_speech_llm(cfg, cfg.audio_model_id, cfg.text_model_id, tokenizer, dtype, adapt_llm=prepare_llm)
    model.projector.requires_grad_(cfg.projector_trainable)
    model.decoder_changed = cfg.decoder_trainable
    return model


def attach_encoder_cache(model: SpeechLLM, cfg: ModelConfig) -> None:
    """Give the encoder the cache `model.encoder_cache_gib` asks for (training and the benchmark)."""
    if cfg.encoder_cache_gib > 0:
        model.encoder.cache = EncoderCache(int(cfg.encoder_cache_gib * 2**30))


def save_pretrained(model: SpeechLLM, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(OmegaConf.structured(model.config))
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(_contiguous(model.projector.state_dict()), str(directory / PROJECTOR_FILE))
    if isinstance(model.llm, PeftModel):
        model.llm.save_pretrained(str(directory / LORA_DIR))
    if model.decoder_changed:
        decoder_weights.save_decoder(model.causal_lm, directory)
    model.tokenizer.save_pretrained(str(directory))


def load_weights(model: SpeechLLM, directory: Path, *, lora: bool = True) -> list[str]:
    """Load the weights saved in `directory`; returns what loaded.

    Projector; the decoder's trained weights when present; the LoRA adapter if asked for, onto
    a model with LoRA, or folded into a decoder that trains whole ("lora merged").
    """
    loaded = []
    model.projector.load_state_dict(load_file(str(directory / PROJECTOR_FILE)))
    loaded.append("projector")
    if decoder_weights.has_decoder(directory):
        decoder_weights.load_decoder(model.causal_lm, directory)
        model.decoder_changed = True  # every later save must carry them: text_model_id no longer holds them
        loaded.append("decoder")
    adapter = directory / LORA_DIR / "adapter_model.safetensors"
    if lora and adapter.exists() and isinstance(model.llm, PeftModel):
        # peft annotates the result (torch's _IncompatibleKeys) as a bare `namedtuple`.
        unexpected = set_peft_model_state_dict(model.llm, load_file(str(adapter))).unexpected_keys  # type: ignore[attr-defined]
        if unexpected:
            raise ValueError(f"LoRA adapter in {directory} does not fit this model: {unexpected[:3]}")
        loaded.append("lora")
    elif adapter.exists() and model.config.decoder_trainable:
        decoder_weights.merge_lora(model.causal_lm, adapter.parent)
        model.decoder_changed = True
        loaded.append("lora merged into the decoder")
    return loaded


def read_model_config(directory: Path) -> ModelConfig:
    raw = json.loads((directory / MODEL_CONFIG_FILE).read_text())
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), raw)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def load_pretrained(
    path_or_id: str,
    device: str | None = None,
    log: Callable[[str], None] = _to_stderr,
    native: frozenset[str] | None = None,
    **overrides: Any,
) -> SpeechLLM:
    """Load a saved model (a directory, a checkpoint directory or a hub repo id) for inference.

    It goes to `device`, by default the GPU when there is one: `ta eval` on a pod should not decode on its CPU.
    On a CPU that would emulate the saved half precision it loads in float32 (one line to `log` says so),
    unless `dtype` is among the overrides; `native` stands in for this CPU's native dtypes.
    """
    directory = Path(path_or_id)
    if not directory.is_dir():
        directory = Path(snapshot_download(path_or_id))
    if not (directory / MODEL_CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path_or_id} holds no {MODEL_CONFIG_FILE}: not a saved tiny-audio model")
    cfg = dataclasses.replace(read_model_config(directory), **overrides)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cpu" and "dtype" not in overrides and not cpu_runs_natively(cfg.dtype, native):
        log(emulated_reason(cfg.dtype, "Loading", "load_pretrained(..., dtype=...)"))
        cfg = dataclasses.replace(cfg, dtype="float32")
    model = build_model(cfg)
    load_weights(model, directory)
    if cfg.decoder_trainable:  # trained in float32 master weights; inference runs in model.dtype, as exports do
        model.causal_lm.to(getattr(torch, cfg.dtype))
    return model.to(device).eval()


def parameter_counts(model: SpeechLLM) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameters per component."""
    lora = {name for name, _ in model.llm.named_parameters() if "lora_" in name}
    groups: dict[str, tuple[int, int]] = {}
    for component, module in (("encoder", model.encoder), ("projector", model.projector)):
        params = list(module.parameters())
        groups[component] = (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
    llm_params = [(n, p) for n, p in model.llm.named_parameters() if n not in lora]
    lora_params = [p for n, p in model.llm.named_parameters() if n in lora]
    groups["llm"] = (sum(p.numel() for _, p in llm_params if p.requires_grad), sum(p.numel() for _, p in llm_params))
    if lora_params:
        groups["lora"] = (sum(p.numel() for p in lora_params if p.requires_grad), sum(p.numel() for p in lora_params))
    return groups


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}
