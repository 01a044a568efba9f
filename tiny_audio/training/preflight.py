"""Preflight: find what would kill a run before any GPU hour is spent on it.

Runs as `ta train --preflight ...` (everything, including a full model build and one
forward/backward at the longest allowed audio) and, cheaply, at the start of every run (configs,
tokenizer and an empty-weight skeleton instead of the weights; the memory check only on a GPU).
Prints a ✓/✗ checklist and stops at the first failure.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, init_empty_weights
from accelerate.utils import send_to_device
from huggingface_hub import HfApi
from torch import nn
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForCausalLM, AutoTokenizer

from tiny_audio.config import Config, ConfigError
from tiny_audio.data import remote
from tiny_audio.data.guard import DataQualityError
from tiny_audio.data.sources import DataSourceError, train_records
from tiny_audio.data.stream import build_eval_stream, build_train_stream
from tiny_audio.hub_token import scrub_token
from tiny_audio.model.build import build_model, parameter_counts
from tiny_audio.runtime.collator import collator_for
from tiny_audio.runtime.encoder import encoder_layout
from tiny_audio.runtime.projectors import build_projector
from tiny_audio.runtime.speech_llm import MODEL_INPUTS, SpeechLLM
from tiny_audio.training import checkpoints
from tiny_audio.training.accelerator import make_accelerator
from tiny_audio.training.precision import Precision, resolve_precision
from tiny_audio.training.tracking import WANDB_DEFAULT_HOST, WANDB_LOCAL_MODES, require_tracker
from tiny_audio.training.trainer import bf16_autocast

# fp32 weights + AdamW's two moments, per trainable parameter.
CHECKPOINT_BYTES_PER_PARAM = 4 * 3
CHECKPOINT_OVERHEAD_BYTES = 32 * 2**20  # tokenizer files and small state
# Fast speech is about 4 words a second; the memory check's transcript is that long.
WORDS_PER_SECOND = 4
_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "again")
_REACH_TIMEOUT_S = 5.0


class CheckFailed(Exception):
    """A failed check, worded for the person who will fix it."""


class PreflightError(RuntimeError):
    """The first failed preflight check; its message is the checklist line."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.name}: {self.detail}"


class Preflight:
    """The checks, in order; later ones use what earlier ones found (the model, the parameter count)."""

    def __init__(self, cfg: Config, model: SpeechLLM | None, accelerator: Accelerator | None, full: bool) -> None:
        self.cfg = cfg
        self.model = model
        self.accelerator = accelerator
        self.full = full
        self.trainable_params = 0

    def checks(self) -> list[tuple[str, Callable[[], str]]]:
        found: list[tuple[str, Callable[[], str]]] = [
            ("config", self.check_config),
            *([("remote data", self.check_remote_data)] if self._remote_datasets() else []),
            ("precision", self.check_precision),
            ("tracker", self.check_tracker),
            ("hub", self.check_hub),
            ("models", self.check_models),
            ("output dir", self.check_output_dir),
            ("dataset", self.check_dataset),
        ]
        if self.full or (self.model is not None and torch.cuda.is_available()):
            found.append(("memory", self.check_memory))
        return found

    def check_config(self) -> str:
        try:
            self.cfg.validate()
        except ConfigError as error:
            raise CheckFailed(str(error)) from None
        args = self.cfg.training
        return f"experiment '{self.cfg.experiment}', {args.max_steps} steps, output {args.output_dir}"

    def _remote_datasets(self) -> list[tuple[int, Any]]:
        return [(i, dataset) for i, dataset in enumerate(self.cfg.data.datasets) if remote.is_remote(dataset.path)]

    def check_remote_data(self) -> str:
        """Every file of every split a run reads answers, before any model loads."""
        urls: list[str] = []
        try:
            for index, dataset in self._remote_datasets():
                for split in (*dataset.train_splits, *dataset.eval_splits):
                    urls += remote.remote_split(dataset, index, split).urls
        except remote.RemoteDataError as error:
            raise CheckFailed(str(error)) from None
        failure = remote.first_failure(urls, self.cfg.data.remote)
        if failure is not None:
            url, cause = failure
            raise CheckFailed(f"{url} is unreachable ({remote.describe(cause)}); check the URL and the data host")
        return f"{len(urls)} remote files reachable"

    def check_precision(self) -> str:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        reasons: list[str] = []
        # Later checks (the full model build, the memory probe) run at the precision training will use.
        self.cfg = resolve_precision(self.cfg, device, log=reasons.append)
        chosen = Precision(self.cfg.model.dtype, self.cfg.training.bf16).describe(device.type)
        return "; ".join([chosen, *reasons])

    def check_tracker(self) -> str:
        report_to = self.cfg.training.report_to
        try:
            require_tracker(report_to)
        except RuntimeError as error:
            raise CheckFailed(str(error)) from None
        mode = os.environ.get("WANDB_MODE", "").lower()
        if report_to != "wandb":
            return f"report_to={report_to}"
        if mode in WANDB_LOCAL_MODES:
            return f"report_to=wandb, WANDB_MODE={mode}: logs stay local"
        host = os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_HOST)
        try:
            urllib.request.urlopen(host, timeout=_REACH_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            pass  # the server answered: reachable
        except (urllib.error.URLError, OSError) as error:
            raise CheckFailed(
                f"W&B server {host} unreachable ({error}); check the network, or set WANDB_MODE=offline "
                "and upload later with `wandb sync`, or training.report_to=none"
            ) from None
        return f"report_to=wandb, logged in, {host} reachable"

    def check_hub(self) -> str:
        args = self.cfg.training
        if not args.pushes_to_hub:
            why = "training.push_to_hub=false" if args.hub_model_id else "training.hub_model_id is not set"
            return f"not pushing ({why}): checkpoints stay on this machine only"
        repo_id = args.hub_model_id or ""
        api = HfApi()
        try:
            me = api.whoami()
        except Exception as error:  # no token, a bad token, or no network: all mean no push
            raise CheckFailed(
                f"cannot authenticate with the Hub ({scrub_token(str(error))}); set HF_TOKEN or run `hf auth login` "
                "with a write token, or set training.push_to_hub=false"
            ) from None
        owners = [me["name"], *(org["name"] for org in me.get("orgs", []))]
        namespace = repo_id.split("/")[0] if "/" in repo_id else me["name"]
        if namespace not in owners:
            raise CheckFailed(
                f"training.hub_model_id={repo_id!r}: you are logged in as '{me['name']}', who cannot write to "
                f"'{namespace}'; use one of: {', '.join(f'{owner}/...' for owner in owners)}"
            )
        if me.get("auth", {}).get("accessToken", {}).get("role") == "read":
            raise CheckFailed("the Hub token is read-only; create a write token and set HF_TOKEN or `hf auth login`")
        api.create_repo(repo_id, exist_ok=True)
        return f"{repo_id} writable as {me['name']}"

    def check_models(self) -> str:
        if self.model is None and self.full:
            self.model = build_model(self.cfg.model)
        if self.model is not None:
            counts = parameter_counts(self.model)
            self.trainable_params = sum(trainable for trainable, _ in counts.values())
            return f"built; {self.trainable_params:,} trainable parameters"
        self.trainable_params = self._skeleton_trainable_params()
        model = self.cfg.model
        return (
            f"{model.audio_model_id} and {model.text_model_id} resolve (configs, tokenizer, feature extractor); "
            f"{self.trainable_params:,} trainable parameters"
        )

    def _skeleton_trainable_params(self) -> int:
        """Trainable parameters from configs alone: the model is built on the meta device, without weights."""
        cfg = self.cfg.model
        _, encoder_config = encoder_layout(_resolve("model.audio_model_id", cfg.audio_model_id, AutoConfig))
        _resolve("model.audio_model_id", cfg.audio_model_id, AutoFeatureExtractor)
        _resolve("model.text_model_id", cfg.text_model_id, AutoTokenizer)
        text_config = _resolve("model.text_model_id", cfg.text_model_id, AutoConfig)
        encoder_dim = getattr(encoder_config, "d_model", None) or encoder_config.hidden_size
        with init_empty_weights():
            llm = AutoModelForCausalLM.from_config(text_config)
            projector = build_projector(cfg, encoder_dim, llm.get_input_embeddings().embedding_dim)
        total = sum(p.numel() for p in projector.parameters()) if cfg.projector_trainable else 0
        if cfg.decoder_trainable:
            llm.tie_weights()  # the meta-device build leaves a tied LM head untied: count it once, as loaded
            total += sum(p.numel() for p in llm.parameters())
        if cfg.lora.enabled:
            # PEFT matches target_modules against the last part of each module name.
            targets = set(cfg.lora.target_modules)
            layers = [m for name, m in llm.named_modules() if name.rsplit(".", 1)[-1] in targets]
            linear = [m for m in layers if isinstance(m, nn.Linear)]
            if not linear:
                names = sorted({name.rsplit(".", 1)[-1] for name, m in llm.named_modules() if isinstance(m, nn.Linear)})
                raise CheckFailed(
                    f"model.lora.target_modules={list(cfg.lora.target_modules)} match no linear layer of "
                    f"{cfg.text_model_id}; its linear layers are: {', '.join(names)}"
                )
            total += sum(cfg.lora.rank * (m.in_features + m.out_features) for m in linear)
        return total

    def check_output_dir(self) -> str:
        args = self.cfg.training
        output_dir = Path(args.output_dir or "outputs")
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            probe = output_dir / ".preflight-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as error:
            raise CheckFailed(
                f"training.output_dir={str(output_dir)!r} is not writable ({error.strerror or error}); "
                "point it at a directory you can write to"
            ) from None
        per_checkpoint = self.trainable_params * CHECKPOINT_BYTES_PER_PARAM + CHECKPOINT_OVERHEAD_BYTES
        # One more than the limit: a new checkpoint is complete before the oldest is pruned.
        needed = per_checkpoint * (args.save_total_limit + 1)
        free = shutil.disk_usage(output_dir).free
        if free < needed:
            raise CheckFailed(
                f"{_gib(free)} free in {output_dir}, but {args.save_total_limit + 1} checkpoints of ~"
                f"{_gib(per_checkpoint)} need {_gib(needed)}; free disk space, lower training.save_total_limit, "
                "or choose another training.output_dir"
            )
        return f"{output_dir} writable; {_gib(free)} free, checkpoints need ~{_gib(needed)}"

    def check_dataset(self) -> str:
        # No shuffle buffer: filling one would read a thousand records to check one batch.
        data = dataclasses.replace(self.cfg.data, shuffle_buffer=0)
        size = self.cfg.training.per_device_train_batch_size
        try:
            # An empty train split would make the endless stream spin: check it holds a record first.
            if next(iter(train_records(data)), None) is None:
                raise CheckFailed("the train splits hold no records; check data.datasets[].train_splits")
            samples = list(itertools.islice(iter(build_train_stream(data)), size))
            if next(iter(build_eval_stream(data)), None) is None:
                raise CheckFailed("the eval splits hold no usable sample; check data.datasets[].eval_splits")
        except (DataSourceError, DataQualityError, remote.RemoteDataError, remote.RemoteReadError) as error:
            raise CheckFailed(str(error)) from None
        seconds = sum(len(s["audio"]) for s in samples) / data.sample_rate
        if self.model is None:
            return f"{len(samples)} train samples read and decoded ({seconds:.1f} s of audio); eval split readable"
        batch = collator_for(self.model, data.sample_rate)(samples)
        return (
            f"first batch decoded and collated: {len(samples)} clips, {seconds:.1f} s of audio, "
            f"{batch['input_ids'].shape[1]} tokens long; eval split readable"
        )

    def check_memory(self) -> str:
        if self.model is None:
            self.model = build_model(self.cfg.model)
        if self.accelerator is None:
            self.accelerator = make_accelerator(self.cfg)
        return memory_check(self.cfg, self.model, self.accelerator)


def memory_check(cfg: Config, model: SpeechLLM, accelerator: Accelerator) -> str:
    """One forward/backward on a batch of clips at data.max_duration with the longest plausible transcript."""
    size, seconds, rate = cfg.training.per_device_train_batch_size, cfg.data.max_duration, cfg.data.sample_rate
    audio = (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
    text = " ".join(itertools.islice(itertools.cycle(_WORDS), math.ceil(seconds * WORDS_PER_SECOND)))
    batch = collator_for(model, rate)([{"audio": audio, "text": text}] * size)
    device = accelerator.device
    model.to(device)
    inputs = send_to_device({k: batch[k] for k in MODEL_INPUTS}, device)
    # Dropout draws random numbers; restoring the state keeps a run identical with or without preflight.
    rng, was_training = checkpoints.rng_state(), model.training
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        # AdamW's moments exist only after the first update, yet stay for the whole run: 4.8 GB for a
        # whole Qwen3-0.6B decoder, next to a projector's few MB.
        moments = adam_state_bytes(model)
        resting = torch.cuda.memory_allocated(device) + moments
    model.train()
    try:
        with bf16_autocast(cfg, accelerator.device):
            loss = model(**inputs).loss
        loss.backward()
    except torch.OutOfMemoryError:
        raise CheckFailed(
            f"a batch of {size} clips of {seconds:g} s does not fit in memory; lower "
            "training.per_device_train_batch_size (raise gradient_accumulation_steps to keep the effective "
            "batch) or data.max_duration"
        ) from None
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        checkpoints.set_rng_state(rng)
    shape = f"batch {size} x {seconds:g} s, {batch['input_ids'].shape[1]} tokens"
    if not cuda:
        return f"forward/backward at {shape} ran on {device}"
    peak, total = (
        torch.cuda.max_memory_allocated(device) + moments,
        torch.cuda.get_device_properties(device).total_memory,
    )
    torch.cuda.empty_cache()
    fits = largest_batch(resting, peak, size, total)
    return (
        f"forward/backward at {shape}: peak {_gib(peak)} of {_gib(total)} GPU memory; "
        f"about {fits} such clips per batch would fit (training.per_device_train_batch_size)"
    )


def adam_state_bytes(model: nn.Module) -> int:
    """AdamW's two moments, each the size of its parameter, for every trainable parameter (listed once)."""
    return sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def largest_batch(resting: int, peak: int, size: int, total: int, headroom: float = 0.9) -> int:
    """Clips per batch that fit in `headroom` of `total` bytes, from one probe of `size` clips.

    What was allocated before the probe (`resting`: the weights) stays; the rest of its peak
    (activations, and the trainable part's gradients, small next to them) is taken to grow with
    the batch, clip by clip: every probe clip is as long as data.max_duration allows.
    """
    per_clip = max(peak - resting, 1) / size
    return max(int((headroom * total - resting) // per_clip), 0)


def _resolve(key: str, model_id: str, loader: Any) -> Any:
    try:
        return loader.from_pretrained(model_id)
    except OSError as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckFailed(
            f"{key}={model_id!r} cannot be loaded ({reason}); check the id, the network and HF_TOKEN, "
            "or point it at a local directory"
        ) from None


def run_preflight(
    cfg: Config,
    *,
    model: SpeechLLM | None = None,
    accelerator: Accelerator | None = None,
    full: bool = False,
    log: Callable[[str], None] = print,
) -> list[CheckResult]:
    """Run the checks in order, logging each as a checklist line; stop at the first failure.

    `full` builds the model (unless given) and runs the memory check on any device; otherwise the
    models are checked from their configs and the memory check runs only with a model on a GPU.
    """
    preflight = Preflight(cfg, model, accelerator, full)
    results: list[CheckResult] = []
    for name, check in preflight.checks():
        try:
            result = CheckResult(name, True, check())
        except CheckFailed as failed:
            result = CheckResult(name, False, str(failed))
        except Exception as error:  # reported, not swallowed: the checklist names it and the run stops
            result = CheckResult(name, False, scrub_token(f"{type(error).__name__}: {error}"))
        log(result.line())
        results.append(result)
        if not result.ok:
            break
    return results


def require_preflight(cfg: Config, *, model: SpeechLLM | None = None, log: Callable[[str], None] = print) -> None:
    """The cheap checks for `run`, raising PreflightError on a failure."""
    results = run_preflight(cfg, model=model, log=log)
    if not results[-1].ok:
        raise PreflightError(
            f"preflight failed at the {results[-1].name} check (above); fix it, or skip the checks with "
            "training.preflight=false"
        )


def require_memory_fits(
    cfg: Config, model: SpeechLLM, accelerator: Accelerator, log: Callable[[str], None] = print
) -> None:
    """The memory check alone, for `run` on a GPU once the model is built (before accelerator.prepare)."""
    try:
        result = CheckResult("memory", True, memory_check(cfg, model, accelerator))
    except CheckFailed as failed:
        result = CheckResult("memory", False, str(failed))
    log(result.line())
    if not result.ok:
        raise PreflightError(f"preflight failed: {result.line()}")


def preflight_main(overrides: list[str]) -> int:
    """`ta train --preflight ...`: every check, a checklist, exit 0 when ready to train."""
    from tiny_audio.compose import load_config

    try:
        cfg = load_config(overrides)
    except ConfigError as error:
        print(CheckResult("config", False, str(error)).line())
        return 2
    results = run_preflight(cfg, full=True)
    if not results[-1].ok:
        print(f"Preflight failed at '{results[-1].name}'; fix it and run again.")
        return 1
    print("Preflight passed: ready to train.")
    return 0


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
