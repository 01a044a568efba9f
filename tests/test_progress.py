from tiny_audio.training.progress import StepTimer, format_duration, format_lr, format_metric, progress_line


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
