"""Config of the SS-VAERR network and its training loss (METHOD.md, "Downstream model", "Losses").

Architecture sizes default to `None`, meaning "the registry preset of `arch`"
(`ssvaerr_r18` = the paper's 64 / 64-128-256-512 / GRU 256x2); set them only to deviate.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.base import Section

FinetuneMode = Literal["full", "frozen_frontend", "frozen_encoder"]


class ModelConfig(Section):
    """Which network scores the crops, how it is shaped, and how it runs."""

    arch: str = Field("ssvaerr_r18", description="Registry name: ssvaerr_r18 or ssvaerr_tiny.")
    bins: int = Field(20, ge=2, le=256, description="Bins per target of the CE head (METHOD: 20).")
    device: str = Field("cpu", description="torch device for the network.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Inference precision: float32, bfloat16, float16."
    )

    frontend_channels: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Conv3d front-end output channels (None: arch preset; r18: 64). Bounded: at "
        "most 1024.",
    )
    widths: tuple[int, int, int, int] | None = Field(
        None, description="ResNet trunk stage widths (None: arch preset; r18: 64/128/256/512)."
    )
    blocks: tuple[int, int, int, int] | None = Field(
        None, description="BasicBlocks per trunk stage (None: arch preset; r18: 2/2/2/2)."
    )
    gru_hidden: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="GRU hidden size per direction (None: arch preset; r18: 256). Bounded: at "
        "most 4096.",
    )
    gru_layers: int | None = Field(
        None,
        ge=1,
        le=16,
        description="Stacked GRU layers (None: arch preset; r18: 2). Bounded: at most 16.",
    )
    activation: Literal["relu", "prelu"] = Field(
        "relu", description="Non-linearity of front-end and trunk (METHOD: ReLU, PReLU optional)."
    )
    mean: float = Field(0.421, description="Input normalisation mean, on the [0, 1] pixel scale.")
    std: float = Field(0.165, gt=0, description="Input normalisation std, on the [0, 1] scale.")
    crop_size: int = Field(96, ge=16, le=512, description="Face crop side the network expects, px.")
    bin_edges: Literal["uniform", "kmeans"] = Field(
        "uniform",
        description="Bin layout: uniform over [-1, 1], or k-means centres fitted on train labels.",
    )
    finetune: FinetuneMode = Field(
        "full",
        description="What trains: full, frozen_frontend (Conv3d stem frozen), "
        "frozen_encoder (only GRU + head train).",
    )
    checkpoint: str | None = Field(
        None, description="Weights: a path, fsspec URI, or a name listed in the registry file."
    )
    registry_file: str | None = Field(
        None,
        description="YAML of named checkpoints (name: {uri, sha256}); else env "
        "VAERR_MODEL_REGISTRY.",
    )
    encoder_checkpoint: str | None = Field(
        None,
        description="Pretext checkpoint whose encoder (front-end + trunk) initialises fine-tuning.",
    )


class TargetLoss(Section):
    """Weights of one target's loss terms (arousal and valence may differ)."""

    w_ccc: float = Field(0.5, ge=0, description="Weight of 1 - CCC (batch flattened).")
    w_mse: float = Field(0.25, ge=0, description="Weight of the MSE of the regression value.")
    w_ce: float = Field(0.25, ge=0, description="Weight of the cross-entropy over bins.")
    w_ncce: float = Field(
        0.0, ge=0, description="Weight of the cost-sensitive nCCE (Le et al. 2017) over bins."
    )

    @model_validator(mode="after")
    def _not_all_zero(self) -> TargetLoss:
        if self.w_ccc == self.w_mse == self.w_ce == self.w_ncce == 0:
            raise ValueError("every loss weight of a target is 0: nothing would train it")
        return self


class LossConfig(Section):
    """Composite loss: sum over targets of w_ccc*CCC + w_mse*MSE + w_ce*CE + w_ncce*nCCE, + L2.

    Defaults are the public code's 0.5 CCC + 0.25 CE + 0.25 MSE for both targets.
    """

    arousal: TargetLoss = Field(default_factory=TargetLoss, description="Arousal's weights.")
    valence: TargetLoss = Field(default_factory=TargetLoss, description="Valence's weights.")
    l2: float = Field(
        0.0, ge=0, description="Weight of the sum of squared trainable parameters (0: off)."
    )
