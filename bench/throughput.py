"""Throughput and memory of the batch job, against the decode ceiling and a naive baseline.

On the same inputs in one run, frames per second (analysis frames at 25 fps) of:

1. `decode`: PyAV streaming decode only (`VideoReader.chunks`), the ceiling on this machine;
2. `face`: the face stage alone (`FacePipeline.run`), in retina5 and fan68;
3. `local` / `ray`: the full job (`run_inference`: face stage + an untrained `ssvaerr_r18` +
   timeline writer) through the in-process runner and through Ray Data actor pools;
4. `naive`: what a user would write by hand with face-alignment: its RetinaFace and FAN
   called per frame and per face (unbatched), an auto_avsr-style similarity crop per face,
   then the model on each 200-frame window, one window per call.

Ratios: `x naive` = frames/s over the naive baseline of the same landmark mode and inputs;
`of decode` = frames/s over the decode ceiling of the same inputs. Faces per frame, peak
memory, and the 1-minute load average at the start/end of each timed region come with every
row. A second table gives the peak memory of the job on a 30 s and a 5 min synthetic
low-resolution video (it must stay flat: frames stream, they are never all held).

Every measurement runs in its own fresh process (clean peaks, nothing shared). Timed regions:
`decode` and `face` exclude model loading; `local`, `ray` and `naive` are end to end from the
checkpoint path to the results, model loading included (and, for `ray`, actor start-up; the
Ray cluster itself is started before the clock). `steady` (jobs with 2+ videos) is frames/s
between the first and the last video committed, i.e. without start-up.

    .venv/bin/python -m bench.throughput --quick          # a few minutes on 2 CPU cores
    .venv/bin/python -m bench.throughput                  # the default run (longer)
    .venv/bin/python -m bench.throughput --device cuda --inputs 720p --videos 4 --copies 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    ASSETS,
    MEAN_FACE,
    RETINA,
    CommitWatcher,
    ReapTree,
    TreeMemory,
    add_common_args,
    append_results,
    asset_videos,
    begin,
    bench_parser,
    face_overrides,
    fmt_load,
    load1,
    log,
    markdown_table,
    num,
    peak_rss_mib,
    random_fan,
    report,
    run_worker,
    synth_videos,
    torch_home_with_fan,
    untrained_checkpoint,
)

MODULE = "bench.throughput"
KINDS = ("retina5", "fan68")
STAGES = ("decode", "face", "split", "local", "ray", "naive")
GROUPS = ("assets", "360p", "720p")
FPS = 25.0
MIN_DECODE_S = 3.0  # decode passes over the inputs repeat until this much time has passed

# Overrides --device cuda adds (before the user's --set): networks on the GPU in half
# precision, bigger batches, and GPU shares for the Ray actor pools (3 face actors decode in
# parallel; their GPU shares plus the model's add up to 1).
CUDA_OVERRIDES = [
    "faces.device=cuda",
    "model.device=cuda",
    "faces.dtype=float16",
    "model.dtype=float16",
    "faces.detector.batch_size=64",
    "faces.landmarks.batch_size=64",
    "infer.batch_size=32",
    "infer.face_actors=3",
    "infer.face_num_cpus=2",
    "infer.face_num_gpus=0.25",
    "infer.model_num_cpus=1",
    "infer.model_num_gpus=0.25",
]


# ---------------------------------------------------------------------------------------------
# Workers (each runs in its own process; see common.run_worker)


def _timed(fn: Any) -> dict[str, Any]:
    """Run fn() -> dict between two load readings, a clock and this process's CPU clock
    (all threads); add wall_s, cpu_s and load."""
    l0, t0, c0 = load1(), time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {**out, "wall_s": wall, "cpu_s": cpu, "load": [l0, load1()]}


def _cfg(task: dict[str, Any]) -> Any:
    from schemas.config import load_config

    return load_config(None, task["overrides"])


def work_decode(task: dict[str, Any]) -> dict[str, Any]:
    """Frames decoded and resampled to 25 fps, nothing else."""
    from pipeline.video import VideoReader

    def go() -> dict[str, Any]:
        frames = passes = 0
        t0 = time.perf_counter()
        while passes == 0 or time.perf_counter() - t0 < MIN_DECODE_S:
            for u in task["inputs"]:
                with VideoReader(u) as r:
                    for c in r.chunks(FPS, None, task.get("end_s"), 32):
                        frames += len(c.frame_index)
            passes += 1
        return {"frames": frames // passes, "passes": passes, "frames_timed": frames}

    return _timed(go)


def work_face(task: dict[str, Any]) -> dict[str, Any]:
    """The face stage alone: decode + detect + landmarks + track + align (models preloaded)."""
    from pipeline.faces.pipeline import FacePipeline

    pipe = FacePipeline(_cfg(task))

    def go() -> dict[str, Any]:
        frames = rows = 0
        for u in task["inputs"]:
            run = pipe.run(u)
            for b in run:
                rows += len(b["track_id"])
            frames += run.frames
        return {"frames": frames, "faces": rows}

    return _timed(go)


def work_split(task: dict[str, Any]) -> dict[str, Any]:
    """The face stage with a StageTimer attached: time per frame in decode, pixel conversion,
    detection network, detection post-processing, FAN, tracking and alignment (device work
    synchronised at each step, decode in line: the sum is a little over the `face` row)."""
    from pipeline.faces.pipeline import FacePipeline
    from pipeline.faces.timing import StageTimer

    pipe = FacePipeline(_cfg(task))
    timer = StageTimer()

    def go() -> dict[str, Any]:
        frames = 0
        for u in task["inputs"]:
            run = pipe.run(u)
            for _ in run:
                pass
            frames += run.frames
        return {"frames": frames}

    warm = task["inputs"][:1]  # one warm-up video: kernels, allocator, priors
    for _ in pipe.run(warm[0]):
        pass
    pipe.set_timer(timer)
    out = _timed(go)
    out["steps_s"] = dict(timer.seconds)
    if task["device"] == "cuda":
        import torch

        out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _job(task: dict[str, Any], runner: str) -> dict[str, Any]:
    from pipeline.runner import run_inference

    cfg = _cfg(task)
    out = Path(tempfile.mkdtemp(prefix=f"bench_{runner}_", dir=task["workdir"]))
    try:
        with CommitWatcher(out) as watch:
            res = _timed(
                lambda: {
                    "frames": run_inference(
                        cfg, task["inputs"], str(out), task["checkpoint"], force=True, runner=runner
                    )["frames"]
                }
            )
        res["steady_fps"] = watch.steady_fps()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return res


def work_local(task: dict[str, Any]) -> dict[str, Any]:
    """The whole job through the in-process runner."""
    return _job(task, "local")


def work_ray(task: dict[str, Any]) -> dict[str, Any]:
    """The whole job on Ray Data actor pools (a local Ray started before the clock); peak
    memory is the sampled sum of PSS over the driver and every Ray process."""
    import ray

    tmp = Path(task["workdir"]) / "ray"
    tmp.mkdir(exist_ok=True)
    with ReapTree() as reaper:
        ray.init(
            num_cpus=task.get("ray_cpus") or os.cpu_count(),
            num_gpus=1 if task["device"] == "cuda" else 0,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=str(tmp),
        )
        try:
            with TreeMemory(reaper=reaper) as mem:
                res = _job(task, "ray")
            res["peak_mib"] = mem.peak_mib
            res["cpu_s"] = mem.cpu_s  # driver + every Ray process, not only this one
        finally:
            reaper.snapshot()
            ray.shutdown()
    return res


class Naive:
    """The baseline a user would write with face-alignment, per frame and per face.

    retina5: face-alignment's RetinaFace network called on one frame at a time, boxes and
    5 points decoded with face-alignment's own prior boxes and NMS (its detector discards the
    points, so the user decodes them). fan68: `FaceAlignment(..., face_detector="retinaface")`
    with its detector per frame and `get_landmarks_from_image` (FAN one face at a time).
    Both: detection on the frame downscaled to `max_side` (as the pipeline does), then
    `cv2.estimateAffinePartial2D` (LMEDS, auto_avsr's call) to the mean face and one 96x96 gray
    crop per face; faces are tracked by left-to-right order; the model runs once per window
    (200 frames, hop 100) and overlapping windows are averaged.
    """

    def __init__(self, task: dict[str, Any]) -> None:
        import numpy as np
        import torch

        from pipeline.faces.align import crop_square, template_points
        from pipeline.model.checkpoint import load_model

        cfg = _cfg(task)
        self.cfg = cfg
        self.kind = cfg.faces.landmarks.kind
        self.device = task["device"]
        self.max_side = cfg.faces.detector.max_side
        self.threshold = cfg.faces.detector.threshold
        self.min_size = cfg.faces.detector.min_size_px
        det_kwargs = {
            "path_to_detector": str(RETINA),
            "confidence_threshold": self.threshold,
            "nms_threshold": cfg.faces.detector.nms,
        }
        if self.kind == "fan68":
            os.environ["TORCH_HOME"] = task["torch_home"]
            import face_alignment

            self.fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D,
                device=self.device,
                face_detector="retinaface",
                face_detector_kwargs=det_kwargs,
                flip_input=False,  # the pipeline runs FAN once per face; so does this
                compile=False,
            )
            self.det = self.fa.face_detector
        else:
            from face_alignment.detection.retinaface import FaceDetector

            self.det = FaceDetector(self.device, **det_kwargs)
        mean = np.load(MEAN_FACE)
        self.template = template_points(mean, self.kind, cfg.faces.align.stable_points)
        x0, y0, side = crop_square(mean, cfg.faces.align.crop_scale)
        k = cfg.faces.align.crop_size / side
        self.to_crop = np.array([[k, 0, -x0 * k], [0, k, -y0 * k], [0, 0, 1.0]])
        self.model, _ = load_model(task["checkpoint"], cfg.model)
        self.torch = torch

    def detect(self, frame: Any) -> tuple[Any, Any]:
        """Boxes [M, 4] and 5 points [M, 5, 2] (source px) of one RGB frame."""
        import cv2
        import numpy as np

        h, w = frame.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = frame
        if scale < 1.0:
            size = (round(w * scale), round(h * scale))
            small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        bgr = np.ascontiguousarray(small[..., ::-1])
        if self.kind == "fan68":
            dets = np.asarray(self.det.detect_from_image(bgr), np.float32).reshape(-1, 5)
            boxes = dets[:, :4] / scale
            return self._keep(boxes, dets[:, 4], np.zeros((len(boxes), 5, 2), np.float32))
        from face_alignment.detection.retinaface.box_utils import decode, py_cpu_nms
        from face_alignment.detection.retinaface.prior_box import PriorBox

        torch = self.torch
        x = torch.from_numpy((bgr.astype(np.float32) - [104.0, 117.0, 123.0]).transpose(2, 0, 1))
        with torch.no_grad():
            loc, conf, landm = self.det.face_detector(x[None].float().to(self.device))
        sh, sw = bgr.shape[:2]
        priors = PriorBox(self.det.cfg, image_size=(sh, sw)).forward().to(self.device)
        var = self.det.cfg["variance"]
        boxes = decode(loc[0], priors, var)
        pts = priors[:, None, :2] + landm[0].view(-1, 5, 2) * var[0] * priors[:, None, 2:]
        scores = conf[0, :, 1]
        m = scores > self.threshold
        boxes = (boxes[m] * torch.tensor([sw, sh, sw, sh], device=boxes.device)).cpu().numpy()
        pts = (pts[m] * torch.tensor([sw, sh], device=pts.device)).cpu().numpy()
        sc = scores[m].cpu().numpy()
        if len(sc) == 0:
            return np.zeros((0, 4)), np.zeros((0, 5, 2))
        keep = py_cpu_nms(np.hstack([boxes, sc[:, None]]).astype(np.float32), 0.4)
        return self._keep(boxes[keep] / scale, sc[keep], pts[keep] / scale)

    def _keep(self, boxes: Any, scores: Any, pts: Any) -> tuple[Any, Any]:
        side = (boxes[:, 2:] - boxes[:, :2]).min(1) if len(boxes) else boxes[:, 0]
        sel = side >= self.min_size
        return boxes[sel][:16], pts[sel][:16]

    def video(self, uri: str, end_s: float | None) -> tuple[int, int]:
        """Process one video; returns (frames, detections)."""
        import cv2
        import numpy as np

        from pipeline.model.network import predict
        from pipeline.video import VideoReader

        size = self.cfg.faces.align.crop_size
        tracks: dict[int, list[Any]] = {}
        frames = faces = 0
        with VideoReader(uri) as r:
            for chunk in r.chunks(FPS, None, end_s, 32):
                for frame in chunk.frames:
                    boxes, pts = self.detect(frame)
                    if self.kind == "fan68" and len(boxes):
                        # plain float lists, as face-alignment's detectors return them
                        dets = [[float(v) for v in b] for b in boxes]
                        lms = self.fa.get_landmarks_from_image(frame, detected_faces=dets)
                        pts = np.stack(lms)[:, list(self.cfg.faces.align.stable_points)]
                    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
                    order = np.argsort(boxes[:, 0]) if len(boxes) else []
                    for slot, j in enumerate(order):
                        m, _ = cv2.estimateAffinePartial2D(
                            pts[j].astype(np.float32),
                            self.template.astype(np.float32),
                            method=cv2.LMEDS,
                        )
                        if m is None:
                            continue
                        c = (self.to_crop @ np.vstack([m, [0, 0, 1]]))[:2]
                        tracks.setdefault(slot, []).append(cv2.warpAffine(gray, c, (size, size)))
                    faces += len(boxes)
                    frames += 1
        w, hop = self.cfg.infer.window_frames, self.cfg.infer.hop_frames
        for crops in tracks.values():
            seq = np.stack(crops)
            n = len(seq)
            acc = np.zeros((2, n))
            cnt = np.zeros(n)
            starts = list(range(0, max(n - w, 0) + 1, hop))
            if starts[-1] + w < n:
                starts.append(n - w)
            for s in starts:
                part = seq[s : s + w]
                res = predict(self.model, part[None], [len(part)], self.cfg.model.dtype)
                acc[0, s : s + len(part)] += res["arousal"][0]
                acc[1, s : s + len(part)] += res["valence"][0]
                cnt[s : s + len(part)] += 1
            _ = acc / np.maximum(cnt, 1)  # the timeline the user would keep
        return frames, faces


def work_naive(task: dict[str, Any]) -> dict[str, Any]:
    """The hand-written baseline (see Naive), model loading included."""

    def go() -> dict[str, Any]:
        naive = Naive(task)
        frames = faces = 0
        for u in task["inputs"]:
            f, d = naive.video(u, task.get("end_s"))
            frames += f
            faces += d
        return {"frames": frames, "faces": faces}

    return _timed(go)


def work_imports(task: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of the imports alone (torch with its CUDA libraries, face-alignment, the
    pipeline): the floor under every other peak."""
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import pipeline.faces.pipeline  # noqa: F401
    import pipeline.runner  # noqa: F401

    return {}


WORKERS = {
    "imports": work_imports,
    "decode": work_decode,
    "face": work_face,
    "split": work_split,
    "local": work_local,
    "ray": work_ray,
    "naive": work_naive,
    "long": work_local,
}


def worker_main(spec: str) -> None:
    """Entry of a worker process: run one task, report its result on stdout."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    task = json.loads(spec)
    if task.get("threads"):
        import torch

        torch.set_num_threads(int(task["threads"]))
    if task["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
    res = WORKERS[task["mode"]](task)
    res.setdefault("peak_mib", peak_rss_mib())
    if "torch" in sys.modules:
        res["threads"] = sys.modules["torch"].get_num_threads()
    report(res)


# ---------------------------------------------------------------------------------------------
# The orchestrator


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = bench_parser(MODULE, __doc__ or "", "short settings for a 2-core CPU")
    p.add_argument("--seconds", type=float, default=None, help="synthetic video length, s")
    p.add_argument("--videos", type=int, default=1, help="synthetic videos per resolution")
    p.add_argument(
        "--copies", type=int, default=1, help="list each synthetic video N times (hard links)"
    )
    p.add_argument(
        "--inputs", default=",".join(GROUPS), help=f"input groups, from {','.join(GROUPS)}"
    )
    p.add_argument("--modes", default=",".join(KINDS), help="landmark modes: retina5,fan68")
    p.add_argument("--stages", default=",".join(STAGES), help=f"from {','.join(STAGES)}")
    p.add_argument(
        "--fan-seconds",
        type=float,
        default=None,
        help="fan68 rows analyse only the first S seconds of each input (video.end_s)",
    )
    p.add_argument(
        "--naive-seconds",
        type=float,
        default=None,
        help="naive rows analyse only the first S seconds of each input",
    )
    p.add_argument(
        "--knobs",
        action="append",
        default=None,
        help="extra `local` row per group and mode with these comma-separated overrides "
        "(cost knobs, e.g. faces.detector.every_k=3; `threads=N` sets torch's CPU threads, "
        "as OMP_NUM_THREADS=N would); repeatable",
    )
    p.add_argument("--knobs-inputs", default="360p", help="input groups that get the --knobs rows")
    p.add_argument("--arch", default="ssvaerr_r18", help="model of the full job (untrained)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--ray-cpus", type=int, default=None, help="num_cpus of the local Ray")
    p.add_argument(
        "--long",
        default="30,300",
        help="seconds of the synthetic videos of the memory table ('' to skip)",
    )
    p.add_argument("--long-size", default="144x256", help="HxW of the memory-table videos")
    p.add_argument(
        "--long-arch",
        default="ssvaerr_tiny",
        help="model of the memory table's job (memory per window batch is constant; tiny "
        "keeps a 5 min run short on a CPU)",
    )
    p.add_argument(
        "--long-knobs",
        default="faces.detector.every_k=5,infer.batch_size=2",
        help="comma-separated overrides of the memory-table runs (default: detect every 5th "
        "frame, to keep a 5 min video short on a CPU, memory is bounded the same way; 2 "
        "windows per model batch, so the 30 s video (7 windows) runs full batches as the 5 min "
        "one does and the peaks compare video lengths, not batch sizes)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="rounds over all measurements; the table shows the median and range "
        "(default 3 on cpu, 1 with --quick or on cuda)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="per measurement, s")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall budget of the whole run, s: measurements that would start after it are "
        "skipped and the table is printed with what was measured",
    )
    add_common_args(p)
    a = p.parse_args(argv)
    if a.seconds is None:
        a.seconds = 4.0 if a.quick else 12.0
    if a.fan_seconds is None and a.quick:
        a.fan_seconds = 1.0
    if a.knobs is None:
        a.knobs = ["threads=1", "faces.detector.every_k=3", "faces.detector.every_k=3,threads=1"]
    a.knobs = [k for k in a.knobs if k.strip()]
    if a.repeat is None:
        a.repeat = 1 if a.device == "cuda" or a.quick else 3
    return a


def _split(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def prepare_inputs(a: argparse.Namespace) -> dict[str, tuple[str, list[str]]]:
    """Input groups: label -> (description, URIs)."""
    groups: dict[str, tuple[str, list[str]]] = {}
    n, s = a.videos, a.seconds
    copies = f" x{a.copies} copies" if a.copies > 1 else ""
    for g in _split(a.inputs):
        if g == "assets":
            vids = asset_videos()
            groups[g] = (f"{len(vids)} asset clips ({ASSETS.name}/videos)", vids)
        elif g == "360p":
            vids = synth_videos(a.workdir, "synth", n, s, (360, 640), 1, 100, a.copies)
            groups[g] = (f"{n} synthetic 640x360 {s:g} s, 1 face{copies}", vids)
        elif g == "720p":
            vids = synth_videos(a.workdir, "synth", n, s, (720, 1280), 2, 200, a.copies)
            groups[g] = (f"{n} synthetic 1280x720 {s:g} s, 2 faces{copies}", vids)
        else:
            raise SystemExit(f"unknown input group {g!r} (choose from {', '.join(GROUPS)})")
    return groups


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.worker:
        worker_main(a.worker)
        return 0
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to torch (nvidia-smi?)")
    cmd = begin(MODULE, argv, a.workdir)
    a.ray_missing = False
    if "ray" in _split(a.stages):
        try:
            import ray  # noqa: F401
        except ImportError:
            a.ray_missing = True
            a.stages = ",".join(x for x in _split(a.stages) if x != "ray")
            log("Ray is not installed: local runner rows only")
    log(f"inputs and weights in {a.workdir}")
    groups = prepare_inputs(a)
    fan = random_fan(a.workdir / "fan4_random.pth")
    torch_home = torch_home_with_fan(a.workdir, fan)
    ckpt = untrained_checkpoint(a.workdir / f"{a.arch}_untrained.pt", a.arch)
    base = (CUDA_OVERRIDES if a.device == "cuda" else []) + list(a.sets)
    kinds, stages = _split(a.modes), _split(a.stages)

    def task(mode: str, kind: str | None, inputs: list[str], extra: list[str], **kw: Any) -> dict:
        ov = (face_overrides(kind, fan) if kind else []) + base + extra
        return {
            "mode": mode,
            "kind": kind,
            "inputs": inputs,
            "overrides": ov,
            "checkpoint": kw.pop("checkpoint", ckpt),
            "device": a.device,
            "workdir": str(a.workdir),
            "torch_home": torch_home,
            "ray_cpus": a.ray_cpus,
            **kw,
        }

    t_all = time.perf_counter()
    a.import_mib = run_worker(MODULE, task("imports", None, [], []), a.timeout)["peak_mib"]

    def left() -> float:
        if a.budget_s is None:
            return a.timeout
        return min(a.timeout, a.budget_s - (time.perf_counter() - t_all))

    def attempt(t: dict) -> dict[str, Any]:
        if left() <= 5:
            log("skipped: --budget-s spent")
            return {"error": "skipped (--budget-s spent)"}
        try:
            return run_worker(MODULE, t, left())
        except RuntimeError as exc:
            log(f"FAILED: {exc}")
            return {"error": str(exc).splitlines()[0]}

    # The plan: (group, kind, stage, knobs) -> task; run in rounds so that a change of the
    # machine's load hits every measurement alike.
    plan: list[tuple[tuple[str, str, str, str], dict[str, Any]]] = []
    for g, (_, uris) in groups.items():
        if "decode" in stages:
            plan.append(((g, "-", "decode", ""), task("decode", None, uris, [])))
        for kind in kinds:
            end = a.fan_seconds if kind == "fan68" else None
            lim = [f"video.end_s={end}"] if end else []
            for stage in ("face", "split", "local", "ray"):
                if stage in stages:
                    plan.append(((g, kind, stage, ""), task(stage, kind, uris, lim, end_s=end)))
            if "naive" in stages:
                caps = [x for x in (end, a.naive_seconds) if x]
                nend = min(caps) if caps else None
                nlim = [f"video.end_s={nend}"] if nend else []
                plan.append(((g, kind, "naive", ""), task("naive", kind, uris, nlim, end_s=nend)))
            if "local" in stages and g in _split(a.knobs_inputs):
                for knobs in a.knobs:
                    ov = [k for k in _split(knobs) if not k.startswith("threads=")]
                    th = [int(k.split("=")[1]) for k in _split(knobs) if k.startswith("threads=")]
                    t = task("local", kind, uris, lim + ov, end_s=end, threads=th[-1] if th else 0)
                    plan.append(((g, kind, "local", knobs), t))
    runs: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {k: [] for k, _ in plan}
    long_rows: list[dict[str, Any]] = []
    # SIGTERM / Ctrl-C stop the run but still print (and append) what was measured.
    signal.signal(signal.SIGTERM, _interrupt)
    a.interrupted = False
    try:
        for rnd in range(a.repeat):
            for key, t in plan:
                what = " ".join(x for x in key if x and x != "-")
                log(f"round {rnd + 1}/{a.repeat}: {what} ...")
                r = attempt(t)
                if "frames" in r:
                    timed = r.get("frames_timed", r["frames"])
                    r["fps"] = timed / r["wall_s"] if r["wall_s"] > 0 else float("nan")
                    log(f"  {r['frames']} frames in {r['wall_s']:.1f} s = {r['fps']:.2f} frames/s")
                runs[key].append(r)
        if a.long:
            h, w = (int(x) for x in a.long_size.split("x"))
            lck = untrained_checkpoint(a.workdir / f"{a.long_arch}_untrained.pt", a.long_arch)
            for secs in (float(x) for x in _split(a.long)):
                (uri,) = synth_videos(a.workdir, "long", 1, secs, (h, w), 1, 300)
                t = task("long", "retina5", [uri], _split(a.long_knobs), checkpoint=lck)
                log(f"memory: {secs:g} s {h}x{w} video ...")
                r = attempt(t)
                r.update(seconds=secs, size=f"{w}x{h}")
                long_rows.append(r)
    except KeyboardInterrupt:
        a.interrupted = True
        log("interrupted: printing what was measured")
    rows = [aggregate(key, rs, t.get("end_s")) for (key, t), rs in zip(plan, runs.values())]

    text = render(a, groups, rows, long_rows, time.perf_counter() - t_all)
    print(text)
    if not a.no_append:
        append_results("throughput", cmd, text, a.results)
        log(f"appended to {a.results}")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def aggregate(
    key: tuple[str, str, str, str], runs: list[dict[str, Any]], end_s: float | None
) -> dict[str, Any]:
    """One table row from the repeats of a measurement: median frames/s (and its range),
    median faces/frame and steady rate, the largest peak memory, all load readings."""
    group, kind, stage, knobs = key
    row: dict[str, Any] = {"group": group, "kind": kind, "stage": stage, "knobs": knobs}
    row["end_s"] = end_s
    ok = [r for r in runs if "fps" in r]
    row["n"], row["n_runs"] = len(ok), len(runs)
    if not ok:
        row["error"] = runs[0].get("error", "no result") if runs else "not run"
        return row
    fps = [r["fps"] for r in ok]
    row["fps"] = statistics.median(fps)
    row["fps_min"], row["fps_max"] = min(fps), max(fps)
    row["frames"] = ok[0]["frames"]
    row["wall_s"] = statistics.median(r["wall_s"] for r in ok)
    cpu = [r.get("frames_timed", r["frames"]) / r["cpu_s"] for r in ok if r.get("cpu_s")]
    row["cpu_fps"] = statistics.median(cpu) if cpu else None
    if all("faces" in r for r in ok):
        row["faces_per_frame"] = statistics.median(r["faces"] / max(r["frames"], 1) for r in ok)
    steady = [r["steady_fps"] for r in ok if r.get("steady_fps")]
    row["steady_fps"] = statistics.median(steady) if steady else None
    row["peak_mib"] = max(r["peak_mib"] for r in ok)
    loads = [x for r in ok for x in r["load"]]
    row["load"] = [min(loads), max(loads)]
    row["threads"] = ok[0].get("threads")
    if all("steps_s" in r for r in ok):
        row["steps_ms"] = {
            k: statistics.median(1000 * r["steps_s"].get(k, 0.0) / r["frames"] for r in ok)
            for k in ok[0]["steps_s"]
        }
    gpu = [r["gpu_peak_mib"] for r in ok if r.get("gpu_peak_mib")]
    row["gpu_peak_mib"] = max(gpu) if gpu else None
    return row


def split_table(rows: list[dict[str, Any]]) -> list[str]:
    """The `split` rows as a table of milliseconds per analysis frame per step."""
    from pipeline.faces.timing import STEPS

    out = []
    for r in rows:
        if r["stage"] != "split" or "steps_ms" not in r:
            continue
        ms = r["steps_ms"]
        total = sum(ms.values())
        host = ms.get("decode", 0.0) + ms.get("track", 0.0)
        out.append(
            [r["group"], r["kind"], r.get("frames", "-")]
            + [num(ms.get(k, 0.0), 3) for k in STEPS]
            + [num(total, 3), f"{100 * host / total:.0f}%" if total else "-"]
            + [num(r.get("gpu_peak_mib"), 0)]
        )
    if not out:
        return []
    headers = ["inputs", "landmarks", "frames", *[f"{k} ms" for k in STEPS], "sum ms"]
    headers += ["host-only share", "GPU peak MiB"]
    return [
        "Face stage time per analysis frame by step (`split` rows: a StageTimer syncs the "
        "device at each step and decode runs in line, so the sum exceeds the overlapped "
        "`face` row; `host-only share` = decode + tracking, the work no GPU can take):",
        "",
        markdown_table(headers, out),
        "",
    ]


def threads_note(rows: list[dict[str, Any]]) -> str:
    """Which torch CPU thread counts the rows ran with (processes and Ray actors)."""
    procs = sorted({r["threads"] for r in rows if r.get("threads") and not r["knobs"]})
    return (
        f"{'/'.join(map(str, procs)) or '-'} in the measuring processes (unless a `threads` "
        "knob); Ray actors get OMP_NUM_THREADS = max(floor(num_cpus), 1), i.e. 1 thread for "
        "the shipped 0.5-CPU actors"
    )


def render(
    a: argparse.Namespace,
    groups: dict[str, tuple[str, list[str]]],
    rows: list[dict[str, Any]],
    long_rows: list[dict[str, Any]],
    total_s: float,
) -> str:
    """The tables and notes as markdown."""

    def find(group: str, kind: str, stage: str) -> dict[str, Any] | None:
        for r in rows:
            if (r["group"], r["kind"], r["stage"], r["knobs"]) == (group, kind, stage, ""):
                return r if "fps" in r else None
        return None

    def fps_cell(r: dict[str, Any]) -> str:
        if "fps" not in r:
            err = r.get("error", "")
            return (
                err if err in ("not run",) or err.startswith("skipped") else f"FAILED: {err[:60]}"
            )
        cell = num(r["fps"], 2)
        if r["n"] > 1:
            cell += f" ({num(r['fps_min'], 1)}-{num(r['fps_max'], 1)})"
        if r["n"] < r["n_runs"]:
            cell += f" [{r['n_runs'] - r['n']} failed]"
        return cell

    table = []
    for r in rows:
        dec = find(r["group"], "-", "decode")
        nav = find(r["group"], r["kind"], "naive")
        ok = "fps" in r
        x_naive = r["fps"] / nav["fps"] if ok and nav and r["stage"] != "decode" else None
        x_cpu = None
        if ok and nav and r["stage"] != "decode" and r.get("cpu_fps") and nav.get("cpu_fps"):
            x_cpu = r["cpu_fps"] / nav["cpu_fps"]
        of_dec = r["fps"] / dec["fps"] if ok and dec and r["stage"] != "decode" else None
        lim = f" (first {r['end_s']:g} s)" if r.get("end_s") else ""
        table.append(
            [
                r["group"],
                r["kind"],
                r["stage"] + lim,
                r["knobs"] or "defaults",
                r.get("frames", "-"),
                num(r.get("faces_per_frame"), 2),
                fps_cell(r),
                num(x_naive, 2),
                f"{100 * of_dec:.1f}%" if of_dec else "-",
                num(r.get("cpu_fps"), 2),
                num(x_cpu, 2),
                num(r.get("steady_fps"), 2),
                num(r.get("peak_mib"), 0),
                fmt_load(*r["load"]) if "load" in r else "-",
            ]
        )
    headers = [
        "inputs",
        "landmarks",
        "stage",
        "knobs",
        "frames",
        "faces/frame",
        "frames/s (range)",
        "x naive",
        "of decode",
        "frames/CPU-s",
        "x naive (CPU)",
        "steady fps",
        "peak MiB",
        "load1",
    ]
    parts = ["Inputs:", ""]
    parts += [f"* `{g}`: {desc}" for g, (desc, _) in groups.items()]
    parts += ["", markdown_table(headers, table), ""]
    parts += split_table(rows)
    if getattr(a, "ray_missing", False):
        parts += ["**Ray is not installed on this machine: local runner rows only.**", ""]
    if long_rows:
        lt = []
        for r in long_rows:
            lt.append(
                [
                    f"{r['seconds']:g} s",
                    r["size"],
                    r.get("frames", "-"),
                    num(r.get("wall_s")),
                    num(r["frames"] / r["wall_s"], 2) if "frames" in r else r.get("error", ""),
                    num(r.get("peak_mib"), 0),
                    fmt_load(*r["load"]) if "load" in r else "-",
                ]
            )
        parts += [
            f"Peak memory of the whole job (local runner, retina5, untrained {a.long_arch}, "
            f"`{a.long_knobs or 'defaults'}`) on one synthetic video, each in a fresh process "
            "(VmHWM):",
            "",
            markdown_table(
                ["video", "size", "frames", "wall s", "frames/s", "peak MiB", "load1"], lt
            ),
            "",
        ]
        peaks = [r.get("peak_mib") for r in long_rows]
        if len(peaks) >= 2 and all(peaks):
            growth = peaks[-1] / peaks[0] - 1
            verdict = "flat (within 10%)" if abs(growth) <= 0.10 else "NOT flat (over 10%)"
            parts += [
                f"Peak memory {long_rows[-1]['seconds']:g} s vs {long_rows[0]['seconds']:g} s: "
                f"{100 * growth:+.1f}%, {verdict}. The peak is the steady level plus the largest "
                "transient (one model batch of windows: its activations are freed after the "
                "forward pass); a batch of 8 windows (the shipped `infer.batch_size`) adds about "
                "0.25 GiB for the tiny model at 96 px, which a 30 s video (7 windows) never "
                "fills, hence the small batch here.",
                "",
            ]
    parts += [
        "Notes:",
        "",
        f"* Full job = face stage + untrained `{a.arch}` + timeline writer, "
        f"device {a.device}; `knobs` = config overrides of that row ('defaults' = shipped "
        "config: detection every frame, window 200, hop 100, detector input 640 px)."
        + (f" Extra overrides on every row: `{' '.join(a.sets)}`." if a.sets else "")
        + (" GPU rows add: `" + " ".join(CUDA_OVERRIDES) + "`." if a.device == "cuda" else ""),
        f"* Each measurement ran {a.repeat} time(s), in rounds over all rows (a change of "
        "load hits every row alike); `frames/s` is the median, with the range of the "
        "repeats; `x naive` and `of decode` compare medians.",
        f"* `frames` = analysis frames (25 fps) processed (decode: one pass; passes repeat "
        f"for at least {MIN_DECODE_S:g} s and `wall s` covers them all); `faces/frame` = "
        "tracked face rows per frame (face stage) or detections per frame (naive).",
        "* `x naive` = frames/s / naive frames/s of the same inputs and landmark mode; "
        "`of decode` = frames/s / decode-only frames/s of the same inputs.",
        "* Timed: decode and face exclude model loading; local, ray and naive are end to end "
        "(model loading, and for ray actor start-up, included); `steady fps` = frames/s "
        "between the first and last video committed (2+ videos only).",
        "* `frames/CPU-s` = frames / CPU seconds (user + system, all threads; for `ray` "
        "the driver and every Ray process) used in the timed region: less sensitive than "
        "frames/s to the other engineers' load, since waiting for a core costs no CPU time "
        "(spinning OpenMP threads still do); `x naive (CPU)` compares those.",
        "* `peak MiB`: VmHWM of the measuring process; for `ray` the sampled peak of the "
        "summed PSS of the driver and every Ray process (raylet, GCS, workers, object store). "
        f"Importing torch (a CUDA build), torchvision, face-alignment and the pipeline alone "
        f"peaks at {a.import_mib:.0f} MiB, mostly mapped library pages: the floor under every "
        "torch row.",
        "* naive: face-alignment's RetinaFace per frame and FAN per face "
        "(`FaceAlignment(..., face_detector='retinaface', flip_input=False, compile=False)`), "
        "detection on the same 640 px downscale, cv2 LMEDS similarity crop, no smoothing, "
        "faces matched left to right, the model once per 200-frame window.",
        "* fan68 uses a randomly initialised FAN (no FAN weights can be downloaded here): the "
        "same network and cost per face as the real weights.",
        "* `load1`: 1-minute load average at the start/end of each timed region; the machine "
        "is shared with other engineers' test suites.",
        f"* torch CPU threads: {threads_note(rows)}.",
        f"* Whole run: {total_s / 60:.1f} min"
        + (" (INTERRUPTED: rows marked 'not run' were not measured)." if a.interrupted else "."),
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
