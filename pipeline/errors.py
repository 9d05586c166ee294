"""One-line errors for the command line: every failure a command does not turn into a status row
ends as one line naming the input and what to do, never a traceback.

Exit codes: 2 for usage errors (a bad config, path, query or input file: fix the command
line), 1 for the environment (storage unreachable, no credentials, out of memory) and for
internal errors (the traceback is logged at DEBUG: rerun with -vv to see it).
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Iterator

log = logging.getLogger("vaerr")

USAGE = 2
ENVIRONMENT = 1

# Characters a log line must never carry raw: C0/C1 controls and DEL (Cc: newlines, tab, terminal
# escapes), format characters (Cf: bidi overrides and marks such as U+202E and U+200F, zero-width
# characters), line and paragraph separators (Zl, Zp) and lone surrogates (Cs: undecodable bytes
# of a file name), which could break a line, reorder what a reader sees or fail the encoder.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    if unicodedata.category(ch) not in _UNSAFE:
        return ch
    code = ord(ch)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def escape(text: str) -> str:
    """`text` with every control, format (bidi) and separator character escaped: `\\n`, `\\t`,
    `\\x1b`, `\\u202e` (right-to-left override), so a file name cannot break a log line into
    two, reorder what a reader sees or send terminal escape sequences. Printable text (any
    script, spaces included) is unchanged. The one escaping function of vaerr's log lines and
    one-line errors."""
    if text.isprintable():  # False for every character escaped here (and only a few more)
        return text
    return "".join(map(_escaped, text))


def one_line(exc: BaseException, limit: int = 500) -> str:
    """The exception's message on one line (pydantic: `field: message; field: message`)."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and type(exc).__name__ == "ValidationError":
        try:
            parts = []
            for e in exc.errors():  # type: ignore[attr-defined]
                where = ".".join(str(p) for p in e.get("loc", ()))
                msg = str(e.get("msg", "")).removeprefix("Value error, ")
                parts.append(f"{where}: {msg}" if where else msg)
            return escape("invalid config: " + "; ".join(parts))[:limit]
        except Exception:  # noqa: S110 - fall back to the plain message
            pass
    text = " ".join(str(exc).split()) or type(exc).__name__
    return escape(text)[:limit]


def cause_chain(exc: BaseException, suppressed: bool = True) -> Iterator[BaseException]:
    """`exc`, then its cause (else its context), and so on: the one walk every classifier of
    exceptions takes (retry.is_transient, status.failure_kind, the exit codes here). With
    `suppressed=False` a context hidden by `raise ... from None` ends the walk: that says the
    context is not the cause. Cycles end it too; at most 50 links."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen and len(seen) < 50:
        seen.add(id(e))
        yield e
        hidden = e.__suppress_context__ and not suppressed
        e = e.__cause__ or (None if hidden else e.__context__)


def _storage_error_kind(exc: BaseException) -> str | None:
    """'credentials' or 'unreachable' for object-store client errors, by exception type
    (botocore, aiohttp), never by message text; None for anything else."""
    for e in cause_chain(exc, suppressed=False):
        mod = type(e).__module__ or ""
        name = type(e).__name__
        if mod.startswith("botocore"):
            if name in ("NoCredentialsError", "PartialCredentialsError", "NoRegionError"):
                return "credentials"
            return "unreachable"
        if mod.startswith("aiohttp") or isinstance(e, (ConnectionError, TimeoutError)):
            return "unreachable"
    return None


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message with what to do) for an exception that reached `main`."""
    kind = _storage_error_kind(exc)
    if kind == "credentials":
        return USAGE, (
            f"no storage credentials ({type(exc).__name__}): set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or storage.key/secret, or storage.anon=true for public data)"
        )
    if kind == "unreachable":
        return ENVIRONMENT, (
            f"storage unreachable ({type(exc).__name__}: {one_line(exc, 200)}): check "
            "storage.endpoint_url / AWS_ENDPOINT_URL and the network, then rerun"
        )
    if isinstance(exc, MemoryError):
        return ENVIRONMENT, "out of memory: use smaller batches or chunks, or a larger machine"
    if isinstance(exc, PermissionError):
        return USAGE, f"permission denied: {one_line(exc)}"
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)):
        return USAGE, one_line(exc)
    if isinstance(exc, ValueError):  # config, input and query errors (pydantic's included)
        return USAGE, one_line(exc)
    if isinstance(exc, OSError):
        return ENVIRONMENT, f"{type(exc).__name__}: {one_line(exc)} (rerun when it is resolved)"
    return ENVIRONMENT, (
        f"internal error {type(exc).__name__}: {one_line(exc, 300)} "
        "(rerun with -vv for the traceback and report it)"
    )


def log_traceback(exc: BaseException) -> None:
    """The traceback at DEBUG (shown with -vv), for reports of internal errors."""
    log.debug("traceback", exc_info=exc)


def exit_line(command: str, exc: BaseException) -> tuple[int, str]:
    """(exit code, `vaerr COMMAND: error: ...`) for `exc`."""
    code, msg = classify(exc)
    return code, f"vaerr {command}: error: {msg}"


def is_storage_outage(exc: BaseException) -> bool:
    """True when `exc` (or its cause) is an object-store or network failure, by type."""
    return _storage_error_kind(exc) is not None


class VideoError(Exception):
    """A video that cannot be decoded; the message is the status row's reason (raised by
    pipeline.video, classified by pipeline.status: defined below both)."""
