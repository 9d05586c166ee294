"""Retries with exponential backoff for transient storage faults (an S3 endpoint that is
briefly unreachable, a dropped connection), within a total time budget.

Only transient errors are retried: a missing object, access denied or a corrupt file fail at
once with their own reason. After the budget, the last error is raised as StorageUnavailable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_NAMES = {
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ClientConnectorError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "ServerTimeoutError",
}
_TRANSIENT_TEXT = (
    "connection refused",
    "connection reset",
    "could not connect",
    "temporarily unavailable",
    "timed out",
    "broken pipe",
    "server disconnected",
)


class StorageUnavailable(OSError):
    """Storage stayed unreachable for the whole retry budget."""


def is_transient(exc: BaseException) -> bool:
    """True for network-level faults anywhere in the exception's cause chain."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if type(e).__name__ in _TRANSIENT_NAMES:
            return True
        if any(t in str(e).lower() for t in _TRANSIENT_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def with_retries(fn: Callable[[], T], budget_s: float, what: str, first_delay_s: float = 0.5) -> T:
    """Call `fn` until it succeeds, retrying transient errors with backoff (0.5 s doubling,
    at most 8 s) for up to `budget_s` seconds in total."""
    start = time.monotonic()
    delay = first_delay_s
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            waited = time.monotonic() - start
            if waited + delay > budget_s:
                raise StorageUnavailable(
                    f"{what}: storage unreachable for {waited:.0f} s ({type(exc).__name__}: {exc})"
                ) from None
            log.warning("%s: transient error (%s), retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
