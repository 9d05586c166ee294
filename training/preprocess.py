"""`vaerr preprocess`: videos (+ annotations, + audio) -> clip shards, on Ray Data.

The face stage is the batch job's own (`pipeline.faces.FacePipeline`: decode, detect,
landmarks, track, align), so the crops a model trains on are made exactly as the crops it
will score. Per video (`ShardStage`, a callable class without Ray imports, run by Ray Data
actors or in-process):

1. every face track's aligned 96x96 gray crops, boxes and frame times;
2. the labelled person: per annotated person, one track (data.face_rule: largest mean box by
   default; a named face - generic `face` index, Aff-Wild2 left/right - by horizontal order
   among the major tracks); unlabelled data keeps the rule's track (or all with `all`);
3. labels resampled to the frames' times (linear, NaN where no annotation is near);
4. audio features per frame (training.audio), when the video has sound;
5. shard, sequence and status files written from the actor (shards.py's layout), status
   last, so a killed run never leaves a half-committed video.

Resumable: a video whose status row matches (source version, config hash) is skipped;
`force` redoes everything. Outputs go to any fsspec URI (S3 included). Storage faults are
handled as inference handles them: transient errors are retried for storage.retry_s seconds;
a video whose environment failed (storage, memory, a dead worker) is a failed row with
failure_kind "environment" that a rerun retries until infer.max_attempts runs tried it.

Memory: a video's kept crops are held until its shard is written (9 KiB per frame: about
70 MB for a 5-minute 25 fps recording such as RECOLA's), which bounds the video length
this suits to tens of minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.faces.extract import FacePipeline
from pipeline.job import JobSpec, run_job
from pipeline.manifest import list_inputs
from pipeline.progress import Progress
from pipeline.record import utc_now
from pipeline.scheduling import StageSpec, batch_to_rows, text
from pipeline.status import (
    FAILED,
    NO_FACE,
    OK,
    PENDING,
    StatusRows,
    attempt_outcome,
    failure_kind,
    failure_reason,
    is_pending,
)
from pipeline.storage import Storage, join
from pipeline.video import VideoError, read_audio
from schemas.config import VaerrConfig, config_dump, config_yaml
from schemas.tables import CLIP_SHARD, PREPROCESS_STATUS, SEQUENCES, conform
from training.audio import Extractor, build_extractor, frame_features
from training.datasets import read_dataset
from training.datasets.items import LabelTrack, VideoItem, resample_labels
from training.datasets.shards import CLIPS_DIR, SEQUENCES_DIR, STATUS_DIR, shard_status
from training.labelled import (
    annotated_frames,
    choose_tracks,
    collect_tracks,
    overlapping_tracks,
    track_stats,
)

log = logging.getLogger(__name__)

# Stage input columns; `attempts`: runs that already tried the video (environment failures).
ITEM_COLUMNS = (
    "video_id", "uri", "source_etag", "dataset", "key", "split", "subject", "labels", "attempts",
    "synthetic",
)  # fmt: skip
# Data fields that only schedule or place the work (they do not change the shards).
_RUNTIME_DATA = ("shards", "actors", "num_cpus", "num_gpus", "row_group_frames")


def preprocess_hash(cfg: VaerrConfig) -> str:
    """Short sha256 over what changes the shards: decoding, faces (not the device) and the
    dataset/labels/audio settings (not where shards go or how the job is scheduled)."""
    dump = config_dump(cfg)
    faces = dict(dump["faces"])
    faces.pop("device", None)
    data = {k: v for k, v in dump["data"].items() if k not in _RUNTIME_DATA}
    if data.get("label_tracks") == "one":  # the default: shards made before the flag match
        data.pop("label_tracks")
        data.pop("overlap_iou", None)
    payload = json.dumps({"video": dump["video"], "faces": faces, "data": data}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class Sharded:
    """What one video gave: its shard table (None when no sequence), sequence rows, decoded
    frames, face tracks, the reason when there is no sequence, and the source frame rate."""

    clips: pa.Table | None
    seqs: list[dict[str, Any]]
    frames: int
    tracks: int
    reason: str = ""
    src_fps: float | None = None


Pair = tuple[int, LabelTrack | None, str]  # (track id, its labels or None, how it was chosen)


class ShardStage:
    """Videos -> shard files (written here) -> status rows. Input columns: ITEM_COLUMNS (one
    row per video; `labels` = VideoItem.labels_json()). Output: PREPROCESS_STATUS columns.

    `pipeline` and `extractor` can be injected (tests); otherwise built from the config.
    """

    def __init__(
        self,
        cfg: VaerrConfig,
        root: str,
        pipeline: FacePipeline | None = None,
        extractor: Extractor | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = Storage(cfg.storage)  # retries its reads and writes on transient faults
        self.root = root
        if cfg.data.threads:
            import torch

            torch.set_num_threads(cfg.data.threads)
        self.pipe = pipeline or FacePipeline(cfg)
        self.audio_cfg = cfg.data.audio
        self.extractor = extractor or (
            build_extractor(self.audio_cfg) if self.audio_cfg.enabled else None
        )
        self.hash = preprocess_hash(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [
            self.process({k: text(batch[k][i]) for k in ITEM_COLUMNS})
            for i in range(len(batch["uri"]))
        ]
        return {
            f.name: np.asarray([r[f.name] for r in rows], dtype=object) for f in PREPROCESS_STATUS
        }

    def process(self, item: dict[str, str]) -> dict[str, Any]:
        """One video end to end; returns its status row (also written). Transient storage
        faults are retried (storage.retry_s); what still fails becomes the row's reason and
        failure kind; a failure to write the status row itself raises (the run cannot
        complete, as in inference)."""
        t0 = time.perf_counter()
        vid = item["video_id"]
        row: dict[str, Any] = {
            **{k: item[k] for k in ("video_id", "uri", "dataset", "split", "subject")},
            "status": FAILED,
            "reason": None,
            "frames": 0,
            "tracks": 0,
            "sequences": 0,
            "labelled_frames": 0,
            "annotated_frames": None,
            "processing_s": 0.0,
            "config_hash": self.hash,
            "source_etag": item["source_etag"] or None,
        }
        kind = None
        try:
            for attempt in self.store.attempts(item["uri"]):  # a video redone whole
                with attempt:
                    res = self._video(item)
            row.update(frames=res.frames, tracks=res.tracks, sequences=len(res.seqs))
            row["annotated_frames"] = self._annotated(item, res.frames, res.src_fps)
            row["labelled_frames"] = int(sum(s["labelled_frames"] for s in res.seqs))
            if res.seqs:
                self._write(join(self.root, CLIPS_DIR, f"{vid}.parquet"), res.clips, CLIP_SHARD)
                seqs = pa.Table.from_pylist(res.seqs, SEQUENCES)
                self._write(join(self.root, SEQUENCES_DIR, f"{vid}.parquet"), seqs, SEQUENCES)
                row["status"] = OK
            else:
                row["status"], row["reason"] = NO_FACE, res.reason
                self._remove_stale(vid)
        except Exception as exc:  # a status row, not a crashed job (DESIGN principle 7)
            row["status"], kind = FAILED, failure_kind(exc)
            row["reason"] = failure_reason(exc, item["uri"])
            if isinstance(exc, VideoError):
                row["annotated_frames"] = self._annotated(item, None, None)
            self._remove_stale(vid)
        prior, limit = int(item.get("attempts") or 0), self.cfg.infer.max_attempts
        row["reason"], row["attempts"], _ = attempt_outcome(
            row["status"], row["reason"], kind, prior, limit
        )
        row["failure_kind"] = kind
        row["processing_s"] = time.perf_counter() - t0
        status = pa.Table.from_pylist([row], PREPROCESS_STATUS)
        self._write(join(self.root, STATUS_DIR, f"{vid}.parquet"), status, PREPROCESS_STATUS)
        log.info("%s: %s (%d frames, %d tracks, %d sequences) %s", item["uri"], row["status"],
                 row["frames"], row["tracks"], row["sequences"], row["reason"] or "")  # fmt: skip
        return row

    def _annotated(self, item: dict[str, str], frames: int | None, src: float | None) -> Any:
        labels = VideoItem.labels_from_json(item["labels"])
        if not labels:
            return 0
        fps = float(self.cfg.video.fps)
        return annotated_frames(labels, fps, frames or None, src, self.cfg.data.label_gap_s)

    def _video(self, item: dict[str, str]) -> Sharded:
        """Faces -> the labelled person's tracks -> shard rows and sequences (not written)."""
        run = self.pipe.run(item["uri"])
        tracks = collect_tracks(run)
        if not tracks:
            return Sharded(None, [], run.frames, 0, "no face track found")
        src_fps = run.info.src_fps if run.info else None
        pairs = self._pairs(item, tracks)
        if not pairs:
            reason = "no track matches the labelled face"
            return Sharded(None, [], run.frames, len(tracks), reason, src_fps)
        has_audio = run.info is not None and run.info.has_audio
        audio = self._audio(item["uri"], tracks, float(self.cfg.video.fps)) if has_audio else None
        tables, seqs = [], []
        for tid, lt, how in pairs:
            table, seq = self._sequence(item, tid, tracks[tid], lt, how, src_fps, audio)
            tables.append(table)
            seqs.append(seq)
        return Sharded(pa.concat_tables(tables), seqs, run.frames, len(tracks), "", src_fps)

    def _pairs(self, item: dict[str, str], tracks: dict[int, dict[str, np.ndarray]]) -> list[Pair]:
        """The tracks kept: per labelled face its chosen track (plus, with
        data.label_tracks=overlapping, the other tracks of that face); unlabelled data: the
        rule's track(s)."""
        d = self.cfg.data
        labels = VideoItem.labels_from_json(item["labels"])
        chosen = choose_tracks(
            track_stats(tracks), [lt.face for lt in labels], d.face_rule, d.major_track_fraction
        )
        if not labels:
            return [(tid, None, d.face_rule) for tid in chosen if tid is not None]
        pairs: list[Pair] = []
        taken = {t for t in chosen if t is not None}
        for lt, tid in zip(labels, chosen):
            if tid is None:
                log.warning("%s: no track for labelled face %s", item["uri"], lt.face)
                continue
            pairs.append((tid, lt, lt.face or d.face_rule))
            if d.label_tracks == "overlapping":
                for extra in overlapping_tracks(tracks, tid, d.overlap_iou, taken):
                    taken.add(extra)
                    pairs.append((extra, lt, f"{lt.face or d.face_rule}+overlap"))
        return pairs

    def _sequence(
        self,
        item: dict[str, str],
        tid: int,
        t: dict[str, np.ndarray],
        lt: LabelTrack | None,
        how: str,
        src_fps: float | None,
        audio: np.ndarray | None,
    ) -> tuple[pa.Table, dict[str, Any]]:
        """One kept track: its shard rows (labels resampled to its frame times, audio
        features per frame) and its sequence row."""
        n, gap = len(t["frame_index"]), self.cfg.data.label_gap_s
        if lt is not None:
            lab_t = lt.times(src_fps)
            aro = resample_labels(lab_t, lt.arousal, t["time_s"], gap)
            val = resample_labels(lab_t, lt.valence, t["time_s"], gap)
        else:
            aro = val = np.full(n, np.nan, np.float32)
        feats = None if audio is None else audio[np.clip(t["frame_index"], 0, len(audio) - 1)]
        first = int(t["frame_index"][0])
        if int(t["frame_index"][-1]) - first + 1 != n:
            log.warning("%s: track %d has holes; frames are read by range", item["uri"], tid)
        seq = {
            **{k: item[k] for k in ("dataset", "video_id", "uri")},
            "track_id": tid,
            "split": item["split"],
            "subject": item["subject"],
            "shard": f"{CLIPS_DIR}/{item['video_id']}.parquet",
            "first_frame": first,
            "n_frames": n,
            "labelled_frames": int(np.sum(np.isfinite(aro) & np.isfinite(val))),
            "has_audio": feats is not None,
            "fps": float(self.cfg.video.fps),
            "face": how,
            "synthetic": str(item.get("synthetic") or "") == "true",
        }
        return self._shard_table(item, tid, t, aro, val, feats), seq

    def _audio(self, uri: str, tracks: dict[int, dict[str, np.ndarray]], fps: float) -> Any:
        if self.extractor is None:
            return None
        audio = read_audio(uri, self.audio_cfg.rate, self.cfg.storage)
        if audio.size == 0:
            return None
        n_frames = 1 + max(int(t["frame_index"].max()) for t in tracks.values())
        return frame_features(
            audio, self.audio_cfg.rate, n_frames, fps, self.audio_cfg, self.extractor
        )

    def _shard_table(
        self,
        item: dict[str, str],
        tid: int,
        t: dict[str, np.ndarray],
        aro: np.ndarray,
        val: np.ndarray,
        feats: np.ndarray | None,
    ) -> pa.Table:
        n = len(t["frame_index"])
        if feats is None:
            audio_col = pa.nulls(n, pa.list_(pa.float32()))
        else:
            d = feats.shape[1]
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * d)
            audio_col = pa.ListArray.from_arrays(offsets, pa.array(feats.reshape(-1), pa.float32()))
        crops = np.ascontiguousarray(t["crop"])
        size = crops.shape[1] * crops.shape[2]
        crop_col = pa.Array.from_buffers(
            pa.binary(),
            n,
            [
                None,
                pa.py_buffer(np.arange(n + 1, dtype=np.int32) * size),
                pa.py_buffer(crops.tobytes()),
            ],
        )
        return pa.table(
            {
                "dataset": [item["dataset"]] * n,
                "video_id": [item["video_id"]] * n,
                "uri": [item["uri"]] * n,
                "track_id": np.full(n, tid, np.int32),
                "split": [item["split"]] * n,
                "subject": [item["subject"]] * n,
                "frame_index": t["frame_index"].astype(np.int32),
                "time_s": t["time_s"].astype(np.float64),
                "crop": crop_col,
                "arousal": np.asarray(aro, np.float32),
                "valence": np.asarray(val, np.float32),
                "audio_feat": audio_col,
            }
        )

    def _write(self, uri: str, table: pa.Table, schema: pa.Schema) -> None:
        """Write one Parquet file atomically, retrying transient storage faults."""
        rows = self.cfg.data.row_group_frames
        self.store.write_parquet(uri, conform(table, schema), row_group_size=rows)

    def _remove_stale(self, vid: str) -> None:
        """Delete the video's shard and sequence files of an earlier run, retrying outages."""
        for sub in (CLIPS_DIR, SEQUENCES_DIR):
            self.store.remove(join(self.root, sub, f"{vid}.parquet"))


# ---------------------------------------------------------------------------------------------
# Scheduling: in-process or Ray Data


def item_rows(items: Iterable[VideoItem], cfg: VaerrConfig, store: Storage) -> list[dict[str, str]]:
    """Reader items + each video's source version -> stage input rows (ITEM_COLUMNS)."""
    items = list(items)
    # A dataset names its files: never patterns (`clip[1].mp4` is that file).
    manifest = list_inputs([it.uri for it in items], store, cfg.infer, glob=False)
    etag = {r["uri"]: r["source_etag"] for r in manifest.to_pylist()}
    return [
        {
            "video_id": it.video_id,
            "uri": it.uri,
            "source_etag": etag.get(it.uri) or "",
            "dataset": it.dataset,
            "key": it.key,
            "split": it.split,
            "subject": it.subject,
            "labels": it.labels_json(),
            "attempts": "0",
            "synthetic": "true" if it.synthetic else "",
        }
        for it in items
    ]


def run_preprocess(
    cfg: VaerrConfig,
    *,
    force: bool = False,
    runner: str = "ray",
    ray_address: str | None = None,
    ray_init: dict[str, Any] | None = None,
    items: list[VideoItem] | None = None,
    stage: ShardStage | None = None,
) -> dict[str, Any]:
    """Read the dataset, shard what is not done yet, return the summary (also written to
    R/preprocess.json), on the resumable-job skeleton (pipeline/job.py): the dataset's videos,
    R/videos/ status rows, one ShardStage. `items` / `stage` can be injected (tests; `stage`
    runs locally only)."""
    t0, started = time.perf_counter(), utc_now()
    store = Storage(cfg.storage)  # made once, passed down: its verbs retry outages
    items = read_dataset(cfg.data, cfg.storage) if items is None else items
    root, d = cfg.data.shards, cfg.data
    version = {"config_hash": preprocess_hash(cfg)}
    spec = JobSpec(
        command="preprocess",
        root=root,
        rows=item_rows(items, cfg, store),
        status=shard_status(root),
        version=version,
        config_uri=join(root, "config.yaml"),
        config_text=config_yaml(cfg),
        record_uri=join(root, "preprocess.json"),
        stages=[
            StageSpec(
                ShardStage,
                {"cfg": cfg, "root": root},
                batch_size=1,
                num_cpus=d.num_cpus,
                num_gpus=d.num_gpus,
                pool_size=d.actors,
                instance=stage,
            )
        ],
        item_columns=ITEM_COLUMNS,
        max_attempts=cfg.infer.max_attempts,
    )
    sink = ShardSink(cfg, root, spec.status, version, (t0, started), runner, store)
    return run_job(spec, sink, store, force, runner, ray_address, ray_init)


class ShardSink:
    """`vaerr preprocess`'s sink for the job skeleton: ticks the progress bar per status row;
    the summary sums the status rows of every listed video (skipped ones included) read back
    at the end; the record is the summary with the start, end, runner and config."""

    def __init__(
        self,
        cfg: VaerrConfig,
        root: str,
        status: StatusRows,
        version: dict[str, str],
        started: tuple[float, str],
        runner: str,
        store: Storage,
    ) -> None:
        """`started`: (time.perf_counter(), UTC time) when the command began."""
        self.cfg, self.root, self.status, self.version = cfg, root, status, version
        self.started, self.runner, self.store = started, runner, store
        self.bar: Progress | None = None

    def start(self, bar: Progress, tried: dict[str, int]) -> None:
        self.bar = bar

    def consume(self, batch: dict[str, np.ndarray]) -> None:
        if self.bar is not None:
            for r in batch_to_rows(batch):
                self.bar.video_done(r.get("frames", 0), r.get("uri"), r.get("status"))

    def summary(self, rows: list[dict[str, Any]], todo: list[dict[str, Any]]) -> dict[str, Any]:
        status = self.status.read(self.store)
        totals = _totals(status, {r["video_id"] for r in rows}, self.cfg.infer.max_attempts)
        splits = totals.pop("splits")
        return {
            "videos": len(rows),
            "processed": len(todo),
            "skipped": len(rows) - len(todo),
            **totals,
            "label_tracks": self.cfg.data.label_tracks,
            "splits": splits,
            "wall_s": round(time.perf_counter() - self.started[0], 2),
            "config_hash": self.version["config_hash"],
            "output": self.root,
        }

    def record(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {**summary, "started": self.started[1], "ended": utc_now(), "runner": self.runner,
                "config": config_dump(self.cfg)}  # fmt: skip


def _totals(status: pa.Table, current: set[str], max_attempts: int) -> dict[str, Any]:
    """Counts over the status rows of the current videos: ok, no_face, failed (final),
    pending (environment failures a rerun retries), sequences, frames, labelled and annotated
    frames (at the analysis rate, whether or not a kept face track covers them), ok videos per
    split."""
    rows = [s for s in status.to_pylist() if s["video_id"] in current]
    pending = sum(is_pending(s, max_attempts) for s in rows)
    counts = {k: sum(s["status"] == k for s in rows) for k in (OK, NO_FACE, FAILED)}
    counts[FAILED] -= pending
    splits: dict[str, int] = {}
    for s in rows:
        if s["status"] == OK:
            splits[s["split"]] = splits.get(s["split"], 0) + 1
    return {
        **counts,
        PENDING: pending,
        "sequences": int(sum(s["sequences"] for s in rows)),
        "frames": int(sum(s["frames"] for s in rows)),
        "labelled_frames": int(sum(s["labelled_frames"] for s in rows)),
        "annotated_frames": int(sum(s.get("annotated_frames") or 0 for s in rows)),
        "splits": splits,
    }
