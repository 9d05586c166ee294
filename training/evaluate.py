"""Scoring a checkpoint on labelled shards, by the two protocols (`vaerr evaluate`), and the
whole-sequence scoring the training loop validates with.

- `sequence` (the paper's): each labelled sequence through the network in one piece (the
  encoder in chunks with 2 frames of context - exact, since only its 5-frame Conv3d looks
  across time - then the bidirectional GRU over the whole sequence).
- `windows` (what users of the batch job get): the sequence cut into the batch job's windows
  (`pipeline.windows.window_starts` with infer.window_frames / hop_frames), each scored
  alone, blended per frame by `pipeline.timeline.TrackAccumulator` (raised-sine weights).

Both are reported pooled (CCC of all sequences concatenated: the AVEC convention) and per
sequence (and their mean), to Parquet and JSON.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.model.checkpoint import load_model
from pipeline.model.network import SSVAERR, predict
from pipeline.record import write_record
from pipeline.storage import atomic_write, join
from pipeline.timeline import TrackAccumulator
from pipeline.windows import window_starts
from schemas.config import VaerrConfig, config_dump
from schemas.evaluation import (
    EVAL_METRICS,
    EVAL_PER_SEQUENCE,
    EVAL_TARGETS,
    eval_predictions_schema,
)
from schemas.tables import conform
from training.datasets.shards import read_sequence, read_sequences, read_shard_status
from training.metrics import ccc, evaluate_sequences, pearson, rmse

log = logging.getLogger(__name__)
TARGETS = EVAL_TARGETS


@torch.inference_mode()
def predict_whole(
    model: SSVAERR, crops: np.ndarray, chunk_frames: int = 256
) -> dict[str, np.ndarray]:  # noqa: E501
    """One whole sequence: crops uint8 [T, S, S] -> {"arousal", "valence"} float32 [T].

    Equals `model(crops[None])` (a test checks it) with memory bounded by chunk_frames.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(crops).to(device)
    t = x.shape[0]
    ctx = model.encoder.frontend.conv.kernel_size[0] // 2
    parts = []
    for s in range(0, t, chunk_frames):
        e = min(t, s + chunk_frames)
        a, b = max(0, s - ctx), min(t, e + ctx)
        f = model.encoder(x[None, a:b])[0]
        parts.append(f[s - a : s - a + (e - s)])
    seq, _ = model.gru(torch.cat(parts)[None])
    z = model.head(seq)[0]
    k = model.bins
    if was_training:
        model.train()
    return {
        "arousal": (2 * torch.sigmoid(z[:, k]) - 1).float().cpu().numpy(),
        "valence": (2 * torch.sigmoid(z[:, 2 * k + 1]) - 1).float().cpu().numpy(),
    }


def predict_windows(
    model: SSVAERR,
    crops: np.ndarray,
    window: int,
    hop: int,
    batch_size: int = 8,
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """The batch job's protocol on one sequence: windows scored alone, blended per frame.

    crops uint8 [T, S, S] -> {"arousal", "valence"} float32 [T].
    """
    t = len(crops)
    starts = window_starts(t, window, hop)
    acc = TrackAccumulator()
    frames = np.arange(t)
    for i in range(0, len(starts), batch_size):
        group = starts[i : i + batch_size]
        n = [min(window, t - s) for s in group]
        w = max(n)
        x = np.zeros((len(group), w) + crops.shape[1:], np.uint8)
        for j, s in enumerate(group):
            x[j, : n[j]] = crops[s : s + n[j]]
        res = predict(model, x, n, dtype)
        for j, s in enumerate(group):
            fi = frames[s : s + n[j]]
            acc.add(fi, res["arousal"][j, : n[j]], res["valence"][j, : n[j]])
    pf = acc.per_frame()
    return {k: pf[k].astype(np.float32) for k in TARGETS}


def score_sequences(
    model: SSVAERR,
    sequences: Iterable[dict[str, Any]],
    cfg: VaerrConfig,
    protocols: tuple[str, ...] = ("sequence",),
) -> list[dict[str, Any]]:
    """Predictions for each labelled sequence: one dict per sequence with its row fields,
    `labels` {arousal, valence} [T] and, per protocol, {arousal, valence} [T]."""
    out = []
    for seq in sequences:
        if not seq["labelled_frames"]:
            continue
        fr = read_sequence(seq, cfg.storage, crop_size=cfg.model.crop_size)
        rec = {**seq, "frame_index": fr["frame_index"], "labels": {k: fr[k] for k in TARGETS}}
        if "sequence" in protocols:
            rec["sequence"] = predict_whole(model, fr["crops"], cfg.train.eval_chunk_frames)
        if "windows" in protocols:
            rec["windows"] = predict_windows(
                model,
                fr["crops"],
                cfg.infer.window_frames,
                cfg.infer.hop_frames,
                cfg.infer.windows_per_batch(next(model.parameters()).is_cuda),
            )
        out.append(rec)
    return out


def pooled_metrics(scored: list[dict[str, Any]], protocol: str) -> dict[str, dict[str, float]]:
    """{target: evaluate_sequences(...)} over all scored sequences (AVEC pooled CCC, mean
    per-sequence CCC, Pearson, RMSE, counts)."""
    return {
        k: evaluate_sequences([r[protocol][k] for r in scored], [r["labels"][k] for r in scored])
        for k in TARGETS
    }


def validation_metrics(scored: list[dict[str, Any]], prefix: str = "val/") -> dict[str, float]:
    """The numbers the training loop logs and selects on: pooled CCC per target, their mean
    (`ccc_mean`, the selection metric) and the mean per-sequence CCC."""
    m = pooled_metrics(scored, "sequence")
    out = {f"{prefix}ccc_{k}": m[k]["ccc"] for k in TARGETS}
    out[f"{prefix}ccc_mean"] = float(np.mean([m[k]["ccc"] for k in TARGETS]))
    out.update({f"{prefix}ccc_seq_{k}": m[k]["ccc_seq_mean"] for k in TARGETS})
    return out


def coverage(
    scored: list[dict[str, Any]], status: list[dict[str, Any]], splits: Iterable[str]
) -> dict[str, Any]:
    """Labelled frames scored / labelled frames present, per split and overall.

    scored: labelled frames (both targets finite) of the scored sequences; present: the
    annotation's labelled frames at the analysis rate of every video of the split
    (preprocess's `annotated_frames`, all persons, face found or not, failed videos
    included). Shards written before that column fall back to the kept sequences' labelled
    frames (`present_source` says which), which cannot show what preprocessing dropped.
    """
    out: dict[str, Any] = {}
    tot_s = tot_p = 0
    exact = True
    for split in splits:
        sc = sum(
            int((np.isfinite(r["labels"]["arousal"]) & np.isfinite(r["labels"]["valence"])).sum())
            for r in scored
            if r["split"] == split
        )
        rows = [r for r in status if r["split"] == split]
        known = bool(rows) and all(r.get("annotated_frames") is not None for r in rows)
        pres = (
            sum(int(r["annotated_frames"]) for r in rows)
            if known
            else sum(int(r["labelled_frames"] or 0) for r in rows)
        )
        exact &= known
        out[split] = {
            "scored": sc,
            "labelled": pres,
            "fraction": sc / pres if pres else None,
            "videos": len(rows),
            "videos_scored": len({r["video_id"] for r in scored if r["split"] == split}),
            "present_source": "annotation" if known else "sequences",
        }
        tot_s, tot_p = tot_s + sc, tot_p + pres
    out["overall"] = {
        "scored": tot_s,
        "labelled": tot_p,
        "fraction": tot_s / tot_p if tot_p else None,
        "present_source": "annotation" if exact else "sequences",
    }
    return out


def _write_parquet(uri: str, table: pa.Table, schema: pa.Schema, cfg: VaerrConfig) -> None:
    """Write `table` after checking it has exactly `schema`'s columns, cast to its types."""
    if set(table.column_names) != set(schema.names):
        raise ValueError(f"{uri}: columns {table.column_names} are not {schema.names}")
    with atomic_write(uri, cfg.storage) as f:
        pq.write_table(conform(table, schema), f, compression="zstd")


def _metrics_rows(proto: str, pooled: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """EVAL_METRICS rows of one protocol: pooled and mean-per-sequence, per target."""
    rows = []
    for k in TARGETS:
        m = pooled[k]
        common = {"protocol": proto, "target": k}
        counts = {"frames": int(m["frames"]), "sequences": int(m["sequences"])}
        rows.append(
            {**common, "scope": "pooled", "ccc": m["ccc"], "pearson": m["pearson"]}
            | {"rmse": m["rmse"], **counts}
        )
        rows.append(
            {**common, "scope": "mean_per_sequence", "ccc": m["ccc_seq_mean"], "pearson": None}
            | {"rmse": None, **counts}
        )
    return rows


def _per_sequence_row(proto: str, r: dict[str, Any]) -> dict[str, Any]:
    """The EVAL_PER_SEQUENCE row of one scored sequence under one protocol."""
    row = {
        "protocol": proto,
        "video_id": r["video_id"],
        "uri": r["uri"],
        "track_id": int(r["track_id"]),
        "subject": r["subject"],
        "split": r["split"],
        "frames": int(np.isfinite(r["labels"]["arousal"]).sum()),
    }
    for k in TARGETS:
        p, y = r[proto][k], r["labels"][k]
        row.update({f"ccc_{k}": ccc(p, y), f"pearson_{k}": pearson(p, y), f"rmse_{k}": rmse(p, y)})
    return row


def _predictions(scored: list[dict[str, Any]], protocols: tuple[str, ...]) -> pa.Table:
    """Per-frame labels and predictions of every scored sequence (eval_predictions_schema)."""
    parts = []
    for r in scored:
        n = len(r["frame_index"])
        cols = {
            "video_id": [r["video_id"]] * n,
            "track_id": np.full(n, r["track_id"], np.int32),
            "frame_index": r["frame_index"].astype(np.int32),
        }
        for k in TARGETS:
            cols[f"{k}_true"] = r["labels"][k]
            for proto in protocols:
                cols[f"{k}_{proto}"] = r[proto][k]
        parts.append(pa.table(cols))
    return pa.concat_tables(parts)


def _default_output(checkpoint: str) -> str:
    """`eval/` beside the checkpoint (or under the working directory for a bare name)."""
    return join(checkpoint.rsplit("/", 1)[0] if "/" in checkpoint else ".", "eval")


def run_evaluate(
    cfg: VaerrConfig, checkpoint: str, output: str | None = None, device: str | None = None
) -> dict[str, Any]:
    """Score `checkpoint` on the labelled sequences of `evaluate.splits` of `data.shards`
    by `evaluate.protocols`; write OUT/summary.json, OUT/metrics.parquet (pooled and mean
    per-sequence, per protocol and target), OUT/per_sequence.parquet and (optionally)
    OUT/predictions.parquet (schemas in schemas/evaluation.py). Returns the summary."""
    ev = cfg.evaluate
    out = output or ev.output or _default_output(checkpoint)
    model, ckpt = load_model(
        checkpoint,
        cfg.model,
        cache_dir=cfg.cache_dir,
        storage_options=cfg.storage,  # per URI: the registry's and its entry's (issue 25)
        device=device or cfg.model.device,
    )
    seqs = read_sequences(cfg.data.shards, cfg.storage, tuple(ev.splits))
    protocols = tuple(ev.protocols)
    scored = score_sequences(model, seqs, cfg, protocols)
    if not scored:
        raise ValueError(f"no labelled sequences of splits {list(ev.splits)} in {cfg.data.shards}")
    summary: dict[str, Any] = {
        "checkpoint": checkpoint,
        "model_id": ckpt.model_id,
        "untrained": ckpt.untrained,
        "shards": cfg.data.shards,
        "splits": list(ev.splits),
        "sequences": len(scored),
        "frames": int(sum(len(r["frame_index"]) for r in scored)),
        "windows": {"window_frames": cfg.infer.window_frames, "hop_frames": cfg.infer.hop_frames},
        "coverage": coverage(
            scored, read_shard_status(cfg.data.shards, cfg.storage).to_pylist(), ev.splits
        ),
        "protocols": {},
        "output": out,
    }
    metrics_rows, per_seq_rows = [], []
    for proto in protocols:
        pooled = pooled_metrics(scored, proto)
        summary["protocols"][proto] = pooled
        metrics_rows += _metrics_rows(proto, pooled)
        per_seq_rows += [_per_sequence_row(proto, r) for r in scored]
    if ev.write_predictions:
        preds = _predictions(scored, protocols)
        _write_parquet(
            join(out, "predictions.parquet"), preds, eval_predictions_schema(protocols), cfg
        )
    metrics = pa.Table.from_pylist(metrics_rows)
    _write_parquet(join(out, "metrics.parquet"), metrics, EVAL_METRICS, cfg)
    per_seq = pa.Table.from_pylist(per_seq_rows)
    _write_parquet(join(out, "per_sequence.parquet"), per_seq, EVAL_PER_SEQUENCE, cfg)
    if cfg.data.dataset == "recola":
        summary["note"] = (
            "RECOLA: reported on the development set, which also selected the model "
            "(no public test labels; the paper does the same)"
        )
    record = {**summary, "config": config_dump(cfg)}
    write_record(join(out, "summary.json"), record, cfg.storage)
    return summary
