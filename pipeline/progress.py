"""Progress of long steps on the driver's terminal (stderr), so people can watch a job work.

Two reporters, both silent under `vaerr -q`:

* `Progress`: videos and frames done of the total, frames/s and ETA, for `infer`,
  `preprocess`, `faces` and `render`. On a terminal it is a tqdm bar; otherwise (logs, CI, a
  pipe) one plain line every `every_s` seconds (10) and one at the end, so a log shows the job
  moving too. The total number of frames of a batch job is not known before its videos are
  decoded: it is estimated from the videos done so far (frames per video x videos) and marked
  `~`; the ETA comes from the remaining videos (or frames, for a single video) at the rate
  seen so far.
* `EpochLine`: one line per training epoch (epoch, train loss, validation CCC arousal and
  valence, best so far, s/epoch, ETA) from the metrics each epoch reports (`ray.train.report`
  on Ray Train workers: see training/progress.py, which brings them to the driver).

With `vaerr -v` a line per finished video is added (name, status, frames, seconds).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from pipeline.errors import escape

T = TypeVar("T")

_VERBOSITY = 0  # -1 quiet, 0 default, 1+ verbose; set by jobs.cli_io.setup_logging
EVERY_S = 10.0


def set_verbosity(level: int) -> None:
    """-1 silences every reporter (`vaerr -q`), 0 the default, >= 1 adds per-video lines."""
    global _VERBOSITY
    _VERBOSITY = level


def verbosity() -> int:
    """The level set by `set_verbosity`."""
    return _VERBOSITY


def fmt_duration(seconds: float | None) -> str:
    """'45s', '3m05s', '1h02m' (or '?' when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Videos and frames done of the total, frames/s, ETA. Use as a context manager; call
    `video_done(frames, ...)` as each video completes (batch jobs: unit "video") or
    `frames_done(n)` as frames stream (one video: unit "frame"; `total_frames` then comes from
    its duration x fps, or None when unknown)."""

    def __init__(
        self,
        desc: str,
        videos: int,
        total_frames: int | None = None,
        *,
        stream: IO[str] | None = None,
        every_s: float = EVERY_S,
        tty: bool | None = None,
        enabled: bool | None = None,
        clock: Any = time.monotonic,
        unit: str = "video",
    ) -> None:
        self.desc = desc
        self.single = unit == "frame"
        self.videos_total = videos
        self.total_frames = total_frames
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.enabled = (_VERBOSITY >= 0) if enabled is None else enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.clock = clock
        self.videos = 0
        self.frames = 0
        self.t0 = clock()
        self._last_line = self.t0
        self._bar: Any = None
        self.lines: list[str] = []  # the plain lines written (tests read them)

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if self.enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total_frames if self.single else self.videos_total,
                desc=self.desc,
                unit="frame" if self.single else "video",
                file=self.stream,
                dynamic_ncols=True,
                leave=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Final line (plain mode) or close the bar."""
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=True)
            self._bar.close()
            self._bar = None
        elif self.enabled and (self.videos or self.frames):
            self._write(self.line(final=True))
        self.enabled = False

    # -- updates -----------------------------------------------------------------------------
    def set_total_frames(self, n: int | None) -> None:
        """The frame total once known (a single video: duration x fps, once it is opened)."""
        self.total_frames = n
        if self._bar is not None and self.single and n:
            self._bar.total = n
            self._bar.refresh()

    def video_done(
        self, frames: int, name: str | None = None, status: str | None = None, **_: Any
    ) -> None:
        """One video finished with `frames` analysis frames."""
        self.videos += 1
        self.frames += int(frames or 0)
        if self.enabled and _VERBOSITY >= 1 and name is not None:
            self._write(
                f"{self.desc}: {escape(name)}: {status}, {int(frames or 0)} frames", force=True
            )
        self._tick(videos=1)

    def frames_done(self, n: int) -> None:
        """`n` more frames of the current video."""
        self.frames += int(n)
        self._tick(frames=n)

    def count(self, frames: Iterable[T]) -> Iterator[T]:
        """Pass `frames` through, counting each one (a single video's stream)."""
        for f in frames:
            yield f
            self.frames_done(1)

    def _tick(self, videos: int = 0, frames: int = 0) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(frames if self.single else videos)
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            return
        now = self.clock()
        finished = not self.single and self.videos >= self.videos_total
        if now - self._last_line >= self.every_s and not finished:  # close() writes the last
            self._write(self.line())

    # -- figures -----------------------------------------------------------------------------
    def rate(self) -> float:
        """Frames per second since the start."""
        dt = self.clock() - self.t0
        return self.frames / dt if dt > 0 else 0.0

    def frames_estimate(self) -> tuple[int | None, bool]:
        """(total frames, exact?): the given total, else frames per finished video x
        videos (an estimate), else None."""
        if self.total_frames:
            return int(self.total_frames), self.single
        if self.videos and self.videos_total:
            if self.videos >= self.videos_total:
                return self.frames, True
            return int(round(self.frames / self.videos * self.videos_total)), False
        return None, False

    def eta(self) -> float | None:
        """Seconds left at the rate seen so far (None before anything is done)."""
        dt = self.clock() - self.t0
        if not self.single:
            if not self.videos:
                return None
            return dt / self.videos * max(0, self.videos_total - self.videos)
        if not self.frames or not self.total_frames:
            return None
        return dt / self.frames * max(0, self.total_frames - self.frames)

    def _postfix(self) -> str:
        total, exact = self.frames_estimate()
        tot = "" if total is None else f"/{'' if exact else '~'}{total:,}"
        return f"{self.frames:,}{tot} frames, {self.rate():.1f} frames/s"

    def line(self, final: bool = False) -> str:
        """The plain progress line: `infer: 3/10 videos, 1,234/~4,100 frames, 41.2 frames/s,
        ETA 1m10s` (`done in ...` at the end)."""
        parts = [f"{self.desc}:"]
        if not self.single:
            parts.append(f"{self.videos}/{self.videos_total} videos,")
        parts.append(self._postfix() + ",")
        if final:
            parts.append(f"done in {fmt_duration(self.clock() - self.t0)}")
        else:
            parts.append(f"ETA {fmt_duration(self.eta())}")
        return " ".join(parts)

    def _write(self, text: str, force: bool = False) -> None:
        self._last_line = self.clock()
        self.lines.append(text)
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)


class EpochLine:
    """Formats and prints one line per training epoch from its reported metrics.

    `epoch 3/16  loss 0.412  val CCC arousal 0.61 valence 0.83  best 0.72 (epoch 3)
    21.4 s/epoch  ETA 4m17s`; the time per epoch is the mean of the epochs seen by this run
    (the first includes start-up), the ETA that times the epochs left."""

    def __init__(self, epochs: int, desc: str = "train", stream: IO[str] | None = None) -> None:
        self.epochs = epochs
        self.desc = desc
        self.stream = stream or sys.stderr
        self.times: list[float] = []
        self.lines: list[str] = []
        self._last = time.monotonic()

    def __call__(self, metrics: dict[str, Any]) -> str:
        """Print (unless quiet) and return the line of one epoch's metrics."""
        now = time.monotonic()
        dt = metrics.get("time_s")
        self.times.append(float(dt) if dt is not None else now - self._last)
        self._last = now
        line = self.format(metrics)
        self.lines.append(line)
        if _VERBOSITY >= 0:
            print(line, file=self.stream, flush=True)
        return line

    def format(self, m: dict[str, Any]) -> str:
        """The line for metrics `m` (keys as training.loop reports them)."""
        epoch = int(m.get("epoch", len(self.times) - 1))
        parts = [f"{self.desc}: epoch {epoch + 1}/{self.epochs}"]
        if m.get("train/loss") is not None:
            parts.append(f"loss {float(m['train/loss']):.4f}")
        a, v = m.get("val/ccc_arousal"), m.get("val/ccc_valence")
        if a is not None or v is not None:
            parts.append(f"val CCC arousal {_num(a)} valence {_num(v)}")
        elif m.get("val/l1") is not None:
            parts.append(f"val L1 {float(m['val/l1']):.4f}")
        if m.get("best_score") is not None:
            parts.append(f"best {_num(m['best_score'])} (epoch {int(m['best_epoch']) + 1})")
        per = sum(self.times) / len(self.times) if self.times else None
        parts.append(f"{per:.1f} s/epoch" if per is not None else "? s/epoch")
        left = max(0, self.epochs - epoch - 1)
        parts.append(f"ETA {fmt_duration(per * left if per is not None else None)}")
        if _VERBOSITY >= 1 and m.get("lr") is not None:
            parts.append(f"lr {float(m['lr']):.2e}, {m.get('steps', '?')} steps")
        return "  ".join(parts)


def _num(x: Any) -> str:
    return "?" if x is None or not math.isfinite(float(x)) else f"{float(x):.3f}"
