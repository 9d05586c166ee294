"""Cut face tracks into overlapping model windows, and blend window outputs back per frame.

Window rule (shared by the batch job and `vaerr evaluate`): starts 0, H, 2H, ... while the
window fits; if frames remain after the last one, one more window ends at the track's last
frame; a track shorter than W is one window of its own length. Overlapping per-frame outputs
are averaged with a raised-sine weight, so a frame near a window edge (where the GRU has little
context on one side) counts less than the same frame mid-window.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Window start offsets for a track of `length` frames (see module doc)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def blend_weights(n: int) -> np.ndarray:
    """Per-frame weights [n] of one window: 0.1 + 0.9 sin^2(pi (i + 0.5) / n), never zero."""
    i = np.arange(n, dtype=np.float64)
    return 0.1 + 0.9 * np.sin(np.pi * (i + 0.5) / n) ** 2


class WindowCutter:
    """Streaming cutter for one track: `add` per-frame rows as they are finalised; complete
    windows come out as soon as their last frame arrives, the tail at `finish`. Holds at most
    `window` frames plus the rows of one add, so memory does not grow with track length.

    Rows are dicts of equal-length per-frame arrays (crop, frame_index, box_xyxy, ...).
    """

    def __init__(self, window: int, hop: int) -> None:
        self.window = window
        self.hop = hop
        self.buf: dict[str, np.ndarray] | None = None
        self.offset = 0  # track position of buf's first frame
        self.seen = 0  # frames added so far
        self.next_start = 0
        self.emitted_end = 0  # end position of the last window emitted

    def add(self, rows: dict[str, np.ndarray]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Append frames; yield (start position, window rows) of each window now complete."""
        if self.buf is None:
            self.buf = {k: v.copy() for k, v in rows.items()}
        else:
            self.buf = {k: np.concatenate([self.buf[k], rows[k]]) for k in self.buf}
        self.seen += len(next(iter(rows.values())))
        while self.next_start + self.window <= self.seen:
            yield self._take(self.next_start, self.window)
            self.next_start += self.hop
        self._trim(max(0, self.seen - self.window))

    def finish(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Track ended: yield the tail window if frames remain unscored."""
        if self.seen == 0 or self.emitted_end >= self.seen:
            return
        start = max(0, self.seen - self.window)
        yield self._take(start, self.seen - start)

    def _take(self, start: int, n: int) -> tuple[int, dict[str, np.ndarray]]:
        assert self.buf is not None
        lo = start - self.offset
        self.emitted_end = start + n
        return start, {k: v[lo : lo + n] for k, v in self.buf.items()}

    def _trim(self, keep_from: int) -> None:
        assert self.buf is not None
        cut = keep_from - self.offset
        if cut > 0:
            self.buf = {k: v[cut:] for k, v in self.buf.items()}
            self.offset = keep_from
