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
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    ASSETS,
    add_common_args,
    append_results,
    asset_videos,
    begin,
    bench_parser,
    config_of,
    face_overrides,
    log,
    random_fan,
    report,
    run_worker,
    synth_videos,
    timed,
    torch_home_with_fan,
    untrained_checkpoint,
)
from bench.naive import work_naive
from bench.probes import ReapTree, TreeMemory, peak_rss_mib
from bench.throughput_render import aggregate, render

MODULE = "bench.throughput"
KINDS = ("retina5", "fan68")
STAGES = ("decode", "face", "split", "local", "ray", "naive")
GROUPS = ("assets", "360p", "720p", "360p-job")
# "360p-job": the end-to-end job the GPU targets name (issues 24 and 27: >= 60,000 frames, 360p,
# one face): --job-frames frames of --videos distinct --job-seconds videos listed as often as
# it takes (hard links), run once through the local runner in retina5 only. Its run.json gives
# start-up and steady frames/s apart.
JOB_GROUP = "360p-job"
FPS = 25.0
MIN_DECODE_S = 3.0  # decode passes over the inputs repeat until this much time has passed

# Overrides --device cuda adds (before the user's --set): networks on the GPU in half
# precision, and GPU shares for the Ray actor pools (3 face actors decode in parallel; their GPU
# shares plus the model's add up to 1). Batch and chunk sizes: the shipped GPU defaults (since
# issue 24: 256 frames per detector batch and chunk, 256 FAN faces, 32 model windows).
CUDA_OVERRIDES = [
    "faces.device=cuda",
    "model.device=cuda",
    "faces.dtype=float16",
    "model.dtype=float16",
    "infer.face_actors=3",
    "infer.face_num_cpus=2",
    "infer.face_num_gpus=0.25",
    "infer.model_num_cpus=1",
    "infer.model_num_gpus=0.25",
]


# ---------------------------------------------------------------------------------------------
# Workers (each runs in its own process; see common.run_worker)


def work_decode(task: dict[str, Any]) -> dict[str, Any]:
    """Frames decoded and resampled to 25 fps, nothing else, as the face stage decodes on the
    task's device: RGB chunks of 32 for a CPU, Y/U/V planes (converted on the device, not
    here) in chunks of 256 for a GPU."""
    from pipeline.device import batch_for
    from pipeline.video import VideoReader

    chunk = batch_for(task["device"], None, cpu=32, gpu=256)
    planes = task["device"] != "cpu"

    def go() -> dict[str, Any]:
        frames = passes = 0
        t0 = time.perf_counter()
        while passes == 0 or time.perf_counter() - t0 < MIN_DECODE_S:
            for u in task["inputs"]:
                with VideoReader(u) as r:
                    for c in r.chunks(FPS, None, task.get("end_s"), chunk, planes=planes):
                        frames += len(c.frame_index)
            passes += 1
        return {"frames": frames // passes, "passes": passes, "frames_timed": frames}

    return timed(go)


def work_face(task: dict[str, Any]) -> dict[str, Any]:
    """The face stage alone: decode + detect + landmarks + track + align (models preloaded,
    warmed on the first video: kernels, allocator, priors; then every video timed)."""
    from pipeline.faces.extract import FacePipeline

    pipe = FacePipeline(config_of(task))
    for _ in pipe.run(task["inputs"][0]):
        pass

    def go() -> dict[str, Any]:
        frames = rows = 0
        for u in task["inputs"]:
            run = pipe.run(u)
            for b in run:
                rows += len(b["track_id"])
            frames += run.frames
        return {"frames": frames, "faces": rows}

    return timed(go)


def work_split(task: dict[str, Any]) -> dict[str, Any]:
    """The face stage with a StageTimer attached: time per frame in decode, pixel conversion,
    detection network, detection post-processing, FAN, tracking and alignment (device work
    synchronised at each step, decode in line: the sum is a little over the `face` row)."""
    from pipeline.faces.extract import FacePipeline
    from pipeline.faces.timing import StageTimer

    pipe = FacePipeline(config_of(task))
    timer = StageTimer()

    def go() -> dict[str, Any]:
        frames = faces = 0
        for u in task["inputs"]:
            run = pipe.run(u)
            for b in run:
                faces += len(b["track_id"])
            frames += run.frames
        return {"frames": frames, "faces": faces}

    warm = task["inputs"][:1]  # one warm-up video: kernels, allocator, priors
    for _ in pipe.run(warm[0]):
        pass
    pipe.set_timer(timer)
    out = timed(go)
    out["steps_s"] = dict(timer.seconds)
    return out


def _job(task: dict[str, Any], runner: str) -> dict[str, Any]:
    from pipeline.runner import run_inference

    cfg = config_of(task)
    out = Path(tempfile.mkdtemp(prefix=f"bench_{runner}_", dir=task["workdir"]))
    try:

        def job() -> dict[str, Any]:
            summary = run_inference(
                cfg, task["inputs"], str(out), task["checkpoint"], force=True, runner=runner
            )
            # the job's own figures (run.json): start-up apart from the rate once running
            return {
                "frames": summary["frames"],
                "startup_s": summary["startup_s"],
                "steady_fps": summary["steady_frames_per_s"],
            }

        res = timed(job)
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


def work_imports(task: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of the imports alone (torch with its CUDA libraries, face-alignment, the
    pipeline): the floor under every other peak."""
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import pipeline.faces.extract  # noqa: F401
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
    if task["device"] == "cuda":  # this process's device memory (the Ray row's actors aside)
        res["gpu_peak_mib"] = sys.modules["torch"].cuda.max_memory_allocated() / 2**20
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
        "--inputs",
        default=",".join(GROUPS[:3]),
        help=f"input groups, from {','.join(GROUPS)}",
    )
    p.add_argument(
        "--job-frames",
        type=int,
        default=60_000,
        help=f"analysis frames of the {JOB_GROUP} group's job (at least)",
    )
    p.add_argument(
        "--job-seconds", type=float, default=40.0, help=f"length of each {JOB_GROUP} video, s"
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
    _add_memory_args(p)
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
    return _fill_defaults(p.parse_args(argv))


def _add_memory_args(p: argparse.ArgumentParser) -> None:
    """The memory table's flags (--long, --long-size, --long-arch, --long-knobs)."""
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


def _fill_defaults(a: argparse.Namespace) -> argparse.Namespace:
    """Defaults that depend on --quick and --device."""
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
        elif g == JOB_GROUP:
            per = a.job_seconds * FPS
            k = max(1, math.ceil(a.job_frames / (n * per)))
            vids = synth_videos(a.workdir, "job", n, a.job_seconds, (360, 640), 1, 300, k)
            groups[g] = (
                f"the job: {len(vids) * per:,.0f} frames, {n} synthetic 640x360 "
                f"{a.job_seconds:g} s videos, 1 face, x{k} copies",
                vids,
            )
        else:
            raise SystemExit(f"unknown input group {g!r} (choose from {', '.join(GROUPS)})")
    return groups


def _drop_ray_if_missing(a: argparse.Namespace) -> None:
    """Without Ray installed: no `ray` rows, and a.ray_missing set for the table's note."""
    a.ray_missing = False
    if "ray" in _split(a.stages):
        try:
            import ray  # noqa: F401
        except ImportError:
            a.ray_missing = True
            a.stages = ",".join(x for x in _split(a.stages) if x != "ray")
            log("Ray is not installed: local runner rows only")


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
    _drop_ray_if_missing(a)
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
    plan = build_plan(a, groups, kinds, stages, task)
    runs: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {k: [] for k, _ in plan}
    long_rows: list[dict[str, Any]] = []
    # SIGTERM / Ctrl-C stop the run but still print (and append) what was measured.
    signal.signal(signal.SIGTERM, _interrupt)
    a.interrupted = False
    try:
        run_rounds(a, plan, attempt, runs)
        if a.long:
            memory_runs(a, task, attempt, long_rows)
    except KeyboardInterrupt:
        a.interrupted = True
        log("interrupted: printing what was measured")
    rows = [aggregate(key, rs, t.get("end_s")) for (key, t), rs in zip(plan, runs.values())]

    total_s = time.perf_counter() - t_all
    text = render(a, groups, rows, long_rows, total_s, CUDA_OVERRIDES, MIN_DECODE_S)
    print(text)
    if not a.no_append:
        append_results("throughput", cmd, text, a.results)
        log(f"appended to {a.results}")
    return 0


Plan = list[tuple[tuple[str, str, str, str], dict[str, Any]]]


def build_plan(
    a: argparse.Namespace,
    groups: dict[str, tuple[str, list[str]]],
    kinds: list[str],
    stages: list[str],
    task: Any,
) -> Plan:
    """Every measurement: ((group, kind, stage, knobs), worker task), `task` making the task
    dicts (mode, kind, inputs, extra overrides, **fields)."""
    plan: Plan = []
    for g, (_, uris) in groups.items():
        if g == JOB_GROUP:  # the whole job once, retina5, local runner (see JOB_GROUP)
            if "retina5" in kinds and "local" in stages:
                plan.append(((g, "retina5", "local", ""), task("local", "retina5", uris, [])))
            continue
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
    return plan


def run_rounds(
    a: argparse.Namespace,
    plan: Plan,
    attempt: Any,
    runs: dict[tuple[str, str, str, str], list[dict[str, Any]]],
) -> None:
    """a.repeat rounds over the plan, each result (with its frames/s) appended to runs[key]
    as it comes, so an interrupt keeps what was measured."""
    for rnd in range(a.repeat):
        for key, t in plan:
            what = " ".join(x for x in key if x and x != "-")
            log(f"round {rnd + 1}/{a.repeat}: {what} ...")
            r = attempt(t)
            if "frames" in r:
                n_timed = r.get("frames_timed", r["frames"])
                r["fps"] = n_timed / r["wall_s"] if r["wall_s"] > 0 else float("nan")
                log(f"  {r['frames']} frames in {r['wall_s']:.1f} s = {r['fps']:.2f} frames/s")
            runs[key].append(r)


def memory_runs(
    a: argparse.Namespace, task: Any, attempt: Any, long_rows: list[dict[str, Any]]
) -> None:
    """The memory table's runs: the job on one synthetic video of each --long length."""
    h, w = (int(x) for x in a.long_size.split("x"))
    lck = untrained_checkpoint(a.workdir / f"{a.long_arch}_untrained.pt", a.long_arch)
    for secs in (float(x) for x in _split(a.long)):
        (uri,) = synth_videos(a.workdir, "long", 1, secs, (h, w), 1, 300)
        t = task("long", "retina5", [uri], _split(a.long_knobs), checkpoint=lck)
        log(f"memory: {secs:g} s {h}x{w} video ...")
        r = attempt(t)
        r.update(seconds=secs, size=f"{w}x{h}")
        long_rows.append(r)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
