"""Library warnings known to be harmless here, silenced only around the call that triggers them."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around PEFT wrapping a decoder (get_peft_model, PeftModel.from_pretrained).

    PEFT reads transformers' deprecated `is_gradient_checkpointing` alias to decide whether to
    prepare the model for checkpointing; the FutureWarning it draws is about PEFT's code, not ours,
    and the answer it reads is the same. Only that message is filtered, only for this call.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


@contextlib.contextmanager
def stateful_loader() -> Iterator[None]:
    """Around building torchdata's StatefulDataLoader, which calls torch's deprecated `set_vital`
    (a telemetry switch with no effect on loading) and draws a UserWarning each run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        yield
