"""Every `vaerr` command on a table of bad inputs, in-process through `jobs.cli.main(argv)`: no
traceback anywhere (stdout, stderr, logs), the right exit code, and one error line.

The table is derived from jobs/cli.py COMMAND_MODULES: every command needs a BASE argv (a
command line that parses); each command taking `--set` then gets the CONFIG_ROWS (hostile
configs) for free, and ROWS add cases of its own. A command added later without a BASE entry
fails `test_every_command_has_rows`. Adding a command is one line in BASE:
    "paper": lambda c: ["paper", "--output", c.new_dir],
and a case is one line in ROWS:
    Row("paper", "output under a file", lambda c: ["paper", "--output", c.under_file], 2),
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from s3fs import S3FileSystem

from jobs.cli import build_parser, main
from pipeline.ids import video_id
from schemas.tables import TIMELINES
from tests.conftest import face_overrides
from tests.test_query import write_job_output

BOMB_LINES = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")
]
BOMB_YAML = "\n".join(BOMB_LINES) + "\n"
"""Ten lines of nested aliases: 9**9 (387 million) leaves once expanded."""
BOMB_FLOW = "[&a [x,x,x,x,x,x,x,x,x], " + ", ".join(
    f"&{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefg", "bcdefgh")
) + "]"  # fmt: skip


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def c(tmp_path_factory, tiny_checkpoint) -> SimpleNamespace:
    """The hostile inputs, made once for the module."""
    root = tmp_path_factory.mktemp("hostile")
    plain = root / "plain.txt"
    plain.write_text("not a folder\n")
    bomb = root / "bomb.yaml"
    bomb.write_text(BOMB_YAML)
    out = write_job_output(root / "out")
    (out / "run.json").write_text("{}")
    empty = root / "empty_out"  # a job's OUT where no video had a face
    (empty / "videos").mkdir(parents=True)
    (empty / "run.json").write_text("{}")
    manifests = {}
    for name, values, kind in (
        ("nulls", [None, None, None], pa.string()),
        ("mixed", [None, "a.mp4"], pa.string()),
        ("ints", [1, 2], pa.int64()),
    ):
        manifests[name] = root / f"manifest_{name}.parquet"
        pq.write_table(pa.table({"uri": pa.array(values, kind)}), manifests[name])
    pickled = root / "pickled.pth"
    torch.save({"when": datetime.datetime(2020, 1, 1)}, pickled)  # not a plain tensor dict
    dead = f"http://127.0.0.1:{closed_port()}"
    s3_video = "s3://bucket/talk.mp4"
    s3_rows = root / "s3_timelines" / "timelines"
    s3_rows.mkdir(parents=True)
    t = pq.read_table(next((out / "timelines").glob("*.parquet")))
    t = t.set_column(0, "video_id", pa.array([video_id(s3_video)] * t.num_rows))
    t = t.set_column(1, "uri", pa.array([s3_video] * t.num_rows))
    pq.write_table(t.cast(TIMELINES), s3_rows / "x.parquet")
    return SimpleNamespace(
        root=root,
        file=str(plain),
        under_file=str(plain / "out"),
        bomb=str(bomb),
        out=str(out),
        timelines_file=str(next((out / "timelines").glob("*.parquet"))),
        empty_out=str(empty),
        manifest=manifests,
        pickled=str(pickled),
        ckpt=tiny_checkpoint,
        missing=str(root / "missing.mp4"),
        new_dir=str(root / "new"),
        png=str(root / "p.png"),
        s3_video=s3_video,
        s3_timelines=str(s3_rows.parent),
        dead=["--set", f"storage.endpoint_url={dead}", "--set", "storage.retry_s=0"],
        faces=[x for o in face_overrides() for x in ("--set", o)],
    )


Argv = Callable[[SimpleNamespace], list[str]]

BASE: dict[str, Argv] = {
    "infer": lambda c: ["infer", c.missing, "-o", c.new_dir, "--checkpoint", c.ckpt],
    "verify": lambda c: ["verify", c.out],
    "query": lambda c: ["query", "sql", c.out, "SELECT 1"],
    "plot": lambda c: ["plot", c.out, "-o", c.png],
    "render": lambda c: ["render", c.missing, c.out, "-o", c.new_dir + "/r.mp4"],
    "faces": lambda c: ["faces", c.missing, "-o", c.new_dir],
    "model": lambda c: ["model", "info", c.ckpt],
    "demo": lambda c: ["demo", "--output", c.new_dir],
    "submit": lambda c: ["submit", "infer", "--no-wait"],
    "preprocess": lambda c: ["preprocess", "--local"],
    "pretrain": lambda c: ["pretrain", "--local"],
    "finetune": lambda c: ["finetune", "--local"],
    "evaluate": lambda c: ["evaluate", "--checkpoint", c.ckpt],
    "paper": lambda c: ["paper", "III", "--dry-run", "--out", c.new_dir],
    "report": lambda c: ["report", c.out, "--output", c.new_dir + "/r.html"],
}
"""A command line per command that parses (what it would do with good config is not run)."""


@dataclass(frozen=True)
class Row:
    """One case: `argv(c)` must end with exit `code`, one error line and no traceback. With
    `no_credentials`, the AWS credentials are removed from the environment first."""

    command: str
    case: str
    argv: Argv
    code: int
    no_credentials: bool = False


CONFIG_ROWS: list[tuple[str, Callable[[SimpleNamespace], list[str]]]] = [
    ("config: nested-alias YAML bomb", lambda c: ["--config", c.bomb]),
    ("--set: nested-alias YAML bomb", lambda c: ["--set", f"emotion.angles={BOMB_FLOW}"]),
    ("--set: empty emotion.angles", lambda c: ["--set", "emotion.angles={}"]),
    ("--set: output_hz above the analysis rate", lambda c: ["--set", "infer.output_hz=1e9"]),
    ("--set: start after end", lambda c: ["--set", "video.start_s=5", "--set", "video.end_s=1"]),
    ("--set: retry_s infinite", lambda c: ["--set", "storage.retry_s=.inf"]),
    ("config: a folder", lambda c: ["--config", str(c.root)]),
]
"""Hostile configs every command with `--set` must refuse before any work (exit 2)."""

ROWS: list[Row] = [
    Row("infer", "S3 listing without credentials",
        lambda c: [*BASE["infer"](c)[:1], "s3://bucket/videos/", *BASE["infer"](c)[2:], *c.dead],
        2, no_credentials=True),
    Row("infer", "S3 endpoint unreachable",
        lambda c: [*BASE["infer"](c)[:1], "s3://bucket/videos/", *BASE["infer"](c)[2:], *c.dead],
        1),
    Row("infer", "output under a file",
        lambda c: ["infer", c.missing, "-o", c.under_file, "--checkpoint", c.ckpt], 2),
    Row("infer", "manifest uri all null",
        lambda c: ["infer", str(c.manifest["nulls"]), "-o", c.new_dir, "--checkpoint", c.ckpt],
        2),
    Row("infer", "manifest uri null and string",
        lambda c: ["infer", str(c.manifest["mixed"]), "-o", c.new_dir, "--checkpoint", c.ckpt],
        2),
    Row("infer", "manifest uri integers",
        lambda c: ["infer", str(c.manifest["ints"]), "-o", c.new_dir, "--checkpoint", c.ckpt], 2),
    Row("infer", "pickled checkpoint",
        lambda c: ["infer", c.missing, "-o", c.new_dir, "--checkpoint", c.pickled], 2),
    Row("verify", "OUT does not exist", lambda c: ["verify", c.new_dir + "/nothing"], 1),
    Row("query", "SQL ordinary error", lambda c: ["query", "sql", c.out, "SELECT nocol FROM t"], 2),
    Row("query", "SQL 300 nested subqueries",
        lambda c: ["query", "sql", c.out, "SELECT " + "(SELECT " * 300 + "1" + ")" * 300], 2),
    Row("query", "SQL over a table that is not timelines",
        lambda c: ["query", "sql", str(c.manifest["nulls"]), "SELECT 1"], 2),
    Row("query", "OUT without timelines is an empty result",
        lambda c: ["query", "happy", c.empty_out], 0),
    Row("query", "--output under a file",
        lambda c: ["query", "sql", c.out, "SELECT 1", "-o", c.under_file + ".csv"], 2),
    Row("plot", "--events a text file",
        lambda c: ["plot", c.out, "-o", c.png, "--video", "happy", "--events", c.file], 2),
    Row("plot", "--events a timelines table",
        lambda c: ["plot", c.out, "-o", c.png, "--video", "happy", "--events",
                   c.timelines_file], 2),  # fmt: skip
    Row("plot", "OUT without timelines", lambda c: ["plot", c.empty_out, "-o", c.png], 2),
    Row("plot", "output under a file", lambda c: ["plot", c.out, "-o", c.under_file + ".png"], 2),
    Row("render", "--scale 0", lambda c: [*BASE["render"](c), "--scale", "0"], 2),
    Row("render", "--scale huge", lambda c: [*BASE["render"](c), "--scale", "1e9"], 2),
    Row("render", "--crf out of range", lambda c: [*BASE["render"](c), "--crf", "99"], 2),
    Row("render", "S3 video during an outage",
        lambda c: ["render", c.s3_video, c.s3_timelines, "-o", c.new_dir + "/r.mp4", *c.dead], 1),
    Row("render", "output under a file",
        lambda c: ["render", c.missing, c.out, "-o", c.under_file + "/r.mp4"], 2),
    Row("faces", "S3 video during an outage",
        lambda c: ["faces", c.s3_video, "-o", c.new_dir + "/f", *c.faces, *c.dead], 1),
    Row("faces", "output under a file",
        lambda c: ["faces", c.missing, "-o", c.under_file, *c.faces], 2),
    Row("faces", "pickled detector weights",
        lambda c: ["faces", c.missing, "-o", c.new_dir + "/p", *c.faces,
                   "--set", f"faces.detector.weights={c.pickled}"], 2),  # fmt: skip
    Row("model", "pickled checkpoint", lambda c: ["model", "info", c.pickled], 2),
    Row("model", "missing checkpoint", lambda c: ["model", "info", c.missing], 2),
    Row("submit", "unknown job", lambda c: ["submit", "nosuchjob"], 2),
    Row("evaluate", "missing checkpoint", lambda c: ["evaluate", "--checkpoint", c.missing], 2),
    Row("paper", "unknown row", lambda c: [*BASE["paper"](c), "--rows", "99"], 2),
    Row("paper", "out under a file", lambda c: ["paper", "III", "--out", c.under_file], 2),
    Row("report", "OUT does not exist",
        lambda c: ["report", c.new_dir + "/nothing", "--output", c.new_dir + "/r.html"], 2),
    Row("report", "OUT without timelines",
        lambda c: ["report", c.empty_out, "--output", c.new_dir + "/e.html"], 0),
    Row("report", "output under a file",
        lambda c: ["report", c.out, "--output", c.under_file + "/r.html"], 2),
]  # fmt: skip
"""Cases of one command each."""


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Top-level command name -> its parser, from jobs/cli.py COMMAND_MODULES."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _takes_set(p: argparse.ArgumentParser) -> bool:
    """Whether a command (or every one of its subcommands) accepts `--set`."""
    if any("--set" in a.option_strings for a in p._actions):
        return True
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return bool(subs) and all(_takes_set(q) for q in subs[0].choices.values())


def all_rows() -> list[Row]:
    """CONFIG_ROWS for every command taking `--set`, then ROWS."""
    rows = []
    for name, p in _commands().items():
        if name in BASE and _takes_set(p):
            for case, extra in CONFIG_ROWS:
                rows.append(Row(name, case, lambda c, n=name, e=extra: [*BASE[n](c), *e(c)], 2))
    return rows + ROWS


def test_every_command_has_rows():
    """A command without a BASE line (so without rows) fails here: add one line to BASE."""
    missing = sorted(set(_commands()) - set(BASE))
    assert not missing, f"commands without hostile-input rows (add them to BASE): {missing}"
    assert {r.command for r in all_rows()} >= set(_commands()), "every command has a row"


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code or 0)


@pytest.mark.parametrize("row", all_rows(), ids=lambda r: f"{r.command}: {r.case}")
def test_hostile_input(row: Row, c, capsys, caplog, monkeypatch):
    if row.no_credentials:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(c.root / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(c.root / "none"))
    else:  # fake credentials, so storage rows reach the (dead) endpoint
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "hostile")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hostile-secret")
    S3FileSystem.clear_instance_cache()  # a cached client keeps the credentials it began with
    caplog.set_level(logging.INFO)
    code = _run(row.argv(c))
    out, err = capsys.readouterr()
    everything = "\n".join([out, err, caplog.text])
    assert "Traceback" not in everything, everything
    assert "weights_only=False" not in everything
    assert code == row.code, everything
    if code == 0:
        return
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    if errors:  # one line naming the command, or argparse's usage error
        assert len(errors) == 1, err
        assert errors[0].startswith(("vaerr", "usage:")) or "error: argument" in errors[0], err
    else:  # a per-input failure is a status record, the last stdout line
        record = json.loads(out.strip().splitlines()[-1])
        assert record.get("status") == "failed" or record.get("ok") is False, out
