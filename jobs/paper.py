"""`vaerr paper TABLE`: rerun the paper's Table I, II or III and print ours beside it."""

from __future__ import annotations

import argparse
import sys

from jobs.cli_io import print_json_line


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `paper` subcommand."""
    p = sub.add_parser(
        "paper",
        help="Rebuild Table I, II or III of the SS-VAERR paper from runs (resumable).",
        description=(
            "Run every config behind TABLE's cells (jobs/configs/paper/<dataset>/: base.yaml "
            "plus one overlay per run) that is not done yet - fine-tune, then evaluate on "
            "the config's evaluate.splits (SEWA test; RECOLA dev, which also selects the "
            "model: no public test labels) - and write OUT/table_<TABLE>.md and "
            "OUT/table_<TABLE>.parquet: our CCC beside the paper's, the difference, "
            "labelled frames scored / present, run ids. Each finished run is "
            "OUT/results/<config hash>.json: reruns skip it. Runs whose pretext encoder is "
            "missing are refused, naming the `vaerr pretrain` config that makes it, unless "
            "--with-pretext. Table I's rows from other papers are printed as cited figures "
            "(jobs/configs/paper/cited/), never run. Prints a JSON summary as the last line."
        ),
    )
    p.add_argument("table", choices=("I", "II", "III"), help="Which table.")
    p.add_argument(
        "--datasets", default="sewa,recola", help="Comma list of sewa, recola (default both)."
    )
    p.add_argument(
        "--rows",
        default="",
        help="Comma list of rows (III: 1-8; II: lira-finetuned, byol-frozen, ...; I: "
        "ss-vaerr, backbone, scratch). Default: all.",
    )
    p.add_argument(
        "--out",
        "-o",
        default="runs/paper",
        help="Folder/URI of everything it writes: results, tables, and the configs' relative "
        "run folders and pretext encoders (OUT/runs/...). Shards are read where data.shards "
        "says (relative: from the current directory; the plan prints them).",
    )
    p.add_argument("--dry-run", action="store_true", help="Print the plan; run nothing.")
    p.add_argument(
        "--with-pretext",
        action="store_true",
        help="Run the missing pretext encoders first (vaerr pretrain with their lrs3 config).",
    )
    p.add_argument("--local", action="store_true", help="Train in this process, without Ray.")
    p.add_argument("--ray-address", default=None, help="Ray cluster (auto, ray://HOST:10001).")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a field of every run's config (repeatable), e.g. train.use_gpu=false.",
    )
    p.add_argument(
        "--pretext-set",
        dest="pretext_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a field of the pretext configs run by --with-pretext (repeatable).",
    )
    p.set_defaults(func=run)


def _list(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    from training.paper import run_paper

    datasets = _list(args.datasets)
    bad = [d for d in datasets if d not in ("sewa", "recola")]
    if bad:
        raise ValueError(f"--datasets: unknown {bad}; choose from sewa, recola")
    summary = run_paper(
        args.table,
        args.out,
        datasets=datasets,
        rows=_list(args.rows),
        overrides=args.overrides,
        pretext_overrides=args.pretext_overrides,
        with_pretext=args.with_pretext,
        dry_run=args.dry_run,
        local=args.local,
        ray_address=args.ray_address,
        echo=lambda line: print(line, flush=True),
    )
    print_json_line(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.paper ...` (cluster job submission)."""
    from jobs.cli import main as cli_main

    return cli_main(["paper", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
