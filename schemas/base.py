"""The base every config section derives from: frozen, unknown keys are errors."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A frozen config section; unknown keys fail validation, naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
