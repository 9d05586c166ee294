"""Host memory of the face stage fed several videos at once (infer.face_videos): 50 short
synthetic videos through one FaceStage, `--videos-at-once` per call (each decoding in its own
thread), the process's RSS read as each video's end row comes out. Flat from the 10th video to
the last (within 10 %) is the target: memory is bounded by the videos open at once, not by how
many go through.

    VAERR_ASSETS=../shared/assets .venv/bin/python -m bench.feed_memory [--videos 50]
        [--videos-at-once 4] [--seconds 2] [--decode-processes] [--no-append]

`--decode-processes`: each open video decodes in a worker process (infer.decode_processes),
so 4 at once means 4 decode workers; their memory is reported beside this process's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.harness import (
    append_results,
    begin,
    face_overrides,
    fmt_load,
    load1,
    log,
    markdown_table,
    synth_videos,
)
from pipeline.stages import FaceStage
from schemas.config import load_config
from schemas.stage_columns import END


def rss_mb() -> float:
    """This process's resident set, MiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def workers_rss_mb(stage: FaceStage) -> float:
    """Summed RSS of the stage's decode worker processes, MiB (0 where it decodes in threads)."""
    if not stage.cfg.infer.decode_processes:
        return 0.0
    total = 0.0
    for w in stage.pipe.decode_processes().workers:
        try:
            with open(f"/proc/{w.proc.pid}/status") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration, AttributeError):
            continue
    return total


def main(argv: list[str] | None = None) -> None:
    """Run the feed, print RSS per video, append the table to bench/RESULTS.md."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--videos", type=int, default=50)
    p.add_argument("--videos-at-once", type=int, default=4)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--decode-processes", action="store_true")
    p.add_argument("--workdir", default="/tmp/vaerr-bench-feed")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = begin("bench.feed_memory", argv, Path(args.workdir))
    uris = synth_videos(Path(args.workdir), "feed", args.videos, args.seconds, (240, 320))
    k = args.videos_at_once
    procs = f"infer.decode_processes={args.decode_processes}"
    cfg = load_config(None, face_overrides("retina5") + [f"infer.face_videos={k}", procs])
    stage = FaceStage(cfg)
    l0, t0 = load1(), time.perf_counter()
    rss, workers, frames = [], [], 0
    for s in range(0, len(uris), k):
        group = uris[s : s + k]
        batch = {
            "video_id": np.array([f"v{s + i}" for i in range(len(group))], object),
            "uri": np.array(group, object),
            "source_etag": np.array([""] * len(group), object),
        }
        for out in stage(batch):
            for i in np.flatnonzero(out["kind"] == END):
                assert out["status"][i] == "ok", (out["uri"][i], out["reason"][i])
                frames += int(out["frames"][i])
                rss.append(rss_mb())
                workers.append(workers_rss_mb(stage))
                log(f"video {len(rss)}: RSS {rss[-1]:.0f} MiB, decode workers {workers[-1]:.0f}")
    wall = time.perf_counter() - t0
    tail = np.asarray(rss[9:])
    spread = (tail.max() - tail.min()) / tail.min() * 100 if len(tail) else float("nan")
    # the peak of each block of 10 videos: what is in flight at a sample (up to k videos'
    # look-ahead, ~100 frames each) moves single samples by +-6 %; a leak moves the peaks
    blocks = [(b + 1, min(b + 10, len(rss))) for b in range(0, len(rss), 10)]
    peaks = [max(rss[a - 1 : b]) for a, b in blocks]
    growth = (peaks[-1] - peaks[1]) / peaks[1] * 100 if len(peaks) > 2 else float("nan")
    rows = [[f"{a}-{b}", f"{min(rss[a - 1 : b]):.0f}", f"{pk:.0f}"]
            for (a, b), pk in zip(blocks, peaks)]  # fmt: skip
    body = (
        f"{len(rss)} synthetic {args.seconds:g} s videos (240x320, one face), "
        f"{k} at a time through one FaceStage (retina5, CPU), {frames} frames in {wall:.0f} s "
        f"({frames / wall:.0f} frames/s), load {fmt_load(l0, load1())}.\n\n"
        + markdown_table(["videos", "RSS min MiB", "RSS peak MiB"], rows)
        + f"\n\nFrom the 10th video to the {len(rss)}th, sampled at each video's end: RSS "
        f"{tail.min():.0f}-{tail.max():.0f} MiB ({spread:.1f} % apart). The peak of the last "
        f"block against the second's: {growth:+.1f} % (target: within 10 %).\n"
    )
    if args.decode_processes:
        w = np.asarray(workers[9:])
        body += (
            f"\nDecode worker processes (infer.decode_processes), their summed RSS from the 10th "
            f"video on: {w.min():.0f}-{w.max():.0f} MiB.\n"
        )
    print(body)
    if not args.no_append:
        append_results("Face stage fed several videos at once: host memory", command, body)


if __name__ == "__main__":
    main()
