"""The training loop: accumulate, clip, skip non-finite updates, log, evaluate, checkpoint, stop cleanly.

Built on accelerate (device placement, DDP, trackers) rather than HF Trainer so that a
checkpoint holds only trainable weights, is written atomically, and restores the exact data
position of a streaming dataset instead of replaying it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device

from tiny_audio.config import Config
from tiny_audio.data.skips import SkipLedger, summarize
from tiny_audio.model.build import load_weights, save_pretrained
from tiny_audio.runtime.speech_llm import MODEL_INPUTS, SpeechLLM, count_targets
from tiny_audio.training import checkpoints, snapshot
from tiny_audio.training.callback import Callback
from tiny_audio.training.loaders import stop_workers
from tiny_audio.training.optim import build_optimizer, build_scheduler, parameter_groups
from tiny_audio.training.progress import (
    ProgressWindow,
    StepTimer,
    gpu_cost,
    progress_line,
    rank_rates_line,
    train_metrics,
)
from tiny_audio.training.ranks import Ranks, WindowLoss
from tiny_audio.training.signals import StopSignals
from tiny_audio.training.snapshot import TrainState


def bf16_autocast(cfg: Config, device: torch.device) -> torch.autocast:
    """bf16 autocast when asked for and worth it: on a GPU, or on a CPU already holding bf16 weights.

    Used instead of accelerate's mixed-precision setting, which is fixed once per process.
    """
    enabled = cfg.training.bf16 and (device.type == "cuda" or cfg.model.dtype == "bfloat16")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    def __init__(
        self,
        cfg: Config,
        model: SpeechLLM,
        accelerator: Accelerator,
        train_loader: Any,
        eval_loader_factory: Callable[[], Iterable[dict[str, Any]]] | None,
        callbacks: list[Callback],
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg, self.model, self.accelerator = cfg, model, accelerator
        self.args = cfg.training
        self.output_dir = Path(self.args.output_dir or "outputs")
        self.train_loader = train_loader
        self.eval_loader_factory = eval_loader_factory
        self.callbacks = callbacks
        self.log = log
        self.params = [p for p in model.parameters() if p.requires_grad]
        groups = parameter_groups(accelerator.unwrap_model(model), self.args)
        self.optimizer = build_optimizer(groups, self.args, accelerator.device)
        self.scheduler = build_scheduler(self.optimizer, self.args)
        self.ranks = Ranks(accelerator)
        self.state = TrainState()
        self.skips = SkipLedger()
        self.stop_reason: str | None = None
        self.signals = StopSignals(self.request_stop, log)
        self._rng_to_restore: dict[str, Any] | None = None
        self.resumed_wandb_run_id: str | None = None  # continue the same W&B run after a resume

    # --- resume --------------------------------------------------------------------------

    def trainable_components(self) -> dict[str, bool]:
        return snapshot.trainable_components(self.cfg.model)

    def resume(self, checkpoint: Path) -> None:
        """Same stage: restore everything. Another stage: take its weights, start a fresh optimizer."""
        saved = checkpoints.read_trainer_state(checkpoint)
        model = self.accelerator.unwrap_model(self.model)
        checkpoints.check_compatible(checkpoint, self.cfg.model)
        if saved.get("trainable") == self.trainable_components():
            layout = snapshot.layout(self.accelerator.num_processes, self.cfg.data.num_workers)
            snapshot.check_same_layout(checkpoint, saved, layout)
            load_weights(model, checkpoint)
            # The random state is applied once the loop has created its data iterator: creating it
            # draws random numbers (worker seeds), which an uninterrupted run drew before its first step.
            self.state, self._rng_to_restore = snapshot.restore(
                checkpoints.load_training_state(checkpoint),
                self.accelerator.process_index,
                self.optimizer,
                self.scheduler,
                self.train_loader,
                self.skips,
                self.callbacks,
            )
            self.resumed_wandb_run_id = saved.get("wandb_run_id")
            self.log(
                f"Resumed from {checkpoint} at step {self.state.step}: weights, optimizer, data position restored."
            )
            return
        loaded = load_weights(model, checkpoint, lora=self.cfg.model.lora.enabled)
        self.log(
            f"Starting a new stage from {checkpoint} (step {saved.get('step')}): loaded {', '.join(loaded)} weights; "
            f"now training {', '.join(k for k, v in self.trainable_components().items() if v)} "
            "with a fresh optimizer and schedule."
        )

    # --- the loop ------------------------------------------------------------------------

    def fit(self) -> TrainState:
        self.signals.install()
        for callback in self.callbacks:
            callback.on_train_start(self)
        status = "failed"
        try:
            self._loop()
            status = "interrupted" if self.stop_reason else "completed"
        finally:
            self.signals.restore()
            stop_workers(self.train_loader)
            for callback in self.callbacks:
                callback.on_train_end(self, status)
        return self.state

    def _loop(self) -> None:
        args = self.args
        self.model.train()
        batches = iter(self.train_loader)
        if self._rng_to_restore is not None:
            checkpoints.set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        timer = StepTimer()
        window = ProgressWindow()
        if args.eval_on_start and self.state.step == 0:
            self.evaluate()  # the untrained baseline: where the first curve point of WER starts
        while self.state.step < args.max_steps and not self._any_rank_stopping():
            loss, grad_norm, samples = self._train_step(batches)
            self.state.step += 1
            timer.tick()
            window.add(loss, samples)
            step = self.state.step
            for callback in self.callbacks:
                callback.on_step_end(self)
            if step % args.logging_steps == 0 or step == args.max_steps:
                self._log_progress(window, grad_norm, timer)
                window = ProgressWindow()
            if step % args.eval_steps == 0 or step == args.max_steps:
                try:
                    self.evaluate()
                except Exception:
                    self.save()  # a failed evaluation must not cost the steps trained since the last save
                    raise
                timer.restart()
            if self.will_save_at(step):
                self.save()
                timer.restart()
        skipped = self.ranks.skipped(self.skips)
        self.log(summarize(skipped) if skipped else "Data: no samples skipped.")
        if self.stop_reason:
            self.log(
                f"Stopped at step {self.state.step} ({self.stop_reason}). Resume with: "
                f"training.resume_from_checkpoint=latest training.output_dir={self.output_dir}"
            )
        else:
            self.log(f"Training complete at step {self.state.step}; checkpoints in {self.output_dir}")

    def will_save_at(self, step: int) -> bool:
        """Whether the loop saves after this step (a save step, the last step, or a stop request)."""
        return step % self.args.save_steps == 0 or step == self.args.max_steps or self.stop_reason is not None

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[WindowLoss | None, float, int]:
        """One optimizer update over `gradient_accumulation_steps` micro-batches."""
        micro_batches = [next(batches) for _ in range(self.args.gradient_accumulation_steps)]
        samples = sum(len(batch["texts"]) for batch in micro_batches)
        audio_seconds = sum(batch["audio_seconds"] for batch in micro_batches)
        for batch in micro_batches:
            self.skips.extend(batch["skipped"])
        # Cleared here rather than after the update, so callbacks can read this update's gradients.
        self.optimizer.zero_grad(set_to_none=True)
        lm_loss_sum, aux_loss, tokens = self.accumulate_gradients(micro_batches)
        grad_norm = float(self.accelerator.clip_grad_norm_(self.params, self.args.max_grad_norm))
        totals = self.ranks.update_totals(
            lm_loss_sum, aux_loss, tokens, grad_norm, samples, audio_seconds, len(micro_batches)
        )
        # The run's totals, the same on every rank: what the logs, checkpoints and model card report.
        self.state.samples_seen += totals.samples
        self.state.audio_seconds += totals.audio_seconds
        if totals.nonfinite:
            self._skip_update(totals.loss.lm_loss, grad_norm)
            return None, grad_norm, samples
        self.state.nonfinite_in_row = 0
        self.optimizer.step()
        self.scheduler.step()
        return totals.loss, grad_norm, samples

    def accumulate_gradients(self, micro_batches: list[dict[str, Any]]) -> tuple[float, float | None, int]:
        """Backward over the micro-batches so the gradient is that of the window's mean token loss.

        Each micro-batch's summed token loss is divided by the target tokens of the whole window
        on every rank, not averaged per micro-batch: a token in a short-transcript batch then
        weighs what any other token weighs (the bias transformers fixed in 4.46). Returns this
        rank's summed token loss, its summed auxiliary loss (None without one) and the window's
        token count over all ranks.
        """
        tokens = int(self.ranks.sum([float(sum(count_targets(b["labels"]) for b in micro_batches))])[0])
        # DDP averages gradients over ranks; multiplying by the number of ranks makes that a sum.
        scale = self.accelerator.num_processes / max(tokens, 1)
        lm_loss_sum, aux_loss_sum = 0.0, None
        last = len(micro_batches) - 1
        for micro, batch in enumerate(micro_batches):
            inputs = send_to_device({k: batch[k] for k in MODEL_INPUTS}, self.accelerator.device, non_blocking=True)
            with self.accelerator.no_sync(self.model) if micro < last else contextlib.nullcontext():
                with bf16_autocast(self.cfg, self.accelerator.device):
                    output = self.model(**inputs)
                loss = output.lm_loss_sum * scale
                if output.aux_loss is not None:
                    # A per-batch statistic (expert load): averaged over micro-batches and ranks.
                    loss = loss + output.aux_loss / len(micro_batches)
                    aux_loss_sum = (aux_loss_sum or 0.0) + float(output.aux_loss.detach())
                self.accelerator.backward(loss)
            lm_loss_sum += float(output.lm_loss_sum.detach())
        return lm_loss_sum, aux_loss_sum, tokens

    def _skip_update(self, loss: float, grad_norm: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # The step counter advances, so the schedule does too, even before any optimizer step.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        self.state.nonfinite_in_row += 1
        self.state.nonfinite_total += 1
        self.log(
            f"Step {self.state.step + 1}: non-finite loss ({loss}) or grad norm ({grad_norm}); update skipped "
            f"({self.state.nonfinite_in_row} in a row, {self.state.nonfinite_total} in total)"
        )
        if self.state.nonfinite_in_row >= self.args.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.state.nonfinite_in_row} non-finite updates in a row (training.max_nonfinite_steps="
                f"{self.args.max_nonfinite_steps}); lower training.learning_rate or check the data"
            )

    def _log_progress(self, window: ProgressWindow, grad_norm: float, timer: StepTimer) -> None:
        step, max_steps = self.state.step, self.args.max_steps
        lr = float(self.scheduler.get_last_lr()[0])  # torch types a group's rate as float or tensor
        eta = timer.eta(max_steps - step)
        cost = gpu_cost(timer, step, eta, self.args.gpu_hourly_usd)
        audio_hours = self.state.audio_seconds / 3600
        # Each rank timed its own share: the run's rate is their sum, and a slow rank shows up apart.
        rates = [float(rate) for rate in self.ranks.gather(window.samples_per_second())]
        self.log(progress_line(step, max_steps, window.loss, grad_norm, lr, eta, sum(rates), audio_hours, cost))
        if len(rates) > 1:
            self.log(rank_rates_line(rates))
        if window.losses:
            self.state.history["train_loss"].append(window.loss)
        skipped = self.ranks.skipped(self.skips)
        groups = self.optimizer.param_groups
        metrics = train_metrics(window, grad_norm, lr, groups, rates, audio_hours, self.state.nonfinite_total, skipped)
        if skipped:
            self.log(summarize(skipped))
        self.accelerator.log(metrics, step=step)
        for callback in self.callbacks:
            callback.on_log(self, metrics)

    # --- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        if self.eval_loader_factory is None:
            return {}
        self.model.eval()
        # The bare model: a DDP forward may broadcast buffers, a collective that would wait forever
        # for a rank whose share of the eval split holds fewer batches (or none).
        model = self.accelerator.unwrap_model(self.model)
        total, tokens = 0.0, 0
        for batch in self.eval_loader_factory():
            inputs = send_to_device({k: batch[k] for k in MODEL_INPUTS}, self.accelerator.device, non_blocking=True)
            with bf16_autocast(self.cfg, self.accelerator.device):
                output = model(**inputs)
            total += float(output.lm_loss_sum)
            tokens += output.num_target_tokens
        self.model.train()
        # Each rank read its own share of the eval split: the loss is over all of them.
        total, tokens_summed = self.ranks.sum([total, float(tokens)])
        tokens = int(tokens_summed)
        metrics: dict[str, Any] = {"eval/loss": total / tokens if tokens else float("nan")}
        self.state.history["eval_loss"].append(metrics["eval/loss"])
        for callback in self.callbacks:
            callback.on_evaluate(self, metrics)
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.log(f"Eval at step {self.state.step} | " + " | ".join(f"{k}: {v:.4f}" for k, v in numbers.items()))
        self.accelerator.log(numbers, step=self.state.step)
        return metrics

    # --- checkpoints -----------------------------------------------------------------------

    def save(self) -> Path | None:
        ranks = self.ranks.gather(snapshot.rank_state(self.train_loader, self.skips))
        if not self.accelerator.is_main_process:
            return None
        model = self.accelerator.unwrap_model(self.model)
        if self.state.best_step == self.state.step:
            # Recorded before the state is written, so the checkpoint itself knows it is the best.
            self.state.best_checkpoint = str(self.output_dir / f"checkpoint-{self.state.step}")
        path = checkpoints.write_checkpoint(
            self.output_dir,
            self.state.step,
            lambda d: save_pretrained(model, d),
            snapshot.trainer_record(self.cfg, self.state, self.accelerator.num_processes, self._wandb_run_id()),
            snapshot.training_state(self.optimizer, self.scheduler, ranks, self.state, self.callbacks),
        )
        best = Path(self.state.best_checkpoint) if self.state.best_checkpoint else None
        checkpoints.prune_checkpoints(self.output_dir, self.args.save_total_limit, protect=best)
        self.log(f"Saved {path}")
        for callback in self.callbacks:
            callback.on_save(self, path)
        return path

    def _wandb_run_id(self) -> str | None:
        """Kept in the checkpoint so a resumed run continues the same W&B run, one curve per run."""
        if self.args.report_to != "wandb":
            return None
        return self.accelerator.get_tracker("wandb", unwrap=True).id

    # --- stopping --------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def _any_rank_stopping(self) -> bool:
        """A signal reaches ranks at different moments; stopping together avoids a hung all-reduce."""
        if self.ranks.any(self.stop_reason is not None):
            self.request_stop("another process is stopping")
        return self.stop_reason is not None
