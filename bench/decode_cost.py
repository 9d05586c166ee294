"""The detector's decoding on the CPU, per frame: decode_exact (nonzero + batched_nms, host
round trips) against decode_batch (fixed shapes, K fitted to the batch on a CPU), on the real
RetinaFace outputs of two asset clips at batches of 8 and 32 (one thread), and the network's
own cost per frame (two threads) for scale.

    VAERR_ASSETS=../shared/assets .venv/bin/python -m bench.decode_cost
"""

from __future__ import annotations

import os
import time

import torch

from pipeline.faces.decode import NetOutputs, decode_batch, decode_exact
from pipeline.faces.detect import RetinaFaceDetector, device_priors, device_size
from pipeline.video import VideoReader
from schemas.config import load_config
from tests.conftest import face_overrides


def main() -> None:
    """Print ms per frame of each decoding and of the network."""
    torch.set_num_threads(1)
    videos = os.path.join(os.environ.get("VAERR_ASSETS", "../shared/assets"), "videos")
    cfg = load_config(None, face_overrides())
    det = RetinaFaceDetector(cfg.faces.detector)
    for clip in ("grid_two_speakers_sbs.mp4", "grid_bbaf2n.mpg"):
        with VideoReader(os.path.join(videos, clip)) as r:
            frames = next(r.chunks(25, chunk_frames=32)).frames
        x, scale = det._prepare(frames)
        h, w = x.shape[2:]
        geometry = device_priors(h, w, "cpu"), device_size(w, h, scale, "cpu")
        with torch.inference_mode():
            loc, conf, landm = (t.float() for t in det.net(x))
            for n in (8, 32):
                out = NetOutputs(loc[:n], conf[:n], landm[:n], *geometry)
                for name, fn in (("exact", decode_exact), ("fixed", decode_batch)):
                    fn(out, cfg.faces.detector)
                    t0, reps = time.perf_counter(), 20
                    for _ in range(reps):
                        fn(out, cfg.faces.detector)
                    ms = 1000 * (time.perf_counter() - t0) / reps / n
                    print(f"{clip} batch {n} {name}: {ms:.3f} ms/frame")
    torch.set_num_threads(2)
    x, _ = det._prepare(frames[:8])
    with torch.inference_mode():
        det.net(x)
        t0 = time.perf_counter()
        for _ in range(5):
            det.net(x)
    ms = 1000 * (time.perf_counter() - t0) / 40
    print(f"network (2 threads) {tuple(x.shape)}: {ms:.2f} ms/frame")


if __name__ == "__main__":
    main()
