"""The status record every per-video command prints as its last line (DESIGN.md)."""

from __future__ import annotations

from typing import Any

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
