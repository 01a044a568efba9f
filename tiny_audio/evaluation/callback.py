"""WER during training, and the moment a speech LLM's output turns from gibberish into words.

A projector-only stage typically sits near 100% WER for a long time, then falls within a few
evaluations once the LLM starts reading the audio embeddings ("the cliff"). Seeing the plateau
tells a learner the run is not broken yet; seeing the cliff tells them it worked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from tiny_audio.data.stream import build_eval_stream
from tiny_audio.evaluation.wer import score
from tiny_audio.runtime.defaults import DEFAULT_MAX_NEW_TOKENS
from tiny_audio.runtime.transcribe import transcribe
from tiny_audio.training.trainer import Callback, Trainer

EXAMPLE_CHARS = 200  # a looping prediction can be 128 tokens long; the log line shows its start


@dataclass
class CliffDetector:
    """Fires once, at the first evaluation whose WER drops sharply off a plateau.

    The rule: the previous `plateau_evals` WERs were all >= `plateau_wer` (still gibberish), and
    this one is below `plateau_wer` and at most (1 - `min_drop`) times the best of them. A steady
    decline never drops 30% at once from >= 0.9, and an insertion-heavy fall from, say, 4.0 to 1.2
    is not yet intelligible, so neither fires.
    """

    plateau_wer: float = 0.9
    plateau_evals: int = 2
    min_drop: float = 0.3
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, wer) per evaluation
    cliff_step: int | None = None

    def update(self, step: int, wer: float) -> str | None:
        """Record this evaluation; return the log message if the cliff is here."""
        previous = [w for _, w in self.history[-self.plateau_evals :]]
        self.history.append((step, wer))
        if self.cliff_step is not None or len(previous) < self.plateau_evals:
            return None
        if min(previous) < self.plateau_wer or wer >= self.plateau_wer:
            return None
        if wer > (1 - self.min_drop) * min(previous):
            return None
        self.cliff_step = step
        return f"WER fell from {min(previous):.2f} to {wer:.2f}: output became intelligible at step {step}"

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(entry) for entry in self.history], "cliff_step": self.cliff_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(step), float(wer)) for step, wer in state["history"]]
        self.cliff_step = state["cliff_step"]


class WerCallback(Callback):
    """On every evaluation: greedy WER on the first eval samples, its breakdown, examples, the cliff.

    Adds eval/wer, eval/{substitution,insertion,deletion,empty,looping}_rate and eval/predictions
    (a list of {"reference", "prediction"} for a tracker table) to the evaluation's metrics.
    `num_samples` defaults to training.eval_wer_samples; 0 turns the callback off.
    """

    def __init__(
        self,
        num_samples: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        examples: int = 3,
        cliff: CliffDetector | None = None,
    ) -> None:
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self.examples = examples
        self.cliff = cliff or CliffDetector()
        self._samples: list[dict[str, Any]] | None = None

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        wanted = trainer.cfg.training.eval_wer_samples if self.num_samples is None else self.num_samples
        # Every rank would decode the same clips; the main process alone logs, so it alone decodes.
        if wanted == 0 or not trainer.accelerator.is_main_process:
            return
        samples = self._eval_samples(trainer, wanted)
        model = trainer.accelerator.unwrap_model(trainer.model)
        # No autocast here: it would reach the feature extractor's torch code (bf16 mels it cannot
        # turn into numpy), and the model casts projected audio to the LLM's dtype itself.
        predictions = transcribe(
            model,
            [s["audio"] for s in samples],
            trainer.cfg.data.sample_rate,
            batch_size=trainer.cfg.training.per_device_eval_batch_size,
            max_new_tokens=self.max_new_tokens,
        )
        references = [s["text"] for s in samples]
        report = score(references, predictions)
        metrics.update(report.metrics())
        metrics["eval/predictions"] = [
            {"reference": r, "prediction": p} for r, p in zip(references, predictions, strict=True)
        ]
        # The same clips every time, so the log shows one transcript improving over the run.
        for i, (reference, prediction) in enumerate(zip(references[: self.examples], predictions, strict=False)):
            trainer.log(f"Example {i + 1} | reference: {_clip(reference)} | prediction: {_clip(prediction)}")
        if not report.speech:  # every reference normalised to nothing ("Uh.", "[noise]"): no WER to follow
            return
        message = self.cliff.update(trainer.state.step, report.wer)
        if message:
            trainer.log(message)

    def _eval_samples(self, trainer: Trainer, wanted: int) -> list[dict[str, Any]]:
        """The first `wanted` usable eval samples, read once: decoding them again each eval is wasted time."""
        data = trainer.cfg.data
        if self._samples is None:
            self._samples = [
                {"audio": item["audio"], "text": item["text"]} for item in islice(build_eval_stream(data), wanted)
            ]
            if not self._samples:
                raise ValueError(
                    "no usable eval samples for WER; check data.datasets[*].eval_splits, "
                    "or set training.eval_wer_samples=0"
                )
            if len(self._samples) < wanted:
                trainer.log(
                    f"WER uses {len(self._samples)} eval samples: the eval set (data.max_eval_samples="
                    f"{data.max_eval_samples}) has fewer usable ones than training.eval_wer_samples={wanted}"
                )
        return self._samples

    def state_dict(self) -> dict[str, Any]:
        return {"cliff": self.cliff.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cliff.load_state_dict(state["cliff"])


def _clip(text: str) -> str:
    return repr(text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…")
