"""What a person must be told about the model before reading any value it gave.

`untrained` (timeline rows and run.json) and `training_data` (a nullable string column of the
status rows: "synthetic" for a model trained on rendered synthetic faces only, null when
unknown; older outputs lack the column) are said as plainly on every output a person reads:
the report's banner, the rendered video's caption, the figure's note.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from schemas.tables import SYNTHETIC

UNTRAINED_NOTE = "UNTRAINED model: values are not predictions"
SYNTHETIC_NOTE = "model trained on synthetic faces only: not meaningful on real video"


def training_data(status: pa.Table | list[dict[str, Any]]) -> list[str]:
    """The distinct non-null `training_data` values of status rows, sorted ([] when the column
    is absent: outputs written before it existed)."""
    if isinstance(status, pa.Table):
        if "training_data" not in status.column_names:
            return []
        values = status["training_data"].to_pylist()
    else:
        values = [r.get("training_data") for r in status]
    return sorted({str(v) for v in values if v is not None})


def synthetic_only(status: pa.Table | list[dict[str, Any]]) -> bool:
    """True when any status row says its model was trained on synthetic faces only."""
    return SYNTHETIC in training_data(status)
