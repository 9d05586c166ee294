"""The demo behind `make demo`, end to end and honest: a synthetic corpus -> `vaerr
preprocess` -> `vaerr finetune` (ssvaerr_tiny, Ray Train) -> `vaerr infer` on synthetic
videos of people the network never saw -> CCC of the written timelines against the rendered
truth.

Everything runs through the same functions as the commands (run_preprocess, run_training,
run_inference) with jobs/configs/synthetic.yaml's CPU-sized settings; one local Ray serves
all three steps.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline.raysetup import start_ray
from pipeline.runner import run_inference
from pipeline.weights import seed_cache
from schemas.config import VaerrConfig
from training.loop import run_training
from training.metrics import ccc
from training.preprocess import run_preprocess
from training.synth import make_corpus, write_synthetic_video

log = logging.getLogger(__name__)

FRAME_SIZE = (240, 320)
"""Height, width of every demo video (corpus and unseen), px: faces of ~120 px."""


def default_assets() -> Path:
    """$VAERR_ASSETS, else ../shared/assets beside the working directory's repo."""
    return Path(os.environ.get("VAERR_ASSETS", Path.cwd().parent / "shared" / "assets"))


def make_videos(
    out: Path, videos: int, seconds: float, seed: int, size: tuple[int, int] = FRAME_SIZE
) -> list[dict[str, Any]]:
    """Synthetic single-face videos with known arousal/valence (the last one has two faces),
    of people drawn from `seed` (not the corpus's)."""
    out.mkdir(parents=True, exist_ok=True)
    truths = []
    for i in range(videos):
        n_faces = 2 if i == videos - 1 and videos > 1 else 1
        path = out / f"synthetic_{i:02d}.mp4"
        truth = write_synthetic_video(
            path,
            seed=seed + i,
            seconds=seconds,
            size=size,
            n_faces=n_faces,
            labels_csv=out / f"synthetic_{i:02d}.csv",
        )
        truths.append(truth)
    return truths


def truth_ccc(out: str, truths: list[dict[str, Any]], fps: float) -> dict[str, float]:
    """CCC of the written timelines against the rendered truth (single-face videos, track 0,
    all videos concatenated: the AVEC convention)."""
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


def demo_config(cfg: VaerrConfig, root: Path) -> VaerrConfig:
    """`cfg` with the demo's paths: corpus, shards and runs under `root`."""
    corpus = root / "corpus"
    data = cfg.data.model_copy(
        update={
            "dataset": "generic",
            "videos": str(corpus),
            "labels": str(corpus / "labels.csv"),
            "manifest": str(corpus / "manifest.csv"),
            "shards": str(root / "shards"),
        }
    )
    train = cfg.train.model_copy(update={"storage_path": str(root / "runs")})
    return cfg.model_copy(update={"data": data, "train": train})


def run_demo(
    cfg: VaerrConfig,
    out: str,
    videos: int = 3,
    seconds: float = 8.0,
    seed: int = 7,
    runner: str = "ray",
    ray_init: dict[str, Any] | None = None,
    identities: int = 60,
    videos_per_identity: int = 2,
    train_seconds: float = 2.0,
    size: tuple[int, int] = FRAME_SIZE,
) -> dict[str, Any]:
    """Generate, train, score and report; returns the inference summary plus `ccc` (unseen
    videos vs truth), `training` (the fine-tuning summary) and `checkpoint`."""
    root = Path(out).resolve()
    assets = default_assets()
    if assets.is_dir():
        copied = seed_cache(assets, cfg.cache_dir)
        if copied:
            log.info("seeded the weights cache from %s: %s", assets, ", ".join(copied))
    cfg = demo_config(cfg, root)
    started = start_ray(None, ray_init) if runner == "ray" else False
    try:
        log.info("rendering the training corpus: %d people x %d videos x %.1f s",
                 identities, videos_per_identity, train_seconds)  # fmt: skip
        make_corpus(
            root / "corpus", identities, videos_per_identity, train_seconds, seed,
            (0.67, 0.33, 0.0), size=size, with_audio=False,
        )  # fmt: skip
        shards = run_preprocess(cfg, runner=runner)
        log.info("shards: %s", shards)
        training = run_training(cfg, "finetune", runner=runner)
        ckpt = training["product"]
        truths = make_videos(root / "videos", videos, seconds, seed + 10_000, size)
        summary = run_inference(cfg, [str(root / "videos")], str(root / "run"), ckpt,
                                runner=runner)  # fmt: skip
    finally:
        if started:
            import ray

            ray.shutdown()
    summary["ccc"] = truth_ccc(str(root / "run"), truths, cfg.video.fps)
    best = training.get("best") or {}
    summary["training"] = {
        "checkpoint": ckpt,
        "epochs": cfg.train.epochs,
        "best_epoch": best.get("epoch"),
        "val_ccc_arousal": best.get("val/ccc_arousal"),
        "val_ccc_valence": best.get("val/ccc_valence"),
        "wall_s": training.get("wall_s"),
        "shards": shards["output"],
        "run": training["run"],
    }
    return summary
