"""pyarrow schemas of the `vaerr evaluate` report tables (training/evaluate.py writes them,
validated against these). Scores are CCC / Pearson / RMSE over the labelled frames."""

from __future__ import annotations

import pyarrow as pa

EVAL_TARGETS = ("arousal", "valence")

# OUT/metrics.parquet: per (protocol, target), one `pooled` row (all sequences concatenated, the
# AVEC convention) and one `mean_per_sequence` row (pearson and rmse null there).
EVAL_METRICS = pa.schema(
    [
        ("protocol", pa.string()),  # sequence | windows
        ("target", pa.string()),  # arousal | valence
        ("scope", pa.string()),  # pooled | mean_per_sequence
        ("ccc", pa.float64()),
        ("pearson", pa.float64()),
        ("rmse", pa.float64()),
        ("frames", pa.int64()),
        ("sequences", pa.int64()),
    ]
)

# OUT/per_sequence.parquet: one row per (protocol, labelled sequence = one track of one video).
EVAL_PER_SEQUENCE = pa.schema(
    [
        ("protocol", pa.string()),
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("track_id", pa.int64()),
        ("subject", pa.string()),
        ("split", pa.string()),
        ("frames", pa.int64()),  # labelled frames
        *((f"{m}_{k}", pa.float64()) for k in EVAL_TARGETS for m in ("ccc", "pearson", "rmse")),
    ]
)


def eval_predictions_schema(protocols: tuple[str, ...] | list[str]) -> pa.Schema:
    """OUT/predictions.parquet (evaluate.write_predictions): one row per scored frame; per
    target its label (`<target>_true`, NaN unlabelled) and one prediction per protocol
    (`<target>_<protocol>`), in `protocols`' order."""
    per_target = []
    for k in EVAL_TARGETS:
        per_target.append((f"{k}_true", pa.float32()))
        per_target += [(f"{k}_{p}", pa.float32()) for p in protocols]
    return pa.schema(
        [
            ("video_id", pa.string()),
            ("track_id", pa.int32()),
            ("frame_index", pa.int32()),
            *per_target,
        ]
    )
