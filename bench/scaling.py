"""Scaling of the batch job on Ray: videos per minute with 1 and 2 actor-pool workers on one
node, and with 2 workers on a two-node local cluster (`ray.cluster_utils.Cluster`).

A "worker" here is one face-stage actor plus one model-stage actor (`infer.face_actors` =
`infer.model_actors` = N); everything else is the shipped config (fractional CPUs: 0.5 per
actor). Speedup = videos/min over the 1-worker figure; efficiency = speedup / workers.
Each configuration runs in a fresh process (its own Ray); its clock starts after Ray is up,
so actor start-up and model loading are inside it. `steady` = videos/min between the first and
the last video committed (start-up excluded). A census of the process tree during the run
counts the face/model actors Ray actually started and on which node (raylet) each ran.

    .venv/bin/python -m bench.scaling --quick     # a few minutes on 2 CPU cores
    .venv/bin/python -m bench.scaling --videos 12 --seconds 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    add_common_args,
    append_results,
    begin,
    bench_parser,
    face_overrides,
    fmt_load,
    load1,
    log,
    markdown_table,
    num,
    report,
    run_worker,
    synth_videos,
    untrained_checkpoint,
)
from bench.probes import CommitWatcher, ReapTree, cmdline, tree_pids

MODULE = "bench.scaling"

# name -> (description, workers, nodes)
CONFIGS = {
    "1w": ("1 node (2 CPUs), 1 worker", 1, 1),
    "2w": ("1 node (2 CPUs), 2 workers", 2, 1),
    "2n": ("2-node local cluster (1 CPU each), 2 workers", 2, 2),
}


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


class ActorCensus:
    """Samples the process tree: which pids ran a FaceStage / ModelStage actor, and the raylet
    (one per node) each descends from."""

    def __init__(self, interval_s: float = 0.5, reaper: ReapTree | None = None) -> None:
        self.interval_s = interval_s
        self.reaper = reaper
        self.actors: dict[int, tuple[str, int]] = {}  # pid -> (stage, raylet pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _raylet(self, pid: int) -> int:
        p = pid
        for _ in range(8):
            p = _ppid(p)
            if p <= 1:
                break
            if "raylet" in cmdline(p):
                return p
        return 0

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            if self.reaper is not None:
                self.reaper.snapshot()
            for pid in tree_pids(me):
                if pid in self.actors:
                    continue
                cmd = cmdline(pid)  # an actor is renamed once it runs a stage: re-read
                for stage in ("FaceStage", "ModelStage"):
                    if stage in cmd and "ray::" in cmd:
                        self.actors[pid] = (stage, self._raylet(pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> ActorCensus:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        """Actors per stage and per node (node = raylet pid, renumbered 0..)."""
        nodes = sorted({r for _, r in self.actors.values()})
        out: dict[str, Any] = {}
        for stage in ("FaceStage", "ModelStage"):
            per = [sum(1 for s, r in self.actors.values() if s == stage and r == n) for n in nodes]
            out[stage] = per
        return out


# ---------------------------------------------------------------------------------------------
# Worker


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> dict[str, int]:
    """Free ports for one node's agents: other engineers' test suites start Ray nodes on
    this machine too, and two nodes on the default ports collide."""
    return {
        "dashboard_agent_listen_port": _free_port(),
        "runtime_env_agent_port": _free_port(),
        "metrics_agent_port": _free_port(),
        "metrics_export_port": _free_port(),
    }


def worker_main(spec: str) -> None:
    """Start the Ray of one configuration, run the job, report."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    task = json.loads(spec)
    _, workers, nodes = CONFIGS[task["config"]]
    with ReapTree() as reaper:
        _run_config(task, workers, nodes, reaper)


def _run_config(task: dict[str, Any], workers: int, nodes: int, reaper: ReapTree) -> None:
    import ray

    from pipeline.runner import run_inference
    from schemas.config import load_config

    tmp = Path(task["workdir"]) / "ray"
    tmp.mkdir(exist_ok=True)
    cluster = None
    if nodes == 1:
        ray.init(
            num_cpus=task["cpus"], include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp)
        )
    else:
        from ray.cluster_utils import Cluster

        per = max(1, task["cpus"] // nodes)
        cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": per,
                "include_dashboard": False,
                "temp_dir": str(tmp),
                **_node_ports(),
            },
        )
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=per, **_node_ports())
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
    cfg = load_config(
        None,
        task["overrides"] + [f"infer.face_actors={workers}", f"infer.model_actors={workers}"],
    )
    out = Path(tempfile.mkdtemp(prefix="bench_scaling_", dir=task["workdir"]))
    try:
        with ActorCensus(reaper=reaper) as census, CommitWatcher(out) as watch:
            l0, t0 = load1(), time.perf_counter()
            summary = run_inference(
                cfg, task["inputs"], str(out), task["checkpoint"], force=True, runner="ray"
            )
            wall = time.perf_counter() - t0
            l1 = load1()
        seen = sorted(watch.seen.values())
        steady = None
        if len(seen) >= 2 and seen[-1] > seen[0]:
            steady = (len(seen) - 1) / (seen[-1] - seen[0]) * 60
        report(
            {
                "videos": summary["ok"] + summary["no_face"] + summary["failed"],
                "ok": summary["ok"],
                "frames": summary["frames"],
                "wall_s": wall,
                "steady_vpm": steady,
                "load": [l0, l1],
                "actors": census.summary(),
                "nodes": len(ray.nodes()),
            }
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
        reaper.snapshot()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


# ---------------------------------------------------------------------------------------------
# Orchestrator


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = bench_parser(MODULE, __doc__ or "", "short settings for a 2-core CPU")
    p.add_argument("--videos", type=int, default=None, help="synthetic videos in the job")
    p.add_argument("--seconds", type=float, default=None, help="length of each video, s")
    p.add_argument("--size", default="360x640", help="HxW of the synthetic videos")
    p.add_argument("--kind", default="retina5", choices=("retina5", "fan68"))
    p.add_argument("--arch", default="ssvaerr_r18", help="model (untrained checkpoint)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"from {','.join(CONFIGS)}")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs Ray may use")
    p.add_argument("--timeout", type=float, default=3600, help="per configuration, s")
    add_common_args(p)
    a = p.parse_args(argv)
    if a.videos is None:
        a.videos = 6 if a.quick else 12
    if a.seconds is None:
        a.seconds = 4.0 if a.quick else 8.0
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.worker:
        worker_main(a.worker)
        return 0
    cmd = begin(MODULE, argv, a.workdir)
    h, w = (int(x) for x in a.size.split("x"))
    uris = synth_videos(a.workdir, "scale", a.videos, a.seconds, (h, w), 1, 500)
    ckpt = untrained_checkpoint(a.workdir / f"{a.arch}_untrained.pt", a.arch)
    fan = None
    if a.kind == "fan68":
        from bench.harness import random_fan

        fan = random_fan(a.workdir / "fan4_random.pth")
    overrides = face_overrides(a.kind, fan) + list(a.sets)
    results: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    for name in [c.strip() for c in a.configs.split(",") if c.strip()]:
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r} (choose from {', '.join(CONFIGS)})")
        log(f"{CONFIGS[name][0]} ...")
        task = {
            "config": name,
            "inputs": uris,
            "overrides": overrides,
            "checkpoint": ckpt,
            "workdir": str(a.workdir),
            "cpus": a.cpus,
        }
        try:
            r = run_worker(MODULE, task, a.timeout)
            r["vpm"] = r["videos"] / r["wall_s"] * 60
            log(f"  {r['videos']} videos in {r['wall_s']:.1f} s = {r['vpm']:.2f} videos/min")
        except RuntimeError as exc:
            log(f"FAILED: {exc}")
            r = {"error": str(exc).splitlines()[0]}
        results[name] = r
    text = render(a, results, time.perf_counter() - t_all)
    print(text)
    if not a.no_append:
        append_results("scaling", cmd, text, a.results)
        log(f"appended to {a.results}")
    return 0


def render(a: argparse.Namespace, results: dict[str, dict[str, Any]], total_s: float) -> str:
    """The table and notes as markdown."""
    base = results.get("1w", {}).get("vpm")
    base_steady = results.get("1w", {}).get("steady_vpm")
    rows = []
    for name, r in results.items():
        desc, workers, nodes = CONFIGS[name]
        if "vpm" not in r:
            rows.append([desc, workers, f"FAILED: {r['error'][:80]}", *["-"] * 7])
            continue
        speed = r["vpm"] / base if base else None
        steady = r.get("steady_vpm")
        s_speed = steady / base_steady if steady and base_steady else None
        act = r["actors"]
        rows.append(
            [
                desc,
                workers,
                f"{r['videos']} ({r['frames']} frames)",
                num(r["wall_s"]),
                num(r["vpm"], 2),
                f"{num(speed, 2)} / {num(speed / workers if speed else None, 2)}",
                num(steady, 2),
                f"{num(s_speed, 2)} / {num(s_speed / workers if s_speed else None, 2)}",
                f"face {act['FaceStage']}, model {act['ModelStage']}",
                fmt_load(*r["load"]),
            ]
        )
    headers = [
        "configuration",
        "workers",
        "videos",
        "wall s",
        "videos/min",
        "speedup / efficiency",
        "steady videos/min",
        "steady speedup / eff.",
        "actors started per node",
        "load1",
    ]
    h, w = a.size.split("x")
    extra = f"; overrides `{' '.join(a.sets)}`" if a.sets else ""
    return "\n".join(
        [
            f"Job: {a.videos} synthetic {w}x{h} videos of {a.seconds:g} s (1 face each), "
            f"{a.kind}, untrained {a.arch}, Ray Data runner; worker = 1 face actor + 1 model "
            f"actor (0.5 CPU each, shipped config){extra}.",
            "",
            markdown_table(headers, rows),
            "",
            "* speedup = videos/min / videos/min of 1 worker on 1 node; efficiency = speedup / "
            "workers. `steady` columns use the time between the first and the last video "
            "committed (no start-up).",
            "* `actors started per node`: FaceStage / ModelStage actor processes seen during "
            "the run, counted per raylet (node); Ray Data may start fewer face actors than "
            "`infer.face_actors` (an autoscaling pool, min 1).",
            "* `load1`: 1-minute load average at start/end of the timed region (machine shared "
            "with other engineers' test suites).",
            "* Each actor runs torch with 1 CPU thread: Ray sets OMP_NUM_THREADS = "
            "max(floor(num_cpus), 1) for actors of 0.5 CPU.",
            f"* Whole run: {total_s / 60:.1f} min.",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
