"""The status record every per-video command prints as its last line (DESIGN.md), and the
kind of a failure (the video's own, or its environment's)."""

from __future__ import annotations

import errno
import logging
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.errors import VideoError, cause_chain, one_line
from pipeline.storage import (
    Storage,
    StorageUnavailable,
    Unreadable,
    is_transient,
    warn_unreadable,
)

log = logging.getLogger(__name__)

OK, NO_FACE, FAILED = "ok", "no_face", "failed"
PENDING = "pending"  # summary count: environment failures a rerun retries (status "failed")


def status_record(
    video_id: str, uri: str, status: str, reason: str | None, tracks: int, frames: int
) -> dict[str, Any]:
    """`{"video_id", "uri", "status", "reason", "tracks", "frames"}`; reason is None when ok."""
    if status not in (OK, NO_FACE, FAILED):
        raise ValueError(f"unknown status {status!r}")
    return {
        "video_id": video_id,
        "uri": uri,
        "status": status,
        "reason": reason,
        "tracks": int(tracks),
        "frames": int(frames),
    }


def face_status(tracks: int) -> tuple[str, str | None]:
    """ok, or no_face with its reason, from the number of tracks found."""
    return (OK, None) if tracks else (NO_FACE, "no face track found")


# What a failed status row's `failure_kind` says (null for ok and no_face rows).
VIDEO_FAILURE, ENVIRONMENT_FAILURE = "video", "environment"

# Ray's exceptions for a worker, actor or node that died (killed, OOM-killed, node lost), by
# class name so this module imports no Ray (DESIGN.md principle 2).
_DEATH_NAMES = {
    "DecodeWorkerDied",  # pipeline/faces/procdecode.py
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "WorkerCrashedError",
    "NodeDiedError",
    "OutOfMemoryError",
    "ObjectLostError",
    "OwnerDiedError",
}
_ENV_ERRNOS = {errno.ENOMEM, errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.EDQUOT}


def failure_kind(exc: BaseException) -> str:
    """ "environment" when the run's surroundings failed, not the video: storage unreachable
    (transient faults, StorageUnavailable), out of memory (MemoryError, torch's OOM, ENOMEM),
    disk or file-handle exhaustion, a worker/actor/node that died. Such a video stays pending
    and a rerun retries it (up to `infer.max_attempts` runs). Anything else is "video": the
    input itself is undecodable, not a video, missing or denied, and retrying cannot help; an
    unforeseen exception counts here too (deterministic for that input, logged with its
    traceback; `--force` redoes it once the cause is fixed) rather than costing every rerun.
    Decided by exception type and errno along the cause chain, never by message text."""
    for e in cause_chain(exc):
        if isinstance(e, (StorageUnavailable, MemoryError)) or is_transient(e):
            return ENVIRONMENT_FAILURE
        if isinstance(e, OSError) and e.errno in _ENV_ERRNOS:
            return ENVIRONMENT_FAILURE
        if any(t.__name__ in _DEATH_NAMES for t in type(e).__mro__):
            return ENVIRONMENT_FAILURE
    return VIDEO_FAILURE


def failure_reason(exc: BaseException, uri: str) -> str:
    """The status row's reason for a video that raised `exc` (classified by type): a decode
    error's own message, "storage unreachable for N s" after the retry budget, "environment:
    ..." for the run's surroundings, else the exception (a bug or an unforeseen input: logged
    with its traceback, a status row rather than a crash). One line, at most 300 characters
    of the exception's text, control characters escaped. The one builder of a status row's
    reason (infer, preprocess, faces, render)."""
    if isinstance(exc, VideoError):
        return str(exc)
    if isinstance(exc, StorageUnavailable):
        return f"storage unreachable for {exc.waited_s:.0f} s ({exc.cause or 'unknown'})"
    if failure_kind(exc) == ENVIRONMENT_FAILURE:
        return f"environment: {type(exc).__name__}: {one_line(exc, 300)}"
    log.error("%s: unexpected error\n%s", uri, traceback.format_exc())
    return f"{type(exc).__name__}: {one_line(exc, 300)}"


def attempt_outcome(
    status: str, reason: str | None, kind: str | None, prior: int, limit: int
) -> tuple[str | None, int, bool]:
    """(reason, attempts, pending) of a video's status row: this run is attempt prior + 1; an
    environment failure with attempts left is pending (a rerun retries it) and its reason says
    which attempt it was and whether it is final."""
    attempts = prior + 1
    if status != FAILED or kind != ENVIRONMENT_FAILURE:
        return reason, attempts, False
    pending = attempts < limit
    then = "a rerun retries it" if pending else "final"
    return f"{reason}; attempt {attempts} of {limit}: {then}", attempts, pending


def is_pending(row: Mapping[str, Any], max_attempts: int) -> bool:
    """A failed status row whose environment failed with attempts left: a rerun retries it."""
    return (
        row["status"] == FAILED
        and row.get("failure_kind") == ENVIRONMENT_FAILURE
        and (row["attempts"] or 1) < max_attempts
    )


def _retryable(row: Mapping[str, Any], max_attempts: int) -> bool:
    """A failed status row a rerun tries again: an environment failure with attempts left, or
    a failure written before failure kinds existed (kind unknown: tried once more)."""
    if row["status"] != FAILED:
        return False
    return row.get("failure_kind") is None or is_pending(row, max_attempts)


def prior_attempts(
    rows: list[dict[str, Any]], done: pa.Table, version: Mapping[str, str]
) -> dict[str, int]:
    """video_id -> runs that already failed it for environment reasons with the same source
    version (the row's source_etag) and `version` columns (e.g. model_id, config_hash; a
    changed key starts counting again)."""
    etag = {r["video_id"]: r["source_etag"] for r in rows}
    want = tuple(version.values())
    return {
        r["video_id"]: int(r["attempts"] or 1)
        for r in done.to_pylist()
        if r.get("failure_kind") == ENVIRONMENT_FAILURE
        and (r["source_etag"], *(r[c] for c in version)) == (etag.get(r["video_id"]), *want)
    }


def pending_rows(
    rows: list[dict[str, Any]],
    done: pa.Table,
    version: Mapping[str, str],
    force: bool,
    max_attempts: int = 3,
) -> list[dict[str, Any]]:
    """Input rows still to do: forced, without a source version (always redone), no final
    status row for this (source version, *version: column -> value), or an environment
    failure tried fewer than `max_attempts` times."""
    if force:
        return list(rows)
    final = {
        r["video_id"]: (r["source_etag"], *(r[c] for c in version))
        for r in done.to_pylist()
        if not _retryable(r, max_attempts)
    }
    want = tuple(version.values())
    return [
        r
        for r in rows
        if not r["source_etag"] or final.get(r["video_id"]) != (r["source_etag"], *want)
    ]


@dataclass(frozen=True)
class StatusRows:
    """Where a job's status rows live (one Parquet file per video under `folder`) and how they
    read back: as `schema`, with the columns `added` after files were written null there, and
    an unreadable file handed to `on_unreadable` (its video is then pending; a storage outage
    raises after the storage's retries, so it never makes every video look pending)."""

    folder: str
    schema: pa.Schema
    added: tuple[str, ...] = ()
    on_unreadable: Unreadable = warn_unreadable

    def read(self, store: Storage) -> pa.Table:
        """Every status row (an empty table when there are none)."""
        return store.read_tables(self.folder, self.schema, self.added, self.on_unreadable)


def plan_pending(
    rows: list[dict[str, Any]],
    done: pa.Table,
    version: Mapping[str, str],
    force: bool,
    max_attempts: int,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """What a resumable job (`vaerr infer`, `vaerr preprocess`) runs: (its input rows still to
    do, video_id -> runs that already tried them), from the status rows read back (`done`).
    One function for both jobs, so their rerun semantics cannot drift."""
    todo = pending_rows(rows, done, version, force, max_attempts)
    tried = {} if force else prior_attempts(rows, done, version)
    log.info("%d videos listed, %d to do, %d already done",
             len(rows), len(todo), len(rows) - len(todo))  # fmt: skip
    return todo, tried


def note_pending(summary: dict[str, Any]) -> None:
    """A job summary with pending videos gains a `note` saying a rerun retries them (also
    logged as a warning)."""
    if summary.get(PENDING):
        summary["note"] = (
            f"{summary[PENDING]} videos failed for environment reasons (storage, memory, a dead "
            "worker) and are pending: rerun the same command to retry them"
        )
        log.warning("%s", summary["note"])
