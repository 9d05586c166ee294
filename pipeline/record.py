"""The JSON record every job leaves beside its outputs (`run.json` of inference,
`preprocess.json` of preprocessing, `result.json` of training, `summary.json` of evaluation):
one writer, so they share encoding, atomicity and storage retries."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.storage import Storage
from schemas.config import StorageConfig


def utc_now() -> str:
    """This moment as an ISO 8601 UTC timestamp (the records' `started` / `ended`)."""
    return datetime.now(UTC).isoformat()


def _plain(x: Any) -> Any:
    """JSON for what json cannot encode: numpy numbers as numbers, anything else as text."""
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return str(x)


def record_text(record: dict[str, Any]) -> str:
    """The record as the file holds it (indented JSON)."""
    return json.dumps(record, indent=2, default=_plain)


def write_record(uri: str, record: dict[str, Any], storage: StorageConfig | Storage) -> None:
    """Write `record` to `uri` atomically, retrying transient storage faults for
    storage.retry_s seconds (then StorageUnavailable)."""
    Storage.of(storage).write_text(uri, record_text(record))
