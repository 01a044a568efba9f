"""The projectors tiny_audio knows, one entry each: read by config validation, the builder and checkpoint checks.

It imports nothing, neither torch nor the rest of tiny_audio: config.py checks a name with it before
any model loads, and an exported model carries it beside the projectors it builds.
"""

from __future__ import annotations

from dataclasses import dataclass

# ModelConfig fields that shape the weights of every projector: the type, and the norm added after it.
COMMON_WEIGHT_SETTINGS = ("projector_type", "projector_output_norm")
# Those of the projectors that stack frames and then mix them at projector_hidden_dim.
FRAME_STACKING_SETTINGS = ("projector_pool_stride", "projector_hidden_dim")


@dataclass(frozen=True)
class ProjectorSpec:
    builder: str  # its class in projectors.py beside this, named here because that module needs torch
    # Its own ModelConfig fields: top-level ones (projector_pool_stride) or its block (model.qformer).
    settings: tuple[str, ...] = ()

    @property
    def weight_settings(self) -> tuple[str, ...]:
        """ModelConfig fields its saved weights depend on: they only load into a model with the same values."""
        return COMMON_WEIGHT_SETTINGS + self.settings


PROJECTORS: dict[str, ProjectorSpec] = {
    "mlp": ProjectorSpec("MLPProjector", FRAME_STACKING_SETTINGS),
    "mosa": ProjectorSpec("MOSAProjector", (*FRAME_STACKING_SETTINGS, "mosa")),
    "moe": ProjectorSpec("MoEProjector", (*FRAME_STACKING_SETTINGS, "moe")),
    "qformer": ProjectorSpec("QFormerProjector", ("qformer",)),
}


def projector_choices() -> str:
    return ", ".join(PROJECTORS)


def projector_spec(name: str) -> ProjectorSpec:
    try:
        return PROJECTORS[name]
    except KeyError:
        raise ValueError(f"unknown projector '{name}'; choose one of {projector_choices()}") from None
