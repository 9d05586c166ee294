"""`vaerr paper TABLE`: rebuild Table I, II or III of Jegorova et al. (FG 2023) from runs.

The tables are configs (jobs/configs/paper/<dataset>/): a dataset `base.yaml` plus one
overlay per run, whose `paper.cells` name the table cells it reproduces and carry the
paper's figures. A cell two tables share is one overlay listing both cells.

Plan: every overlay with a cell in the table (filtered by --datasets / --rows) is one run,
identified by `run_hash` of the settings that change its result (not its name, storage
or notes). A run is done when OUT/results/<hash>.json exists (reruns skip it; a changed
config is a new hash, a new run). A run whose pretext encoder file is missing is refused,
naming the `vaerr pretrain` config that writes it, unless `with_pretext` runs that first.

Paths: a run's relative local paths that it writes or that pretraining writes for it
(train.storage_path, model.encoder_checkpoint, the pretext configs' pretrain.output) are
placed under OUT (`under_out`), so `-o` holds runs, encoders, results and tables; the
shards it reads stay where data.shards says (relative: from the current directory), and the
plan prints them absolute.

Run: `run_training` (Ray Train, or in-process with local=True) then `run_evaluate` on the
config's evaluate.splits (RECOLA: the dev set, which also selects the model: the paper does
the same since RECOLA's test labels are not public). Then OUT/table_<T>.md and
OUT/table_<T>.parquet: per cell our CCC beside the paper's, the difference, labelled frames
scored / present (coverage), run id and config hash. Table I's rows from other papers come
from jobs/configs/paper/cited/table_<T>.yaml and are printed as cited figures, never run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pipeline.storage import (
    absolute,
    atomic_write,
    exists,
    is_plain_path,
    join,
    read_json,
    write_text,
)
from schemas.config import VaerrConfig, config_dump, load_config
from schemas.train import DATASET_COLUMNS, TABLE_III_COLUMNS, PaperCell

log = logging.getLogger(__name__)

PAPER_ROOT = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "paper"
TABLES = ("I", "II", "III")
TABLE_ROWS: dict[str, tuple[str, ...]] = {
    "I": ("ss-vaerr", "backbone", "scratch"),
    "II": tuple(f"{p}-{m}" for p in ("lira", "byol", "dino") for m in ("finetuned", "frozen")),
    "III": tuple(str(i) for i in range(1, 9)),
}
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "I": DATASET_COLUMNS,
    "II": DATASET_COLUMNS,
    "III": TABLE_III_COLUMNS,
}
NOT_CELLS = ("base", "preprocess")
# Fields that do not change a run's result: left out of its hash.
RUNTIME_TRAIN = (
    "name", "storage_path", "num_workers", "use_gpu", "cpus_per_worker", "threads",
    "loader_num_cpus", "max_failures", "keep_checkpoints", "eval_chunk_frames",
)  # fmt: skip
RESULT_TABLE = pa.schema(
    [
        ("table", pa.string()),
        ("row", pa.string()),
        ("column", pa.string()),
        ("dataset", pa.string()),
        ("kind", pa.string()),  # run | cited
        ("status", pa.string()),  # done | todo | cited
        ("paper_arousal", pa.float64()),
        ("paper_valence", pa.float64()),
        ("ours_arousal", pa.float64()),
        ("ours_valence", pa.float64()),
        ("diff_arousal", pa.float64()),
        ("diff_valence", pa.float64()),
        ("eval_split", pa.string()),
        ("frames_scored", pa.int64()),
        ("frames_labelled", pa.int64()),
        ("coverage", pa.float64()),
        ("run_id", pa.string()),
        ("config_hash", pa.string()),
        ("config", pa.string()),
        ("source", pa.string()),
        ("note", pa.string()),
    ]
)


@dataclass
class PaperRun:
    """One overlay on its dataset base: one training run, one or more table cells."""

    dataset: str
    overlay: str  # file stem, e.g. iii_04_ccc_ce_mse_frozen
    files: tuple[str, ...]
    cfg: VaerrConfig
    cells: tuple[PaperCell, ...] = ()
    cells_by_key: dict[tuple[str, str, str], PaperCell] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        """run_hash of the config."""
        return run_hash(self.cfg)

    @property
    def run_id(self) -> str:
        """train.name + hash: a changed config never resumes an old run's checkpoints."""
        return f"{self.cfg.train.name}-{self.hash[:8]}"

    def at(self, out: str) -> VaerrConfig:
        """The config with its outputs and encoder placed under `out` (see under_out); the
        hash stays that of the config as written, so a moved OUT keeps its results."""
        return under_out(self.cfg, out)


def _place(uri: str | None, out: str) -> str | None:
    """A relative plain local path joined onto OUT (absolute when OUT is local); absolute
    paths and URIs unchanged."""
    if not uri or not is_plain_path(uri) or Path(uri).expanduser().is_absolute():
        return uri
    return join(absolute(out), uri)


def under_out(cfg: VaerrConfig, out: str) -> VaerrConfig:
    """`cfg` with train.storage_path, model.encoder_checkpoint and pretrain.output, when
    relative local paths, under OUT: `vaerr paper -o OUT` writes and reads them there, not
    in the current directory."""
    return cfg.model_copy(
        update={
            "train": cfg.train.model_copy(
                update={"storage_path": _place(cfg.train.storage_path, out)}
            ),
            "model": cfg.model.model_copy(
                update={"encoder_checkpoint": _place(cfg.model.encoder_checkpoint, out)}
            ),
            "pretrain": cfg.pretrain.model_copy(
                update={"output": _place(cfg.pretrain.output, out)}
            ),
        }
    )


def run_hash(cfg: VaerrConfig) -> str:
    """sha256 (16 hex) of everything that changes a run's result: model, loss, augment,
    data, train (less names, storage and scheduling), evaluate, video and faces. The paper
    notes and figures are not part of it."""
    d = config_dump(cfg)
    picked = {k: d[k] for k in ("video", "model", "loss", "augment", "data", "evaluate")}
    picked["train"] = {k: v for k, v in d["train"].items() if k not in RUNTIME_TRAIN}
    for k in ("device", "checkpoint", "registry_file"):
        picked["model"].pop(k, None)
    picked["evaluate"].pop("output", None)
    for k in ("threads", "actors", "num_cpus", "num_gpus"):
        picked["data"].pop(k, None)
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def discover(
    root: Path = PAPER_ROOT, overrides: list[str] | None = None, datasets: tuple[str, ...] = ()
) -> list[PaperRun]:
    """Every run overlay of root/<dataset>/ (not base.yaml or preprocess.yaml), merged on
    its base, with `overrides` (`--set`) applied to each."""
    runs = []
    for d in DATASET_COLUMNS:
        if datasets and d not in datasets:
            continue
        base = root / d / "base.yaml"
        for path in sorted((root / d).glob("*.yaml")):
            if path.stem in NOT_CELLS:
                continue
            cfg = load_config([base, path], overrides)
            cells = cfg.paper.cells if cfg.paper else ()
            runs.append(
                PaperRun(
                    dataset=d,
                    overlay=path.stem,
                    files=(str(base), str(path)),
                    cfg=cfg,
                    cells=tuple(cells),
                    cells_by_key={c.key: c for c in cells},
                )
            )
    return runs


def cell_index(runs: list[PaperRun]) -> dict[tuple[str, str, str], list[PaperRun]]:
    """(table, row, column) -> the runs that claim the cell (exactly one when consistent)."""
    out: dict[tuple[str, str, str], list[PaperRun]] = {}
    for r in runs:
        for c in r.cells:
            out.setdefault(c.key, []).append(r)
    return out


def _rel(path: Path | str) -> str:
    """A path shown relative to the working directory when under it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _abs(uri: str) -> str:
    """Local paths absolute (as run_training resolves them); URIs unchanged."""
    return absolute(uri)


def pretext_sources(root: Path = PAPER_ROOT, out: str = ".") -> dict[str, Path]:
    """Encoder path (placed under OUT, absolute) -> the `vaerr pretrain` config
    (root/lrs3/pretrain_*.yaml) whose pretrain.output writes it."""
    found = {}
    for p in sorted((root / "lrs3").glob("pretrain_*.yaml")):
        cfg = under_out(load_config(p), out)
        if cfg.pretrain.output:
            found[_abs(cfg.pretrain.output)] = p
    return found


def pretrain_command(config: str | Path, encoder: str, out: str) -> str:
    """The `vaerr pretrain` line that writes `encoder` where `vaerr paper -o OUT` reads it."""
    runs = _place(load_config(config).train.storage_path, out)
    return (
        f"vaerr pretrain --config {_rel(config)} --set pretrain.output={encoder} "
        f"--set train.storage_path={runs}"
    )


@dataclass
class PlanItem:
    """One run of the plan and its state."""

    run: PaperRun
    cells: tuple[PaperCell, ...]  # the run's cells in this table
    status: str  # done | todo | needs-encoder
    encoder: str | None = None
    pretrain_config: str | None = None
    out: str = "."

    def line(self) -> str:
        """One human line of the plan."""
        cells = ", ".join(f"{c.row}/{c.column}" for c in self.cells)
        src = Path(self.run.files[1]).name
        s = f"{self.status:13s} {self.run.run_id:52s} cells {cells}  <- {src}"
        if self.status == "needs-encoder":
            how = (
                pretrain_command(self.pretrain_config, self.encoder or "", self.out)
                if self.pretrain_config
                else "no pretrain config writes it"
            )
            s += f"\n{'':14s}missing encoder {self.encoder}: {how}"
        return s


def results_dir(out: str) -> str:
    """OUT/results: one JSON per finished run, named by its config hash."""
    return join(out, "results")


def make_plan(
    table: str,
    out: str,
    *,
    datasets: tuple[str, ...] = (),
    rows: tuple[str, ...] = (),
    overrides: list[str] | None = None,
    root: Path = PAPER_ROOT,
) -> list[PlanItem]:
    """The runs behind `table`'s cells (filtered), each done, todo or needs-encoder."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    bad = [r for r in rows if r not in TABLE_ROWS[table]]
    if bad:
        raise ValueError(f"table {table} has no rows {bad}; rows: {list(TABLE_ROWS[table])}")
    sources = pretext_sources(root, out)
    plan = []
    for run in discover(root, overrides, datasets):
        cells = tuple(c for c in run.cells if c.table == table and (not rows or c.row in rows))
        if not cells:
            continue
        item = PlanItem(run, cells, "todo", out=out)
        placed = run.at(out)
        if exists(join(results_dir(out), f"{run.hash}.json"), run.cfg.storage):
            item.status = "done"
        elif placed.model.encoder_checkpoint:
            enc = _abs(placed.model.encoder_checkpoint)
            if not exists(enc, run.cfg.storage):
                item.status, item.encoder = "needs-encoder", enc
                src = sources.get(enc)
                item.pretrain_config = str(src) if src else None
        plan.append(item)
    return plan


def run_item(item: PlanItem, out: str, *, local: bool, ray_address: str | None) -> dict:
    """Train then evaluate one run; write OUT/results/<hash>.json (what makes it done)."""
    from training.evaluate import run_evaluate
    from training.loop import resolve_paths, run_dir, run_training

    run = item.run
    cfg = run.at(out)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"name": run.run_id})})
    runner = "local" if local else "ray"
    train = run_training(cfg, "finetune", runner=runner, ray_address=ray_address)
    cfg = resolve_paths(cfg)
    ckpt = join(run_dir(cfg), "best.pt")
    ev = run_evaluate(cfg, ckpt, join(out, "eval", run.hash))
    seq = ev["protocols"]["sequence"]
    record = {
        "config_hash": run.hash,
        "run_id": run.run_id,
        "files": list(run.files),
        "dataset": run.dataset,
        "cells": [c.model_dump() for c in run.cells],
        "eval_splits": ev["splits"],
        "ccc": {k: seq[k]["ccc"] for k in ("arousal", "valence")},
        "ccc_seq_mean": {k: seq[k]["ccc_seq_mean"] for k in ("arousal", "valence")},
        "coverage": ev.get("coverage"),
        "frames": ev["frames"],
        "checkpoint": ckpt,
        "train": {"wall_s": train["wall_s"], "best": train.get("best")},
        "batch": train.get("batch"),
        "config": config_dump(cfg),
    }
    write_text(
        join(results_dir(out), f"{run.hash}.json"),
        json.dumps(record, indent=2, default=float),
        cfg.storage,
    )
    return record


def run_pretext(
    config: str, overrides: list[str] | None, out: str, *, local: bool, ray: str | None
) -> str:
    """`vaerr pretrain --config CONFIG` (with the pretext overrides), its run and encoder
    under OUT; returns the encoder."""
    from training.loop import run_training

    cfg = under_out(load_config(config, overrides), out)
    return run_training(cfg, "pretrain", runner="local" if local else "ray", ray_address=ray)[
        "product"
    ]


def read_cited(
    path: Path | None, table: str, datasets: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Rows from other papers (cited figures, never run) for `table` (and `datasets`)."""
    if path is None or not Path(path).exists():
        return []
    data = yaml.safe_load(Path(path).read_text()) or {}
    return [
        r
        for r in data.get("rows") or []
        if str(r.get("table")) == table and (not datasets or r.get("column") in datasets)
    ]


def cited_line(r: dict[str, Any]) -> str:
    """One plan line of a cited row: its figures and where they come from."""
    fig = f"{_f(_num(r.get('arousal')))} / {_f(_num(r.get('valence')))}"
    what = r.get("method") or r.get("row")
    return (
        f"{'cited':13s} {r.get('row')}/{r.get('column')}: {fig}  {what}; {r.get('cite')} (not run)"
    )


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 4)


def build_table(
    table: str, plan: list[PlanItem], out: str, cited: list[dict[str, Any]], cfg: VaerrConfig
) -> list[dict[str, Any]]:
    """One row per cell: the paper's figures, ours from the run's result file (None while
    not done), difference, coverage, run id; then the cited rows. Written to
    OUT/table_<T>.parquet and OUT/table_<T>.md."""
    rows: list[dict[str, Any]] = []
    order = {r: i for i, r in enumerate(TABLE_ROWS[table])}
    cols = {c: i for i, c in enumerate(TABLE_COLUMNS[table])}
    for item in plan:
        res = read_json(join(results_dir(out), f"{item.run.hash}.json"), cfg.storage)
        for c in item.cells:
            cov = (res or {}).get("coverage") or {}
            overall = cov.get("overall") or {}
            ours = (res or {}).get("ccc") or {}
            oa, ov = _num(ours.get("arousal")), _num(ours.get("valence"))
            rows.append(
                {
                    "table": table,
                    "row": c.row,
                    "column": c.column,
                    "dataset": item.run.dataset,
                    "kind": "run",
                    "status": "done" if res else item.status,
                    "paper_arousal": c.arousal,
                    "paper_valence": c.valence,
                    "ours_arousal": oa,
                    "ours_valence": ov,
                    "diff_arousal": _diff(oa, c.arousal),
                    "diff_valence": _diff(ov, c.valence),
                    "eval_split": ",".join((res or {}).get("eval_splits") or [])
                    or ",".join(item.run.cfg.evaluate.splits),
                    "frames_scored": overall.get("scored"),
                    "frames_labelled": overall.get("labelled"),
                    "coverage": overall.get("fraction"),
                    "run_id": item.run.run_id,
                    "config_hash": item.run.hash,
                    "config": Path(item.run.files[1]).name,
                    "source": c.source,
                    "note": c.note,
                }
            )
    rows.sort(key=lambda r: (order.get(r["row"], 99), cols.get(r["column"], 99)))
    for r in cited:
        rows.append(
            {
                "table": table,
                "row": str(r.get("row")),
                "column": str(r.get("column")),
                "dataset": str(r.get("column")).split("-")[0],
                "kind": "cited",
                "status": "cited",
                "paper_arousal": _num(r.get("arousal")),
                "paper_valence": _num(r.get("valence")),
                "source": r.get("cite"),
                "note": r.get("note") or r.get("method"),
            }
        )
    full = [{k: r.get(k) for k in RESULT_TABLE.names} for r in rows]
    with atomic_write(join(out, f"table_{table}.parquet"), cfg.storage) as f:
        pq.write_table(pa.Table.from_pylist(full, RESULT_TABLE), f)
    write_text(join(out, f"table_{table}.md"), table_markdown(table, full), cfg.storage)
    return full


def _f(x: Any, signed: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:+.3f}" if signed else f"{x:.3f}"
    return str(x)


def table_markdown(table: str, rows: list[dict[str, Any]]) -> str:
    """The table as Markdown: ours beside the paper's, per cell."""
    head = (
        f"# Table {table} (Jegorova, Petridis, Pantic, SS-VAERR, FG 2023): ours vs the paper\n\n"
        "CCC over all evaluation sequences concatenated (AVEC convention), arousal / valence. "
        "SEWA: test set. RECOLA: development set, which also selects the model (no public "
        "test labels; the paper does the same). Coverage = labelled frames scored / labelled "
        "frames present in the evaluation split. '-' = not run yet, or not printed in the paper. "
        "Rows marked cited are other papers' figures as Table I cites them (never run).\n\n"
        "| row | column | paper A | paper V | ours A | ours V | diff A | diff V | split "
        "| frames scored / labelled | coverage | run id | config | status |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        frames = (
            f"{r['frames_scored']} / {r['frames_labelled']}"
            if r.get("frames_scored") is not None
            else "-"
        )
        cov = "-" if r.get("coverage") is None else f"{100 * r['coverage']:.1f}%"
        cited = r["kind"] == "cited"
        lines.append(
            f"| {r['row']} | {r['column']} | {_f(r['paper_arousal'])} | {_f(r['paper_valence'])} "
            f"| {_f(r.get('ours_arousal'))} | {_f(r.get('ours_valence'))} "
            f"| {_f(r.get('diff_arousal'), True)} | {_f(r.get('diff_valence'), True)} "
            f"| {r.get('eval_split') or '-'} | {frames} | {cov} | {r.get('run_id') or '-'} "
            f"| {r.get('config') or ('cited: ' + str(r.get('source')) if cited else '-')} "
            f"| {r['status']} |"
        )
    notes = sorted({f"- {r['row']}/{r['column']}: {r['note']}" for r in rows if r.get("note")})
    tail = "\n\nNotes:\n" + "\n".join(notes) + "\n" if notes else "\n"
    return head + "\n".join(lines) + tail


def run_paper(
    table: str,
    out: str,
    *,
    datasets: tuple[str, ...] = (),
    rows: tuple[str, ...] = (),
    overrides: list[str] | None = None,
    pretext_overrides: list[str] | None = None,
    with_pretext: bool = False,
    dry_run: bool = False,
    local: bool = False,
    ray_address: str | None = None,
    root: Path = PAPER_ROOT,
    cited: Path | None = None,
    echo: Any = print,
) -> dict[str, Any]:
    """Plan, (pretrain,) run what is not done, build the table. Returns a summary; raises
    ValueError when a run's encoder is missing and with_pretext is off."""
    cited = root / "cited" / f"table_{table}.yaml" if cited is None else cited
    plan = make_plan(table, out, datasets=datasets, rows=rows, overrides=overrides, root=root)
    echo(f"Table {table}: {len(plan)} runs -> {out}")
    for item in plan:
        echo(item.line())
    cited_rows = read_cited(cited, table, datasets)
    for r in cited_rows:
        echo(cited_line(r))
    for shards in sorted({absolute(i.run.cfg.data.shards) for i in plan}):
        echo(f"reads shards {shards}")
    missing = [i for i in plan if i.status == "needs-encoder"]
    summary = {
        "table": table,
        "out": out,
        "planned": len(plan),
        "cited": len(cited_rows),
        "done_before": sum(i.status == "done" for i in plan),
        "ran": [],
        "needs_encoder": sorted({i.pretrain_config or i.encoder or "" for i in missing}),
    }
    if dry_run:
        return summary
    if missing and not with_pretext:
        need = "; ".join(
            f"{i.run.run_id} needs {i.encoder}: "
            + (
                pretrain_command(i.pretrain_config, i.encoder or "", out)
                if i.pretrain_config
                else "?"
            )
            for i in missing
        )
        raise ValueError(f"missing pretext encoders (or pass --with-pretext): {need}")
    for conf in sorted({i.pretrain_config for i in missing if i.pretrain_config}):
        echo(f"pretext: vaerr pretrain --config {_rel(conf)} (under {out})")
        run_pretext(conf, pretext_overrides, out, local=local, ray=ray_address)
    if missing:
        plan = make_plan(table, out, datasets=datasets, rows=rows, overrides=overrides, root=root)
        still = [i.run.run_id for i in plan if i.status == "needs-encoder"]
        if still:
            raise ValueError(f"encoders still missing after pretraining for {still}")
    for item in plan:
        if item.status == "done":
            continue
        echo(f"run: {item.run.run_id}")
        rec = run_item(item, out, local=local, ray_address=ray_address)
        summary["ran"].append(rec["run_id"])
    cfg0 = plan[0].run.cfg if plan else load_config(None, overrides)
    table_rows = build_table(table, plan, out, cited_rows, cfg0)
    summary["rows"] = len(table_rows)
    summary["markdown"] = join(out, f"table_{table}.md")
    summary["parquet"] = join(out, f"table_{table}.parquet")
    return summary
