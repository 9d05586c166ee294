"""A pydantic config section as command-line flags: one `--field-name` per field (used by
`vaerr query happy|spikes` for HappyConfig / SpikeConfig)."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import BaseModel


def add_section_args(p: argparse.ArgumentParser, section: type[BaseModel]) -> None:
    """One `--field-name` flag per field of a config section; help is the field's description
    and its default, and an omitted flag keeps the section's default."""
    for name, field in section.model_fields.items():
        kind = field.annotation if field.annotation in (int, float) else str
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            metavar=kind.__name__.upper(),
            help=f"{field.description} (default {field.default})",
        )


def section_from_args(args: argparse.Namespace, section: type[BaseModel]) -> Any:
    """The section with the flags that were given."""
    given = {k: getattr(args, k) for k in section.model_fields if getattr(args, k) is not None}
    return section(**given)
