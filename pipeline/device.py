"""One rule for device names in configs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def resolve_device(name: str, dtype: str | None = None) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; other names pass through. With
    `dtype`, also check that this machine can run it (`check_device`), before any work."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is not None:
        check_device(name, dtype)
    return name


def check_device(name: str, dtype: str = "float32") -> None:
    """ValueError naming the device when it is not a torch device, is a GPU this machine does
    not have, or cannot run `dtype` (bfloat16 on a GPU before Ampere). float16 on a CPU runs
    (torch's CPU autocast supports it, slowly): it is allowed, not silently changed."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        msg = f"device {name!r} is not a torch device (cpu, cuda, cuda:1, auto)"
        raise ValueError(msg) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: no CUDA GPU is visible here; use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} GPU(s) visible")
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"device {name!r} cannot run bfloat16; use float16 or float32")
    elif dev.type not in ("cpu", "mps"):
        raise ValueError(f"device {name!r}: only cpu, cuda and mps devices are supported")


def batch_for(device: str, configured: int | None, cpu: int, gpu: int) -> int:
    """A forward-pass batch size: the configured one, else the device's default. On a CPU
    small batches win (measured on 2 cores: RetinaFace at 640x360 runs ~1.6x faster in batches
    of 8 than of 32, FAN ~1.7x faster in batches of 2-4 than of 8+, because a batch's feature
    maps then stay in cache); a GPU needs large ones to fill."""
    if configured is not None:
        return configured
    return cpu if torch.device(device).type == "cpu" else gpu


@contextmanager
def tuned_kernels(device: str | torch.device) -> Iterator[None]:
    """cuDNN picks the fastest kernels for each input shape it meets (`cudnn.benchmark`) inside
    this block when `device` is a GPU, and the process's setting comes back after it. Only for
    calls whose shapes repeat (the detector: one frame size and batch per video); a network
    fed ever-changing shapes (windows of any length, any number of faces) would be tuned
    again at each one. Nothing changes on a CPU."""
    if torch.device(device).type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def to_device(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A host tensor on `device`. To a CUDA device it goes through pinned memory (torch's
    caching host allocator reuses the blocks), so the copy queues behind the device's work
    instead of holding the host until it lands; elsewhere it is moved as it is (on a CPU it
    stays)."""
    dev = torch.device(device)
    if dev.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


class HostCopy:
    """A tensor's copy to the host, started without waiting for it.

    On a CUDA device the copy goes into pinned memory behind the queued kernels
    (`non_blocking`) and an event marks its end: the host goes on (tracking, writing, queuing
    the next batch) and waits only when it reads `numpy()`. Elsewhere the tensor is read at
    once (on a CPU it already is on the host)."""

    def __init__(self, t: torch.Tensor) -> None:
        self.event: torch.cuda.Event | None = None
        if t.device.type == "cuda":
            self.host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self.host.copy_(t, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = t.cpu()

    def numpy(self) -> np.ndarray:
        """The copy as numpy, once it has landed (waits for the device only here)."""
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()
