"""`vaerr verify OUT`: check the invariants a job's outputs promise; list every violation.

Verify trusts nothing: it reads the whole OUT, not only the last run's manifest.

* every file under OUT/videos/ and OUT/timelines/ is readable Parquet (an unreadable one is a
  violation naming the file, and the check goes on);
* every video of the last run's manifest has exactly one status row, and every INPUT the run
  was given (run.json `inputs`) listed at least one video (a file named as itself: its own
  status row);
* status rows and timelines match their schemas (files written before a column was added may
  lack it: `VIDEOS_ADDED`, `TIMELINES_ADDED`); statuses are ok | no_face | failed, with a
  reason unless ok;
* one model: every status row has the same (model_id, config_hash) as the run record
  (OUT/run.json), every timeline row the model_id of its video's status row and of the run;
  otherwise the differing videos are listed (`allow_mixed` accepts an OUT built from several
  runs on purpose);
* the last run completed (run.json says "completed", not "running" or "failed"; also waived
  by `allow_mixed`);
* no environment failure is still pending a rerun (attempts < infer.max_attempts);
* no duplicate (video_id, track_id, time_s) in the timelines;
* timelines exist only for ok videos, and every ok video with tracks has one;
* timeline values are finite and in [-1, 1].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.ids import video_id
from pipeline.outpaths import OutPaths
from pipeline.status import ENVIRONMENT_FAILURE, FAILED, NO_FACE, OK
from pipeline.storage import Unreadable, exists, is_transient, iter_tables, read_json
from schemas.config import VaerrConfig
from schemas.tables import TIMELINES, TIMELINES_ADDED, VIDEOS, VIDEOS_ADDED, schema_matches


def _violation(problems: list[str]) -> Unreadable:
    """The verifier's policy for a file it cannot read: a violation naming it."""
    return lambda uri, exc: problems.append(
        f"{uri}: unreadable ({type(exc).__name__}); rerun to rewrite it"
    )


def _tables(
    root: str, cfg: VaerrConfig, schema: pa.Schema, added: tuple[str, ...], name: str,
    problems: list[str],
) -> Iterator[tuple[str, pa.Table]]:  # fmt: skip
    """(file, table) of each Parquet file under `root` (or `root` itself) that reads and
    matches `schema` (with `added` columns optional); the others become violations naming the
    file."""
    for uri, t in iter_tables(root, cfg.storage, _violation(problems)):
        if not schema_matches(t.schema, schema, added):
            problems.append(f"{uri}: schema differs from schemas.tables.{name}")
            continue
        yield uri, t


def _run_record(out: str, cfg: VaerrConfig, problems: list[str]) -> dict[str, Any] | None:
    uri = OutPaths(out).run_record
    try:
        rec = read_json(uri, cfg.storage)
    except Exception as exc:
        if is_transient(exc):
            raise
        problems.append(f"{uri}: unreadable run record ({type(exc).__name__})")
        return None
    return rec if isinstance(rec, dict) else None


def verify_output(out: str, cfg: VaerrConfig, allow_mixed: bool = False) -> list[str]:
    """All violations found under OUT (an empty list means the outputs are sound)."""
    problems: list[str] = []
    vpath = OutPaths(out).videos
    rows = _status_rows(vpath, cfg, problems)
    if not rows and not exists(vpath, cfg.storage):
        return [f"{out}: no videos/ folder (not a vaerr output?)"]
    run = _run_record(out, cfg, problems)
    # Pending means attempts left under the limit the run used (else this command's config).
    limit = ((run or {}).get("config") or {}).get("infer", {}).get("max_attempts")
    limit = int(limit or cfg.infer.max_attempts)
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["video_id"], []).append(r)
    _check_status_rows(by_id, limit, problems)
    pairs, mixed = _mixed_runs(rows, run)
    _check_manifest(out, cfg, by_id, problems)
    _check_inputs(run, by_id, problems)
    seen_tl = _check_timelines(out, cfg, by_id, problems)
    for vid, rs in by_id.items():
        if any(r["status"] == OK and (r["tracks"] or 0) > 0 for r in rs) and vid not in seen_tl:
            problems.append(f"video {vid}: status ok with tracks but no timeline")
    if mixed and not allow_mixed:
        problems.append(
            f"OUT mixes models or configs ({len(pairs)} (model_id, config_hash) pairs in status "
            "rows); the differing videos follow (--allow-mixed accepts an OUT built from "
            "several runs on purpose)"
        )
        problems += mixed
    return problems


def _status_rows(vpath: str, cfg: VaerrConfig, problems: list[str]) -> list[dict]:
    """Every status row of OUT/videos (columns added later read as None), with its `_file`."""
    rows = []
    for p, t in _tables(vpath, cfg, VIDEOS, VIDEOS_ADDED, "VIDEOS", problems):
        for r in t.to_pylist():
            rows.append({"failure_kind": None, "attempts": None, **r, "_file": p})
    return rows


def _check_status_rows(by_id: dict[str, list[dict]], limit: int, problems: list[str]) -> None:
    """One known status per video, a reason when not ok, no environment failure pending."""
    for vid, rs in by_id.items():
        if len(rs) > 1:
            problems.append(f"video {vid}: {len(rs)} status rows (expected exactly 1)")
        for r in rs:
            if r["status"] not in (OK, NO_FACE, FAILED):
                problems.append(f"video {vid}: unknown status {r['status']!r}")
            if r["status"] != OK and not r["reason"]:
                problems.append(f"video {vid}: status {r['status']} without a reason")
            if (
                r["status"] == FAILED
                and r["failure_kind"] == ENVIRONMENT_FAILURE
                and (r["attempts"] or 1) < limit
            ):
                problems.append(
                    f"video {vid} ({r['uri']}): environment failure pending a rerun "
                    f"(attempt {r['attempts'] or 1} of {limit})"
                )


def _mixed_runs(rows: list[dict], run: dict | None) -> tuple[Counter, list[str]]:
    """(model_id, config_hash) pair counts and the videos (and an unfinished run record) that
    break "one model and config across the whole OUT"."""
    pairs = Counter((r["model_id"], r["config_hash"]) for r in rows)
    if run and run.get("model_id"):
        ref = (run.get("model_id"), run.get("config_hash"))
    else:
        ref = pairs.most_common(1)[0][0] if pairs else (None, None)
    mixed: list[str] = []
    for r in rows:
        if (r["model_id"], r["config_hash"]) != ref:
            mixed.append(
                f"video {r['video_id']} ({r['uri']}): model {r['model_id']} config "
                f"{r['config_hash']}, not the run's model {ref[0]} config {ref[1]}"
            )
    if run and run.get("state") not in (None, "completed"):
        mixed.append(
            f"run.json: run {run.get('run_id')} (model {run.get('model_id')}) started "
            f"{run.get('started')} is {run.get('state')}: it never completed"
        )
    return pairs, mixed


def _check_manifest(
    out: str, cfg: VaerrConfig, by_id: dict[str, list[dict]], problems: list[str]
) -> None:
    """Every input of OUT/manifest.parquet (when present) has a status row."""
    for _, mt in iter_tables(OutPaths(out).manifest, cfg.storage, _violation(problems)):
        for m in mt.to_pylist():
            if m["video_id"] not in by_id:
                problems.append(f"input {m['uri']} ({m['video_id']}): no status row")


def _check_inputs(run: dict | None, by_id: dict[str, list[dict]], problems: list[str]) -> None:
    """Every INPUT the last run was given (run.json `inputs`) listed at least one video, and
    one named as itself (a file, missing or not) has its own status row. Folders, globs and
    manifests are checked through OUT/manifest.parquet."""
    for rec in (run or {}).get("inputs") or []:
        if not isinstance(rec, dict) or "input" not in rec:
            problems.append(f"run.json: unreadable input record {rec!r}")
            continue
        item, kind = str(rec["input"]), rec.get("kind")
        if not rec.get("videos"):
            problems.append(f"input {item} ({kind}): listed no video, so it has no status row")
        elif kind in ("file", "missing") and video_id(item) not in by_id:
            problems.append(f"input {item} ({video_id(item)}): no status row")


def _check_timelines(
    out: str, cfg: VaerrConfig, by_id: dict[str, list[dict]], problems: list[str]
) -> set[str]:
    """Timeline files: schema, one file per video, only ok videos, the status row's model, no
    duplicate rows, values finite in [-1, 1]. Returns the video ids with timelines."""
    seen_tl: set[str] = set()
    tpath = OutPaths(out).timelines
    for p, t in _tables(tpath, cfg, TIMELINES, TIMELINES_ADDED, "TIMELINES", problems):
        df = t.select(["video_id", "track_id", "time_s", "arousal", "valence", "model_id"])
        df = df.to_pandas()
        for vid in df.video_id.unique():
            if vid in seen_tl:
                problems.append(f"video {vid}: timeline rows in more than one file")
            seen_tl.add(vid)
            srows = by_id.get(vid, [])
            status = [r["status"] for r in srows]
            if status != [OK]:
                problems.append(f"{p}: timeline for video {vid} whose status is {status or None}")
            models = set(df.model_id[df.video_id == vid])
            if srows and models != {srows[0]["model_id"]}:
                problems.append(
                    f"{p}: timeline of video {vid} by model {sorted(models)}, its status row "
                    f"says {srows[0]['model_id']}"
                )
        dup = int(df.duplicated(["video_id", "track_id", "time_s"]).sum())
        if dup:
            problems.append(f"{p}: {dup} duplicate (video_id, track_id, time_s) rows")
        vals = df[["arousal", "valence"]].to_numpy()
        if not np.isfinite(vals).all() or np.abs(vals).max(initial=0) > 1:
            problems.append(f"{p}: arousal/valence not finite or outside [-1, 1]")
    return seen_tl
