"""FLOPs a training step actually runs, counted by torch's FlopCounterMode on the step itself.

The count sees whatever the step runs: the encoder per clip when it encodes each clip on its own
frames (`longest` padding), the decoder layers' forward a second time under gradient checkpointing, no
projector backward when the projector is frozen, LoRA's low-rank products. The formulas in
flops.py write the same step out by hand and stay as a cross-check.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tiny_audio.model.encoder_cache import EncoderCache

_aten = torch.ops.aten


def _cpu_sdpa(query_shape: Any, key_shape: Any, value_shape: Any, *_: Any, **__: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *_: Any, **__: Any) -> int:
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


# torch's table has the CUDA attention kernels but not the CPU one, which SDPA picks on a CPU.
CPU_ATTENTION = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flop_counter() -> FlopCounterMode:
    """A silent counter that also knows the CPU attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


def counted_step_flops(model: Any, inputs: dict[str, torch.Tensor], autocast: Any) -> int:
    """FLOPs of one forward + backward (recomputation included) on `inputs`, as the trainer runs it.

    Run again on a batch already timed, outside the timing: counting every op through Python would
    slow the timed step. A cache attached to the encoder is swapped for an empty one of the same
    size, so the clips are encoded as they were the first time (each is new to the timed step),
    not served from what that step stored. Gradients are cleared afterwards; no optimizer step.
    """
    encoder = model.encoder
    cache = encoder.cache
    if cache is not None:
        encoder.cache = EncoderCache(cache.max_bytes)
    try:
        with flop_counter() as counter:
            with autocast:
                loss = model(**inputs).loss
            loss.backward()
    finally:
        encoder.cache = cache
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()
