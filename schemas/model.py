"""Config of the SS-VAERR network and its training loss (owned by the model issue)."""

from __future__ import annotations

from pydantic import Field

from schemas.base import Section


class ModelConfig(Section):
    """Which network scores the crops, and how it runs."""

    arch: str = Field("ssvaerr_r18", description="Registry name: ssvaerr_r18 or ssvaerr_tiny.")
    bins: int = Field(20, ge=2, le=256, description="Bins per target of the CE head (METHOD: 20).")
    device: str = Field("cpu", description="torch device for the network.")
    dtype: str = Field("float32", description="Inference precision: float32, bfloat16, float16.")


class LossConfig(Section):
    """Composite loss weights (placeholder; the model issue fills it in)."""

    w_ccc: float = Field(0.5, ge=0, description="Weight of 1 - CCC.")
