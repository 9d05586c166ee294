"""Where the face stage's time goes, per step, on any device (used by bench/throughput.py).

`StageTimer.mark(step, device)` adds the wall time since the previous mark to `step`; with a
CUDA device it first waits for the queued kernels (torch.cuda.synchronize), so device work is
charged to the step that queued it. Without a timer attached nothing is synchronised and the
pipeline runs asynchronously as usual.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

STEPS = ("decode", "convert", "detect_net", "detect_post", "fan", "track", "align")


class StageTimer:
    """Accumulated seconds per step (see module doc)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def reset_clock(self) -> None:
        """Start the next interval now (time since the last mark is charged to nothing)."""
        self.last = time.perf_counter()

    def mark(self, step: str, device: torch.device | str | None = None) -> None:
        """Charge the time since the previous mark to `step` (after syncing a CUDA device)."""
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        self.seconds[step] += now - self.last
        self.last = now
