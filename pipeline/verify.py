"""`vaerr verify OUT`: check the invariants a job's outputs promise; list every violation.

* every video of the last run's manifest has exactly one status row;
* status rows and timelines match their schemas; statuses are ok | no_face | failed, with a
  reason unless ok;
* no duplicate (video_id, track_id, time_s) in the timelines;
* timelines exist only for ok videos, and every ok video with tracks has one;
* timeline values are finite and in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from pipeline.status import FAILED, NO_FACE, OK
from pipeline.storage import filesystem, join
from schemas.config import VaerrConfig
from schemas.tables import TIMELINES, VIDEOS


def _parquet_files(fs: object, path: str) -> list[str]:
    if not fs.exists(path):  # type: ignore[attr-defined]
        return []
    names = fs.find(path)  # type: ignore[attr-defined]
    return sorted(
        p
        for p in names
        if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith((".", "_"))
    )


def verify_output(out: str, cfg: VaerrConfig) -> list[str]:
    """All violations found under OUT (an empty list means the outputs are sound)."""
    problems: list[str] = []
    fs, vpath = filesystem(join(out, "videos"), cfg.storage)
    rows = []
    for p in _parquet_files(fs, vpath):
        with fs.open(p, "rb") as f:
            t = pq.read_table(f)
        if not t.schema.equals(VIDEOS):
            problems.append(f"{p}: schema differs from schemas.tables.VIDEOS")
        rows += t.to_pylist()
    if not rows and not fs.exists(vpath):
        return [f"{out}: no videos/ folder (not a vaerr output?)"]
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["video_id"], []).append(r)
    for vid, rs in by_id.items():
        if len(rs) > 1:
            problems.append(f"video {vid}: {len(rs)} status rows (expected exactly 1)")
        for r in rs:
            if r["status"] not in (OK, NO_FACE, FAILED):
                problems.append(f"video {vid}: unknown status {r['status']!r}")
            if r["status"] != OK and not r["reason"]:
                problems.append(f"video {vid}: status {r['status']} without a reason")
    mfs, mpath = filesystem(join(out, "manifest.parquet"), cfg.storage)
    if mfs.exists(mpath):
        with mfs.open(mpath, "rb") as f:
            manifest = pq.read_table(f).to_pylist()
        for m in manifest:
            if m["video_id"] not in by_id:
                problems.append(f"input {m['uri']} ({m['video_id']}): no status row")
    tfs, tpath = filesystem(join(out, "timelines"), cfg.storage)
    seen_tl: set[str] = set()
    for p in _parquet_files(tfs, tpath):
        with tfs.open(p, "rb") as f:
            t = pq.read_table(f)
        if not t.schema.equals(TIMELINES):
            problems.append(f"{p}: schema differs from schemas.tables.TIMELINES")
            continue
        df = t.select(["video_id", "track_id", "time_s", "arousal", "valence"]).to_pandas()
        for vid in df.video_id.unique():
            if vid in seen_tl:
                problems.append(f"video {vid}: timeline rows in more than one file")
            seen_tl.add(vid)
            status = [r["status"] for r in by_id.get(vid, [])]
            if status != [OK]:
                problems.append(f"{p}: timeline for video {vid} whose status is {status or None}")
        dup = int(df.duplicated(["video_id", "track_id", "time_s"]).sum())
        if dup:
            problems.append(f"{p}: {dup} duplicate (video_id, track_id, time_s) rows")
        vals = df[["arousal", "valence"]].to_numpy()
        if not np.isfinite(vals).all() or np.abs(vals).max(initial=0) > 1:
            problems.append(f"{p}: arousal/valence not finite or outside [-1, 1]")
    for vid, rs in by_id.items():
        if any(r["status"] == OK and (r["tracks"] or 0) > 0 for r in rs) and vid not in seen_tl:
            problems.append(f"video {vid}: status ok with tracks but no timeline")
    return problems
