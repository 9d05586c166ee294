"""RGB conversion of decoded frames: PyAV's `frame.to_ndarray(format="rgb24")` (a new swscale
context for every frame) against one `VideoReformatter` kept for the stream (what
pipeline/video.py's `to_rgb` does since issue 21), on the asset clips and a 64x64 clip.

    python -m bench.rgb_convert [--frames 300] [--no-append]

Prints ms per frame of each way, alternating them `--rounds` times in one process (so both
share the load), checks the pixels are equal, and appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from bench.harness import (
    append_results,
    asset_videos,
    command_line,
    fmt_load,
    load1,
    markdown_table,
    num,
)
from pipeline.encode import write_video


def decoded(path: str, n: int) -> list[av.VideoFrame]:
    """The first `n` decoded frames of `path`."""
    with av.open(path) as c:
        return [f for _, f in zip(range(n), c.decode(video=0))]


def per_frame_ms(path: str, n: int, rounds: int) -> tuple[float, float, bool, str]:
    """(ms a frame with to_ndarray, ms a frame with a kept reformatter, pixels equal, frame
    description); the best of `rounds` alternating passes of each, every pass on freshly
    decoded frames (a frame caches its own converter after its first to_ndarray, and a
    stream converts each frame once)."""
    a_best = b_best = float("inf")
    equal, desc = True, ""
    for _ in range(rounds):
        frames = decoded(path, n)
        t = time.perf_counter()
        a = [f.to_ndarray(format="rgb24") for f in frames]
        a_best = min(a_best, (time.perf_counter() - t) / len(frames))
        frames = decoded(path, n)
        r = VideoReformatter()
        t = time.perf_counter()
        b = [r.reformat(f, format="rgb24").to_ndarray() for f in frames]
        b_best = min(b_best, (time.perf_counter() - t) / len(frames))
        equal = equal and all(np.array_equal(x, y) for x, y in zip(a, b))
        desc = f"{frames[0].width}x{frames[0].height} {frames[0].format.name}"
    return a_best * 1e3, b_best * 1e3, equal, desc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.rgb_convert", description=__doc__)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tiny = str(Path(tmp) / "tiny.mp4")
        write_video(tiny, (np.full((64, 64, 3), 120, np.uint8) for _ in range(args.frames)), 25)
        rows = []
        for path in [*asset_videos(), tiny]:
            l0 = load1()
            a, b, equal, desc = per_frame_ms(path, args.frames, args.rounds)
            n = len(decoded(path, args.frames))
            rows.append([Path(path).name if path != tiny else "64x64 (generated)", desc, n,
                         num(a, 3), num(b, 3), num(a / b, 1), "yes" if equal else "NO",
                         fmt_load(l0, load1())])  # fmt: skip
            print(rows[-1], flush=True)
    table = markdown_table(
        ["clip", "frame", "frames", "to_ndarray ms", "kept reformatter ms", "x", "equal", "load"],
        rows,
    )
    print(table)
    if not args.no_append:
        append_results(
            "rgb conversion of decoded frames", command_line("bench.rgb_convert", argv or []), table
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
