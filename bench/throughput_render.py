"""The markdown of `bench.throughput`: each measurement's repeats as one row (`aggregate`),
the frames/s table with its ratios, the per-step split, the memory table and the notes
(bench/throughput.py measures; this module only summarises and formats)."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from bench.harness import fmt_load, markdown_table, num


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
            + [num(ms.get("fan", 0.0) / per if (per := r.get("faces_per_frame")) else None, 3)]
            + [num(r.get("gpu_busy_pct"), 0), num(r.get("gpu_peak_mib"), 0)]
        )
    if not out:
        return []
    headers = ["inputs", "landmarks", "frames", *[f"{k} ms" for k in STEPS], "sum ms"]
    headers += ["host-only share", "FAN ms a face", "GPU busy %", "GPU peak MiB"]
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


def _find(rows: list[dict[str, Any]], group: str, kind: str, stage: str) -> dict[str, Any] | None:
    """The measured default-knobs row of (group, kind, stage), else None."""
    for r in rows:
        if (r["group"], r["kind"], r["stage"], r["knobs"]) == (group, kind, stage, ""):
            return r if "fps" in r else None
    return None


def fps_cell(r: dict[str, Any]) -> str:
    """Median frames/s with the range of the repeats and failed count, or the error."""
    if "fps" not in r:
        err = r.get("error", "")
        return err if err in ("not run",) or err.startswith("skipped") else f"FAILED: {err[:60]}"
    cell = num(r["fps"], 2)
    if r["n"] > 1:
        cell += f" ({num(r['fps_min'], 1)}-{num(r['fps_max'], 1)})"
    if r["n"] < r["n_runs"]:
        cell += f" [{r['n_runs'] - r['n']} failed]"
    return cell


def main_table(rows: list[dict[str, Any]]) -> str:
    """The frames/s table: one line per measured row, with its ratios to the naive baseline
    and the decode ceiling of the same inputs."""
    table = []
    for r in rows:
        dec = _find(rows, r["group"], "-", "decode")
        nav = _find(rows, r["group"], r["kind"], "naive")
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
                num(r.get("startup_s"), 2),
                num(r.get("gpu_busy_pct"), 0),
                num(r.get("gpu_peak_mib"), 0),
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
        "start-up s",
        "GPU busy %",
        "GPU peak MiB",
        "peak MiB",
        "load1",
    ]
    return markdown_table(headers, table)


def long_table(long_rows: list[dict[str, Any]], long_arch: str, long_knobs: str) -> list[str]:
    """The peak-memory table of the long synthetic videos, and whether it stays flat."""
    parts: list[str] = []
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
        f"Peak memory of the whole job (local runner, retina5, untrained {long_arch}, "
        f"`{long_knobs or 'defaults'}`) on one synthetic video, each in a fresh process "
        "(VmHWM):",
        "",
        markdown_table(["video", "size", "frames", "wall s", "frames/s", "peak MiB", "load1"], lt),
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
    return parts


def notes(
    a: argparse.Namespace,
    rows: list[dict[str, Any]],
    total_s: float,
    cuda_overrides: list[str],
    min_decode_s: float,
) -> list[str]:
    """The notes under the tables: what every column means and how it was measured."""
    return [
        "Notes:",
        "",
        f"* Full job = face stage + untrained `{a.arch}` + timeline writer, "
        f"device {a.device}; `knobs` = config overrides of that row ('defaults' = shipped "
        "config: detection every frame, window 200, hop 100, detector input 640 px)."
        + (f" Extra overrides on every row: `{' '.join(a.sets)}`." if a.sets else "")
        + (" GPU rows add: `" + " ".join(cuda_overrides) + "`." if a.device == "cuda" else ""),
        f"* Each measurement ran {a.repeat} time(s), in rounds over all rows (a change of "
        "load hits every row alike); `frames/s` is the median, with the range of the "
        "repeats; `x naive` and `of decode` compare medians.",
        f"* `frames` = analysis frames (25 fps) processed (decode: one pass; passes repeat "
        f"for at least {min_decode_s:g} s and `wall s` covers them all); `faces/frame` = "
        "tracked face rows per frame (face stage) or detections per frame (naive).",
        "* `x naive` = frames/s / naive frames/s of the same inputs and landmark mode; "
        "`of decode` = frames/s / decode-only frames/s of the same inputs.",
        "* Timed: decode and face exclude model loading; local, ray and naive are end to end "
        "(model loading, and for ray actor start-up, included); `steady fps` = frames/s "
        "between the first and last video committed (2+ videos only) and `start-up s` = "
        "seconds to the first result, both from the job's run.json.",
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


def render(
    a: argparse.Namespace,
    groups: dict[str, tuple[str, list[str]]],
    rows: list[dict[str, Any]],
    long_rows: list[dict[str, Any]],
    total_s: float,
    cuda_overrides: list[str],
    min_decode_s: float,
) -> str:
    """The tables and notes as markdown (`cuda_overrides`, `min_decode_s`: the settings of
    bench/throughput.py the notes state)."""
    parts = ["Inputs:", ""]
    parts += [f"* `{g}`: {desc}" for g, (desc, _) in groups.items()]
    parts += ["", main_table(rows), ""]
    parts += split_table(rows)
    if getattr(a, "ray_missing", False):
        parts += ["**Ray is not installed on this machine: local runner rows only.**", ""]
    if long_rows:
        parts += long_table(long_rows, a.long_arch, a.long_knobs)
    parts += notes(a, rows, total_s, cuda_overrides, min_decode_s)
    return "\n".join(parts)


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
    startup = [r["startup_s"] for r in ok if r.get("startup_s") is not None]
    row["startup_s"] = statistics.median(startup) if startup else None
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
    busy = [r["gpu_busy_pct"] for r in ok if r.get("gpu_busy_pct") is not None]
    row["gpu_busy_pct"] = statistics.median(busy) if busy else None
    return row
