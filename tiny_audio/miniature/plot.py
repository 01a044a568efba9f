"""The picture of a run: train and eval loss, and eval WER, against steps; stages side by side.

Works on any run's output directory (it reads `metrics.jsonl`), and on several directories in
stage order: each later stage restarts its step count, so it is drawn after the one before,
with a marked boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a pod or in CI

import matplotlib.pyplot as plt

from tiny_audio.training.metrics_file import read_metrics

INTELLIGIBLE_WER = 0.5  # fewer than half the words wrong: a reader can follow the transcript


@dataclass
class StageCurves:
    name: str
    offset: int  # steps of the stages drawn before this one
    train: list[tuple[int, float]]
    eval_loss: list[tuple[int, float]]
    wer: list[tuple[int, float]]

    @property
    def intelligible_step(self) -> int | None:
        """The stage-local step of the first evaluation with WER <= `INTELLIGIBLE_WER`, after one above it."""
        above = False
        for step, wer in self.wer:
            if wer > INTELLIGIBLE_WER:
                above = True
            elif above:
                return step - self.offset
        return None


def stage_curves(output_dirs: Sequence[Path], names: Sequence[str] | None = None) -> list[StageCurves]:
    stages, offset = [], 0
    for i, directory in enumerate(output_dirs):
        records = read_metrics(directory)
        curves = StageCurves(
            name=names[i] if names else Path(directory).name,
            offset=offset,
            train=[(r["step"] + offset, r["train/loss"]) for r in records if "train/loss" in r],
            eval_loss=[(r["step"] + offset, r["eval/loss"]) for r in records if "eval/loss" in r],
            wer=[(r["step"] + offset, r["eval/wer"]) for r in records if "eval/wer" in r],
        )
        stages.append(curves)
        offset = max([offset, *(step for step, _ in curves.train + curves.eval_loss)])
    return stages


def plot_stages(stages: Sequence[StageCurves], out: Path, title: str = "Training") -> Path:
    """Write the figure as a PNG and return its path."""
    figure, (loss_axis, wer_axis) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for stage in stages:
        if stage.train:
            loss_axis.plot(*zip(*stage.train, strict=True), color="tab:blue", lw=1.2)
        if stage.eval_loss:
            loss_axis.plot(*zip(*stage.eval_loss, strict=True), "o-", color="tab:orange", ms=3, lw=1.2)
        if stage.wer:
            wer_axis.plot(*zip(*stage.wer, strict=True), "o-", color="tab:green", ms=3, lw=1.2)
        if stage.intelligible_step is not None:
            step = stage.intelligible_step + stage.offset
            wer_axis.axvline(step, color="tab:red", ls=":", lw=1)
            wer_axis.annotate(
                f" WER <= {INTELLIGIBLE_WER:.0%} at step {stage.intelligible_step}",
                (step, 0.95),
                xycoords=("data", "axes fraction"),
                color="tab:red",
                va="top",
            )
        for axis in (loss_axis, wer_axis):
            if stage.offset:
                axis.axvline(stage.offset, color="grey", ls="--", lw=1)
        loss_axis.annotate(
            f" {stage.name}",
            (stage.offset, 0.97),
            xycoords=("data", "axes fraction"),
            va="top",
            rotation=90,
            fontsize=8,
        )
    loss_axis.plot([], [], color="tab:blue", label="train loss")
    loss_axis.plot([], [], "o-", color="tab:orange", ms=3, label="eval loss")
    loss_axis.set_yscale("log")
    loss_axis.set_ylabel("loss (per target token)")
    loss_axis.legend(loc="lower left")
    loss_axis.set_title(title)
    wer_axis.set_ylabel("eval WER")
    wer_axis.set_xlabel("step")
    top = max([1.0, *(min(w, 2.0) for s in stages for _, w in s.wer)])
    wer_axis.set_ylim(0, top * 1.05)
    wer_axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    wer_axis.grid(alpha=0.3)
    loss_axis.grid(alpha=0.3)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
