"""The encoder-output cache: clips seen before skip the frozen encoder and give the same model outputs."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tone
from tests.test_model import SAMPLES, inputs
from tiny_audio.config import AugmentConfig, ConfigError, SpecAugmentConfig
from tiny_audio.data.audio_augment import AudioAugmenter
from tiny_audio.data.augment import SpecAugment
from tiny_audio.model.build import attach_encoder_cache, build_model
from tiny_audio.model.encoder_cache import EncoderCache
from tiny_audio.runtime.collator import collator_for
from tiny_audio.training.loaders import AugmentingCollate


class EncoderCalls:
    """Clips that reached the frozen encoder module."""

    def __init__(self, model) -> None:
        self.clips = 0
        model.encoder.module.register_forward_pre_hook(self._count)

    def _count(self, _module, args) -> None:
        self.clips += args[0].shape[0]


@pytest.mark.parametrize("projector_type", ["mlp", "qformer", "moe"])
def test_a_cached_pass_skips_the_encoder_and_gives_the_same_loss_and_gradients(
    tiny_model_config, projector_type: str
) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(projector_type=projector_type, encoder_padding="max_length")).eval()
    batch = collator_for(model, 16000)(SAMPLES)
    expected = model(**inputs(batch)).loss
    expected.backward()
    expected_grads = {name: p.grad.clone() for name, p in model.projector.named_parameters() if p.grad is not None}
    model.zero_grad()

    model.encoder.cache = EncoderCache(max_bytes=2**30)
    calls = EncoderCalls(model)
    first = model(**inputs(batch)).loss
    assert calls.clips == 3
    second = model(**inputs(batch)).loss
    assert calls.clips == 3  # every clip came from the cache
    second.backward()
    assert (model.encoder.cache.hits, model.encoder.cache.misses) == (3, 3)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)
    grads = {name: p.grad for name, p in model.projector.named_parameters() if p.grad is not None}
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name])


def test_only_unseen_clips_of_a_batch_are_encoded_and_the_batch_keeps_its_order(tiny_model_config) -> None:
    model = build_model(tiny_model_config(encoder_padding="max_length")).eval()
    collate = collator_for(model, 16000)
    model.encoder.cache = EncoderCache(max_bytes=2**30)
    model(**inputs(collate(SAMPLES[:2])))
    calls = EncoderCalls(model)
    mixed = [SAMPLES[2], SAMPLES[0], {"audio": tone(1.9, seed=9), "text": "new"}, SAMPLES[1]]
    batch = collate(mixed)
    cached = model(**inputs(batch)).loss
    assert calls.clips == 2
    model.encoder.cache = None
    torch.testing.assert_close(cached, model(**inputs(batch)).loss)


def test_a_clip_with_other_frames_is_a_new_clip(tiny_model_config) -> None:
    """SpecAugment (or any change to the features) must miss, never serve another input's output."""
    model = build_model(tiny_model_config(encoder_padding="max_length")).eval()
    plain = collator_for(model, 16000)
    masks = SpecAugment(SpecAugmentConfig(enabled=True), torch.Generator().manual_seed(0))
    masked = collator_for(model, 16000, augment=masks)
    model.encoder.cache = EncoderCache(max_bytes=2**30)
    model(**inputs(plain(SAMPLES)))
    model(**inputs(masked(SAMPLES)))
    assert (model.encoder.cache.hits, model.encoder.cache.misses) == (0, 6)


def test_the_cache_stops_growing_at_its_budget_and_stays_correct(tiny_model_config) -> None:
    model = build_model(tiny_model_config(encoder_padding="max_length")).eval()
    batch = collator_for(model, 16000)(SAMPLES)
    expected = model(**inputs(batch)).loss
    one_clip = 35 * model.encoder.hidden_size * 4  # the shortest clip's frames, float32
    model.encoder.cache = EncoderCache(max_bytes=one_clip)
    for _ in range(2):
        torch.testing.assert_close(model(**inputs(batch)).loss, expected)
    cache = model.encoder.cache
    assert len(cache.entries) == 1 and cache.bytes == one_clip
    assert (cache.hits, cache.misses) == (1, 5)
    assert "1 clips" in cache.describe() and "17% of 6 repeatable clip encodings reused" in cache.describe()


def test_the_cache_is_refused_with_spec_augment_and_below_zero(tiny_run_config, tmp_path) -> None:
    cfg = tiny_run_config(tmp_path, model={"encoder_cache_gib": 1.0})
    cfg.data.spec_augment.enabled = True
    with pytest.raises(ConfigError, match=r"model.encoder_cache_gib=1.0 .*data.spec_augment.enabled=true"):
        cfg.validate()
    cfg.data.spec_augment.enabled = False
    cfg.model.encoder_cache_gib = -1.0
    with pytest.raises(ConfigError, match=r"model.encoder_cache_gib=-1.0 is not allowed"):
        cfg.validate()


@pytest.mark.parametrize("gib", [0.0, 0.5])
def test_longest_padding_encodes_each_clip_on_its_own_frames_with_or_without_a_cache(tiny_model_config, gib) -> None:
    """`longest`: a clip's encoding must not depend on its batch (the encoder has no attention mask)."""
    cfg = tiny_model_config(encoder_padding="longest", encoder_cache_gib=gib)
    model = build_model(cfg).eval()
    attach_encoder_cache(model, cfg)
    assert model.encoder.per_clip and (model.encoder.cache is not None) == (gib > 0)
    batch = collator_for(model, 16000)(SAMPLES)
    features, lengths, mels = batch["input_features"], batch["encoder_lengths"], batch["mel_lengths"]
    hidden = model.encoder(features, lengths, mels)
    assert hidden.shape[1] == int(lengths.max())
    for i, (length, mel) in enumerate(zip(lengths.tolist(), mels.tolist(), strict=True)):
        alone = model.encoder.encode(features[i : i + 1, :, :mel])[0, :length]
        torch.testing.assert_close(hidden[i, :length], alone)
        assert not hidden[i, length:].any()  # past the clip: zeros, which no projector output reads
    padded = model.encoder.encode(features)  # the batch's padding changes the shorter clips' frames
    assert not torch.allclose(hidden[0, : int(lengths[0])], padded[0, : int(lengths[0])])


@pytest.mark.parametrize(("padding", "gib"), [("longest", 0.5), ("max_length", 0.5), ("longest", 0.0)])
def test_the_config_attaches_a_cache_and_the_encoder_pads_as_it_says(tiny_model_config, padding, gib) -> None:
    cfg = tiny_model_config(encoder_padding=padding, encoder_cache_gib=gib)
    model = build_model(cfg)
    attach_encoder_cache(model, cfg)
    cache = model.encoder.cache
    assert model.encoder.per_clip == (padding == "longest")
    if gib == 0:
        assert cache is None
    else:
        assert cache is not None and cache.max_bytes == 2**29


def test_an_odd_length_clip_has_one_key_wherever_it_sits_in_its_batch(tiny_model_config) -> None:
    """101 mel frames make 51 encoder frames, as 102 would: the key must not take in a padding frame."""
    model = build_model(tiny_model_config(encoder_padding="longest")).eval()
    collate = collator_for(model, 16000)
    odd = {"audio": tone(1.01, seed=3), "text": "odd"}  # 16,160 samples: 101 mel frames
    longer, shorter = {"audio": tone(1.5, seed=4), "text": "b"}, {"audio": tone(0.5, seed=5), "text": "c"}
    model.encoder.cache = EncoderCache(max_bytes=2**30)
    calls = EncoderCalls(model)
    outputs = []
    for batch in (collate([odd, longer]), collate([odd, shorter])):  # padded, then the longest of its batch
        assert int(batch["mel_lengths"][0]) == 101
        hidden = model.encoder(batch["input_features"], batch["encoder_lengths"], batch["mel_lengths"])
        outputs.append(hidden[0, :51])
    assert calls.clips == 3 and model.encoder.cache.hits == 1  # the odd clip was encoded once
    assert len(model.encoder.cache.entries) == 3
    torch.testing.assert_close(outputs[0], outputs[1])


def test_a_clip_twice_in_one_batch_is_encoded_and_charged_once(tiny_model_config) -> None:
    model = build_model(tiny_model_config(encoder_padding="max_length")).eval()
    batch = collator_for(model, 16000)([SAMPLES[0], SAMPLES[0]])
    model.encoder.cache = EncoderCache(max_bytes=2**30)
    calls = EncoderCalls(model)
    hidden = model.encoder(batch["input_features"], batch["encoder_lengths"], batch["mel_lengths"])
    cache = model.encoder.cache
    (clip,) = cache.entries.values()
    assert calls.clips == 1 and (cache.hits, cache.misses) == (1, 1) and cache.bytes == clip.nbytes
    torch.testing.assert_close(hidden[0], hidden[1])


def test_whisper_with_longest_padding_and_a_cache_encodes_whole_windows(tiny_fixtures, tiny_model_config) -> None:
    """Whisper's learned positions take exactly 3000 mel frames: no per-clip encoding for it."""
    cfg = tiny_model_config(
        audio_model_id=str(tiny_fixtures["whisper"]), encoder_padding="longest", encoder_cache_gib=0.5
    )
    model = build_model(cfg).eval()
    batch = collator_for(model, 16000)(SAMPLES)
    expected = model(**inputs(batch)).loss
    attach_encoder_cache(model, cfg)
    for _ in range(2):  # encoded, then from the cache
        torch.testing.assert_close(model(**inputs(batch)).loss, expected)
    assert (model.encoder.cache.hits, model.encoder.cache.misses) == (3, 3)
    assert not model.encoder.per_clip


def augmenting_collate(model, gain_prob: float) -> AugmentingCollate:
    cfg = AugmentConfig()
    cfg.gain.prob, cfg.gain.db = gain_prob, [6.0, 6.0]
    augmenter = AudioAugmenter(cfg, seed=0, sample_rate=16000, max_duration=30.0)
    return AugmentingCollate(augmenter, collator_for(model, 16000))


def keyed(samples: list[dict], pass_number: int) -> list[dict]:
    return [{**s, "augment_key": [0, pass_number, i]} for i, s in enumerate(samples)]


def mixed_batch(model) -> dict:
    """SAMPLES[1] and SAMPLES[2] augmented around a clean SAMPLES[0] and a clean new clip."""
    changed = augmenting_collate(model, gain_prob=1.0).augmenter(keyed([SAMPLES[1], SAMPLES[2]], 0))
    batch = collator_for(model, 16000)(
        [changed[0], SAMPLES[0], changed[1], {"audio": tone(1.9, seed=9), "text": "new"}]
    )
    assert batch["encoder_cacheable"].tolist() == [False, True, False, True]
    return batch


def test_augmented_clips_fill_no_cache_and_clean_clips_are_still_stored_and_reused(tiny_model_config) -> None:
    """An augmented clip is drawn anew each pass: storing it would only crowd out the clean clips."""
    model = build_model(tiny_model_config(encoder_padding="max_length")).eval()
    model.encoder.cache = cache = EncoderCache(max_bytes=2**30)
    calls = EncoderCalls(model)
    augmented = augmenting_collate(model, gain_prob=1.0)
    for pass_number in range(2):
        batch = augmented(keyed(SAMPLES, pass_number))
        assert not batch["encoder_cacheable"].any()
        model(**inputs(batch))
    assert (cache.bytes, len(cache.entries), cache.hits, cache.misses) == (0, 0, 0, 0)
    assert cache.uncacheable == calls.clips == 6  # encoded every pass
    clean = collator_for(model, 16000)(SAMPLES)
    for _ in range(2):
        model(**inputs(clean))
    assert calls.clips == 9 and len(cache.entries) == 3 and cache.bytes > 0
    assert (cache.hits, cache.misses) == (3, 3)


@pytest.mark.parametrize("padding", ["max_length", "longest"])
def test_a_batch_mixing_augmented_and_clean_clips_encodes_every_row_as_without_the_cache(
    tiny_model_config, padding: str
) -> None:
    """Clean rows (one from the cache, two fresh) and augmented rows, in one batch, in order."""
    model = build_model(tiny_model_config(encoder_padding=padding)).eval()
    attach_encoder_cache(model, tiny_model_config(encoder_padding=padding, encoder_cache_gib=0.5))
    cache = model.encoder.cache
    model.encoder(*_encoder_inputs(collator_for(model, 16000)(SAMPLES[:1])))
    batch = mixed_batch(model)
    features, lengths, mels, cacheable = _encoder_inputs(batch)
    hidden = model.encoder(features, lengths, mels, cacheable)
    assert (cache.hits, cache.misses, cache.uncacheable, len(cache.entries)) == (1, 2, 2, 2)
    uncached = model.encoder.encode(features)  # B, T, D: the batch padded together, as without a cache
    for i, (length, mel) in enumerate(zip(lengths.tolist(), mels.tolist(), strict=True)):
        # `longest` encodes each clip on its own frames with the cache, augmented or not.
        expected = model.encoder.encode(features[i : i + 1, :, :mel])[0] if model.encoder.per_clip else uncached[i]
        assert torch.equal(hidden[i, :length], expected[:length]), f"row {i}"
        assert not hidden[i, length:].any()


def test_the_model_threads_the_marks_and_runs_without_them(tiny_model_config) -> None:
    model = build_model(tiny_model_config(encoder_padding="max_length")).eval()
    batch = mixed_batch(model)
    marks = batch["encoder_cacheable"]
    expected = model(**inputs(batch)).loss
    model.encoder.cache = cache = EncoderCache(max_bytes=2**30)
    torch.testing.assert_close(model(**inputs(batch)).loss, expected)
    assert (cache.misses, cache.uncacheable) == (int(marks.sum()), int((~marks).sum()))
    without = {key: value for key, value in inputs(batch).items() if key != "encoder_cacheable"}
    torch.testing.assert_close(model(**without).loss, expected)  # every clip then counts as cacheable
    assert cache.uncacheable == int((~marks).sum()) and cache.hits == int(marks.sum())


def test_describe_reports_reuse_of_unaugmented_clips_and_augmented_ones_apart() -> None:
    cache = EncoderCache(max_bytes=2**30)
    cache.hits, cache.misses, cache.uncacheable = 7_500, 4_500, 4_000
    assert cache.describe() == (
        "Encoder cache: 0 clips, 0.00 of 1.00 GiB, 62% of 12,000 repeatable clip encodings reused "
        "(4,000 one-off augmented clips encoded fresh)"
    )


def _encoder_inputs(batch: dict) -> tuple:
    return batch["input_features"], batch["encoder_lengths"], batch["mel_lengths"], batch["encoder_cacheable"]
