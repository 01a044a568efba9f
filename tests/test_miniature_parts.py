"""The miniature's building blocks: atomic cache, plot, metrics record, projector scale, AdamW keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing import start_processes

from tests.data_helpers import write_audiofolder
from tiny_audio.data import effects
from tiny_audio.miniature.cache import MARKER, CacheError, build_atomically
from tiny_audio.miniature.encoder import (
    CTC_ALPHABET,
    EncoderRecipe,
    FeatureBatches,
    acoustic_variety,
    average_across_processes,
    build_encoder,
    ctc_batch_loss,
    ctc_decode,
    ctc_targets,
)
from tiny_audio.miniature.llm import CopyTask, LlmRecipe, plain_words
from tiny_audio.miniature.plot import plot_stages, stage_curves
from tiny_audio.model.build import build_model
from tiny_audio.model.scale import StepZeroScale, projector_scale_ratio
from tiny_audio.recipe.run import run
from tiny_audio.runtime.speech_llm import MODEL_INPUTS
from tiny_audio.training.metrics_file import METRICS_FILE, read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write(directory: Path) -> None:
    (directory / "weights.bin").write_bytes(b"1234")


def test_a_build_lands_only_when_complete_and_is_reused(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model"
    calls: list[Path] = []

    def failing(directory: Path) -> None:
        calls.append(directory)
        (directory / "half.bin").write_bytes(b"12")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_atomically(target, "v1", failing)
    assert not target.exists() and not list(target.parent.glob(".model.partial-*"))
    # A kill -9 leaves a partial directory behind: the next build removes it.
    (target.parent / ".model.partial-999999").mkdir()
    assert build_atomically(target, "v1", _write) is True
    assert (target / "weights.bin").read_bytes() == b"1234" and (target / MARKER).read_text() == "v1"
    assert not list(target.parent.glob(".model.partial-*"))
    assert build_atomically(target, "v1", failing) is False  # reused: the builder is not called
    assert len(calls) == 1
    assert build_atomically(target, "v2", _write) is True  # another stamp rebuilds


def test_an_unwritable_cache_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(CacheError, match=r"a-file/model.*TINY_AUDIO_CACHE"):
        build_atomically(blocker / "model", "v1", _write)


def test_ctc_targets_round_trip_through_greedy_decoding() -> None:
    targets = ctc_targets("Did Alice paint the cat's boat?")
    assert "".join(CTC_ALPHABET[i - 1] for i in targets) == "did alice paint the cat's boat"
    frames = torch.full((len(targets) * 2, len(CTC_ALPHABET) + 1), -10.0)
    for j, target in enumerate(targets):  # each character, then a blank
        frames[2 * j, target] = 0.0
        frames[2 * j + 1, 0] = 0.0
    assert ctc_decode(frames) == "did alice paint the cat's boat"


def test_the_encoder_pretraining_set_adds_varied_copies_and_non_speech() -> None:
    import numpy as np

    t = np.arange(24000) / 16000
    clean = [(0.1 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (150, 220, 330)]
    texts = ["one two", "three four", "five six"]
    recipe = EncoderRecipe(varied_copies=2, non_speech_clips=7)
    audios, targets = acoustic_variety(clean, texts, recipe, seed=3)
    assert len(audios) == len(targets) == 3 * 3 + 7
    assert targets[:9] == texts * 3 and targets[9:] == [""] * 7  # non-speech learns all-blank frames
    for original, copy in zip(audios[:3], audios[3:6], strict=True):
        assert copy is not original and not np.array_equal(copy[: original.size], original[: copy.size])
    assert all(np.isfinite(a).all() and float(np.abs(a).max()) <= 1.0 for a in audios)
    assert all(effects.rms(a) > 0 for a in audios[:9])
    again, _ = acoustic_variety(clean, texts, recipe, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(audios, again, strict=True))
    other, _ = acoustic_variety(clean, texts, recipe, seed=4)
    assert not np.array_equal(audios[3], other[3])
    batch = FeatureBatches(audios[9:], targets[9:], batch_size=7).batches[0]
    assert batch["target_lengths"].tolist() == [0] * 7 and batch["targets"].numel() == 0


def test_the_copy_task_uses_the_speech_prompt_layout(tiny_fixtures) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_fixtures["qwen3"])
    task = CopyTask(tokenizer, LlmRecipe(repeat_prob=0.0, plain_text_prob=1.0))
    import random

    ids, labels, in_copy = task.example("The cat, the dog.", random.Random(0))
    text = tokenizer.decode(ids)
    assert text.startswith(
        "<|im_start|>user\nthe cat the dog\nTranscribe the audio.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text.endswith("The cat, the dog.<|im_end|>")
    copied = [i for i, flag in zip(ids, in_copy, strict=True) if flag]
    assert tokenizer.decode(copied) == "the cat the dog"
    target = [t for t in labels if t != -100]
    assert tokenizer.decode(target) == "The cat, the dog.<|im_end|>"
    assert plain_words("Why is it so WARM, Ben?") == "why is it so warm ben"


def test_a_run_records_its_metrics_and_the_plot_draws_them(tiny_run_config, tmp_path: Path) -> None:
    data = write_audiofolder(tmp_path / "data", {"train": 8, "validation": 4})
    cfg = tiny_run_config(data, max_steps=10, logging_steps=5, eval_steps=5)
    run(cfg, log=lambda _: None)
    output = tmp_path / "run"
    records = read_metrics(output)
    assert [(r["step"], r["event"]) for r in records] == [(5, "eval"), (5, "log"), (10, "eval"), (10, "log")]
    assert all("train/loss" in r for r in records if r["event"] == "log")
    assert all("eval/loss" in r for r in records if r["event"] == "eval")
    # A resumed run re-logs steps after its checkpoint: the latest record of a step wins.
    with open(output / METRICS_FILE, "a") as handle:
        handle.write(json.dumps({"step": 10, "event": "log", "train/loss": 0.5}) + "\n")
    assert read_metrics(output)[-1]["train/loss"] == 0.5

    second = output.parent / "stage2"
    second.mkdir()
    (second / METRICS_FILE).write_text(
        "\n".join(
            json.dumps({"step": step, "event": "eval", "eval/loss": 1.0, "eval/wer": wer})
            for step, wer in ((0, 0.9), (4, 0.4))
        )
    )
    stages = stage_curves([output, second], ["stage 1", "stage 2"])
    assert stages[1].offset == 10 and stages[1].eval_loss == [(10, 1.0), (14, 1.0)]
    assert stages[1].intelligible_step == 4  # the first evaluation below 50% after one above it
    assert stages[0].intelligible_step is None  # the tiny random models never become intelligible
    png = plot_stages(stages, tmp_path / "plot" / "curves.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[0] > 300


def test_output_norm_makes_projected_audio_as_loud_as_text(tiny_model_config, tiny_run_config, tmp_path) -> None:
    from tiny_audio.runtime.collator import collator_for

    data = write_audiofolder(tmp_path / "data", {"train": 4, "validation": 4})
    samples = [{"audio": torch.randn(16000).numpy() * 0.1, "text": "hello"} for _ in range(2)]
    ratios = {}
    for norm in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_model_config(projector_output_norm=norm))
        ratios[norm] = projector_scale_ratio(model, collator_for(model, 16000)(samples))
    assert ratios[True] == pytest.approx(1.0, rel=0.05)
    assert abs(ratios[False] - 1.0) > 0.1  # the tiny LLM's embeddings are wide (init 0.3): 0.83 without the norm
    # In a run: measured once, on the first batch's own encoder states, before any update.
    model = build_model(tiny_model_config())
    batch = collator_for(model, 16000)(samples)
    logged: list[str] = []
    scale = StepZeroScale(model, logged.append)
    model(**{k: batch[k] for k in MODEL_INPUTS}).loss.backward()
    model(**{k: batch[k] for k in MODEL_INPUTS})
    assert scale.ratio == pytest.approx(projector_scale_ratio(model, batch)) and len(logged) == 1
    lines: list[str] = []
    run(tiny_run_config(data, max_steps=1), log=lines.append)
    assert sum(line.startswith("Projector output RMS at step 0 is ") for line in lines) == 1


def test_adam_settings_reach_the_optimizer(tiny_run_config, tmp_path: Path) -> None:
    from tiny_audio.training.trainer import Callback

    data = write_audiofolder(tmp_path / "data", {"train": 4, "validation": 4})
    seen = {}

    class Grab(Callback):
        def on_train_start(self, trainer) -> None:
            seen.update(trainer.optimizer.param_groups[0])

    cfg = tiny_run_config(data, max_steps=1, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6)
    run(cfg, callbacks=[Grab()], log=lambda _: None)
    assert seen["betas"] == (0.8, 0.95) and seen["eps"] == 1e-6


def test_a_course_folder_trained_with_other_settings_is_refused_not_reused(tmp_path: Path) -> None:
    from tiny_audio.miniature.course import STAGE_RECORD, CourseMismatch, claim_stage_folder
    from tiny_audio.training import checkpoints

    stage = tmp_path / "course" / "stage1-mlp"
    ours = ["+experiments=mlp", "model.audio_model_id=/cache/v2/glm-asr"]
    claim_stage_folder(stage, ours)
    (stage / "checkpoint-100").mkdir()
    (stage / "checkpoint-100" / checkpoints.STATE_FILE).write_text("{}")
    claim_stage_folder(stage, ours)  # the same course again: kept, resumed or reused
    assert json.loads((stage / STAGE_RECORD).read_text()) == ours
    newer = ["+experiments=mlp", "model.audio_model_id=/cache/v3/glm-asr"]
    with pytest.raises(CourseMismatch, match=r"model.audio_model_id=/cache/v2.*pass --out DIR"):
        claim_stage_folder(stage, newer)
    (stage / STAGE_RECORD).unlink()  # a folder from before the record existed
    with pytest.raises(CourseMismatch, match="another version of the course"):
        claim_stage_folder(stage, ours)


def _clips(lengths: list[int]) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(0)
    audios = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    return audios, [f"clip number {i}" for i in range(len(lengths))]


def test_each_process_holds_its_share_of_every_batch_padded_to_the_whole_batch() -> None:
    audios, texts = _clips([8000, 12000, 9600, 16000, 4800, 11200, 6400])
    whole = FeatureBatches(audios, texts, batch_size=4)
    shares = [FeatureBatches(audios, texts, batch_size=4, rank=rank, processes=2) for rank in (0, 1)]
    # 7 clips in batches of 4: a batch of 4 and one of 3, each split between the two processes.
    assert [len(b["texts"]) for b in shares[0].batches] == [2, 2]
    assert [len(b["texts"]) for b in shares[1].batches] == [2, 1]
    for full, first, second in zip(whole.batches, *(s.batches for s in shares), strict=True):
        assert first["texts"] + second["texts"] == full["texts"]
        # The encoder has no attention mask: each share must see the padding the whole batch has.
        assert torch.equal(torch.cat([first["input_features"], second["input_features"]]), full["input_features"])
        assert torch.equal(torch.cat([first["frames"], second["frames"]]), full["frames"])
        assert torch.equal(torch.cat([first["targets"], second["targets"]]), full["targets"])
    # A batch with fewer clips than processes is left out rather than leaving a process nothing.
    assert len(FeatureBatches(audios[:1], texts[:1], batch_size=4, rank=0, processes=2).batches) == 0


TINY_ENCODER = EncoderRecipe(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, batch_size=4)


def _gradients(encoder: nn.Module, head: nn.Linear) -> dict[str, torch.Tensor]:
    named = [*encoder.named_parameters(), *(("head." + n, p) for n, p in head.named_parameters())]
    return {name: p.grad.clone() for name, p in named if p.grad is not None}


def _encoder_and_head() -> tuple[nn.Module, nn.Linear]:
    encoder = build_encoder(TINY_ENCODER, seed=0)
    torch.manual_seed(1)
    return encoder, nn.Linear(TINY_ENCODER.hidden_size, len(CTC_ALPHABET) + 1)


def _share_gradients(rank: int, processes: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=processes)
    try:
        audios, texts = _clips([8000, 12000, 9600, 16000])
        batch = FeatureBatches(audios, texts, batch_size=4, rank=rank, processes=processes).batches[0]
        encoder, head = _encoder_and_head()
        loss = ctc_batch_loss(encoder, head, batch)
        loss.backward()
        loss = average_across_processes([*encoder.parameters(), *head.parameters()], loss)
        torch.save({"loss": loss, "grads": _gradients(encoder, head)}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_data_parallel_pretraining_takes_the_step_of_the_whole_batch(tmp_path: Path) -> None:
    start_processes(_share_gradients, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    audios, texts = _clips([8000, 12000, 9600, 16000])
    encoder, head = _encoder_and_head()
    loss = ctc_batch_loss(encoder, head, FeatureBatches(audios, texts, batch_size=4).batches[0])
    loss.backward()
    whole = _gradients(encoder, head)
    assert set(ranks[0]["grads"]) == set(whole) and len(whole) > 10
    for name, grad in whole.items():
        # Both processes step with the same averaged gradient: the weights stay equal.
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        # ... the gradient of the whole batch (its mean loss), up to the order of float sums.
        assert torch.allclose(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6), name
    assert torch.allclose(ranks[0]["loss"], loss.detach(), rtol=1e-5)
