"""Issue 23 part B (and two items of issue 22): the outputs a person looks at.

* `$` in a file name is text, never mathtext: `vaerr plot` and `vaerr report` draw it as given.
* `vaerr report` escapes every value from OUT for its context (text, attribute, URL, id):
  hostile values planted in every column it reads run nothing in a real Chromium.
* The episode tables say how many faces took part and, separately, which track ids.
* A model trained on synthetic faces only is said as plainly as `untrained`.
* `vaerr render` finds a video's rows by its id and source version, never by file name alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.text import Text

from jobs.cli import main
from pipeline.ids import video_id
from pipeline.plot import plot_timelines, timeline_figure
from tests.test_events import happy_video, make_timelines

DOLLAR_NAMES = ["$\\foo$.mp4", "$$.mp4", "$_$.mp4", "price $^$.mp4", "a$b $\\frac{1}{0}$.mov"]


def renamed(table: pa.Table, name: str) -> pa.Table:
    """`table` (one video) as if its source were s3://bucket/videos/NAME (id from that URI)."""
    uri = f"s3://bucket/videos/{name}"
    n = table.num_rows
    table = table.set_column(0, "video_id", pa.array([video_id(uri)] * n))
    return table.set_column(1, "uri", pa.array([uri] * n))


# --------------------------------------------------------------------------------------------
# Finding 4: `$` in names is drawn as text


@pytest.mark.parametrize("name", DOLLAR_NAMES)
def test_plot_draws_dollar_names_as_text(name: str, tmp_path: Path, capsys):
    table = renamed(happy_video(), name)
    words = table["emotion"].to_pylist()
    table = table.set_column(7, "emotion", pa.array([f"{w}$^" for w in words]))  # hostile words
    fig = timeline_figure(table)
    texts = [t for t in fig.findobj(Text) if t.get_text()]
    assert all(not t.get_parse_math() and not t.get_usetex() for t in texts)
    assert any(name in t.get_text() for t in texts)  # the title holds the name as given
    assert plot_timelines(table)[:8] == b"\x89PNG\r\n\x1a\n"
    # The CLI: exit 0 and a PNG, not a usage error.
    tl = tmp_path / "out" / "timelines"
    tl.mkdir(parents=True)
    pq.write_table(table, tl / "v.parquet")
    png = tmp_path / "p.png"
    assert main(["plot", str(tmp_path / "out"), "--video", name, "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
