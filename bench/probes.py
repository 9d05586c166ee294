"""Memory and CPU probes of benchmark processes and their trees (Linux /proc): peak RSS, PSS
of a process tree, CPU seconds, and the watchers the benchmarks run beside a job."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants (Ray's raylet, GCS and worker processes included)."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def pss_mib(pid: int) -> float:
    """Proportional set size of one process, MiB (shared pages split among their users, so
    a sum over processes counts the object store and shared libraries once); 0 if gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used; 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def cmdline(pid: int) -> str:
    """A process's command line (Ray actors show their title, e.g. ray::MapWorker(...))."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


class ReapTree:
    """Remember this process's descendants (a local Ray's raylet, GCS and workers) and, on
    exit, SIGKILL any of them still alive a few seconds later: `ray.shutdown()` can leave
    an actor busy in a batch orphaned (re-parented to init) and burning CPU. Only processes
    this process started are touched (pid and start time must match)."""

    def __init__(self, grace_s: float = 3.0) -> None:
        self.grace_s = grace_s
        self.known: dict[int, str] = {}

    def snapshot(self) -> None:
        """Record the current descendants (call while Ray is up)."""
        me = os.getpid()
        for p in tree_pids(me):
            if p != me:
                self.known.setdefault(p, _start_time(p))

    def __enter__(self) -> ReapTree:
        return self

    def __exit__(self, *exc: object) -> None:

        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            alive = [p for p, st in self.known.items() if st and _start_time(p) == st]
            if not alive:
                return
            time.sleep(0.2)
        for p, st in self.known.items():
            if st and _start_time(p) == st:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass


class TreeMemory:
    """Samples the summed PSS of this process and all its descendants every `interval_s`
    seconds in a thread; `peak_mib` is the largest sum seen (a sampled peak: spikes shorter
    than the interval can be missed). Also sums the CPU seconds the tree used while sampled
    (`cpu_s`; a process that exits loses at most its last interval)."""

    def __init__(self, interval_s: float = 0.5, reaper: ReapTree | None = None) -> None:
        self.interval_s = interval_s
        self.reaper = reaper
        self.peak_mib = 0.0
        self._cpu0: dict[int, float] = {}
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            pids = tree_pids(me)
            if self.reaper is not None:
                self.reaper.snapshot()
            for p in pids:
                c = proc_cpu_s(p)
                if c:
                    self._cpu[p] = c
            total = sum(pss_mib(p) for p in pids)
            self.peak_mib = max(self.peak_mib, total)
            self._stop.wait(self.interval_s)

    @property
    def cpu_s(self) -> float:
        """CPU seconds used by the tree since `__enter__`."""
        return sum(c - self._cpu0.get(p, 0.0) for p, c in self._cpu.items())

    def __enter__(self) -> TreeMemory:
        self._cpu0 = {p: proc_cpu_s(p) for p in tree_pids(os.getpid())}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class CommitWatcher:
    """Polls OUT/videos/ for status files while a job runs and records when each appeared
    (monotonic s), so a rate in videos can be computed without touching the runner (the job's
    own frames/s once running is in its run.json: `steady_frames_per_s`)."""

    def __init__(self, out: Path, interval_s: float = 0.1) -> None:
        self.dir = out / "videos"
        self.interval_s = interval_s
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._scan()
            self._stop.wait(self.interval_s)

    def _scan(self) -> None:
        if self.dir.exists():
            now = time.monotonic()
            for name in os.listdir(self.dir):
                if name.endswith(".parquet") and not name.startswith("."):
                    self.seen.setdefault(name, now)

    def __enter__(self) -> CommitWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._scan()


# ---------------------------------------------------------------------------------------------
# Worker subprocesses
