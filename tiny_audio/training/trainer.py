"""The training loop: accumulate, clip, skip non-finite updates, log, evaluate, checkpoint, stop cleanly.

Built on accelerate (device placement, DDP, trackers) rather than HF Trainer so that a
checkpoint holds only trainable weights, is written atomically, and restores the exact data
position of a streaming dataset instead of replaying it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device

from tiny_audio.config import Config
from tiny_audio.data.skips import SkipLedger, add_counts, summarize
from tiny_audio.model.build import load_weights, save_pretrained
from tiny_audio.model.speech_llm import MODEL_INPUTS, SpeechLLM, count_targets
from tiny_audio.training import checkpoints
from tiny_audio.training.optim import build_optimizer, build_scheduler, parameter_groups
from tiny_audio.training.progress import StepTimer, progress_line


def bf16_autocast(cfg: Config, device: torch.device) -> torch.autocast:
    """bf16 autocast when asked for and worth it: on a GPU, or on a CPU already holding bf16 weights.

    Used instead of accelerate's mixed-precision setting, which is fixed once per process.
    """
    enabled = cfg.training.bf16 and (device.type == "cuda" or cfg.model.dtype == "bfloat16")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class WindowLoss:
    """The losses of one optimizer update, over all of its micro-batches and all ranks."""

    lm_loss_sum: float  # summed over target tokens
    tokens: int  # target tokens
    aux_loss: float | None  # projector auxiliary loss, mean over micro-batches and ranks

    @property
    def lm_loss(self) -> float:
        return self.lm_loss_sum / max(self.tokens, 1)


@dataclass
class TrainState:
    step: int = 0
    samples_seen: int = 0
    audio_seconds: float = 0.0
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None
    history: dict[str, list[float]] = field(default_factory=lambda: {"train_loss": [], "eval_loss": []})


class Callback:
    """Hooks the loop calls; subclasses override what they need."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None: ...
    def on_save(self, trainer: Trainer, checkpoint: Path) -> None: ...
    def on_train_end(self, trainer: Trainer, status: str) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What a callback must remember across a resume (counters, detectors); saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
        self.state = TrainState()
        self.skips = SkipLedger()
        self.stop_reason: str | None = None
        self._interrupts = 0
        self._rng_to_restore: dict[str, Any] | None = None
        self.resumed_wandb_run_id: str | None = None  # continue the same W&B run after a resume

    # --- resume --------------------------------------------------------------------------

    def trainable_components(self) -> dict[str, bool]:
        trainable = {"projector": self.cfg.model.projector_trainable, "lora": self.cfg.model.lora.enabled}
        # Named only when true, so checkpoints of a frozen decoder read as they always have.
        return trainable | ({"decoder": True} if self.cfg.model.decoder_trainable else {})

    def resume(self, checkpoint: Path) -> None:
        """Same stage: restore everything. Another stage: take its weights, start a fresh optimizer."""
        saved = checkpoints.read_trainer_state(checkpoint)
        model = self.accelerator.unwrap_model(self.model)
        checkpoints.check_compatible(checkpoint, self.cfg.model)
        if saved.get("trainable") == self.trainable_components():
            self._check_same_layout(checkpoint, saved)
            load_weights(model, checkpoint)
            state = checkpoints.load_training_state(checkpoint)
            rank_state = state["ranks"][self.accelerator.process_index]
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.train_loader.load_state_dict(rank_state["dataloader"])
            self.skips.load_state_dict(rank_state["skips"])
            self.state = TrainState(**state["train_state"])
            for callback in self.callbacks:
                if type(callback).__name__ in state["callbacks"]:
                    callback.load_state_dict(state["callbacks"][type(callback).__name__])
            # Applied once the loop has created its data iterator: creating it draws random numbers
            # (worker seeds), which an uninterrupted run drew before its first step, not here.
            self._rng_to_restore = rank_state["rng"]
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

    def _check_same_layout(self, checkpoint: Path, saved: dict[str, Any]) -> None:
        """The data position of each loader worker on each rank only fits the same layout."""
        layout = {"processes": self.accelerator.num_processes, "data.num_workers": self.cfg.data.num_workers}
        before = saved.get("layout", layout)
        if before != layout:
            raise checkpoints.CheckpointMismatchError(
                f"{checkpoint} was saved with {before} but this run has {layout}; resume with the same "
                "number of processes and data.num_workers (the data position is kept per worker)"
            )

    # --- the loop ------------------------------------------------------------------------

    def fit(self) -> TrainState:
        self._install_signal_handlers()
        for callback in self.callbacks:
            callback.on_train_start(self)
        status = "failed"
        try:
            self._loop()
            status = "interrupted" if self.stop_reason else "completed"
        finally:
            self._restore_signal_handlers()
            _stop_loader_workers(self.train_loader)
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
        window: list[WindowLoss] = []
        window_samples, window_start = 0, time.perf_counter()
        if args.eval_on_start and self.state.step == 0:
            self.evaluate()  # the untrained baseline: where the first curve point of WER starts
        while self.state.step < args.max_steps and not self._any_rank_stopping():
            loss, grad_norm, samples = self._train_step(batches)
            self.state.step += 1
            timer.tick()
            if loss is not None:
                window.append(loss)
            window_samples += samples
            step = self.state.step
            for callback in self.callbacks:
                callback.on_step_end(self)
            if step % args.logging_steps == 0 or step == args.max_steps:
                elapsed = time.perf_counter() - window_start
                self._log_progress(window, grad_norm, window_samples / max(elapsed, 1e-9), timer)
                window, window_samples, window_start = [], 0, time.perf_counter()
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
        skipped = add_counts(self._from_all_ranks(self.skips.counts()))
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
        aux_loss_sum = aux_loss if aux_loss is not None else 0.0
        grad_norm = float(self.accelerator.clip_grad_norm_(self.params, self.args.max_grad_norm))
        # One collective: the window's loss and data over all ranks, and whether any rank saw a non-finite
        # value. Every rank then takes the same decision, so the replicas cannot drift apart.
        nonfinite = 0.0 if math.isfinite(lm_loss_sum + aux_loss_sum) and math.isfinite(grad_norm) else 1.0
        lm_loss_sum, aux_loss_sum, nonfinite, all_samples, all_audio_seconds = self._sum_over_ranks(
            [lm_loss_sum, aux_loss_sum, nonfinite, float(samples), audio_seconds]
        )
        # The run's totals, the same on every rank: what the logs, checkpoints and model card report.
        self.state.samples_seen += int(all_samples)
        self.state.audio_seconds += all_audio_seconds
        divisor = self.accelerator.num_processes * len(micro_batches)
        loss = WindowLoss(lm_loss_sum, tokens, aux_loss_sum / divisor if aux_loss is not None else None)
        if nonfinite:
            self._skip_update(loss.lm_loss, grad_norm)
            return None, grad_norm, samples
        self.state.nonfinite_in_row = 0
        self.optimizer.step()
        self.scheduler.step()
        return loss, grad_norm, samples

    def accumulate_gradients(self, micro_batches: list[dict[str, Any]]) -> tuple[float, float | None, int]:
        """Backward over the micro-batches so the gradient is that of the window's mean token loss.

        Each micro-batch's summed token loss is divided by the target tokens of the whole window
        on every rank, not averaged per micro-batch: a token in a short-transcript batch then
        weighs what any other token weighs (the bias transformers fixed in 4.46). Returns this
        rank's summed token loss, its summed auxiliary loss (None without one) and the window's
        token count over all ranks.
        """
        tokens = int(self._sum_over_ranks([float(sum(count_targets(b["labels"]) for b in micro_batches))])[0])
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

    def _log_progress(
        self, window: list[WindowLoss], grad_norm: float, samples_per_second: float, timer: StepTimer
    ) -> None:
        step, max_steps = self.state.step, self.args.max_steps
        # Token-weighted over every update since the last log, as eval/loss is over the eval set.
        tokens = sum(w.tokens for w in window)
        loss = sum(w.lm_loss_sum for w in window) / tokens if tokens else float("nan")
        aux = [w.aux_loss for w in window if w.aux_loss is not None]
        lr = self.scheduler.get_last_lr()[0]
        eta = timer.eta(max_steps - step)
        cost = None
        if self.args.gpu_hourly_usd is not None:
            elapsed_hours = sum(timer.durations) / 3600 * step / max(len(timer.durations), 1)
            cost = (elapsed_hours * self.args.gpu_hourly_usd, (elapsed_hours + eta / 3600) * self.args.gpu_hourly_usd)
        audio_hours = self.state.audio_seconds / 3600
        # Each rank timed its own share: the run's rate is their sum, and a slow rank shows up apart.
        rank_rates = [float(rate) for rate in self._from_all_ranks(samples_per_second)]
        samples_per_second = sum(rank_rates)
        self.log(progress_line(step, max_steps, loss, grad_norm, lr, eta, samples_per_second, audio_hours, cost))
        if len(rank_rates) > 1:
            self.log(
                "Samples/s per rank: "
                + ", ".join(f"{rank}: {rate:.2f}" for rank, rate in enumerate(rank_rates))
                + f" (slowest at {min(rank_rates) / max(max(rank_rates), 1e-9):.0%} of the fastest)"
            )
        if window:
            self.state.history["train_loss"].append(loss)
        metrics = {
            "train/loss": loss,
            "train/grad_norm": grad_norm,
            "train/learning_rate": lr,
            **{
                f"train/{group['name']}_learning_rate": group["lr"]
                for group in self.optimizer.param_groups
                if group.get("name") == "decoder"
            },
            "train/samples_per_second": samples_per_second,
            **{
                f"train/samples_per_second_rank{rank}": rate
                for rank, rate in enumerate(rank_rates)
                if len(rank_rates) > 1
            },
            "train/audio_hours": audio_hours,
            "train/nonfinite_updates": float(self.state.nonfinite_total),
        }
        if len(rank_rates) > 1:
            metrics.update({f"train/samples_per_second_rank{rank}": rate for rank, rate in enumerate(rank_rates)})
        if aux:
            # Logged apart: train/loss is the language-model loss alone, comparable with eval/loss.
            metrics["train/aux_loss"] = sum(aux) / len(aux)
        skipped = add_counts(self._from_all_ranks(self.skips.counts()))
        metrics.update({f"data/skipped_{reason}": float(n) for reason, n in skipped.items()})
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
        total, tokens_summed = self._sum_over_ranks([total, float(tokens)])
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
        # Every rank has its own data position and random state; all of them go into the checkpoint.
        rank_state = {
            "dataloader": self.train_loader.state_dict(),
            "skips": self.skips.state_dict(),
            "rng": checkpoints.rng_state(),
        }
        ranks = self._from_all_ranks(rank_state)
        if not self.accelerator.is_main_process:
            return None
        model = self.accelerator.unwrap_model(self.model)
        if self.state.best_step == self.state.step:
            # Recorded before the state is written, so the checkpoint itself knows it is the best.
            self.state.best_checkpoint = str(self.output_dir / f"checkpoint-{self.state.step}")
        trainer_state = {
            "step": self.state.step,
            "max_steps": self.args.max_steps,
            "experiment": self.cfg.experiment,
            "trainable": self.trainable_components(),
            "train_loss": self.state.history["train_loss"][-1:] or None,
            "eval_loss": self.state.history["eval_loss"][-1:] or None,
            "layout": {"processes": self.accelerator.num_processes, "data.num_workers": self.cfg.data.num_workers},
            "wandb_run_id": self._wandb_run_id(),
        }
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ranks": ranks,
            "train_state": asdict(self.state),
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks},
        }
        path = checkpoints.write_checkpoint(
            self.output_dir, self.state.step, lambda d: save_pretrained(model, d), trainer_state, training_state
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

    # --- several processes -----------------------------------------------------------------

    def _from_all_ranks(self, value: Any) -> list[Any]:
        """`value` from every rank, in rank order (a collective: every rank must call it)."""
        if self.accelerator.num_processes == 1:
            return [value]
        return gather_object([value])

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over ranks (a collective: every rank must call it)."""
        if self.accelerator.num_processes == 1:
            return values
        summed = self.accelerator.reduce(
            torch.tensor(values, dtype=torch.float64, device=self.accelerator.device), reduction="sum"
        )
        return summed.tolist()

    def _any_rank_stopping(self) -> bool:
        """A signal reaches ranks at different moments; stopping together avoids a hung all-reduce."""
        if self.accelerator.num_processes == 1:
            return self.stop_reason is not None
        flag = torch.tensor([1.0 if self.stop_reason else 0.0], device=self.accelerator.device)
        if float(self.accelerator.reduce(flag, reduction="sum")) > 0:
            self.request_stop("another process is stopping")
        return self.stop_reason is not None

    # --- signals ---------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def _install_signal_handlers(self) -> None:
        self._main_pid = os.getpid()
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for sig in self._previous:
            signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        if os.getpid() != self._main_pid:
            # A data-loader worker forked with this handler: Ctrl+C reaches the whole process
            # group, and the worker must keep serving batches until the main process has saved.
            return
        self._interrupts += 1
        name = signal.Signals(signum).name
        if self._interrupts > 1:
            raise KeyboardInterrupt(f"second {name}: exiting without saving")
        self.log(f"{name} received: finishing this step, saving a checkpoint, then exiting (again to quit at once).")
        self.request_stop(name)


def _stop_loader_workers(loader: Any) -> None:
    """Shut the train loader's workers down now rather than at interpreter exit.

    A StatefulDataLoader keeps its iterator (for state_dict) and so its workers alive; torn down
    in arbitrary order at exit, a worker blocked on its queue can hang a finished run.
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if iterator is not None:
        loader._iterator = None
