import pytest
import torch

from tiny_audio.config import ModelConfig
from tiny_audio.runtime.projector_registry import PROJECTORS
from tiny_audio.runtime.projectors import build_projector

ENCODER_DIM, LLM_DIM = 32, 48


def small_config(projector_type: str) -> ModelConfig:
    cfg = ModelConfig(projector_type=projector_type, projector_pool_stride=4, projector_hidden_dim=40)
    cfg.mosa.router_hidden_dim = 8
    cfg.qformer.hidden_size, cfg.qformer.num_heads, cfg.qformer.window_size = 32, 4, 6
    return cfg


@pytest.mark.parametrize("projector_type", list(PROJECTORS))
@pytest.mark.parametrize("length", [4, 5, 7, 8, 23, 60])
def test_output_shape_matches_length_formula(projector_type: str, length: int) -> None:
    torch.manual_seed(0)
    projector = build_projector(small_config(projector_type), ENCODER_DIM, LLM_DIM)
    frames = torch.randn(2, length, ENCODER_DIM)
    out, _ = projector(frames, torch.tensor([length, length]))
    expected = int(projector.output_lengths(torch.tensor([length]))[0])
    assert out.shape == (2, expected, LLM_DIM)


@pytest.mark.parametrize("length", [4, 9, 60])
def test_mlp_length_formula(length: int) -> None:
    projector = build_projector(small_config("mlp"), ENCODER_DIM, LLM_DIM)
    assert int(projector.output_lengths(torch.tensor([length]))[0]) == (length - 4) // 4 + 1


def test_padded_frames_do_not_change_a_samples_tokens() -> None:
    torch.manual_seed(0)
    projector = build_projector(small_config("qformer"), ENCODER_DIM, LLM_DIM).eval()
    frames = torch.randn(1, 20, ENCODER_DIM)
    alone, _ = projector(frames, torch.tensor([20]))
    padded = torch.cat([frames, torch.randn(1, 10, ENCODER_DIM)], dim=1)
    batched, _ = projector(padded, torch.tensor([20]))
    n = int(projector.output_lengths(torch.tensor([20]))[0])
    torch.testing.assert_close(batched[:, :n], alone[:, :n])


@pytest.mark.parametrize("projector_type", list(PROJECTORS))
def test_gradients_reach_every_parameter(projector_type: str) -> None:
    torch.manual_seed(0)
    projector = build_projector(small_config(projector_type), ENCODER_DIM, LLM_DIM)
    out, aux = projector(torch.randn(3, 40, ENCODER_DIM), torch.tensor([40, 30, 12]))
    loss = out.pow(2).mean() + (aux if aux is not None else 0)
    loss.backward()
    missing = [name for name, p in projector.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # Blip-2's Q-Former keeps a text-input path (word embeddings) that audio queries never use.
    missing = [name for name in missing if "embeddings.word" not in name and "position_embeddings" not in name]
    assert missing == []


def test_moe_aux_loss_is_scaled_by_coefficient() -> None:
    torch.manual_seed(0)
    cfg = small_config("moe")
    frames = torch.randn(2, 40, ENCODER_DIM)
    _, aux = build_projector(cfg, ENCODER_DIM, LLM_DIM)(frames, torch.tensor([40, 40]))
    cfg.moe.router_aux_loss_coef, cfg.moe.router_z_loss_coef = 0.0, 0.0
    torch.manual_seed(0)
    _, zero = build_projector(cfg, ENCODER_DIM, LLM_DIM)(frames, torch.tensor([40, 40]))
    assert aux.item() > 0
    assert zero.item() == 0


# One change to each ModelConfig field a projector's weights might depend on.
SETTING_CHANGES = {
    "projector_pool_stride": lambda cfg: setattr(cfg, "projector_pool_stride", 2),
    "projector_hidden_dim": lambda cfg: setattr(cfg, "projector_hidden_dim", 24),
    "projector_output_norm": lambda cfg: setattr(cfg, "projector_output_norm", True),
    "mosa": lambda cfg: setattr(cfg.mosa, "num_experts", 2),
    "moe": lambda cfg: setattr(cfg.moe, "num_experts", 3),
    "qformer": lambda cfg: setattr(cfg.qformer, "num_queries", 2),
}


def _weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in build_projector(cfg, ENCODER_DIM, LLM_DIM).state_dict().items()}


@pytest.mark.parametrize("setting", list(SETTING_CHANGES))
@pytest.mark.parametrize("projector_type", list(PROJECTORS))
def test_weight_settings_name_exactly_the_settings_that_shape_the_weights(projector_type: str, setting: str) -> None:
    """Checkpoint compatibility compares these settings: one missing would load weights that do not fit."""
    changed = small_config(projector_type)
    SETTING_CHANGES[setting](changed)
    reshaped = _weight_shapes(changed) != _weight_shapes(small_config(projector_type))
    assert reshaped == (setting in PROJECTORS[projector_type].weight_settings)


def test_unknown_projector_names_the_choices() -> None:
    cfg = small_config("mlp")
    cfg.projector_type = "mpl"
    with pytest.raises(ValueError, match="unknown projector 'mpl'; choose one of mlp, mosa, moe, qformer"):
        build_projector(cfg, ENCODER_DIM, LLM_DIM)


def test_moe_routing_and_its_statistics_ignore_padded_frames() -> None:
    """A 40-frame clip padded to 100 frames: same aux loss and tokens, experts see only real frames."""
    torch.manual_seed(0)
    projector = build_projector(small_config("moe"), ENCODER_DIM, LLM_DIM)
    clip = torch.randn(1, 40, ENCODER_DIM)
    alone, aux_alone = projector(clip, torch.tensor([40]))
    padding = torch.randn(1, 60, ENCODER_DIM) * 5  # loud padding: it would dominate the router's statistics
    rows: list[int] = []
    hook = projector.shared.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    try:
        padded, aux_padded = projector(torch.cat([clip, padding], dim=1), torch.tensor([40]))
    finally:
        hook.remove()
    torch.testing.assert_close(aux_padded, aux_alone)
    torch.testing.assert_close(padded[:, :10], alone)
    assert rows == [10]  # 40 frames stacked by 4: the shared expert ran on the real tokens only
    # Two clips in one batch: the statistics are those of their real frames together.
    other = torch.randn(1, 24, ENCODER_DIM)
    batch = torch.cat([torch.cat([clip, padding], dim=1), torch.cat([other, torch.zeros(1, 76, ENCODER_DIM)], dim=1)])
    _, aux_batch = projector(batch, torch.tensor([40, 24]))
    _, aux_joined = projector(torch.cat([clip, other], dim=1), torch.tensor([64]))
    torch.testing.assert_close(aux_batch, aux_joined)


def test_moe_aux_loss_gradient_reaches_the_router() -> None:
    torch.manual_seed(0)
    projector = build_projector(small_config("moe"), ENCODER_DIM, LLM_DIM)
    _, aux = projector(torch.randn(2, 40, ENCODER_DIM), torch.tensor([40, 28]))
    aux.backward()
    assert projector.router.weight.grad is not None and projector.router.weight.grad.abs().sum() > 0
