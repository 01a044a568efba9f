import math

import pytest

from tiny_audio.training.progress import (
    ProgressWindow,
    StepTimer,
    format_duration,
    format_lr,
    format_metric,
    gpu_cost,
    progress_line,
    rank_rates_line,
    train_metrics,
)
from tiny_audio.training.ranks import WindowLoss


def test_learning_rates_read_the_way_people_write_them() -> None:
    assert [format_lr(x) for x in (1e-4, 2.5e-5, 3e-3, 0.0)] == ["1e-4", "2.5e-5", "3e-3", "0"]


def test_durations_round_to_what_matters() -> None:
    assert [format_duration(s) for s in (20 * 3600, 2.5 * 3600, 35 * 60, 42)] == ["20hr", "2.5hr", "35min", "42s"]


def test_course_progress_line_with_cost() -> None:
    line = progress_line(25, 20000, 8.34, 45.2, 1e-4, 20 * 3600, 3.5, 0.25, cost=(0.2, 8.0))
    assert line.startswith("Step 25/20000 | Loss: 8.34 | Grad Norm: 45.2 | LR: 1e-4 | ETA: 20hr")
    assert line.endswith("| Samples/s: 3.50 | Audio: 0.25h | Cost: $0.20 (projected $8.00)")


def test_eta_uses_the_moving_average_step_time() -> None:
    timer = StepTimer(window=2)
    timer.durations.extend([10.0, 2.0, 4.0])  # the oldest falls out of the window
    assert timer.seconds_per_step == 3.0
    assert timer.eta(100) == 300.0


def test_metrics_keep_three_significant_figures() -> None:
    assert [format_metric(x) for x in (8.3412, 45.21, 0.03121, 1234.5, float("nan"))] == [
        "8.34",
        "45.2",
        "0.0312",
        "1234",
        "nan",
    ]


def test_the_window_loss_is_token_weighted_over_updates_that_were_not_skipped() -> None:
    window = ProgressWindow()
    window.add(WindowLoss(lm_loss_sum=30.0, tokens=10, aux_loss=0.5), samples=4)
    window.add(None, samples=4)  # a skipped update: its data counts, its loss does not
    window.add(WindowLoss(lm_loss_sum=10.0, tokens=30, aux_loss=0.1), samples=4)
    assert window.loss == 1.0  # 40 / 40 tokens, not the mean of 3.0 and 0.33
    assert window.aux_loss == pytest.approx(0.3)
    assert window.samples == 12
    assert math.isnan(ProgressWindow().loss) and ProgressWindow().aux_loss is None


def test_cost_is_spent_and_projected_from_the_mean_step_time() -> None:
    timer = StepTimer()
    timer.durations.extend([36.0, 36.0])  # 0.01 h per step
    assert gpu_cost(timer, step=100, eta_seconds=3600, hourly_usd=2.0) == pytest.approx((2.0, 4.0))
    assert gpu_cost(timer, step=100, eta_seconds=3600, hourly_usd=None) is None


def test_per_rank_rates_name_the_slowest() -> None:
    assert rank_rates_line([4.0, 3.0]) == "Samples/s per rank: 0: 4.00, 1: 3.00 (slowest at 75% of the fastest)"


def test_metrics_of_a_two_rank_window_in_the_order_trackers_receive_them() -> None:
    window = ProgressWindow()
    window.add(WindowLoss(lm_loss_sum=20.0, tokens=10, aux_loss=0.25), samples=4)
    groups = [{"name": "projector", "lr": 1e-3}, {"name": "decoder", "lr": 1e-5}]
    metrics = train_metrics(window, 1.5, 1e-3, groups, [4.0, 3.0], 0.5, 2, {"too_long": 3})
    assert list(metrics.items()) == [
        ("train/loss", 2.0),
        ("train/grad_norm", 1.5),
        ("train/learning_rate", 1e-3),
        ("train/decoder_learning_rate", 1e-5),
        ("train/samples_per_second", 7.0),
        ("train/samples_per_second_rank0", 4.0),
        ("train/samples_per_second_rank1", 3.0),
        ("train/audio_hours", 0.5),
        ("train/nonfinite_updates", 2.0),
        ("train/aux_loss", 0.25),
        ("data/skipped_too_long", 3.0),
    ]


def test_one_rank_logs_no_per_rank_rates_and_no_aux_loss_without_one() -> None:
    window = ProgressWindow()
    window.add(WindowLoss(lm_loss_sum=20.0, tokens=10, aux_loss=None), samples=4)
    metrics = train_metrics(window, 1.5, 1e-3, [{"lr": 1e-3}], [4.0], 0.5, 0, {})
    assert list(metrics) == [
        "train/loss",
        "train/grad_norm",
        "train/learning_rate",
        "train/samples_per_second",
        "train/audio_hours",
        "train/nonfinite_updates",
    ]
