"""The course in miniature: the three training stages of the real recipe, on pretrained stand-ins.

Each stage runs the project's own training code (`tiny_audio.recipe.run`) with the same
experiments as the course (`mlp`, `mlp_lora`, `mlp_fine_tune`), through experiment files that add
the miniature's settings to them (`course_mlp`, ...: configs/experiments/course*.yaml), each later
stage starting from the previous stage's final checkpoint. After each stage the final checkpoint is scored on both
held-out splits and on a few robustness conditions (`CourseSettings.robust_each_stage`: a new
accent, noise, babble, a room, non-speech); the final stage on every condition of the robust set.
At the end a figure of the curves and a summary are written.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tiny_audio.compose import load_config
from tiny_audio.config import ConfigError
from tiny_audio.data.robust import COMPACT, NON_SPEECH_CONDITION, robust_conditions
from tiny_audio.evaluation.wer import WerReport, score
from tiny_audio.miniature.plot import plot_stages, stage_curves
from tiny_audio.miniature.standins import Miniature, read_split
from tiny_audio.model.build import load_pretrained
from tiny_audio.recipe.run import run
from tiny_audio.runtime.speech_llm import SpeechLLM
from tiny_audio.runtime.transcribe import transcribe
from tiny_audio.training import checkpoints

HELD_OUT_SPLITS = {"validation": "unseen sentences", "validation_new_voice": "unseen sentences, unseen voice"}
PLOT_FILE = "training.png"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Stage:
    name: str
    experiment: str
    steps: int
    learning_rate: float
    warmup_steps: int
    decoder_learning_rate: float | None = None  # experiments that train the whole decoder


# Training-audio augmentation of every stage, the measured winner of README's robustness table:
# it trades a few points on clean speech for noise, reverberation and silence (no output for
# non-speech), where the unaugmented course fails. `ta course --no-augment` trains without it.
AUGMENTATION = (
    "data.augment.noise.prob=0.25",
    "data.augment.reverb.prob=0.15",
    "data.augment.speed.prob=0.3",
    "data.augment.gain.prob=0.2",
    "data.augment.gain.db=[-18,6]",
    "data.augment.non_speech.prob=0.05",
    # Three fixed draws per clip: the encoder cache keeps augmented clips too, which pays for
    # stage 1's extra 200 steps (README's stage-length table).
    "data.augment.variants=3",
)


@dataclass(frozen=True)
class CourseSettings:
    """What the lesson trains; the defaults are the measured recipe in README's table."""

    stages: tuple[Stage, ...] = (
        # The projector is still learning at step 1000 and the later stages barely move the
        # figures, so stage 1 takes the time: 1250 / 50 / 50 steps beat 1000 / 100 / 100 on both
        # held-out splits and the robustness mean with two training seeds. With the augmentation's
        # fixed variants (fewer clips to encode), 1400 steps take the time 1200 took without.
        Stage("stage 1: projector", "mlp", 1400, 3e-3, 30),
        # Later stages start from a working model: gentle rates keep them from undoing stage 1
        # (5e-4 / 3e-4 cost 2.4 points of WER on the unseen voice in stage 3; these cost none).
        Stage("stage 2: LoRA", "mlp_lora", 50, 2e-4, 10),
        Stage("stage 3: both", "mlp_fine_tune", 50, 1e-4, 10),
    )
    batch_size: int = 16
    eval_steps: int = 50
    eval_clips: int = 48  # clips decoded at each evaluation during training
    seed: int = 42
    # Robustness conditions scored after every stage; the final stage is scored on all of them.
    robust_each_stage: tuple[str, ...] = COMPACT
    augmentation: tuple[str, ...] = AUGMENTATION
    extra_overrides: tuple[str, ...] = ()  # any other config key, e.g. training.adam_beta2=0.95


# Stage 3 training the whole decoder instead of LoRA (`ta course --full-decoder`), from stage 2's
# checkpoint, whose adapter is merged into the decoder first.
FULL_DECODER_STAGE = Stage("stage 3: projector + decoder", "mlp_full_decoder", 100, 1e-4, 10, 2e-5)


def with_full_decoder(settings: CourseSettings) -> CourseSettings:
    """The same course with its last stage training the projector and the whole decoder."""
    last = settings.stages[-1]
    stage = replace(FULL_DECODER_STAGE, steps=last.steps, warmup_steps=last.warmup_steps)
    return replace(settings, stages=(*settings.stages[:-1], stage))


@dataclass
class StageResult:
    name: str
    experiment: str
    output_dir: str
    checkpoint: str
    steps: int
    seconds: float
    best_wer: float | None
    intelligible_step: int | None  # first evaluation with WER <= 50% after one above it
    held_out_wer: dict[str, float] = field(default_factory=dict)
    # Per robustness condition: WER, or for non_speech the share of clips with any output.
    robust_wer: dict[str, float] = field(default_factory=dict)
    # The 95% interval of each WER above (held-out split or condition), by bootstrap over its
    # clips: with 24 clips a condition's interval spans about 4 to 25 points.
    wer_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    hallucination_rate: float | None = None
    scoring_seconds: float = 0.0  # scoring time of the held-out splits and robustness sets


def stage_overrides(miniature: Miniature, settings: CourseSettings, stage: Stage, output_dir: Path) -> list[str]:
    """The command-line overrides of one stage: `python scripts/train.py` takes them as they are.

    The stage's experiment file (`course_<experiment>`, configs/experiments/) holds what every
    course run shares; these are the paths into the cache and the settings `CourseSettings` can change.
    """
    dataset = f'{{path:"{miniature.speech}",train_splits:[train],eval_splits:[validation]}}'
    return [
        f"+experiments={course_experiment(stage)}",
        f"model.audio_model_id={miniature.encoder}",
        f"model.text_model_id={miniature.llm}",
        f"data.datasets=[{dataset}]",
        f"data.max_eval_samples={settings.eval_clips}",
        f"training.output_dir={output_dir}",
        f"training.max_steps={stage.steps}",
        f"training.learning_rate={stage.learning_rate}",
        *([f"training.decoder_learning_rate={stage.decoder_learning_rate}"] if stage.decoder_learning_rate else []),
        f"training.warmup_steps={stage.warmup_steps}",
        f"training.per_device_train_batch_size={settings.batch_size}",
        f"training.per_device_eval_batch_size={settings.batch_size}",
        f"training.eval_steps={settings.eval_steps}",
        f"training.eval_wer_samples={settings.eval_clips}",
        f"training.save_steps={stage.steps}",
        f"training.seed={settings.seed}",
        *settings.augmentation,
        *settings.extra_overrides,
    ]


def course_experiment(stage: Stage) -> str:
    """The experiment file of a stage: its experiment with the course's settings on top."""
    return f"course_{stage.experiment}"


class CourseInterrupted(RuntimeError):
    """A stage stopped early (Ctrl+C or SIGTERM); its checkpoint is saved and the course resumes from it."""


class CourseMismatch(RuntimeError):
    """A stage folder holds training done with other settings or stand-ins: reusing it would mix two courses."""


STAGE_RECORD = "course-stage.json"  # the overrides a stage folder's checkpoints were trained with


def claim_stage_folder(output_dir: Path, overrides: list[str]) -> None:
    """Refuse a folder whose checkpoints came from other settings (another --set, newer stand-ins), then record ours.

    Without this, `ta course --set ...` into the same --out would silently reuse the earlier
    stages, and a course run after an upgrade would resume from checkpoints of other stand-ins.
    Overrides written differently that resolve to the same settings match: a folder trained
    before the stages became experiment files is kept.
    """
    record = output_dir / STAGE_RECORD
    if checkpoints.latest_checkpoint(output_dir) is not None:
        saved = json.loads(record.read_text()) if record.is_file() else None
        differ = ["no record: another version of the course"] if saved is None else setting_changes(saved, overrides)
        if differ:
            raise CourseMismatch(
                f"{output_dir} holds a stage trained with other settings or stand-ins ({'; '.join(differ[:2])}): "
                f"delete {output_dir.parent} or pass --out DIR to train this course elsewhere"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(overrides, indent=1) + "\n")


def setting_changes(saved: list[str], overrides: list[str]) -> list[str]:
    """`key=saved value (now new value)` for each resolved setting the two override lists set differently.

    The experiment's name is left out: it names the file the settings came from, not a setting.
    """
    if saved == overrides:
        return []
    try:
        before = _flat(asdict(load_config(saved)))
    except ConfigError as error:
        return [f"its recorded overrides no longer compose: {error}"]
    now = _flat(asdict(load_config(overrides)))
    keys = sorted((before.keys() | now.keys()) - {"experiment"})
    return [f"{key}={before.get(key)} (now {now.get(key)})" for key in keys if before.get(key) != now.get(key)]


def _flat(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        flat.update(_flat(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return flat


def run_course(
    miniature: Miniature, settings: CourseSettings, out_dir: Path, log: Callable[[str], None] = print
) -> list[StageResult]:
    """Train every stage, skipping the ones already finished in `out_dir` and resuming an interrupted one."""
    results: list[StageResult] = []
    previous: Path | None = None
    for number, stage in enumerate(settings.stages, start=1):
        output_dir = out_dir / f"stage{number}-{stage.experiment}"
        final = output_dir / f"checkpoint-{stage.steps}"
        seconds = 0.0
        overrides = stage_overrides(miniature, settings, stage, output_dir)
        claim_stage_folder(output_dir, overrides)
        if checkpoints.is_complete(final):
            log(f"\n=== {stage.name[:1].upper()}{stage.name[1:]}: already trained ({final}) ===")
        else:
            if checkpoints.latest_checkpoint(output_dir) is not None:
                overrides.append("training.resume_from_checkpoint=latest")  # an interrupted run of this stage
            elif previous is not None:
                overrides.append(f"training.resume_from_checkpoint={previous}")
            log(f"\n=== {stage.name[:1].upper()}{stage.name[1:]} ({stage.experiment}, {stage.steps} steps) ===")
            log("python scripts/train.py " + " ".join(shlex.quote(o) for o in overrides))
            started = time.perf_counter()
            state = run(load_config(overrides), log=log)
            seconds = time.perf_counter() - started
            if state.step < stage.steps:
                raise CourseInterrupted(
                    f"{stage.name} stopped at step {state.step} of {stage.steps}; its checkpoint is saved: "
                    "run the same command again to continue from there"
                )
        previous = final
        curves = stage_curves([output_dir])[0]
        wers = [w for _, w in curves.wer]
        started = time.perf_counter()
        model = load_pretrained(str(final), device="cpu")
        held_out = held_out_reports(model, miniature)
        last = number == len(settings.stages)
        conditions = robust_reports(model, miniature.robust, None if last else settings.robust_each_stage)
        non_speech = conditions.pop(NON_SPEECH_CONDITION, None)
        del model
        result = StageResult(
            name=stage.name,
            experiment=stage.experiment,
            output_dir=str(output_dir),
            checkpoint=str(final),
            steps=stage.steps,
            seconds=seconds,
            best_wer=min(wers) if wers else None,
            intelligible_step=curves.intelligible_step,
            held_out_wer={split: report.wer for split, report in held_out.items()},
            robust_wer={name: report.wer for name, report in conditions.items()},
            hallucination_rate=None if non_speech is None else non_speech.hallucination_rate,
            wer_intervals={name: report.wer_interval() for name, report in {**held_out, **conditions}.items()},
            scoring_seconds=time.perf_counter() - started,
        )
        log(f"{stage.name}: " + ", ".join(f"{split} WER {wer:.1%}" for split, wer in result.held_out_wer.items()))
        if conditions or non_speech is not None:
            shown = [f"{name} {rate:.1%}" for name, rate in result.robust_wer.items()]
            if result.hallucination_rate is not None:
                shown.append(f"hallucinations on non-speech {result.hallucination_rate:.1%}")
            log(f"  robustness (WER): {', '.join(shown)} ({result.scoring_seconds:.0f} s to score)")
        results.append(result)
    return results


def held_out_reports(model: SpeechLLM, miniature: Miniature) -> dict[str, WerReport]:
    """Greedy transcripts of every clip of each held-out split, scored."""
    reports = {}
    for split in HELD_OUT_SPLITS:
        audios, texts = read_split(miniature.speech / split)
        reports[split] = score(texts, transcribe(model, audios, 16000, batch_size=32))
    return reports


def robust_reports(model: SpeechLLM, robust: Path, conditions: tuple[str, ...] | None) -> dict[str, WerReport]:
    """Each condition of the robust set at `robust` scored (non-speech: its hallucinations), in the set's order.

    `conditions=None` scores every condition the set has; a set that was not built (or a condition
    it lacks) is left out, so the course runs without it.
    """
    available = robust_conditions(robust) or []
    reports = {}
    for name in available:
        if conditions is not None and name not in conditions:
            continue
        audios, texts = read_split(robust / name)
        reports[name] = score(texts, transcribe(model, audios, 16000, batch_size=32))
    return reports


def write_outputs(results: list[StageResult], miniature: Miniature, out_dir: Path, seconds: float) -> tuple[Path, Path]:
    stages = stage_curves([Path(r.output_dir) for r in results], [r.name for r in results])
    plot = plot_stages(stages, out_dir / PLOT_FILE, title="The course in miniature: loss and WER across the stages")
    summary = {
        "stages": [asdict(r) for r in results],
        "models": {"llm": str(miniature.llm), "encoder": str(miniature.encoder), "speech": str(miniature.speech)},
        "pretraining": miniature.reports(),
        "plot": str(plot),
        "seconds": seconds,
    }
    path = out_dir / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return plot, path


def summary_table(results: list[StageResult]) -> str:
    header = "| stage | steps | time | best eval WER | WER fell below 50% | " + " | ".join(
        f"{split} WER ({what})" for split, what in HELD_OUT_SPLITS.items()
    )
    lines = [header + " |", "|" + "---|" * (5 + len(HELD_OUT_SPLITS))]
    for r in results:
        best = f"{r.best_wer:.1%}" if r.best_wer is not None else "-"
        cliff = f"step {r.intelligible_step}" if r.intelligible_step is not None else "-"
        held = " | ".join(f"{r.held_out_wer[s]:.1%}{_interval(r.wer_intervals.get(s))}" for s in HELD_OUT_SPLITS)
        lines.append(f"| {r.name} | {r.steps} | {r.seconds:.0f} s | {best} | {cliff} | {held} |")
    robust = robust_table(results)
    return "\n".join(lines + (["", *robust] if robust else []))


def robust_table(results: list[StageResult]) -> list[str]:
    """Conditions down, stages across: WER per condition, hallucination rate on non-speech ("-": not scored).

    The last stage's cells carry their 95% interval: what a difference must exceed to be more than noise.
    """
    names = list(dict.fromkeys(name for r in results for name in r.robust_wer))
    if not names and all(r.hallucination_rate is None for r in results):
        return []
    lines = ["| robustness | " + " | ".join(r.name for r in results) + " |", "|" + "---|" * (1 + len(results))]
    for name in names:
        cells = [f"{r.robust_wer[name]:.1%}" if name in r.robust_wer else "-" for r in results]
        if name in results[-1].robust_wer:
            cells[-1] += _interval(results[-1].wer_intervals.get(name))
        lines.append(f"| {name} WER | " + " | ".join(cells) + " |")
    cells = ["-" if r.hallucination_rate is None else f"{r.hallucination_rate:.1%}" for r in results]
    lines.append(f"| {NON_SPEECH_CONDITION}: clips with any output | " + " | ".join(cells) + " |")
    return lines


def _interval(bounds: tuple[float, float] | None) -> str:
    return "" if bounds is None else f" ({bounds[0]:.1%}–{bounds[1]:.1%})"
