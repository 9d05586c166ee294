"""The learning margin of tests/test_finetune.py, over several runs: the two-worker fine-tune on
the true labels against the same run on frame-shuffled labels, each pair with its own
`train.seed`, exactly as the test configures them (its corpus, settings and figures are
imported from it, so this measures what the test asserts).

    python -m bench.finetune_margin --runs 5 [--no-append]

Prints, per run, the last epoch's training-batch CCC (arousal, valence) of both runs and the
loss's fall, then the minimum trained-minus-shuffled gap of both dimensions' mean (and of
arousal alone): the test's MARGIN must stay below the first. Appends the table to
bench/RESULTS.md unless --no-append.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import append_results, command_line, fmt_load, load1, markdown_table, num


def run_pairs(runs: int, workdir: Path, first_seed: int = 1) -> list[dict[str, float]]:
    """`runs` (trained, shuffled) pairs on one corpus; one dict of figures per pair."""
    import ray

    from schemas.config import load_config
    from tests.conftest import face_overrides
    from tests.test_finetune import (
        CORPUS,
        RUNNERS,
        fit_figures,
        frame_shuffled_copy,
        run_config,
    )
    from training.loop import read_metrics, run_training
    from training.preprocess import run_preprocess
    from training.synth import make_corpus

    make_corpus(workdir / "corpus", **CORPUS)
    cfg = load_config(None, face_overrides() + [
        "faces.detector.every_k=10", "data.threads=1", f"data.videos={workdir / 'corpus'}",
        f"data.labels={workdir / 'corpus' / 'labels.csv'}",
        f"data.manifest={workdir / 'corpus' / 'manifest.csv'}",
        f"data.shards={workdir / 'shards'}",
    ])  # fmt: skip
    run_preprocess(cfg, runner="local")
    shards = str(workdir / "shards")
    shuffled = frame_shuffled_copy(shards, str(workdir / "shuffled"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(workdir / "ray"))  # fmt: skip
    rows = []
    for i in range(runs):
        seed = first_seed + i
        figs = {}
        for name, src in (("trained", shards), ("shuffled", shuffled)):
            t0, l0 = time.perf_counter(), load1()
            c = run_config(src, f"{name}{seed}", str(workdir / "runs"), f"train.seed={seed}")
            run_training(c, "finetune", runner=RUNNERS[name])
            rec = read_metrics(c)
            figs[name] = {**fit_figures(rec), "val": rec[-1]["val/ccc_mean"],
                          "s": time.perf_counter() - t0, "load": fmt_load(l0, load1())}  # fmt: skip
        rows.append({"seed": seed, **figs})
        print(rows[-1], flush=True)
    ray.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.finetune_margin", description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vaerr_margin_") as tmp:
        rows = run_pairs(args.runs, Path(tmp))
    table = markdown_table(
        ["train.seed", "trained CCC a / v", "shuffled CCC a / v", "gap (arousal)",
         "loss fall", "val CCC (trained)", "s per run", "load"],
        [[r["seed"],
          f"{num(r['trained']['arousal'], 3)} / {num(r['trained']['valence'], 3)}",
          f"{num(r['shuffled']['arousal'], 3)} / {num(r['shuffled']['valence'], 3)}",
          num(r["trained"]["arousal"] - r["shuffled"]["arousal"], 3),
          num(r["trained"]["loss_fall"], 3), num(r["trained"]["val"], 3),
          f"{r['trained']['s']:.0f} / {r['shuffled']['s']:.0f}", r["trained"]["load"]]
         for r in rows],
    )  # fmt: skip
    gap = min(r["trained"]["arousal"] - r["shuffled"]["arousal"] for r in rows)
    both = min(
        (r["trained"]["arousal"] + r["trained"]["valence"]) / 2
        - (r["shuffled"]["arousal"] + r["shuffled"]["valence"]) / 2
        for r in rows
    )
    body = (
        f"{table}\n\nSmallest trained-minus-shuffled gap of the mean of both dimensions (what "
        f"the test asserts against MARGIN): {both:.3f}; of arousal alone: {gap:.3f}."
    )
    print(body)
    if not args.no_append:
        cmd = command_line("bench.finetune_margin", argv or sys.argv[1:])
        append_results("Fine-tune learning margin (tests/test_finetune.py's pair)", cmd, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
