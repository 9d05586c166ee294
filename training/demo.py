"""The demo behind `make demo`: synthetic videos -> checkpoint -> the batch job -> CCC.

Until training lands (the training issue), the checkpoint is an untrained ssvaerr_tiny and
every output says so; the printed CCC is then that of random weights (about 0).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.model.checkpoint import init_checkpoint, save_checkpoint
from pipeline.runner import run_inference
from pipeline.weights import seed_cache
from schemas.config import VaerrConfig
from training.metrics import ccc
from training.synth import write_synthetic_video

log = logging.getLogger(__name__)


def default_assets() -> Path:
    """$VAERR_ASSETS, else ../shared/assets beside the working directory's repo."""
    return Path(os.environ.get("VAERR_ASSETS", Path.cwd().parent / "shared" / "assets"))


def make_videos(out: Path, videos: int, seconds: float, seed: int) -> list[dict[str, Any]]:
    """Synthetic single-face videos with known arousal/valence (the last one has two faces)."""
    out.mkdir(parents=True, exist_ok=True)
    truths = []
    for i in range(videos):
        n_faces = 2 if i == videos - 1 and videos > 1 else 1
        path = out / f"synthetic_{i:02d}.mp4"
        truth = write_synthetic_video(
            path,
            seed=seed + i,
            seconds=seconds,
            n_faces=n_faces,
            labels_csv=out / f"synthetic_{i:02d}.csv",
        )
        truths.append(truth)
    return truths


def truth_ccc(out: str, truths: list[dict[str, Any]], fps: float) -> dict[str, float]:
    """CCC of the written timelines against the rendered truth (single-face videos, track 0)."""
    t = pq.read_table(f"{out}/timelines").to_pandas()
    preds, gold = {"arousal": [], "valence": []}, {"arousal": [], "valence": []}
    for truth in truths:
        if np.ndim(truth["arousal"]) != 1:
            continue
        g = t[t.uri.str.endswith(Path(truth["path"]).name) & (t.track_id == 0)]
        if g.empty:
            continue
        for k in preds:
            preds[k].append(g[k].to_numpy())
            gold[k].append(np.interp(g.time_s.to_numpy(), truth["time_s"], truth[k]))
    return {k: ccc(np.concatenate(preds[k]), np.concatenate(gold[k])) for k in preds if preds[k]}


def run_demo(
    cfg: VaerrConfig,
    out: str,
    videos: int = 3,
    seconds: float = 8.0,
    seed: int = 7,
    runner: str = "ray",
    ray_init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate, score and report; returns the job summary plus `ccc`."""
    root = Path(out)
    assets = default_assets()
    if assets.is_dir():
        copied = seed_cache(assets, cfg.cache_dir)
        if copied:
            log.info("seeded the weights cache from %s: %s", assets, ", ".join(copied))
    truths = make_videos(root / "videos", videos, seconds, seed)
    ckpt_path = root / "models" / f"{cfg.model.arch}-untrained.pt"
    save_checkpoint(init_checkpoint(cfg.model, by="vaerr demo"), str(ckpt_path))
    summary = run_inference(
        cfg,
        [str(root / "videos")],
        str(root / "run"),
        str(ckpt_path),
        runner=runner,
        ray_init=ray_init,
    )
    summary["ccc"] = truth_ccc(str(root / "run"), truths, cfg.video.fps)
    return summary
