"""The paper's tables as configs: every cell of Tables I-III (SEWA and RECOLA) is exactly one
shipped overlay on a dataset base, valid, carrying the paper's figures as data (checked
against METHOD.md), with the losses the paper's own numbers imply."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from schemas.config import load_config
from schemas.train import TrainConfig
from tests.conftest import ASSETS, REPO
from training.paper import (
    PAPER_ROOT,
    TABLE_COLUMNS,
    TABLE_ROWS,
    cell_index,
    discover,
    run_paper,
)

# METHOD.md's three tables, as printed, are the reference: every printed figure must be in a
# config (our rows) or in cited/table_I.yaml (other papers' rows), and nothing else.
I_ROWS = {  # Table I's printed row -> our row key (the others are cited)
    "SS-VAERR (+ augmentations + composite loss)": "ss-vaerr",
    "SS-VAERR backbone (LiRA, fine-tuned)": "backbone",
    "3D conv + ResNet-18 + GRU from scratch": "scratch",
}
PRETEXT = {"LiRA": "lira", "Video-BYOL": "byol", "DINO-ResNet": "dino"}
CITED = PAPER_ROOT / "cited" / "table_I.yaml"


def method_md() -> Path:
    """../shared/docs/METHOD.md (beside the repository, or beside VAERR_ASSETS)."""
    for p in (REPO.parent / "shared" / "docs", ASSETS.parent / "docs"):
        if (p / "METHOD.md").exists():
            return p / "METHOD.md"
    pytest.skip("METHOD.md (../shared/docs) not found: the tables cannot be checked")


def printed_tables(text: str) -> dict[tuple[str, str, str], str]:
    """METHOD.md's "Table I/II/III (...)" Markdown tables -> {(table, row as printed, column
    header): cell text}; Table III's row is its number (the loss-weights column is skipped)."""
    out: dict[tuple[str, str, str], str] = {}
    table, header = None, None
    for line in text.splitlines():
        m = re.match(r"^Table (I{1,3}) \(", line)
        if m:
            table, header = m.group(1), None
        elif table and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                first = 2 if table == "III" else 1
                for h, c in zip(header[first:], cells[first:], strict=True):
                    out[(table, cells[0], h)] = c
        elif table and header is not None:
            table = None
    return out


def cell_key(table: str, row: str, column: str) -> tuple[str, str, str] | None:
    """A printed cell's key in the configs ((table, row, column)); None for a cited row."""
    d, _, mode = column.partition(" ")
    mode = mode.replace("-", "")
    if table == "I":
        return ("I", I_ROWS[row], d.lower()) if row in I_ROWS else None
    if table == "II":
        return ("II", f"{PRETEXT[row]}-{mode}", d.lower())
    return ("III", row, f"{d.lower()}-{mode}")


def figures_of(runs, cited: list[dict]) -> dict[tuple[str, str, str], tuple]:
    """Every figure the configs and the cited file carry, by printed cell (cited rows keyed
    by their `method` as printed)."""
    out = {k: (run.cells_by_key[k].arousal, run.cells_by_key[k].valence)
           for k, (run,) in cell_index(runs).items()}  # fmt: skip
    for r in cited:
        out[("I", r["method"], r["column"])] = (r["arousal"], r["valence"])
    return out


def mismatches(text: str, runs, cited: list[dict]) -> list[str]:
    """Printed cells whose figure is missing or different in the configs, and config
    figures that no printed cell has (empty when they agree)."""
    have = figures_of(runs, cited)
    bad, seen = [], set()
    for (table, row, column), cell in printed_tables(text).items():
        if cell == "-":
            continue
        a, v = (float(x) for x in cell.split(" / "))
        key = cell_key(table, row, column) or ("I", row, column.lower())
        seen.add(key)
        if have.get(key) != (a, v):
            bad.append(f"{key}: printed {a} / {v}, config {have.get(key)}")
    bad += [f"{k}: {f} is printed nowhere" for k, f in have.items() if k not in seen]
    return bad


LOSS_ROWS = {  # Table III row -> (arousal (ccc, mse, ce, ncce), valence (...))
    "1": ((1, 0, 0, 0), (1, 0, 0, 0)),
    "2": ((0, 1, 0, 0), (0, 1, 0, 0)),
    "3": ((0.5, 0, 0.5, 0), (0.5, 0, 0.5, 0)),
    "4": ((0.5, 0.25, 0.25, 0), (0.5, 0.25, 0.25, 0)),
    "5": ((0.66, 0, 0.34, 0), (1, 0, 0, 0)),
    "6": ((0.66, 0.17, 0.17, 0), (1, 0, 0, 0)),
    "7": ((0.5, 0, 0, 0.5), (0.5, 0, 0, 0.5)),
    "8": ((0.5, 0.25, 0, 0.25), (0.5, 0.25, 0, 0.25)),
}


def _weights(t):
    return (t.w_ccc, t.w_mse, t.w_ce, t.w_ncce)


@pytest.fixture(scope="module")
def runs():
    return discover()


def test_every_table_cell_has_exactly_one_valid_config(runs):
    index = cell_index(runs)
    expected = {
        (table, row, col) for table in TABLE_ROWS for row in TABLE_ROWS[table]
        for col in TABLE_COLUMNS[table]
    }  # fmt: skip
    assert len([k for k in expected if k[0] == "III"]) == 32
    assert set(index) == expected  # no cell missing, none unknown
    dupes = {k: [r.overlay for r in v] for k, v in index.items() if len(v) != 1}
    assert not dupes
    # a cell's config is of the cell's dataset; every config is its own run
    for (_, _, col), (run,) in index.items():
        assert col.split("-")[0] == run.dataset == run.cfg.data.dataset
    names = [r.cfg.train.name for r in runs]
    assert len(names) == len(set(names))
    # shared cells are one config: Table II LiRA fine-tuned = Table III row 1 = Table I backbone
    for d in ("sewa", "recola"):
        shared = index[("III", "1", f"{d}-finetuned")][0]
        assert index[("II", "lira-finetuned", d)][0] is shared
        assert index[("I", "backbone", d)][0] is shared
        assert index[("II", "lira-frozen", d)][0] is index[("III", "1", f"{d}-frozen")][0]
    assert index[("I", "ss-vaerr", "recola")][0] is index[("III", "5", "recola-finetuned")][0]


AUGMENT_P = ("hflip_p", "crop_p", "cutout_p", "time_mask_p", "time_out_p", "noise_p", "solarise_p")


def test_configs_follow_the_tables_settings(runs):
    index = cell_index(runs)
    for (table, row, col), (run,) in index.items():
        c = run.cfg
        d = run.dataset
        assert c.model.arch == "ssvaerr_r18" and c.data.shards == f"shards/{d}"
        assert c.evaluate.splits == (("test",) if d == "sewa" else ("validation",))
        assert c.train.batch_size == 5 and c.train.per_worker_batch() == 5  # the recipe's 5
        assert (c.train.lr, c.train.weight_decay, c.train.seed) == (3e-4, 1e-2, 1)
        frozen = col.endswith("frozen") or row.endswith("frozen")
        assert c.model.finetune == ("frozen_encoder" if frozen else "full")
        if table == "III":
            a, v = LOSS_ROWS[row]  # the paper's text, not the public code's weights ...
            assert (_weights(c.loss.arousal), _weights(c.loss.valence)) == (a, v)
            assert c.loss.l2 == 0
            if int(row) >= 5:  # ... which are recorded where they differ
                assert "public code" in c.paper.inferred["loss_public_code"]
            assert c.model.encoder_checkpoint.endswith("paper-pretrain-lira-lrs3/encoder.pt")
        if table == "II":
            pretext = row.split("-")[0]
            assert c.model.encoder_checkpoint.endswith(f"pretrain-{pretext}-lrs3/encoder.pt")
            assert _weights(c.loss.arousal) == (1, 0, 0, 0)  # item 1: w_ccc = 1, not 0.5/.25/.25
            if pretext != "lira":
                assert "loss" in c.paper.inferred
        if (table, row) == ("I", "scratch"):
            assert c.model.encoder_checkpoint is None and _weights(c.loss.valence) == (1, 0, 0, 0)
            assert "loss" in c.paper.inferred


def test_paper_configs_reproduce_the_public_code(runs):
    head = [r for r in runs if r.overlay == "i_ss_vaerr"]
    assert len(head) == 1
    for r in runs:  # every run, the extra frozen-front-end ones included
        c, inferred = r.cfg, r.cfg.paper.inferred
        # its 4 s clip at a hard-coded 50 fps; batch norm of frozen parts in train mode
        assert c.train.clip_frames == 200 and c.train.clip_frames_at(c.video.fps) == 200
        assert c.train.frozen_batchnorm == "train"
        assert {"augment", "clip_frames", "frozen_batchnorm"} <= set(inferred)
        if r is not head[0]:  # no augmentation: the code's default (flip only with --augment)
            assert all(getattr(c.augment, k) == 0 for k in AUGMENT_P), r.overlay
            assert "none" in inferred["augment"]
    h = head[0].cfg  # the SEWA headline: the code's own augmentations, a stated guess
    assert (h.augment.hflip_p, h.augment.crop_p, h.augment.crop_size) == (0.5, 1, 80)
    assert not h.augment.crop_resize and h.augment.time_out_p == 0.2 and h.augment.fill == 107
    assert h.augment.time_mask_p == h.augment.cutout_p == 0
    assert "guess" in h.paper.inferred["augment"] and "loss" in h.paper.inferred
    # outside the paper configs vaerr keeps its own defaults
    assert (TrainConfig().frozen_batchnorm, TrainConfig().clip_frames) == ("eval", None)
    assert TrainConfig(clip_seconds=4).clip_frames_at(25) == 100
    # the extra config outside the tables
    extra = [r for r in runs if r.overlay == "lira_frozen_frontend"]
    assert len(extra) == 2 and all(r.cfg.model.finetune == "frozen_frontend" for r in extra)
    assert all(not r.cells for r in extra)


def test_every_printed_cell_has_its_figure(runs):
    text = method_md().read_text()
    printed = printed_tables(text)
    figures = [k for k, c in printed.items() if c != "-"]
    # 55 printed figures: Table I 16 cells less 5 '-' (11: 6 ours + 5 cited), II 12, III 32
    assert len(figures) == 55
    assert [sum(k[0] == t for k in figures) for t in ("I", "II", "III")] == [11, 12, 32]
    cited = yaml.safe_load(CITED.read_text())["rows"]
    assert len(cited) == 5 and all(r["table"] == "I" for r in cited)
    assert mismatches(text, runs, cited) == []
    have = figures_of(runs, cited)
    assert len(have) == 55 and all(None not in f for f in have.values())  # 0 null
    # RECOLA LiRA frozen: one config, printed twice with different figures, each its own
    index = cell_index(runs)
    (two,) = index[("II", "lira-frozen", "recola")]
    assert index[("III", "1", "recola-frozen")] == [two]
    got = {k: (c.arousal, c.valence) for k, c in two.cells_by_key.items()}
    assert got == {("II", "lira-frozen", "recola"): (0.602, 0.532),
                   ("III", "1", "recola-frozen"): (0.560, 0.603)}  # fmt: skip
    assert "disagrees" in two.cells_by_key[("II", "lira-frozen", "recola")].note


@pytest.mark.parametrize(
    ("old", "new", "cell"),
    [
        ("| LiRA | 0.652 / 0.722 | 0.678 / 0.737 | 0.602 / 0.532 |",
         "| LiRA | 0.652 / 0.722 | 0.678 / 0.737 | 0.612 / 0.532 |", "lira-frozen', 'recola"),
        ("| 0.701 / 0.741 | 0.669 / 0.655 |", "| 0.701 / 0.741 | 0.669 / 0.656 |",
         "'7', 'recola-finetuned"),
        ("| TS-SATCN (ref. [3]) | - | 0.659 / 0.690 |",
         "| TS-SATCN (ref. [3]) | - | 0.659 / 0.691 |", "TS-SATCN"),
    ],
)  # fmt: skip
def test_a_changed_figure_in_method_md_fails_the_check(runs, old, new, cell):
    text = method_md().read_text()
    assert text.count(old) == 1
    cited = yaml.safe_load(CITED.read_text())["rows"]
    bad = mismatches(text.replace(old, new), runs, cited)
    assert len(bad) == 1 and cell in bad[0]


@pytest.mark.parametrize(
    ("table", "planned", "cited"), [("I", 6, 5), ("II", 12, 0), ("III", 32, 0)]
)
def test_dry_run_plans_each_table_and_places_encoders_under_out(tmp_path, table, planned, cited):
    lines: list[str] = []
    out = tmp_path / "out"
    summary = run_paper(table, str(out), dry_run=True, echo=lines.append)
    assert (summary["planned"], summary["cited"]) == (planned, cited)
    assert sum(line.startswith("cited") for line in lines) == cited
    needs = [line for line in lines if line.startswith("needs-encoder")]
    assert len(needs) == planned - 2 * (table == "I")  # Table I's scratch rows need none
    runs = out.resolve() / "runs"
    assert all(f"missing encoder {runs}/paper-pretrain-" in line for line in needs)
    assert all(f"--set pretrain.output={runs}/" in line for line in needs)
    assert not out.exists()  # a dry run writes nothing


def test_several_config_files_merge_in_order(tmp_path):
    base = PAPER_ROOT / "sewa" / "base.yaml"
    row = PAPER_ROOT / "sewa" / "iii_04_ccc_ce_mse_frozen.yaml"
    c = load_config([base, row])
    assert c.model.finetune == "frozen_encoder" and c.data.dataset == "sewa"  # row over base
    assert c.paper.cells[0].key == ("III", "4", "sewa-frozen")
    alone = load_config(row)  # the overlay alone lacks the base's data
    assert alone.data.dataset == "generic"
    (tmp_path / "late.yaml").write_text("model:\n  finetune: full\n")
    assert load_config([base, row, tmp_path / "late.yaml"]).model.finetune == "full"
    from jobs.cli import build_parser

    args = build_parser().parse_args(["finetune", "--config", str(base), str(row), "--local"])
    assert args.config == [str(base), str(row)]
    # commands with positionals: --config repeated (a list would swallow the inputs)
    args = build_parser().parse_args(
        [
            "infer",
            "--config",
            "a.yaml",
            "v.mp4",
            "--config",
            "b.yaml",
            "-o",
            "o",
            "--checkpoint",
            "c",
        ]
    )
    assert args.config == ["a.yaml", "b.yaml"] and args.inputs == ["v.mp4"]
    # a config without `paper:` stays valid; a malformed cell is an error naming the field
    assert load_config(REPO / "jobs" / "configs" / "synthetic.yaml").paper is None
    bad = "paper:\n  cells:\n  - {table: III, row: '9', column: sewa}\n"
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(ValueError, match="paper"):
        load_config(tmp_path / "bad.yaml")
