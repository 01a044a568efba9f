"""Optimizer, learning-rate schedule and the per-run speed settings (TF32, checkpointing, compile).

Kept apart from the loop so that the benchmark builds exactly what training builds.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.checkpoint import checkpoint
from transformers import get_scheduler

from tiny_audio.config import TrainingConfig
from tiny_audio.runtime.speech_llm import SpeechLLM


def parameter_groups(model: SpeechLLM, args: TrainingConfig) -> list[dict[str, Any]]:
    """The optimizer's groups: what trains at `learning_rate`, then the decoder's own weights.

    The projector and LoRA adapters are new and learn fast; a pretrained decoder trained whole
    wants a far lower rate (`decoder_learning_rate`) or it forgets what it knew. Each group
    carries a `name`; parameters shared by two modules (Qwen3's tied embedding and LM head) are
    listed once, as `model.parameters()` lists them.
    """
    lm = model.causal_lm
    decoder_ids = {id(p) for name, p in lm.named_parameters() if "lora_" not in name}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"name": "main", "params": [p for p in trainable if id(p) not in decoder_ids]},
        {
            "name": "decoder",
            "params": [p for p in trainable if id(p) in decoder_ids],
            "lr": args.learning_rate if args.decoder_learning_rate is None else args.decoder_learning_rate,
            "weight_decay": args.weight_decay if args.decoder_weight_decay is None else args.decoder_weight_decay,
        },
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    params: Iterable[nn.Parameter] | list[dict[str, Any]], args: TrainingConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over parameters or `parameter_groups`; on a GPU the fused kernel (one launch for all
    parameters instead of several per tensor). The schedule scales every group's own rate alike.
    """
    return torch.optim.AdamW(
        params,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        fused=device.type == "cuda",
    )


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainingConfig) -> LRScheduler:
    """transformers' schedule named by `args.lr_scheduler_type`, with the floor and decay share applied."""
    specific: dict[str, object] = {}
    name = args.lr_scheduler_type
    if name == "cosine_with_min_lr":
        specific = {"min_lr_rate": args.min_lr_ratio}
    elif name == "polynomial":
        specific = {"lr_end": args.learning_rate * args.min_lr_ratio, "power": 1.0}
    elif name == "warmup_stable_decay":
        specific = {"num_decay_steps": round(args.max_steps * args.decay_ratio), "min_lr_ratio": args.min_lr_ratio}
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=args.warmup_steps,
        num_training_steps=args.max_steps,
        scheduler_specific_kwargs=specific,
    )


def recompute_decoder_layers(model: SpeechLLM) -> None:
    """Keep only each decoder layer's input in the forward pass and recompute the rest in the backward.

    By hand rather than transformers' gradient_checkpointing_enable: that checkpoints only layers
    in train mode, and stage 1 keeps the frozen LLM in eval mode (no dropout noise) while its
    activations are still kept for the projector's gradient. Non-reentrant: the layer's input
    (audio embeddings) carries the gradient, its weights may not.
    """
    decoder = getattr(model.causal_lm, model.causal_lm.base_model_prefix)
    for layer in decoder.layers:
        layer.forward = functools.partial(_recomputed_in_backward, layer.forward)


def _recomputed_in_backward(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():  # evaluation and generation: nothing to recompute
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_speed_settings(model: SpeechLLM, args: TrainingConfig, log: Callable[[str], None] = print) -> None:
    """TF32, LLM gradient checkpointing and torch.compile, as the training config asks."""
    if args.tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.gradient_checkpointing:
        recompute_decoder_layers(model)
    if args.torch_compile:
        reason = compile_unsupported_reason()
        if reason:
            warnings.warn(f"training.torch_compile=true ignored: {reason}; running eager", stacklevel=2)
            log(f"Warning: training.torch_compile=true ignored: {reason}; running eager.")
            return
        # In place (nn.Module.compile) so that saving, loading and DDP still see the same modules;
        # dynamic shapes because batch and sequence lengths change every step.
        decoder = getattr(model.causal_lm, model.causal_lm.base_model_prefix)
        decoder.compile(dynamic=True)
        model.projector.compile(dynamic=True)


def compile_unsupported_reason() -> str | None:
    """Why torch.compile cannot run here, or None when it can."""
    import shutil

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if not torch.cuda.is_available() and shutil.which("cc") is None and shutil.which("gcc") is None:
        return "no C compiler found for the CPU backend (install gcc)"
    return None


def loader_speedups(num_workers: int) -> dict[str, Any]:
    """On a GPU: page-locked batches (asynchronous host-to-device copies) and a deeper prefetch per worker."""
    if not torch.cuda.is_available():
        return {}
    return {"pin_memory": True, **({"prefetch_factor": 4} if num_workers > 0 else {})}
