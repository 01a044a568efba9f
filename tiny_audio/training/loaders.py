"""The train loader: stream (bucketed if asked) -> audio augmentation -> augmenting collator -> stateful batches.

Evaluation builds its own loader from the plain collator: augmentation never reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from tiny_audio.config import Config
from tiny_audio.data.audio_augment import AudioAugmenter, train_audio_augmenter
from tiny_audio.data.augment import train_augmentation
from tiny_audio.data.bucketing import bucketed
from tiny_audio.data.stream import build_train_stream
from tiny_audio.quiet import stateful_loader
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.speech_llm import SpeechLLM
from tiny_audio.training.optim import loader_speedups


def build_train_loader(
    cfg: Config, collate: Callable[[list[dict[str, Any]]], dict[str, Any]], *, rank: int = 0, world_size: int = 1
) -> StatefulDataLoader:
    """`collate`: `train_collator(cfg, model)`, or a wrapper around it."""
    batch_size = cfg.training.per_device_train_batch_size
    stream = bucketed(
        build_train_stream(cfg.data, rank=rank, world_size=world_size),
        group_by_length=cfg.data.group_by_length,
        batch_size=batch_size,
        buffer_size=cfg.data.bucket_buffer,
        seed=cfg.data.seed,
        rank=rank,
    )
    with stateful_loader():
        return StatefulDataLoader(
            stream,
            batch_size=batch_size,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
            **loader_speedups(cfg.data.num_workers),
        )


def train_collator(cfg: Config, model: SpeechLLM, collator_for: Callable[..., Any] = collator_for) -> Any:
    """The collator for training batches: the model's, plus audio augmentation and SpecAugment when enabled."""
    collate = collator_for(model, cfg.data.sample_rate, augment=train_augmentation(cfg.data))
    augmenter = train_audio_augmenter(cfg.data)
    return collate if augmenter is None else AugmentingCollate(augmenter, collate)


class AugmentingCollate:
    """Augment a batch's audio, then collate it. A class rather than a closure so workers can pickle it."""

    def __init__(self, augmenter: AudioAugmenter, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.augmenter = augmenter
        self.collate = collate

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collate(self.augmenter(list(samples)))


def stop_workers(loader: Any) -> None:
    """Shut the train loader's workers down now rather than at interpreter exit.

    A StatefulDataLoader keeps its iterator (for state_dict) and so its workers alive; torn down
    in arbitrary order at exit, a worker blocked on its queue can hang a finished run.
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if iterator is not None:
        loader._iterator = None
