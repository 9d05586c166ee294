"""Retries with exponential backoff for transient storage faults (an S3 endpoint that is
briefly unreachable, a dropped connection), within a total time budget.

Only transient errors are retried: a missing object, access denied or a corrupt file fail at
once with their own reason. After the budget, the last error is raised as StorageUnavailable.
The retrying verbs are `pipeline.storage.Storage`'s; this module is the policy they share.
"""

from __future__ import annotations

import errno
import logging
import time

from pipeline.errors import cause_chain

log = logging.getLogger(__name__)

# Network-level faults of the storage clients (botocore, aiohttp, fsspec), by class name so this
# module imports none of them. Matched against every class in the exception's MRO.
_TRANSIENT_NAMES = {
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ResponseStreamingError",
    "ProxyConnectionError",
    "ClientConnectorError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "ServerTimeoutError",
    "FSTimeoutError",
    "IncompleteRead",
}
# errno values of a network that is down or a peer that went away (never ENOENT, EACCES, ...).
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EHOSTUNREACH,
    errno.EHOSTDOWN,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ENETRESET,
}
# S3-compatible service error codes (botocore ClientError.response["Error"]["Code"]) and HTTP
# statuses that mean "try again later".
_TRANSIENT_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "500",
    "502",
    "503",
    "504",
}
_TRANSIENT_HTTP = {500, 502, 503, 504}


class StorageUnavailable(OSError):
    """Storage stayed unreachable for the whole retry budget; `waited_s` (seconds tried) and
    `cause` (the last transient error's class name) say so without the error's message."""

    waited_s: float = 0.0
    cause: str = ""


def _service_code(e: BaseException) -> tuple[str | None, int | None]:
    """(error code, HTTP status) of a botocore-style ClientError, else (None, None)."""
    resp = getattr(e, "response", None)
    if not isinstance(resp, dict):
        return None, None
    code = (resp.get("Error") or {}).get("Code")
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (str(code) if code is not None else None), (
        int(status) if isinstance(status, int) else None
    )


def is_transient(exc: BaseException) -> bool:
    """True for network-level faults anywhere in the exception's cause chain.

    Decided by exception type, errno and the service's error code only, never by message text:
    messages carry user data (a file named "connection refused.mp4" is not an outage).
    """
    for e in cause_chain(exc):
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            return False
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        if any(t.__name__ in _TRANSIENT_NAMES for t in type(e).__mro__):
            return True
        code, status = _service_code(e)
        if code in _TRANSIENT_CODES or status in _TRANSIENT_HTTP:
            return True
    return False


class Backoff:
    """The retry clock of one operation: 0.5 s doubling, at most 8 s between tries, for up to
    `budget_s` seconds in total."""

    def __init__(self, budget_s: float, what: str, first_delay_s: float = 0.5) -> None:
        self.budget_s, self.what = budget_s, what
        self.start = time.monotonic()
        self.delay = first_delay_s

    def wait(self, exc: Exception) -> None:
        """After a failed try: sleep before the next one when `exc` is transient and the budget
        allows; else raise `exc` itself (not transient) or StorageUnavailable (budget spent)."""
        if not is_transient(exc):
            raise exc
        waited = time.monotonic() - self.start
        if waited + self.delay > self.budget_s:
            err = StorageUnavailable(
                f"{self.what}: storage unreachable for {waited:.0f} s ({type(exc).__name__}: {exc})"
            )
            err.waited_s, err.cause = waited, type(exc).__name__
            raise err from None
        log.warning("%s: transient error (%s), retrying in %.1f s", self.what, exc, self.delay)
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 8.0)
