"""`vaerr demo`: the main job end to end on generated videos (what `make demo` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.common import add_config_args, print_json_line
from schemas.config import load_config

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = sub.add_parser(
        "demo",
        help="Generate synthetic videos and run the batch job on them (local Ray).",
        description=(
            "Render synthetic talking faces with known arousal/valence, build an ssvaerr_tiny "
            "checkpoint (untrained until training lands: every output says so), run `vaerr "
            "infer` on a local Ray, and print where the tables are and how to query them. "
            f"Defaults come from {DEMO_CONFIG.name}; --config/--set override them."
        ),
    )
    p.add_argument("--output", "-o", default="demo_out", help="Output folder.")
    p.add_argument("--videos", type=int, default=3, help="Synthetic videos to generate.")
    p.add_argument("--seconds", type=float, default=8.0, help="Length of each video, s.")
    p.add_argument("--local", action="store_true", help="In-process runner instead of Ray.")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Parse -> build -> run."""
    from training.demo import run_demo

    cfg = load_config(args.config or DEMO_CONFIG, args.overrides)
    summary = run_demo(
        cfg, args.output, args.videos, args.seconds, runner="local" if args.local else "ray"
    )
    out = Path(args.output) / "run"
    print(
        f"\ntimelines: {out / 'timelines'}/   status rows: {out / 'videos'}/   "
        f"run: {out / 'run.json'}"
    )
    print(
        'query them, e.g.:\n  .venv/bin/python -c "import pyarrow.parquet as pq; '
        f"print(pq.read_table('{out}/timelines').to_pandas().head())\""
    )
    if summary.get("untrained"):
        print(
            "NOTE: the checkpoint is UNTRAINED (no public SS-VAERR weights exist; training "
            "lands with the training issue): values are not predictions of emotion."
        )
    print_json_line(summary)
    return 0
