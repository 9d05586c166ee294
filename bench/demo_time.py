"""`vaerr demo` timed, per seed, optionally beside an older checkout run at the same time.

    python -m bench.demo_time --seeds 7,11,23 [--baseline /path/to/old/worktree] [--no-append]
                              [--set train.ema_decay=0.98 ...]

Each seed runs `vaerr demo --seed N` in a subprocess (the setup, `make demo`'s venv, is not
timed), and prints its wall minutes, the load average at start and end, and the CCC it
printed. With `--baseline DIR`, the same command runs from DIR (another checkout, e.g. `git
worktree add DIR <commit>`; its code is imported through PYTHONPATH) at the same time as this
checkout's: both share the machine's load, so their ratio is fair on a shared machine where
back-to-back runs are not. Appends the table to bench/RESULTS.md unless --no-append.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import REPO, append_results, command_line, fmt_load, load1, markdown_table, num


def start_demo(
    repo: Path, seed: int, out: Path, overrides: tuple[str, ...] = ()
) -> subprocess.Popen:
    """`vaerr demo --seed seed --output out [--set ...]` with `repo`'s code, its stdout
    captured."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    env.setdefault("VAERR_ASSETS", str(REPO.parent / "shared" / "assets"))
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "-q",
        "demo",
        "--seed",
        str(seed),
        "--output",
        str(out),
        *[x for item in overrides for x in ("--set", item)],
    ]
    return subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, t0: float, l0: float) -> dict:
    """Wait for a demo; its minutes, load (start/end), CCC and interval from its JSON line."""
    out, _ = proc.communicate()
    minutes = (time.perf_counter() - t0) / 60
    last = json.loads(out.strip().splitlines()[-1]) if proc.returncode == 0 else {}
    return {"minutes": minutes, "load": fmt_load(l0, load1()), "rc": proc.returncode,
            "ccc": last.get("ccc", {}), "ci": last.get("ccc_interval", {}),
            "unseen": last.get("unseen_videos")}  # fmt: skip


def run_seed(seed: int, baseline: Path | None, work: Path, overrides: tuple[str, ...] = ()) -> dict:
    """One seed: this checkout's demo (and the baseline's beside it, without `overrides`)."""
    t0, l0 = time.perf_counter(), load1()
    procs = {"now": start_demo(REPO, seed, work / f"now{seed}", overrides)}
    if baseline is not None:
        procs["baseline"] = start_demo(baseline, seed, work / f"base{seed}")
    return {name: finish(p, t0, l0) for name, p in procs.items()}


def _cell(r: dict, dim: str) -> str:
    ci = r["ci"].get(dim)
    span = f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else ""
    return num(r["ccc"].get(dim), 3) + span


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.demo_time", description=__doc__)
    p.add_argument("--seeds", default="7,11,23")
    p.add_argument("--baseline", type=Path, default=None, help="An older checkout to run beside.")
    p.add_argument("--no-append", action="store_true")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="A config override for this checkout's demo (repeatable; not the baseline's).",
    )  # fmt: skip
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vaerr_demo_time_") as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            res = run_seed(seed, args.baseline, Path(tmp), tuple(args.overrides))
            print(seed, res, flush=True)
            for name, r in res.items():
                rows.append([seed, name, _cell(r, "arousal"), _cell(r, "valence"),
                             r["unseen"], f"{r['minutes']:.1f}", r["load"], r["rc"]])  # fmt: skip
    headers = ["seed", "code", "CCC arousal (95 %)", "CCC valence (95 %)", "unseen scored",
               "minutes", "load start/end", "exit"]  # fmt: skip
    body = markdown_table(headers, rows)
    print(body)
    if not args.no_append:
        cmd = command_line("bench.demo_time", argv or sys.argv[1:])
        append_results("`vaerr demo`: minutes and CCC per seed", cmd, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
