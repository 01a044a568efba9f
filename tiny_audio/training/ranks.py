"""What the loop reduces over its processes: one update's losses and data, skip counts, rates, stop flags.

Every method is a collective: each rank must call it, in the same order, or the run hangs. One
process runs none of them (no process group to wait on).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from tiny_audio.data.skips import SkipLedger, add_counts


@dataclass
class WindowLoss:
    """The losses of one optimizer update, over all of its micro-batches and all ranks."""

    lm_loss_sum: float  # summed over target tokens
    tokens: int  # target tokens
    aux_loss: float | None  # projector auxiliary loss, mean over micro-batches and ranks

    @property
    def lm_loss(self) -> float:
        return self.lm_loss_sum / max(self.tokens, 1)


@dataclass(frozen=True)
class UpdateTotals:
    """One update summed over ranks: the same on every rank, so every rank takes the same decision."""

    loss: WindowLoss
    nonfinite: bool  # some rank saw a non-finite loss or gradient norm: every rank skips the update
    samples: int
    audio_seconds: float


class Ranks:
    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator

    @property
    def count(self) -> int:
        return self.accelerator.num_processes

    def gather(self, value: Any) -> list[Any]:
        """`value` from every rank, in rank order."""
        if self.count == 1:
            return [value]
        return gather_object([value])

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over ranks."""
        if self.count == 1:
            return values
        summed = self.accelerator.reduce(
            torch.tensor(values, dtype=torch.float64, device=self.accelerator.device), reduction="sum"
        )
        return summed.tolist()

    def any(self, flag: bool) -> bool:
        """Whether `flag` is set on any rank."""
        if self.count == 1:
            return flag
        total = self.accelerator.reduce(torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device), "sum")
        return float(total) > 0

    def skipped(self, skips: SkipLedger) -> dict[str, int]:
        """Skipped samples per reason over all ranks (each reads a disjoint shard), most frequent first."""
        return add_counts(self.gather(skips.counts()))

    def update_totals(
        self,
        lm_loss_sum: float,
        aux_loss_sum: float | None,
        tokens: int,
        grad_norm: float,
        samples: int,
        audio_seconds: float,
        micro_batches: int,
    ) -> UpdateTotals:
        """This rank's sums for one update -> the update's over all ranks, in one collective.

        `tokens` is already the window's count over all ranks; `aux_loss_sum` is None without an
        auxiliary loss, else summed over this rank's micro-batches.
        """
        aux = aux_loss_sum if aux_loss_sum is not None else 0.0
        nonfinite = 0.0 if math.isfinite(lm_loss_sum + aux) and math.isfinite(grad_norm) else 1.0
        lm_loss_sum, aux, nonfinite, all_samples, all_audio_seconds = self.sum(
            [lm_loss_sum, aux, nonfinite, float(samples), audio_seconds]
        )
        mean_aux = aux / (self.count * micro_batches) if aux_loss_sum is not None else None
        return UpdateTotals(
            WindowLoss(lm_loss_sum, tokens, mean_aux), bool(nonfinite), int(all_samples), all_audio_seconds
        )
