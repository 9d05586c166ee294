"""Stable identifiers derived from content, never from position or time."""

from __future__ import annotations

import hashlib


def video_id(uri: str) -> str:
    """Stable 16-hex id of a video: sha256 of its URI. Output file names derive from it, so a
    hostile object key (../, absolute paths, odd unicode) can never name an output path."""
    return hashlib.sha256(str(uri).encode("utf-8")).hexdigest()[:16]
