"""The loop's reductions over ranks, driven alone: this rank's values plus a second rank's, faked."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tiny_audio.data.skips import SkipLedger
from tiny_audio.training import ranks as ranks_module
from tiny_audio.training.ranks import Ranks


class TwoRanks:
    """An accelerator of two processes; the other rank contributes `other`, one entry per collective."""

    num_processes = 2
    device = torch.device("cpu")

    def __init__(self, *other: Any) -> None:
        self.other = list(other)

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        return tensor + torch.tensor(self.other.pop(0), dtype=tensor.dtype)


class OneRank:
    num_processes = 1
    device = torch.device("cpu")

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        raise AssertionError("one process runs no collective")


@pytest.fixture
def two_rank_gather(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the other rank hands to the next gathers."""
    other: list[Any] = []
    monkeypatch.setattr(ranks_module, "gather_object", lambda mine: [mine[0], other.pop(0)])
    return other


def test_an_update_sums_losses_samples_and_audio_over_both_ranks() -> None:
    # The other rank: lm loss sum 6, aux 0.2 over its 2 micro-batches, finite, 3 samples, 5.5 s of audio.
    ranks = Ranks(TwoRanks([6.0, 0.2, 0.0, 3.0, 5.5]))
    totals = ranks.update_totals(10.0, 0.4, tokens=8, grad_norm=1.5, samples=4, audio_seconds=8.0, micro_batches=2)
    assert (totals.loss.lm_loss_sum, totals.loss.tokens, totals.loss.lm_loss) == (16.0, 8, 2.0)
    assert totals.loss.aux_loss == pytest.approx(0.6 / 4)  # mean over 2 ranks x 2 micro-batches
    assert (totals.samples, totals.audio_seconds, totals.nonfinite) == (7, 13.5, False)


def test_a_non_finite_value_on_the_other_rank_skips_the_update_here_too() -> None:
    ranks = Ranks(TwoRanks([math.inf, 0.0, 1.0, 4.0, 8.0]))
    totals = ranks.update_totals(10.0, None, tokens=8, grad_norm=1.5, samples=4, audio_seconds=8.0, micro_batches=1)
    assert totals.nonfinite and totals.loss.aux_loss is None
    assert totals.samples == 8  # the data was consumed all the same


def test_a_non_finite_grad_norm_here_is_counted_once() -> None:
    ranks = Ranks(TwoRanks([6.0, 0.0, 0.0, 4.0, 8.0]))
    totals = ranks.update_totals(
        10.0, None, tokens=8, grad_norm=math.nan, samples=4, audio_seconds=8.0, micro_batches=1
    )
    assert totals.nonfinite


def test_one_process_runs_no_collective() -> None:
    ranks = Ranks(OneRank())
    totals = ranks.update_totals(10.0, 0.5, tokens=5, grad_norm=1.0, samples=4, audio_seconds=8.0, micro_batches=2)
    assert (totals.loss.lm_loss, totals.loss.aux_loss, totals.samples, totals.nonfinite) == (2.0, 0.25, 4, False)
    assert ranks.gather({"a": 1}) == [{"a": 1}]
    assert ranks.any(True) and not ranks.any(False)


def test_a_stop_on_either_rank_stops_both() -> None:
    assert Ranks(TwoRanks([1.0])).any(False)
    assert Ranks(TwoRanks([0.0])).any(True)
    assert not Ranks(TwoRanks([0.0])).any(False)


def test_skip_counts_add_up_over_disjoint_shards(two_rank_gather: list[Any]) -> None:
    skips = SkipLedger()
    skips.extend([("empty_text", "a"), ("empty_text", "b"), ("too_long", "c")])
    two_rank_gather.append({"too_long": 3, "empty_audio": 1})
    assert Ranks(TwoRanks()).skipped(skips) == {"too_long": 4, "empty_text": 2, "empty_audio": 1}
