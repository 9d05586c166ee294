"""The status record every per-video command prints as its last line (DESIGN.md), and the
kind of a failure (the video's own, or its environment's)."""

from __future__ import annotations

import errno
from typing import Any

from pipeline.retry import StorageUnavailable, is_transient

OK, NO_FACE, FAILED = "ok", "no_face", "failed"


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
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (StorageUnavailable, MemoryError)) or is_transient(e):
            return ENVIRONMENT_FAILURE
        if isinstance(e, OSError) and e.errno in _ENV_ERRNOS:
            return ENVIRONMENT_FAILURE
        if any(t.__name__ in _DEATH_NAMES for t in type(e).__mro__):
            return ENVIRONMENT_FAILURE
        e = e.__cause__ or e.__context__
    return VIDEO_FAILURE
