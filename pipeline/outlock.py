"""One writer per output folder: `OUT/_vaerr.lock`, held by `vaerr infer` and `vaerr
preprocess` for the whole run.

Two jobs writing one OUT at once would mix two configs in one folder while run.json names one
of them, and both would report success. The lock file records who holds it (job, owner, host,
pid, start) and a heartbeat that a thread refreshes every `LOCK_HEARTBEAT_S`. A second job
finds it and stops with OutputLocked (a usage error, exit 2) naming the holder.

A job that died leaves its lock behind; it is stale, and the next job takes it over, when its
process is gone from this same host, when its heartbeat is older than `LOCK_STALE_S` (another
host), or when it is unreadable. Taking over is a compare-and-swap (`storage.swap_if`): only the
stale content we judged is replaced, so two jobs taking over at once cannot both win. Creation
is exclusive (`storage.create_exclusive`: a hard link locally, S3's If-None-Match: * remotely;
stores without conditional writes get a warning that says so).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pipeline.outpaths import LOCK_NAME
from pipeline.storage import (
    Options,
    create_exclusive,
    join,
    read_bytes,
    remove,
    swap_if,
    write_bytes,
)

log = logging.getLogger(__name__)

LOCK_STALE_S = 600.0
"""A lock whose heartbeat is older than this (s) is stale: its job died on another machine. Ten
heartbeats, so a busy or briefly cut-off holder is not taken for dead."""
LOCK_HEARTBEAT_S = 60.0
_HELD: set[str] = set()
"""Tokens of the locks this process holds now: a lock naming this process with another token
was left by an earlier job of it whose release failed (e.g. during a storage outage)."""
"""How often (s) a holder rewrites its lock's heartbeat."""


class OutputLocked(ValueError):
    """Another job holds the output folder (a usage error: wait, or choose another output)."""


def lock_record(job: str) -> dict[str, Any]:
    """Who holds a lock: job, owner, host, pid, started (UTC ISO), heartbeat (Unix s), token."""
    now = time.time()
    try:
        owner: str | None = getpass.getuser()
    except Exception:  # no user name in this environment (some containers)
        owner = None
    return {
        "job": job,
        "owner": owner,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "heartbeat": now,
        "token": uuid.uuid4().hex,
    }


def _encode(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, indent=1).encode()


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(data)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists under another user (or unknowable: assume alive)
    return True


def stale_reason(rec: dict[str, Any] | None, stale_s: float = LOCK_STALE_S) -> str | None:
    """Why a lock's holder is gone, or None when it may be alive."""
    if rec is None:
        return "the lock file is unreadable"
    try:
        pid, beat = int(rec.get("pid", -1)), float(rec.get("heartbeat", 0))
    except (TypeError, ValueError):
        return "the lock file is unreadable"
    if rec.get("host") == socket.gethostname() and not _pid_alive(pid):
        return f"its process {pid} on this host is gone"
    if rec.get("host") == socket.gethostname() and pid == os.getpid():
        if rec.get("token") not in _HELD:
            return "an earlier job of this process ended without releasing it"
    age = time.time() - beat
    if age > stale_s:
        return f"its last heartbeat is {age:.0f} s old (limit {stale_s:.0f} s)"
    return None


def _read(uri: str, storage: Options) -> bytes | None:
    try:
        return read_bytes(uri, storage)
    except FileNotFoundError:
        return None


def _refused(out: str, uri: str, rec: dict[str, Any] | None, stale_s: float) -> OutputLocked:
    r = rec or {}
    try:
        age = f"{time.time() - float(r['heartbeat']):.0f} s ago"
    except (KeyError, TypeError, ValueError):
        age = "unknown"
    return OutputLocked(
        f"output {out} is in use by another job ({r.get('job')}, started {r.get('started')} by "
        f"{r.get('owner')} on {r.get('host')}, pid {r.get('pid')}, last heartbeat {age}): wait "
        f"for it to end or choose another output. If it died, its lock {uri} is taken over "
        f"once its heartbeat is {stale_s:.0f} s old (at once on its own host), or delete it"
    )


def acquire(out: str, storage: Options, job: str, stale_s: float = LOCK_STALE_S) -> dict:
    """Create OUT's lock, taking over a stale one; OutputLocked when a live job holds it.
    Returns the record written."""
    mine = lock_record(job)
    _HELD.add(mine["token"])  # before it can be seen: never judged stale by this process
    try:
        return _acquire(out, storage, mine, stale_s)
    except BaseException:
        _HELD.discard(mine["token"])
        raise


def _acquire(out: str, storage: Options, mine: dict, stale_s: float) -> dict:
    uri = join(out, LOCK_NAME)
    data = _encode(mine)
    for _ in range(3):  # released or taken over between our looks: look again
        if create_exclusive(uri, data, storage):
            return mine
        seen = _read(uri, storage)
        if seen is None:
            continue
        rec = _decode(seen)
        why = stale_reason(rec, stale_s)
        if why is None:
            raise _refused(out, uri, rec, stale_s)
        log.warning("taking over the lock of %s: %s", out, why)
        if swap_if(uri, seen, data, storage):
            return mine
    raise _refused(out, uri, _decode(_read(uri, storage) or b""), stale_s)


def _beat(uri: str, storage: Options, mine: dict, stop: threading.Event, every: float) -> None:
    """Refresh the heartbeat every `every` s while the lock is still ours."""
    while not stop.wait(every):
        try:
            seen = _read(uri, storage)
            if seen is None or (_decode(seen) or {}).get("token") != mine["token"]:
                log.warning("the lock %s is no longer this job's", uri)
                return
            mine["heartbeat"] = time.time()
            # An atomic replace, never absent meanwhile: only a job that judged this lock
            # stale would write it too, and a lock that beats is not stale.
            write_bytes(uri, _encode(mine), storage)
        except Exception as exc:  # an outage: the next beat tries again
            log.warning("could not refresh the lock %s (%s)", uri, type(exc).__name__)


def release(out: str, storage: Options, mine: dict) -> None:
    """Delete OUT's lock if it is still ours; never raises (the job's outcome matters more)."""
    uri = join(out, LOCK_NAME)
    _HELD.discard(mine["token"])
    try:
        seen = _read(uri, storage)
        if seen is not None and (_decode(seen) or {}).get("token") == mine["token"]:
            remove(uri, storage)
    except Exception as exc:
        log.warning("could not remove the lock %s (%s): the next job takes it over once it is "
                    "stale", uri, type(exc).__name__)  # fmt: skip


@contextlib.contextmanager
def output_lock(
    out: str,
    storage: Options = None,
    job: str = "vaerr",
    stale_s: float = LOCK_STALE_S,
    heartbeat_s: float = LOCK_HEARTBEAT_S,
) -> Iterator[dict[str, Any]]:
    """Hold OUT's lock for the block (see the module docstring); yields the record written."""
    mine = acquire(out, storage, job, stale_s)
    stop = threading.Event()
    beat = threading.Thread(
        target=_beat, args=(join(out, LOCK_NAME), storage, mine, stop, heartbeat_s), daemon=True
    )
    beat.start()
    try:
        yield mine
    finally:
        stop.set()
        beat.join()
        release(out, storage, mine)
