"""Shared by the benchmarks: assets, cached synthetic inputs, worker subprocesses, memory
probes (now bench/probes.py), the machine description and the RESULTS.md appender.

Every figure a benchmark prints comes with the 1-minute load average (`os.getloadavg()[0]`) at
the start and end of its timed region: this machine is shared with other engineers' test suites,
so a figure measured at load 6 on 2 cores is not comparable with one measured at load 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("VAERR_ASSETS", REPO.parent / "shared" / "assets"))
RETINA = ASSETS / "detectors" / "retinaface_mobilenet0.25_Final.pth"
MEAN_FACE = ASSETS / "landmarks" / "20words_mean_face.npy"
VIDEOS = ASSETS / "videos"
RESULTS = REPO / "bench" / "RESULTS.md"
DEFAULT_WORKDIR = Path(
    os.environ.get("VAERR_BENCH_DIR", Path(tempfile.gettempdir()) / "vaerr-bench")
)

# The file name face-alignment's FaceAlignment looks for in $TORCH_HOME/hub/checkpoints.
FA_FAN_FILE = "2DFAN4-11f355bf06.pth.tar"

RESULT_MARK = "BENCH-RESULT "

RESULTS_HEADER = """# Benchmark results

Appended by `bench/throughput.py`, `bench/scaling.py` (and `bench/accuracy.py` when present),
newest last. Each entry has the exact command, the machine, the date and the git revision.

**Read every figure with its load average.** The development machine (2 CPU cores) is shared
with other engineers who run test suites at the same time, so each timed figure carries the
1-minute load average (`os.getloadavg()[0]`) at the start and at the end of its timed region
(`load1` column, `start/end`). At load 2 the 2 cores are already fully busy; at load 6 this
benchmark gets roughly a third of them. Compare figures only within one entry, where they were
measured on the same inputs within minutes of each other.

"""


def load1() -> float:
    """The 1-minute load average (runnable + uninterruptible tasks, machine-wide)."""
    return round(os.getloadavg()[0], 2)


def fmt_load(start: float, end: float) -> str:
    """'start/end' load averages, one decimal."""
    return f"{start:.1f}/{end:.1f}"


# ---------------------------------------------------------------------------------------------
# Machine and provenance


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def gpu_name() -> str | None:
    """Name and memory of the first visible CUDA device (via torch), or None."""
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            n = torch.cuda.device_count()
            return f"{n} x {p.name} ({p.total_memory / 2**30:.0f} GiB)"
    except Exception:  # a broken driver is "no GPU" for the machine line
        pass
    return None


def machine_line() -> str:
    """One line: CPU model, cores, RAM, GPU, Python, torch and its CPU threads."""
    import torch

    gpu = gpu_name() or "no GPU"
    return (
        f"{_cpu_model()}, {os.cpu_count()} cores, {_ram_gib():.1f} GiB RAM, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} CPU threads)"
    )


def git_rev() -> str:
    """Short HEAD commit, '+dirty' when tracked files differ (other engineers' work included)."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def bench_parser(module: str, doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The argument parser every benchmark starts from: its module name as `prog`, the first
    paragraph of its docstring as description, and `--quick`."""
    p = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help=quick_help)
    return p


def add_common_args(p: argparse.ArgumentParser, worker: bool = True) -> None:
    """The options every benchmark ends with: overrides, the input cache, where the results
    go (and the hidden `--worker` of benchmarks that measure in subprocesses)."""
    p.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE override")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache of inputs")
    p.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to append to")
    p.add_argument("--no-append", action="store_true", help="print only")
    if worker:
        p.add_argument("--worker", help=argparse.SUPPRESS)


def begin(module: str, argv: Sequence[str], workdir: Path) -> str:
    """Start a benchmark run: exit clearly without the assets, make the input cache; returns
    the command line to record with the results."""
    require_assets()
    workdir.mkdir(parents=True, exist_ok=True)
    return command_line(module, argv)


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command as a user would retype it from the repository root."""
    py = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else "python"
    return shlex.join([py, "-m", module, *argv])


def append_results(title: str, command: str, body: str, path: Path = RESULTS) -> None:
    """Append one entry (title, date, command, machine, git revision, body) to RESULTS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    entry = (
        f"## {title}, {stamp}\n\n"
        f"* command: `{command}`\n"
        f"* machine: {machine_line()}\n"
        f"* git: {git_rev()}\n\n"
        f"{body.rstrip()}\n\n"
    )
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a") as f:
        if new:
            f.write(RESULTS_HEADER)
        f.write(entry)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed as given (format them first)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def num(x: float | None, digits: int = 1) -> str:
    """A number for a table, '-' for None/NaN."""
    if x is None or x != x:
        return "-"
    return f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Inputs: assets, weights, checkpoints, synthetic videos


def require_assets() -> None:
    """Exit with one clear line when the shared assets are missing."""
    missing = [p for p in (RETINA, MEAN_FACE, VIDEOS) if not p.exists()]
    if missing:
        raise SystemExit(
            f"missing assets: {', '.join(map(str, missing))} "
            "(set VAERR_ASSETS to the shared/assets folder)"
        )


def asset_videos() -> list[str]:
    """Every clip in the assets' videos/ folder, sorted."""
    return sorted(str(p) for p in VIDEOS.iterdir() if p.is_file())


def face_overrides(kind: str, fan_weights: str | None = None) -> list[str]:
    """--set lines for the real RetinaFace weights and mean face of the assets (and a FAN
    weights file for fan68), as tests/conftest.py does."""
    out = [
        f"faces.landmarks.kind={kind}",
        f"faces.detector.weights={RETINA}",
        f"faces.align.mean_face={MEAN_FACE}",
    ]
    if fan_weights:
        out.append(f"faces.landmarks.fan_weights={fan_weights}")
    return out


def random_fan(path: Path, seed: int = 0) -> str:
    """A randomly initialised FAN 2D (4 hourglasses) state dict saved at `path` (cached):
    the same network, so the same cost per face, as the real weights (not downloadable here)."""
    if not path.exists():
        import torch

        from pipeline.faces.detect import import_fa

        fan = import_fa("face_alignment.models.fan").FAN
        torch.manual_seed(seed)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(fan(4).state_dict(), tmp)
        tmp.replace(path)
    return str(path)


def torch_home_with_fan(workdir: Path, fan: str) -> str:
    """A TORCH_HOME whose hub cache holds `fan` under the name face-alignment downloads, so
    `face_alignment.FaceAlignment(...)` constructs offline."""
    home = workdir / "torch_home"
    ckpt = home / "hub" / "checkpoints" / FA_FAN_FILE
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if not ckpt.exists():
        os.symlink(fan, ckpt)
    return str(home)


def untrained_checkpoint(path: Path, arch: str) -> str:
    """An untrained checkpoint of `arch` at `path` (cached; seed 0)."""
    if not path.exists():
        from pipeline.model.checkpoint import init_checkpoint, save_checkpoint
        from schemas.model import ModelConfig

        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        save_checkpoint(init_checkpoint(ModelConfig(arch=arch), by="bench"), str(tmp))
        tmp.replace(path)
    return str(path)


def _render(job: tuple[str, int, float, tuple[int, int], int]) -> str:
    path, seed, seconds, size, n_faces = job
    from training.synth import write_synthetic_video

    p = Path(path)
    tmp = p.with_name(f".{p.stem}.tmp{p.suffix}")
    write_synthetic_video(tmp, seed=seed, seconds=seconds, size=size, n_faces=n_faces)
    tmp.replace(p)
    return path


def synth_videos(
    workdir: Path,
    label: str,
    n: int,
    seconds: float,
    size: tuple[int, int],
    n_faces: int = 1,
    seed: int = 0,
    copies: int = 1,
) -> list[str]:
    """`n` distinct synthetic videos (H, W = size; 25 fps; H.264), each listed `copies` times
    under different names (hard links: distinct URIs, so distinct video ids, no render cost).
    Cached in `workdir`; missing ones render in parallel processes."""
    out_dir = workdir / "videos"
    out_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    jobs, paths = [], []
    for i in range(n):
        name = f"{label}_{h}x{w}_{n_faces}f_{seconds:g}s_s{seed + i}.mp4"
        p = out_dir / name
        paths.append(str(p))
        if not p.exists():
            jobs.append((str(p), seed + i, seconds, size, n_faces))
    if jobs:
        t0 = time.perf_counter()
        procs = min(len(jobs), os.cpu_count() or 1)
        if procs > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(procs) as pool:
                pool.map(_render, jobs)
        else:
            for j in jobs:
                _render(j)
        log(f"rendered {len(jobs)} synthetic {h}x{w} videos in {time.perf_counter() - t0:.0f} s")
    if copies <= 1:
        return paths
    out = []
    for p in paths:
        for c in range(copies):
            q = Path(p).with_name(f"{Path(p).stem}_c{c}.mp4")
            if not q.exists():
                os.link(p, q)
            out.append(str(q))
    return out


def video_frames(uris: Sequence[str], fps: float = 25.0) -> int:
    """Analysis frames (at `fps`) the inputs hold, from the container durations."""
    from pipeline.video import VideoReader

    total = 0
    for u in uris:
        with VideoReader(u) as r:
            total += int(round(r.info.duration_s * fps))
    return total


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the tables)."""
    print(f"[{time.strftime('%H:%M:%S')} load {load1():.1f}] {msg}", file=sys.stderr, flush=True)


def run_worker(module: str, task: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
    """Run `python -m module --worker JSON` in a fresh process (clean peak memory, no state
    shared between measurements) and return the dict it reported. Raises RuntimeError with
    the tail of its stderr when it fails."""
    cmd = [sys.executable, "-m", module, "--worker", json.dumps(task)]
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"worker {task.get('mode')} timed out after {timeout_s} s") from exc
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    tail = "\n".join(proc.stderr.splitlines()[-25:])
    raise RuntimeError(f"worker {task.get('mode')} failed (exit {proc.returncode}):\n{tail}")


def timed(fn: Any) -> dict[str, Any]:
    """Run fn() -> dict between two load readings, a clock and this process's CPU clock
    (all threads); add wall_s, cpu_s and load, and gpu_busy_pct where nvidia-smi runs."""
    l0, t0, c0 = load1(), time.perf_counter(), time.process_time()
    with GpuBusy() as busy:
        out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    extra = {} if busy.share is None else {"gpu_busy_pct": busy.share}
    return {**out, "wall_s": wall, "cpu_s": cpu, "load": [l0, load1()], **extra}


def busy_share(text: str) -> float | None:
    """Mean of nvidia-smi's `utilization.gpu` samples (one integer percent a line, csv,
    noheader, nounits; lines that are not numbers skipped), None when there are none."""
    vals = [float(x) for x in text.split() if x.strip().isdigit()]
    return sum(vals) / len(vals) if vals else None


class GpuBusy:
    """While entered, nvidia-smi samples the GPU's utilisation every 100 ms (the share of
    time a kernel ran, as the driver reports it); `share` is then their mean in percent, or
    None where nvidia-smi is absent or gave nothing. On a machine with several GPUs the
    samples of all of them are pooled (gpu.sh runs on one)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.share: float | None = None

    def __enter__(self) -> GpuBusy:
        exe = shutil.which("nvidia-smi")
        if exe:
            query = ["--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"]
            self.proc = subprocess.Popen([exe, *query], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.share = busy_share(out or "")


def config_of(task: dict[str, Any]) -> Any:
    """The VaerrConfig of a worker task (its `overrides` over the defaults)."""
    from schemas.config import load_config

    return load_config(None, task["overrides"])


def report(result: dict[str, Any]) -> None:
    """A worker's last stdout line: the marker and its result as JSON."""
    print(RESULT_MARK + json.dumps(result), flush=True)
