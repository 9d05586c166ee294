"""Sources (the videos a job reads) are opened and read without ever blocking for good.

A local FIFO waits for a writer forever, /dev/zero never ends, a socket cannot be opened: such
special files are refused unread (`NotRegularFile`, "not a regular file: FIFO"), checked by
name and again on the open descriptor, which is opened non-blocking. The open and every read,
seek and tell of a source run on the file's own daemon thread and end within
`storage.source_timeout_s` (a stalled network mount or server) or raise `SourceTimeout`, a
TimeoutError: the video fails for the environment and a rerun retries it. A call that never
returns keeps its thread and file, never the job.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading
from pathlib import Path
from typing import Any

from pipeline.storage import is_local, is_remote, local_path, open_uri
from schemas.config import StorageConfig

_KINDS = (
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


class NotRegularFile(ValueError):
    """A source that is a FIFO, socket or device: opening or reading it could block forever
    (a FIFO waits for a writer) or never end (/dev/zero), so it is refused unread."""


class SourceTimeout(TimeoutError):
    """Opening or one read of a source took longer than `storage.source_timeout_s` (a stalled
    mount or server): the video fails for the environment (a rerun retries it)."""


def special_kind(uri: str) -> str | None:
    """ "FIFO", "socket", "character device" or "block device" when the local `uri` (symlinks
    followed) is one; None for regular files, folders, missing paths and remote URIs."""
    if is_remote(uri):
        return None
    try:
        mode = os.stat(local_path(uri)).st_mode
    except (OSError, ValueError):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), None)


class _Watchdog:
    """Runs one file's calls on its own daemon thread and waits at most `timeout_s` for each;
    SourceTimeout after that. A call that never returns keeps only that thread (and the
    file), never the caller; every later call fails at once."""

    def __init__(self, timeout_s: float, what: str) -> None:
        self.timeout_s, self.what = timeout_s, what
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.stuck = False

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, box, done = job
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # handed to the caller's thread
                box["exc"] = exc
            finally:
                done.set()

    def call(self, fn: Any, *args: Any) -> Any:
        """fn(*args) on the watchdog's thread; SourceTimeout when it takes over timeout_s."""
        if self.stuck:
            raise SourceTimeout(f"{self.what}: an earlier call never returned")
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="vaerr-source", daemon=True)
            self._thread.start()
        box: dict[str, Any] = {}
        done = threading.Event()
        self._jobs.put((fn, args, box, done))
        if not done.wait(self.timeout_s):
            self.stuck = True
            raise SourceTimeout(
                f"{self.what}: no answer within {self.timeout_s:g} s (storage.source_timeout_s)"
            )
        if "exc" in box:
            raise box.pop("exc")
        return box["value"]

    def stop(self, last: Any = None) -> None:
        """End the thread after `last()` (run there, never waited for: a stuck call holds the
        file, so closing it here could block too)."""
        if self._thread is None:
            if last is not None:
                last()
            return
        if last is not None:
            self._jobs.put((last, (), {}, threading.Event()))
        self._jobs.put(None)


class SourceFile:
    """A source opened by `open_source`: read, seek and tell go through a watchdog (each ends
    within `timeout_s` or raises SourceTimeout); `size` is the source's size in bytes."""

    def __init__(self, f: Any, size: int | None, dog: _Watchdog) -> None:
        self._f, self.size, self._dog = f, size, dog
        self.closed = False

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes (all with -1), within the time limit."""
        return self._dog.call(self._f.read, n)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move to `offset` (io whence), within the time limit."""
        return self._dog.call(self._f.seek, offset, whence)

    def tell(self) -> int:
        """The current position."""
        return self._dog.call(self._f.tell)

    def seekable(self) -> bool:
        """Sources are seekable (local files, fsspec's remote files)."""
        return True

    def readable(self) -> bool:
        """Always: sources are opened for reading."""
        return True

    def close(self) -> None:
        """Close the file (on the watchdog's thread) and end that thread; never blocks."""
        if not self.closed:
            self.closed = True
            self._dog.stop(self._f.close)

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_local_source(path: Path, uri: str) -> tuple[Any, int]:
    """(file, size) of a local regular file, opened without blocking: a FIFO, socket or device
    raises NotRegularFile (checked before the open and again on the open descriptor, in case
    the name was replaced in between), a folder IsADirectoryError."""
    kind = special_kind(str(path))
    if kind:
        raise NotRegularFile(f"not a regular file: {kind}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO opens at once
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", uri)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "special file")
            raise NotRegularFile(f"not a regular file: {kind}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def open_source(uri: str, storage: StorageConfig | None = None) -> SourceFile:
    """Open a source (a video) for reading: never blocks for good. Local FIFOs, sockets and
    devices raise NotRegularFile unread; the open and every read, seek and tell end within
    `storage.source_timeout_s` or raise SourceTimeout. Other errors as `open_uri`'s."""
    cfg = storage or StorageConfig()
    dog = _Watchdog(cfg.source_timeout_s, f"reading {uri}")

    def opened() -> tuple[Any, int | None]:
        if is_local(uri):
            return _open_local_source(local_path(uri), uri)
        f = open_uri(uri, "rb", cfg)
        return f, getattr(f, "size", None)

    try:
        f, size = dog.call(opened)
    except BaseException:
        dog.stop()
        raise
    return SourceFile(f, size, dog)
