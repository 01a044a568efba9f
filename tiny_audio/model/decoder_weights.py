"""A trained LLM decoder's weights in a checkpoint: sharded safetensors, and LoRA folded into them.

Written only when the decoder's weights differ from `model.text_model_id`'s (trained whole, or
taken from a checkpoint that trained them), as `decoder.safetensors`, or, above MAX_SHARD_SIZE,
as `decoder-0000k-of-0000n.safetensors` with `decoder.safetensors.index.json` mapping every key
to its shard (the Hub's layout). Keys are the plain causal LM's (`model.layers.0.mlp...`), with
a tied LM head stored once: they load into the LLM with or without LoRA layers injected.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

from tiny_audio.quiet import peft_wrapping

FILE_PATTERN = "decoder{suffix}.safetensors"
SINGLE_FILE = "decoder.safetensors"
INDEX_FILE = "decoder.safetensors.index.json"
# Qwen3-0.6B's float32 weights (2.4 GB) fit one file; larger decoders are cut into shards.
MAX_SHARD_SIZE = "5GB"
_WRAPPED = ".base_layer."  # PEFT moves a LoRA-targeted layer's own weights under `base_layer`


def has_decoder(directory: Path) -> bool:
    return (directory / SINGLE_FILE).is_file() or (directory / INDEX_FILE).is_file()


def missing_shards(directory: Path) -> list[str]:
    """Shards the index names that are not in `directory` (a checkpoint copied in part)."""
    index = directory / INDEX_FILE
    if not index.is_file():
        return []
    return sorted(name for name in _shard_names(index) if not (directory / name).is_file())


def decoder_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The causal LM's own weights under its plain names: LoRA adapters left out, wrapped layers unwrapped."""
    return {
        name.replace(_WRAPPED, "."): tensor.detach() for name, tensor in lm.state_dict().items() if "lora_" not in name
    }


def save_decoder(lm: nn.Module, directory: Path, max_shard_size: int | str = MAX_SHARD_SIZE) -> None:
    tied = list(getattr(lm, "_tied_weights_keys", None) or [])  # the copy to drop: Qwen3's `lm_head.weight`
    state = {name: tensor.cpu() for name, tensor in decoder_state(lm).items()}
    save_torch_state_dict(
        state, directory, filename_pattern=FILE_PATTERN, max_shard_size=max_shard_size, shared_tensors_to_discard=tied
    )


def load_decoder(lm: nn.Module, directory: Path) -> None:
    """Copy the decoder weights saved in `directory` into `lm` (a causal LM, LoRA layers injected or not)."""
    saved = _read_shards(directory)
    target = lm.state_dict()
    mapped, unexpected = {}, []
    for name, tensor in saved.items():
        module, _, leaf = name.rpartition(".")
        wrapped = f"{module}{_WRAPPED}{leaf}"
        if name in target:
            mapped[name] = tensor
        elif wrapped in target:
            mapped[wrapped] = tensor
        else:
            unexpected.append(name)
    # A tied head shares its tensor with the embedding: loading one fills both.
    filled = {target[name].data_ptr() for name in mapped}
    missing = [n for n, t in target.items() if n not in mapped and "lora_" not in n and t.data_ptr() not in filled]
    if unexpected or missing:
        raise ValueError(
            f"the decoder weights in {directory} do not fit this LLM (unexpected {unexpected[:3]}, missing "
            f"{missing[:3]}); load them with the model.text_model_id they were trained from"
        )
    lm.load_state_dict(mapped, strict=False)


def merge_lora(lm: nn.Module, adapter: Path) -> None:
    """Fold the LoRA adapter saved in `adapter` into `lm`'s own weights, in place: W += (alpha/r)·BA.

    The parameters stay the same objects (an optimizer built over them still holds them) with
    their trainability: PEFT would otherwise leave every base weight frozen.
    """
    trainable = {id(p): p.requires_grad for p in lm.parameters()}
    with peft_wrapping():
        merged = PeftModel.from_pretrained(lm, str(adapter)).merge_and_unload()
    if merged is not lm or {id(p) for p in lm.parameters()} != set(trainable):
        raise RuntimeError(f"merging the LoRA adapter {adapter} replaced the decoder's parameters")
    for parameter in lm.parameters():
        parameter.requires_grad_(trainable[id(parameter)])


def _read_shards(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / INDEX_FILE
    if not index.is_file():
        return load_file(str(directory / SINGLE_FILE))
    state: dict[str, torch.Tensor] = {}
    for name in _shard_names(index):
        state.update(load_file(str(directory / name)))
    return state


def _shard_names(index: Path) -> list[str]:
    return sorted(set(json.loads(index.read_text())["weight_map"].values()))
