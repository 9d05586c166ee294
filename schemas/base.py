"""The base every config section derives from: frozen, unknown keys are errors, and no number
is NaN or infinite."""

import functools
import math
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

_NAN_WORDS = {"nan", "+nan", "-nan", ".nan", "+.nan", "-.nan"}


def _is_nan(value: Any) -> bool:
    """NaN as a float, or as text that would parse to one (`--set x=nan`), at any depth of a
    list, tuple or dict value."""
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip().lower() in _NAN_WORDS
    if isinstance(value, list | tuple):
        return any(_is_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_is_nan(v) for v in value.values())
    return False


@functools.cache
def _holds_floats(annotation: Any) -> bool:
    """Whether a field type is or contains float (float | None, tuple[float, ...],
    dict[str, float]); sub-sections (validated by their own fields) and str fields do not."""
    if annotation is float:
        return True
    return any(_holds_floats(a) for a in typing.get_args(annotation) if a is not Ellipsis)


class Section(BaseModel):
    """A frozen config section; unknown keys fail validation, naming the field. Every float
    field refuses NaN ("not a number", before any bound is compared: NaN fails no comparison)
    and infinities ("a finite number"); sizes, counts and durations carry upper bounds that
    name the limit in their error and description."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, allow_inf_nan=False
    )

    @field_validator("*", mode="before")
    @classmethod
    def _not_nan(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _holds_floats(field.annotation) and _is_nan(value):
            raise ValueError("not a number (NaN): give a finite value")
        return value
