"""Typed configuration: one dataclass per component, validated before any model loads.

Hydra composes plain YAML (configs/); `load_config` then checks every key against these
schemas so that a typo, a wrong type or an out-of-range value fails in one line that names
the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from tiny_audio.runtime.projector_registry import PROJECTORS, projector_choices

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
TRACKERS = ("wandb", "tensorboard", "trackio", "none")
# transformers' scheduler names (get_scheduler); see tiny_audio/training/optim.py.
LR_SCHEDULERS = (
    "cosine",
    "linear",
    "constant",
    "constant_with_warmup",
    "cosine_with_min_lr",
    "polynomial",
    "warmup_stable_decay",
)


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


@dataclass
class LoraConfig:
    enabled: bool = False
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def validate(self, prefix: str) -> None:
        _require(self.rank > 0, f"{prefix}.rank", self.rank, "a positive integer")
        _require(self.alpha > 0, f"{prefix}.alpha", self.alpha, "a positive integer")
        _require(0 <= self.dropout < 1, f"{prefix}.dropout", self.dropout, "0 <= dropout < 1")
        _require(bool(self.target_modules), f"{prefix}.target_modules", self.target_modules, "a non-empty list")


@dataclass
class MosaConfig:
    num_experts: int = 4
    router_hidden_dim: int = 512

    def validate(self, prefix: str) -> None:
        _require(self.num_experts >= 1, f"{prefix}.num_experts", self.num_experts, ">= 1")
        _require(self.router_hidden_dim >= 1, f"{prefix}.router_hidden_dim", self.router_hidden_dim, ">= 1")


@dataclass
class MoeConfig:
    num_experts: int = 4
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.001

    def validate(self, prefix: str) -> None:
        _require(self.num_experts >= 1, f"{prefix}.num_experts", self.num_experts, ">= 1")
        _require(
            1 <= self.num_experts_per_tok <= self.num_experts,
            f"{prefix}.num_experts_per_tok",
            self.num_experts_per_tok,
            f"between 1 and num_experts ({self.num_experts})",
        )
        _require(self.router_aux_loss_coef >= 0, f"{prefix}.router_aux_loss_coef", self.router_aux_loss_coef, ">= 0")
        _require(self.router_z_loss_coef >= 0, f"{prefix}.router_z_loss_coef", self.router_z_loss_coef, ">= 0")


@dataclass
class QformerConfig:
    window_size: int = 15  # encoder frames per window (0.3 s at 50 frames/s)
    num_queries: int = 3  # audio tokens emitted per window
    num_layers: int = 2
    num_heads: int = 8
    hidden_size: int = 768

    def validate(self, prefix: str) -> None:
        for name in ("window_size", "num_queries", "num_layers", "num_heads", "hidden_size"):
            value = getattr(self, name)
            _require(value >= 1, f"{prefix}.{name}", value, ">= 1")
        _require(
            self.hidden_size % self.num_heads == 0,
            f"{prefix}.hidden_size",
            self.hidden_size,
            f"a multiple of num_heads ({self.num_heads})",
        )


@dataclass
class ModelConfig:
    audio_model_id: str = "zai-org/GLM-ASR-Nano-2512"
    text_model_id: str = "Qwen/Qwen3-0.6B"
    projector_type: str = "mlp"
    projector_pool_stride: int = 5
    projector_hidden_dim: int = 1536
    # Stage 1 trains the projector; stage 2 freezes it and trains LoRA; stage 3 trains both.
    projector_trainable: bool = True
    # Train every weight of the LLM decoder (the reference's later recipe), at
    # training.decoder_learning_rate; LoRA (model.lora.enabled) instead adapts a frozen one.
    decoder_trainable: bool = False
    # An RMSNorm at the projector's output, scaled to the LLM's token-embedding RMS: projected audio
    # then enters the LLM at the loudness of text. Off by default: see README's recipe table.
    projector_output_norm: bool = False
    # Weights of the frozen encoder and decoder; the projector always keeps float32 master weights.
    dtype: str = "bfloat16"
    # "max_length" pads every clip to 30 s, as GLM-ASR's own processor does and Whisper requires;
    # training and inference then encode a clip identically. "longest" pads each batch only to its
    # longest clip (GLM-ASR's rotary encoder allows it): ~4x faster steps on 2-7 s clips, but the
    # mask-free encoder then sees a clip differently with its batch mates, and unlike pretraining.
    encoder_padding: str = "max_length"
    attn_implementation: str = "sdpa"
    # Training only: each projected audio token is zeroed with this probability (the rest scaled by
    # 1/(1-p), as dropout does), so the LLM cannot lean on any single audio position.
    audio_token_dropout: float = 0.0
    # Memory (GiB) for keeping the frozen encoder's outputs of clips already seen, so repeated
    # passes over a small set skip the encoder; 0 turns it off. See README, "Encoder-output cache".
    encoder_cache_gib: float = 0.0
    lora: LoraConfig = field(default_factory=LoraConfig)
    mosa: MosaConfig = field(default_factory=MosaConfig)
    moe: MoeConfig = field(default_factory=MoeConfig)
    qformer: QformerConfig = field(default_factory=QformerConfig)

    @property
    def decoder_mode(self) -> str:
        """How the LLM decoder trains: "frozen", "lora" (adapters on a frozen decoder) or "full"."""
        return "full" if self.decoder_trainable else "lora" if self.lora.enabled else "frozen"

    def validate(self, prefix: str = "model") -> None:
        _require(
            self.projector_type in PROJECTORS,
            f"{prefix}.projector_type",
            self.projector_type,
            f"choose one of {projector_choices()}",
        )
        _require(self.projector_pool_stride >= 1, f"{prefix}.projector_pool_stride", self.projector_pool_stride, ">= 1")
        _require(self.projector_hidden_dim >= 1, f"{prefix}.projector_hidden_dim", self.projector_hidden_dim, ">= 1")
        dtypes = ("float32", "bfloat16", "float16")
        _require(self.dtype in dtypes, f"{prefix}.dtype", self.dtype, f"one of {', '.join(dtypes)}")
        paddings = ("longest", "max_length")
        _require(
            self.encoder_padding in paddings,
            f"{prefix}.encoder_padding",
            self.encoder_padding,
            f"one of {', '.join(paddings)}",
        )
        _require(
            self.projector_trainable or self.lora.enabled or self.decoder_trainable,
            f"{prefix}.projector_trainable",
            self.projector_trainable,
            "true unless model.lora.enabled or model.decoder_trainable is true (otherwise nothing would train)",
        )
        _require(
            not (self.decoder_trainable and self.lora.enabled),
            f"{prefix}.decoder_trainable",
            self.decoder_trainable,
            f"false while {prefix}.lora.enabled=true (LoRA adapts a frozen decoder): choose one of the two",
        )
        _require(
            0 <= self.audio_token_dropout < 1,
            f"{prefix}.audio_token_dropout",
            self.audio_token_dropout,
            "0 <= p < 1, e.g. 0.1",
        )
        _require(self.encoder_cache_gib >= 0, f"{prefix}.encoder_cache_gib", self.encoder_cache_gib, ">= 0 (0 = off)")
        self.lora.validate(f"{prefix}.lora")
        self.mosa.validate(f"{prefix}.mosa")
        self.moe.validate(f"{prefix}.moe")
        self.qformer.validate(f"{prefix}.qformer")


@dataclass
class DatasetConfig:
    path: str  # hub id, local directory (audiofolder, parquet or jsonl), or base URL of data_files
    name: str | None = None
    # Files per split when `path` is an http(s)://, s3:// or gs:// URL: names relative to it (or full
    # URLs), parquet or jsonl; `{00000..00127}` expands to a numbered range. See data.remote.
    data_files: dict[str, list[str]] = field(default_factory=dict)
    audio_column: str = "audio"
    text_column: str = "text"
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    sampling_weight: float = 1.0

    def validate(self, prefix: str) -> None:
        _require(bool(self.path), f"{prefix}.path", self.path, "a hub id, a local directory or a URL")
        remote = self.path.startswith(REMOTE_PREFIXES)
        _require(
            remote or not self.data_files,
            f"{prefix}.data_files",
            dict(self.data_files),
            "empty unless path is an http(s)://, s3:// or gs:// URL",
        )
        _require(
            not remote or bool(self.data_files),
            f"{prefix}.data_files",
            dict(self.data_files),
            "the files of each split under the URL, e.g. {train: ['train-{00000..00003}.parquet']}",
        )
        _require(self.sampling_weight > 0, f"{prefix}.sampling_weight", self.sampling_weight, "> 0")


REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://")


@dataclass
class RemoteConfig:
    """Reading datasets whose path is a URL: when a flaky host counts as down (tiny_audio/data/remote.py).

    A failed read is retried after `backoff` seconds, doubling up to `max_backoff`; after `retries`
    consecutive failures the run stops (about 2 minutes of waiting with the defaults).
    """

    retries: int = 8
    backoff: float = 1.0  # seconds
    max_backoff: float = 30.0  # seconds
    timeout: float = 60.0  # seconds to connect, and of silence within a read, before the read fails

    def validate(self, prefix: str) -> None:
        _require(self.retries >= 0, f"{prefix}.retries", self.retries, ">= 0")
        _require(self.backoff >= 0, f"{prefix}.backoff", self.backoff, ">= 0")
        _require(self.max_backoff >= self.backoff, f"{prefix}.max_backoff", self.max_backoff, ">= backoff")
        _require(self.timeout > 0, f"{prefix}.timeout", self.timeout, "> 0, e.g. 60")


@dataclass
class SpecAugmentConfig:
    """Time and frequency masks on training mel features (SpecAugment, arXiv:1904.08779).

    Defaults are the paper's LibriSpeech-double policy (2 frequency masks of up to 27 mel bins,
    2 time masks of up to 100 frames = 1 s); widths are maxima, each mask's width is drawn in [0, max].
    """

    enabled: bool = False
    time_masks: int = 2
    time_mask_width: int = 100  # mel frames (10 ms each)
    freq_masks: int = 2
    freq_mask_width: int = 27  # mel bins

    def validate(self, prefix: str) -> None:
        for name in ("time_masks", "time_mask_width", "freq_masks", "freq_mask_width"):
            value = getattr(self, name)
            _require(value >= 0, f"{prefix}.{name}", value, ">= 0")


# Must match tiny_audio/data/effects.py (NOISE_COLOURS, NON_SPEECH); a test checks they do.
NOISE_COLOURS = ("white", "pink", "brown")
NON_SPEECH_KINDS = ("silence", "low_noise", "hum", "tone", "clicks", "tone_sequence")
NOISE_FILE_KIND = "noise_file"  # a non-speech kind drawn from data.augment.noise.dir


def _require_range(value: Sequence[float], key: str, low: float, high: float, example: str) -> None:
    """A [low, high] pair inside [low, high] bounds, e.g. `data.augment.noise.snr_db=[0, 20]`."""
    ok = len(value) == 2 and low <= value[0] <= value[1] <= high
    _require(ok, key, list(value), f"[low, high] with {low} <= low <= high <= {high}, e.g. {example}")


def _require_probability(value: float, key: str) -> None:
    _require(0 <= value <= 1, key, value, "a probability in [0, 1], e.g. 0.5 (0 = off)")


def _require_weights(weights: dict[str, float], prefix: str) -> None:
    for name, weight in weights.items():
        _require(weight >= 0, f"{prefix}.{name}", weight, ">= 0 (a relative weight)")
    _require(sum(weights.values()) > 0, prefix, weights, "at least one weight > 0")


@dataclass
class NoiseSourcesConfig:
    """Relative weights of where a noisy clip's noise comes from."""

    coloured: float = 1.0  # generated white/pink/brown noise (`colours`)
    babble: float = 1.0  # other talkers: the other clips of the same batch, summed
    files: float = 0.0  # a clip from `dir` (needs it set)


@dataclass
class NoiseAugmentConfig:
    """Additive noise at an SNR drawn uniformly from `snr_db`."""

    prob: float = 0.0
    snr_db: list[float] = field(default_factory=lambda: [0.0, 20.0])
    colours: list[str] = field(default_factory=lambda: list(NOISE_COLOURS))
    babble_talkers: list[int] = field(default_factory=lambda: [1, 3])
    # A directory of noise recordings (MUSAN-like; wav/flac/ogg at any rate, searched recursively).
    dir: str | None = None
    sources: NoiseSourcesConfig = field(default_factory=NoiseSourcesConfig)

    def validate(self, prefix: str) -> None:
        _require_probability(self.prob, f"{prefix}.prob")
        _require_range(self.snr_db, f"{prefix}.snr_db", -30, 60, "[0, 20]")
        _require_range(self.babble_talkers, f"{prefix}.babble_talkers", 1, 16, "[1, 3]")
        for colour in self.colours:
            _require(
                colour in NOISE_COLOURS,
                f"{prefix}.colours",
                list(self.colours),
                f"a subset of {', '.join(NOISE_COLOURS)}",
            )
        _require_weights(vars(self.sources), f"{prefix}.sources")
        _require(
            self.sources.coloured == 0 or bool(self.colours),
            f"{prefix}.colours",
            list(self.colours),
            f"at least one colour while {prefix}.sources.coloured > 0",
        )
        _require(
            self.sources.files == 0 or bool(self.dir),
            f"{prefix}.sources.files",
            self.sources.files,
            f"0 unless {prefix}.dir names a directory of noise recordings",
        )


@dataclass
class ReverbSourcesConfig:
    generated: float = 1.0  # a decaying-noise room (effects.room_impulse_response)
    files: float = 0.0  # an impulse response from `dir` (needs it set)


@dataclass
class ReverbAugmentConfig:
    """Convolution with a room impulse response: generated (rt60, room size drawn) or from files."""

    prob: float = 0.0
    rt60: list[float] = field(default_factory=lambda: [0.2, 1.0])  # seconds for the tail to fall 60 dB
    room_size: list[float] = field(default_factory=lambda: [3.0, 12.0])  # metres
    dir: str | None = None  # a directory of impulse responses (OpenSLR-28-like)
    sources: ReverbSourcesConfig = field(default_factory=ReverbSourcesConfig)

    def validate(self, prefix: str) -> None:
        _require_probability(self.prob, f"{prefix}.prob")
        _require_range(self.rt60, f"{prefix}.rt60", 0.05, 5.0, "[0.2, 1.0]")
        _require_range(self.room_size, f"{prefix}.room_size", 1.0, 100.0, "[3, 12]")
        _require_weights(vars(self.sources), f"{prefix}.sources")
        _require(
            self.sources.files == 0 or bool(self.dir),
            f"{prefix}.sources.files",
            self.sources.files,
            f"0 unless {prefix}.dir names a directory of impulse responses",
        )
        _require(
            not self.dir or self.sources.files > 0,
            f"{prefix}.dir",
            self.dir,
            f"used only with {prefix}.sources.files > 0 (e.g. 1.0); set it, or unset dir",
        )


@dataclass
class SpeedAugmentConfig:
    """Speed perturbation (tempo and pitch together, by resampling), as Kaldi and NeMo do it."""

    prob: float = 0.0
    factors: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])

    def validate(self, prefix: str) -> None:
        _require_probability(self.prob, f"{prefix}.prob")
        ok = bool(self.factors) and all(0.5 <= f <= 2.0 for f in self.factors)
        _require(
            ok, f"{prefix}.factors", list(self.factors), "a non-empty list of factors in [0.5, 2], e.g. [0.9, 1.0, 1.1]"
        )


@dataclass
class GainAugmentConfig:
    prob: float = 0.0
    db: list[float] = field(default_factory=lambda: [-6.0, 6.0])

    def validate(self, prefix: str) -> None:
        _require_probability(self.prob, f"{prefix}.prob")
        _require_range(self.db, f"{prefix}.db", -60, 40, "[-6, 6]")


@dataclass
class NonSpeechAugmentConfig:
    """A share of train samples replaced by audio without speech, whose target is an empty transcript."""

    prob: float = 0.0
    kinds: list[str] = field(default_factory=lambda: list(NON_SPEECH_KINDS))

    def validate(self, prefix: str, noise_dir: str | None) -> None:
        _require_probability(self.prob, f"{prefix}.prob")
        allowed = (*NON_SPEECH_KINDS, NOISE_FILE_KIND)
        ok = bool(self.kinds) and all(kind in allowed for kind in self.kinds)
        _require(ok, f"{prefix}.kinds", list(self.kinds), f"a non-empty subset of {', '.join(allowed)}")
        _require(
            NOISE_FILE_KIND not in self.kinds or bool(noise_dir),
            f"{prefix}.kinds",
            list(self.kinds),
            f"'{NOISE_FILE_KIND}' only with data.augment.noise.dir set",
        )


@dataclass
class AugmentConfig:
    """Training-audio augmentation (never evaluation); each effect applies with its own `prob`.

    Per clip, in this order: non-speech replaces the clip (and nothing else applies), else speed,
    reverberation, noise, gain. See tiny_audio/data/audio_augment.py.
    """

    noise: NoiseAugmentConfig = field(default_factory=NoiseAugmentConfig)
    reverb: ReverbAugmentConfig = field(default_factory=ReverbAugmentConfig)
    speed: SpeedAugmentConfig = field(default_factory=SpeedAugmentConfig)
    gain: GainAugmentConfig = field(default_factory=GainAugmentConfig)
    non_speech: NonSpeechAugmentConfig = field(default_factory=NonSpeechAugmentConfig)
    # 0: every pass draws each clip's augmentation anew. K > 0: each clip has K fixed draws and pass
    # p takes draw p mod K, so an augmented clip comes back as it was and the encoder cache
    # (model.encoder_cache_gib) can keep its encoding; babble still differs (it mixes the batch).
    variants: int = 0

    @property
    def enabled(self) -> bool:
        return any(block.prob > 0 for block in (self.noise, self.reverb, self.speed, self.gain, self.non_speech))

    def validate(self, prefix: str) -> None:
        self.noise.validate(f"{prefix}.noise")
        self.reverb.validate(f"{prefix}.reverb")
        self.speed.validate(f"{prefix}.speed")
        self.gain.validate(f"{prefix}.gain")
        self.non_speech.validate(f"{prefix}.non_speech", self.noise.dir)
        _require(
            self.variants >= 0,
            f"{prefix}.variants",
            self.variants,
            "a whole number >= 0 (0: a new draw every pass; e.g. 2: two fixed draws per clip)",
        )
        _require(
            not self.noise.dir or self.noise.sources.files > 0 or NOISE_FILE_KIND in self.non_speech.kinds,
            f"{prefix}.noise.dir",
            self.noise.dir,
            f"used only with {prefix}.noise.sources.files > 0 (e.g. 1.0) or '{NOISE_FILE_KIND}' in "
            f"{prefix}.non_speech.kinds; set one, or unset dir",
        )


@dataclass
class DataConfig:
    datasets: list[DatasetConfig] = field(default_factory=list)
    streaming: bool = True
    sample_rate: int = 16000
    min_duration: float = 0.5
    # GLM-ASR and Whisper encoders see at most 30 s; longer clips are dropped and counted.
    max_duration: float = 30.0
    min_words: int = 2
    junk_markers: list[str] = field(default_factory=lambda: ["ignore_time_segment_in_scoring"])
    lowercase: bool = False
    max_train_samples: int | None = None
    max_eval_samples: int | None = 2000
    # Stop early when more than this share of the first `bad_check_samples` samples is unusable.
    max_bad_fraction: float = 0.5
    bad_check_samples: int = 200
    num_workers: int = 2
    shuffle_buffer: int = 1000
    seed: int = 42
    # Duration bucketing of the train stream: read `bucket_buffer` samples, sort them by duration,
    # cut them into batches and shuffle those batches; less padding of text (and of audio with
    # model.encoder_padding=longest). Resume stays exact: see tiny_audio/data/bucketing.py.
    group_by_length: bool = False
    bucket_buffer: int = 256  # samples per worker held decoded in memory while sorting
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self, prefix: str = "data") -> None:
        _require(bool(self.datasets), f"{prefix}.datasets", list(self.datasets), "at least one dataset entry")
        for i, dataset in enumerate(self.datasets):
            dataset.validate(f"{prefix}.datasets[{i}]")
        _require(self.sample_rate > 0, f"{prefix}.sample_rate", self.sample_rate, "> 0")
        _require(self.min_duration >= 0, f"{prefix}.min_duration", self.min_duration, ">= 0")
        _require(
            0 < self.max_duration <= 30,
            f"{prefix}.max_duration",
            self.max_duration,
            "0 < max_duration <= 30 (the encoders' window)",
        )
        _require(
            self.min_duration < self.max_duration,
            f"{prefix}.min_duration",
            self.min_duration,
            f"less than max_duration ({self.max_duration})",
        )
        _require(self.min_words >= 0, f"{prefix}.min_words", self.min_words, ">= 0")
        _require(0 < self.max_bad_fraction <= 1, f"{prefix}.max_bad_fraction", self.max_bad_fraction, "0 < x <= 1")
        _require(self.bad_check_samples >= 1, f"{prefix}.bad_check_samples", self.bad_check_samples, ">= 1")
        _require(self.num_workers >= 0, f"{prefix}.num_workers", self.num_workers, ">= 0")
        _require(self.shuffle_buffer >= 0, f"{prefix}.shuffle_buffer", self.shuffle_buffer, ">= 0")
        _require(self.bucket_buffer >= 1, f"{prefix}.bucket_buffer", self.bucket_buffer, ">= 1, e.g. 256")
        self.spec_augment.validate(f"{prefix}.spec_augment")
        self.remote.validate(f"{prefix}.remote")
        self.augment.validate(f"{prefix}.augment")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"{prefix}.{name}", value, "null or >= 1")


@dataclass
class EarlyStoppingConfig:
    # Stop after this many evaluations without a new best eval loss; null never stops early.
    patience: int | None = None
    min_delta: float = 0.0

    def validate(self, prefix: str) -> None:
        _require(self.patience is None or self.patience >= 1, f"{prefix}.patience", self.patience, "null or >= 1")
        _require(self.min_delta >= 0, f"{prefix}.min_delta", self.min_delta, ">= 0")


@dataclass
class TrainingConfig:
    output_dir: str | None = None  # defaults to outputs/<experiment name>
    max_steps: int = 50000
    learning_rate: float = 1e-4
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 4
    warmup_steps: int = 1000
    # See LR_SCHEDULERS; the floor-reaching ones (cosine_with_min_lr, polynomial,
    # warmup_stable_decay) end at learning_rate * min_lr_ratio.
    lr_scheduler_type: str = "cosine"
    min_lr_ratio: float = 0.0
    # warmup_stable_decay: share of max_steps spent decaying at the end (the rest after warm-up is flat).
    decay_ratio: float = 0.1
    weight_decay: float = 0.0
    # The decoder's own optimizer group when model.decoder_trainable=true (null: learning_rate,
    # weight_decay): a pretrained decoder wants a far lower rate than a fresh projector.
    decoder_learning_rate: float | None = None
    decoder_weight_decay: float | None = None
    # AdamW's moment decay rates and epsilon, named as in transformers' TrainingArguments.
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    save_steps: int = 1000
    save_total_limit: int = 3
    eval_steps: int = 1000
    eval_on_start: bool = False  # also evaluate before the first step (the untrained baseline)
    logging_steps: int = 25
    seed: int = 42
    bf16: bool = True
    # "auto": on a CPU without native bf16/fp16 kernels, load and train in float32 instead of model.dtype
    # (torch emulates them there, ~100x slower); "as_configured": use model.dtype and bf16 as given.
    cpu_precision: str = "auto"
    resume_from_checkpoint: str | None = None
    # Checkpoints and the final model go to `hub_model_id` whenever one is set (the course sets
    # only the id); push_to_hub=false keeps them local even then.
    push_to_hub: bool = True
    hub_model_id: str | None = None
    report_to: str = "wandb"
    run_name: str | None = None
    eval_wer_samples: int = 64
    gpu_hourly_usd: float | None = None
    # Consecutive non-finite losses or gradients tolerated before the run stops.
    max_nonfinite_steps: int = 10
    # Warn when the training loss has not improved over this many steps after warm-up.
    plateau_window: int = 500
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    hub_push_retries: int = 3
    # Check config, models, data, memory, disk, Hub and tracker before the first step.
    preflight: bool = True
    # Recompute the LLM's activations in the backward pass instead of keeping them: less memory
    # (larger batches) for ~30% more LLM compute. Same loss and gradients.
    gradient_checkpointing: bool = False
    # torch.compile the LLM and the projector (falls back to eager, with a warning, where unsupported).
    torch_compile: bool = False
    # TF32 matmuls on Ampere+ GPUs for the float32 parts (projector); no effect on CPU.
    tf32: bool = False

    @property
    def pushes_to_hub(self) -> bool:
        return self.push_to_hub and bool(self.hub_model_id)

    def validate(self, prefix: str = "training") -> None:
        positive = (
            "max_steps",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "save_steps",
            "eval_steps",
            "logging_steps",
            "save_total_limit",
            "max_nonfinite_steps",
            "plateau_window",
        )
        for name in positive:
            value = getattr(self, name)
            _require(value >= 1, f"{prefix}.{name}", value, "a positive integer")
        _require(self.learning_rate > 0, f"{prefix}.learning_rate", self.learning_rate, "a positive number, e.g. 1e-4")
        _require(self.warmup_steps >= 0, f"{prefix}.warmup_steps", self.warmup_steps, ">= 0")
        _require(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, ">= 0")
        _require(
            self.decoder_learning_rate is None or self.decoder_learning_rate > 0,
            f"{prefix}.decoder_learning_rate",
            self.decoder_learning_rate,
            "null (= training.learning_rate) or a positive number, e.g. 2e-5",
        )
        _require(
            self.decoder_weight_decay is None or self.decoder_weight_decay >= 0,
            f"{prefix}.decoder_weight_decay",
            self.decoder_weight_decay,
            "null (= training.weight_decay) or >= 0",
        )
        _require(self.max_grad_norm > 0, f"{prefix}.max_grad_norm", self.max_grad_norm, "> 0")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"{prefix}.{name}", value, "in [0, 1), e.g. 0.9 or 0.999")
        _require(self.adam_epsilon > 0, f"{prefix}.adam_epsilon", self.adam_epsilon, "> 0, e.g. 1e-8")
        _require(self.hub_push_retries >= 0, f"{prefix}.hub_push_retries", self.hub_push_retries, ">= 0")
        self.early_stopping.validate(f"{prefix}.early_stopping")
        _require(self.eval_wer_samples >= 0, f"{prefix}.eval_wer_samples", self.eval_wer_samples, ">= 0")
        _require(
            self.lr_scheduler_type in LR_SCHEDULERS,
            f"{prefix}.lr_scheduler_type",
            self.lr_scheduler_type,
            f"one of {', '.join(LR_SCHEDULERS)}",
        )
        _require(0 <= self.min_lr_ratio < 1, f"{prefix}.min_lr_ratio", self.min_lr_ratio, "0 <= ratio < 1, e.g. 0.1")
        _require(0 < self.decay_ratio <= 1, f"{prefix}.decay_ratio", self.decay_ratio, "0 < ratio <= 1, e.g. 0.1")
        if self.lr_scheduler_type == "warmup_stable_decay":
            decay = round(self.max_steps * self.decay_ratio)
            _require(
                self.warmup_steps + decay <= self.max_steps,
                f"{prefix}.warmup_steps",
                self.warmup_steps,
                f"at most max_steps - decay steps ({self.max_steps} - {decay}) for warmup_stable_decay",
            )
        precisions = ("auto", "as_configured")
        _require(
            self.cpu_precision in precisions,
            f"{prefix}.cpu_precision",
            self.cpu_precision,
            f"one of {', '.join(precisions)}",
        )
        _require(self.report_to in TRACKERS, f"{prefix}.report_to", self.report_to, f"one of {', '.join(TRACKERS)}")
        _require(
            self.gpu_hourly_usd is None or self.gpu_hourly_usd >= 0,
            f"{prefix}.gpu_hourly_usd",
            self.gpu_hourly_usd,
            "null or >= 0",
        )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    experiment: str = "default"  # set from `+experiments=NAME`; names the output directory

    def validate(self) -> Config:
        self.model.validate()
        self.data.validate()
        self.training.validate()
        _require(
            not (self.model.encoder_cache_gib > 0 and self.data.spec_augment.enabled),
            "model.encoder_cache_gib",
            self.model.encoder_cache_gib,
            "0 while data.spec_augment.enabled=true: masked clips differ every pass, so nothing would be reused",
        )
        for name in ("decoder_learning_rate", "decoder_weight_decay"):
            value = getattr(self.training, name)
            _require(
                value is None or self.model.decoder_trainable,
                f"training.{name}",
                value,
                "null unless model.decoder_trainable=true (LoRA and the projector train at "
                "training.learning_rate and training.weight_decay)",
            )
        return self


# --- schema checking -------------------------------------------------------------------------


def _check_keys(node: Any, schema: type, prefix: str) -> None:
    """Reject keys the schema does not know, suggesting the closest one."""
    if not isinstance(node, DictConfig):
        return
    known = {f.name: f for f in fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node:
        full = _join(prefix, str(key))
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
            hint = f"did you mean '{_join(prefix, close[0])}'?" if close else f"known keys: {', '.join(known)}"
            raise ConfigError(f"unknown config key '{full}': {hint}")
        hint = hints[key]
        value = node._get_node(key)
        child = _dataclass_in(hint)
        if child is not None and isinstance(value, DictConfig):
            _check_keys(value, child, full)
        elif child is not None and isinstance(value, ListConfig):
            for i, item in enumerate(value):
                _check_keys(item, child, f"{full}[{i}]")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _dataclass_in(hint: Any) -> type | None:
    if is_dataclass(hint):
        return hint  # type: ignore[return-value]
    for arg in typing.get_args(hint):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def to_config(raw: DictConfig) -> Config:
    """Check a composed config against the schema and return the typed, validated object."""
    _check_keys(raw, Config, "")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), raw)
        config = OmegaConf.to_object(merged)
    except Exception as error:  # omegaconf raises several types; all mean a value of the wrong type
        raise ConfigError(_describe_omegaconf_error(error)) from None
    assert isinstance(config, Config)
    return config.validate()


def _describe_omegaconf_error(error: Exception) -> str:
    key = getattr(error, "full_key", None)
    message = str(error).splitlines()[0]
    match = re.search(r"Value '(.*?)' (?:of type '\w+' )?could not be converted to (\w+)", message)
    if key and match:
        return f"{key}={match.group(1)!r} is not allowed: expected {match.group(2).lower()}"
    if key:
        return f"{key}: {message}"
    return message


def suggest_key(dotted: str) -> str | None:
    """The known dotted key closest to `dotted`, for typo'd command-line overrides."""
    candidates = list(_all_keys(Config, ""))
    close = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _all_keys(schema: type, prefix: str):
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        full = _join(prefix, f.name)
        yield full
        child = _dataclass_in(hints[f.name])
        if child is not None and typing.get_origin(hints[f.name]) is not list:
            yield from _all_keys(child, full)
