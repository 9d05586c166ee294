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
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.text import Text

from jobs.cli import main
from pipeline.ids import video_id
from pipeline.outputs.plot import plot_timelines, timeline_figure
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


@pytest.mark.parametrize("name", DOLLAR_NAMES[:3])
def test_report_of_a_job_with_dollar_names(name: str, tmp_path: Path, capsys):
    from tests.test_report import status_row, write_status

    out = tmp_path / "out"
    (out / "timelines").mkdir(parents=True)
    table = renamed(happy_video(), name)
    vid = table["video_id"][0].as_py()
    pq.write_table(table, out / "timelines" / f"{vid}.parquet")
    write_status(out, [status_row(vid, table["uri"][0].as_py())])
    report = tmp_path / "r.html"
    assert main(["report", str(out), "--output", str(report)]) == 0
    text = report.read_text()
    assert text.count('<img class="timeline"') == 1 and f"<h3>{name}</h3>" in text


# --------------------------------------------------------------------------------------------
# Finding 5: every value from OUT is escaped for its context; ids never come from OUT

PAYLOADS = {
    "script": '"><script>window.__pwned=1</script>',
    "attribute": 'x\' onmouseover=\'window.__pwned=1\' " onfocus="window.__pwned=1" autofocus x="',
    "markup": "</code></td></tr></table><img src=x onerror=window.__pwned=1><svg onload=alert(1)>",
}


def hostile_job(out: Path, bad: str, hostile_fps: bool = False) -> dict[str, str]:
    """OUT whose every column the report reads holds `bad`: two videos with episodes (ids,
    uris, emotion words, model ids: hostile; one a local mp4 so it gets a player), a failed
    row (status, reason) and a run.json of hostile strings (frames_per_s too with
    `hostile_fps`: a string where a number belongs). Returns {video_id: uri}."""
    from tests.test_events import spike_video
    from tests.test_report import status_row

    (out / "timelines").mkdir(parents=True)
    uris = {}
    rows = []
    for i, (table, uri) in enumerate(
        [
            (happy_video(), f"{out.parent}/clips/{bad}.mp4"),  # a local file: a <video> src
            (spike_video(), f"javascript:window.__pwned=1//{bad}.mp4"),  # a URL that is no URL
        ]
    ):
        vid = f"{bad}{i}"
        n = table.num_rows
        table = table.set_column(0, "video_id", pa.array([vid] * n))
        table = table.set_column(1, "uri", pa.array([uri] * n))
        table = table.set_column(7, "emotion", pa.array([bad] * n))
        table = table.set_column(11, "model_id", pa.array([bad] * n))
        pq.write_table(table, out / "timelines" / f"v{i}.parquet")
        row = status_row(vid, uri)
        row.update(model_id=bad, config_hash=bad, source_etag=bad, warnings=bad)
        rows.append(row)
        uris[vid] = uri
    rows.append(status_row(f"{bad}f", f"s3://b/{bad}.mp4", "failed", reason=bad))
    rows.append(status_row(f"{bad}g", f"s3://b/{bad}g.mp4", bad, reason=bad))  # status: bad
    write_rows(out, rows)
    run = {
        "frames_per_s": bad if hostile_fps else 1.5,
        "model_id": bad,
        "started": bad,
        "ended": bad,
        "untrained": bad,
    }
    (out / "run.json").write_text(json.dumps(run))
    return uris


def write_rows(out: Path, rows: list[dict]) -> None:
    """Status rows, one file each, named by position (ids may be anything)."""
    from schemas.tables import VIDEOS

    (out / "videos").mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        pq.write_table(pa.Table.from_pylist([r], VIDEOS), out / "videos" / f"s{i}.parquet")


def static_checks(text: str, bad: str) -> None:
    """Without a browser: one script element (ours), no event-handler attribute, no
    javascript: URL, every id attribute ours (video-N, player-N, fixed names)."""
    from html.parser import HTMLParser

    found: dict[str, list] = {"script": [], "on": [], "ids": [], "urls": []}

    class P(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag == "script":
                found["script"].append(tag)
            for k, v in attrs:
                if k.startswith("on"):
                    found["on"].append((tag, k))
                if k == "id":
                    found["ids"].append(v)
                if k in ("href", "src") and v and not v.startswith(("#", "data:")):
                    found["urls"].append(v)

    P().feed(text)
    assert len(found["script"]) == 1 and found["on"] == []
    assert all(re.fullmatch(r"(video|player)-\d+|[a-z-]+", i) for i in found["ids"]), found["ids"]
    assert all(not u.lower().startswith("javascript:") for u in found["urls"]), found["urls"]


@pytest.mark.parametrize(
    "kind, hostile_fps", [("script", False), ("attribute", False), ("markup", True)]
)
def test_report_escapes_every_value_from_out(kind: str, hostile_fps: bool, tmp_path: Path, capsys):
    bad = PAYLOADS[kind]
    out = tmp_path / "out"
    uris = hostile_job(out, bad, hostile_fps)
    report = tmp_path / "report.html"
    assert main(["report", str(out), "--output", str(report)]) == 0
    facts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert facts["videos_shown"] == 2 and facts["happy"] > 0 and facts["spikes"] > 0
    text = report.read_text()
    static_checks(text, bad)
    in_browser(report, bad, uris)


def in_browser(report: Path, bad: str, uris: dict[str, str]) -> None:
    """Open the page in Chromium: nothing the payload wrote runs (no dialog, no global, no
    page error) and the page renders (counts, both figures decoded, the payload shown as text)."""
    from tests.test_report import chromium_and_playwright

    exe, sync_playwright = chromium_and_playwright()
    dialogs: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            for link in page.locator("a").all():  # every link, seek links included
                link.click()
            page.mouse.move(300, 300)
            page.wait_for_timeout(200)
            assert page.evaluate("typeof window.__pwned") == "undefined"
            assert page.locator("script").count() == 1
            counts = page.locator("#status-counts [data-count]").all_inner_texts()
            assert counts == ["4", "2", "0", "1"]  # videos, ok, no_face, failed
            widths = page.eval_on_selector_all(
                "img.timeline", "els => els.map(e => e.naturalWidth)"
            )
            assert len(widths) == 2 and min(widths) > 0
            shown = page.eval_on_selector_all(
                "section.video", "els => els.map(e => e.dataset.videoId)"
            )
            assert sorted(shown) == sorted(uris)  # the ids, intact, as data
            body = page.inner_text("body")
            assert bad.strip() in body  # shown as text, not run as markup
            assert page.locator("video").count() == 1  # the local mp4; javascript: gets none
        finally:
            browser.close()
    assert dialogs == [] and errors == []


# --------------------------------------------------------------------------------------------
# Issue 22: faces counted apart from track ids; synthetic training said plainly


def test_episode_tables_count_faces_apart_from_track_ids(tmp_path: Path):
    from pipeline.outputs.report import build_report, load_job
    from tests.test_report import planted_job

    out = planted_job(tmp_path / "out")
    text, _ = build_report(load_job(str(out)), str(out))
    head = text[text.index('<table id="events-spike">') :]
    head = head[: head.index("</tr>")]
    assert "<th>faces</th><th>track ids</th>" in head.replace("\n", "")
    rows = re.findall(
        r'<tr class="event" data-kind="(\w+)"[^>]*data-faces="(\d+)" data-tracks="([\d, ]+)">'
        r'.*?<td class="n">(\d+)</td><td>([\d, ]+)</td>',
        text,
        re.S,
    )
    assert rows and {k for k, *_ in rows} == {"happy", "spike"}
    for _, faces, tracks, faces_cell, tracks_cell in rows:
        ids = [int(x) for x in tracks.split(",")]
        assert int(faces) == int(faces_cell) == len(ids) and tracks_cell == tracks
    # A spike on faces 0 and 1 reads "2 faces", and face 0 alone "1 face (track ids 0)".
    assert ("2", "0, 1") in {(f, t) for _, f, t, _, _ in rows}
    items = re.sub(r"\s+", " ", text)
    assert "2 faces (track ids 0, 1)" in items and "1 face (track ids 0)" in items
    assert "faces 0," not in items


def with_training_data(table: pa.Table, value: str | None | int) -> pa.Table:
    """The status table with `training_data` set to `value` on every row, or without the
    column at all for -1 (a file written before the column existed)."""
    if "training_data" in table.column_names:
        table = table.drop_columns(["training_data"])
    if value == -1:
        return table
    return table.append_column("training_data", pa.array([value] * table.num_rows, pa.string()))


SYNTHETIC_CASES = {
    # training_data of the status rows (None: the column is absent, an older OUT)
    "one synthetic among others": (["synthetic", None, "real"], True),
    "all synthetic": (["synthetic", "synthetic", "synthetic"], True),
    "first file lacks the column": ([-1, "synthetic", None], True),
    "not recorded": ([None, None, None], False),
    "older OUT without the column": ([-1, -1, -1], False),
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC_CASES))
def test_report_says_synthetic_training_plainly(case: str, tmp_path: Path, capsys):
    from pipeline.outputs.caveats import SYNTHETIC_NOTE
    from tests.test_report import planted_job

    values, expect = SYNTHETIC_CASES[case]
    out = planted_job(tmp_path / "out")
    for f, value in zip(sorted((out / "videos").iterdir()), values):
        pq.write_table(with_training_data(pq.read_table(f), value), f)
    report = tmp_path / "r.html"
    assert main(["report", str(out), "--output", str(report)]) == 0
    text = report.read_text()
    assert ('id="synthetic-warning"' in text) == expect
    assert (SYNTHETIC_NOTE in text.lower()) == expect


# --------------------------------------------------------------------------------------------
# Finding 3: render draws a video's own rows, by id and source version, never by name alone


def render_job(
    tmp_path: Path, status: dict | None = None, until_s: float = 3.0
) -> tuple[str, Path]:
    """The GRID clip analysed at clips/a/grid_bbaf2n.mpg: its timelines (one face, 0..until_s)
    and status row (the clip's current version; keys of `status` replace the row's, a
    `training_data` key is written as that column). Returns (uri, OUT)."""
    import shutil

    from pipeline.outputs.identity import source_version
    from schemas.tables import VIDEOS
    from tests.conftest import asset
    from tests.test_render import grid_timelines
    from tests.test_report import status_row

    clip = tmp_path / "clips" / "a" / "grid_bbaf2n.mpg"
    clip.parent.mkdir(parents=True)
    shutil.copy(asset("videos/grid_bbaf2n.mpg"), clip)
    uri = str(clip)
    out = tmp_path / "out"
    (out / "timelines").mkdir(parents=True)
    (out / "videos").mkdir()
    pq.write_table(grid_timelines(uri, until_s), out / "timelines" / f"{video_id(uri)}.parquet")
    row = status_row(video_id(uri), uri, tracks=1, duration_s=3.0, frames=75)
    row["source_etag"] = source_version(uri)
    extra = dict(status or {})
    training = extra.pop("training_data", -1)
    row.update(extra)
    table = with_training_data(pa.Table.from_pylist([row], VIDEOS), training)
    pq.write_table(table, out / "videos" / f"{video_id(uri)}.parquet")
    return uri, out


def frame_detail(path: Path, index: int, rect: tuple[int, int, int, int]) -> float:
    """Laplacian variance (edges) of frame `index` inside rect (x1, y1, x2, y2)."""
    import cv2

    from tests.test_render import decode_all

    x1, y1, x2, y2 = rect
    img = decode_all(path)[index][y1:y2, x1:x2]
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def another_video(path: Path) -> str:
    """A different video (an empty grey sky, 1 s) at `path`."""
    from pipeline.encode import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = (np.full((288, 360, 3), 170, np.uint8) for _ in range(25))
    write_video(str(path), frames, 25.0, container_format="mp4")
    return str(path)


@pytest.mark.parametrize("blur", [False, True], ids=["plain", "blur-faces"])
@pytest.mark.parametrize("where", ["OUT", "OUT/timelines"])
def test_render_refuses_a_match_by_file_name_alone(blur: bool, where: str, tmp_path, capsys):
    uri, out = render_job(tmp_path)
    sky = another_video(tmp_path / "clips" / "b" / "grid_bbaf2n.mpg")  # same name, other video
    timelines = str(out if where == "OUT" else out / "timelines")
    dest = tmp_path / "r.mp4"
    args = ["render", sky, timelines, "-o", str(dest), "--scale", "1"]
    assert main(args + (["--blur-faces"] if blur else [])) == 2
    err = capsys.readouterr().err
    assert sky in err and uri in err and f"--video-id {video_id(uri)}" in err  # names both
    assert not dest.exists()


@pytest.mark.parametrize("blur", [False, True], ids=["plain", "blur-faces"])
def test_render_refuses_a_source_changed_since_the_job(blur: bool, tmp_path: Path, capsys):
    uri, out = render_job(tmp_path, {"source_etag": "123-456.0"})  # not the file's version now
    dest = tmp_path / "r.mp4"
    args = ["render", uri, str(out), "-o", str(dest)] + (["--blur-faces"] if blur else [])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "changed since the job analysed it" in err and "123-456.0" in err
    assert not dest.exists()


@pytest.mark.parametrize("named", ["id", "uri"])
def test_blur_faces_fails_closed_on_a_named_copy(named: str, tmp_path: Path, capsys):
    """A copy named with --video-id renders, its face blurred; frames past the analysed span
    (here 1 s of the 3 s clip) are blurred whole; without a status row, --blur-faces refuses."""
    import shutil

    from tests.test_render import GRID_BOX

    uri, out = render_job(tmp_path, {"duration_s": 1.0})
    copy = tmp_path / "elsewhere" / "copy.mpg"
    copy.parent.mkdir()
    shutil.copy(uri, copy)
    dest = tmp_path / "r.mp4"
    name = video_id(uri) if named == "id" else uri
    base = ["render", str(copy), str(out), "-o", str(dest), "--scale", "1", "--video-id", name]
    assert main(base + ["--blur-faces"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["video_id"] == video_id(uri) and record["frames"] == 75
    face = tuple(int(c) + d for c, d in zip(GRID_BOX, (8, 8, -8, -8)))
    background = (0, 200, 100, 288)  # left of the speaker: no box there
    sharp = tmp_path / "sharp.mp4"
    assert main(["render", str(copy), str(out), "-o", str(sharp), "--scale", "1",
                 "--video-id", name]) == 0  # fmt: skip
    assert frame_detail(dest, 12, face) < 0.1 * frame_detail(sharp, 12, face)  # inside 1 s
    assert frame_detail(dest, 12, background) > 0.5 * frame_detail(sharp, 12, background)
    assert frame_detail(dest, 50, background) < 0.1 * frame_detail(sharp, 50, background)
    # No status row: the analysed span is unknown, so --blur-faces refuses.
    (out / "videos" / f"{video_id(uri)}.parquet").unlink()
    capsys.readouterr()
    assert main(base[:3] + ["-o", str(tmp_path / "x.mp4")] + base[5:] + ["--blur-faces"]) == 2
    assert "--blur-faces" in capsys.readouterr().err


@pytest.mark.parametrize("training, shown", [("synthetic", True), (None, False), ("real", False)])
def test_render_caption_says_synthetic_training(training, shown: bool, tmp_path: Path, capsys):
    from pipeline.outputs.caveats import SYNTHETIC_NOTE

    uri, out = render_job(tmp_path, {"training_data": training})
    dest = tmp_path / "r.mp4"
    assert main(["render", uri, str(out), "-o", str(dest), "--fps", "5"]) == 0  # 540 lines
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["notes"] == ([SYNTHETIC_NOTE] if shown else [])
    from tests.test_render import decode_all

    top = decode_all(dest)[0][:30, :500].astype(int)  # the caption's corner
    red = top[..., 0] - np.maximum(top[..., 1], top[..., 2]) > 60
    assert (red.sum() > 100) == shown


@pytest.mark.parametrize("blur", [False, True], ids=["plain", "blur-faces"])
@pytest.mark.parametrize("changed", [False, True], ids=["same-source", "changed-source"])
def test_report_stills_only_from_the_analysed_version(blur, changed, tmp_path: Path, capsys):
    """A still is cut from the source at a row's box: only while the source is the version the
    job analysed (a replaced file would put the box, and the blur, beside the face)."""
    from tests.test_render import GRID_BOX

    uri, out = render_job(tmp_path, {"source_etag": "1-2.0"} if changed else None)
    t = np.arange(31) / 10
    face = dict(video_id=video_id(uri), uri=uri, track_id=0, time_s=t, box=GRID_BOX)
    happy = make_timelines([{**face, "arousal": t * 0 + 0.4, "valence": t * 0 + 0.6}])
    pq.write_table(happy, out / "timelines" / f"{video_id(uri)}.parquet")
    report = tmp_path / "r.html"
    args = ["report", str(out), "-o", str(report), "--stills"] + (["--blur-faces"] if blur else [])
    assert main(args) == 0
    text = report.read_text()
    assert text.count('class="event"') == 1
    assert text.count('class="still"') == (0 if changed else 1)
