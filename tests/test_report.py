"""pipeline/outputs/report.py and `vaerr report`: the self-contained HTML page of a job.

Without a browser: the page of a job with planted episodes (counts, episodes, images, no
network reference), the cap on a 10,000-video job, a report on S3. With Debian's Chromium
driven by Playwright (skipped with the reason when either is missing): the page of a real
`vaerr infer` run on an H.264 clip plus planted timelines, checked as a person would see it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipeline.ids import video_id
from pipeline.outputs.events import find_happy, find_spikes
from pipeline.outputs.identity import source_version
from pipeline.outputs.report import JobData, ReportOptions, build_report, face_still, video_src
from schemas.tables import VIDEOS
from tests.conftest import asset, face_overrides
from tests.test_events import (
    HAPPY_PLANTED,
    SPIKE_PLANTED,
    happy_video,
    make_timelines,
    ramp,
    spike_video,
)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"


def status_row(vid: str, uri: str, status: str = "ok", **kw) -> dict:
    row = {
        "video_id": vid,
        "uri": uri,
        "status": status,
        "reason": kw.get("reason"),
        "duration_s": kw.get("duration_s", 60.0),
        "fps": 25.0,
        "frames": kw.get("frames", 1500),
        "tracks": kw.get("tracks", 3 if status == "ok" else 0),
        "processing_s": 1.0,
        "model_id": "ssvaerr_tiny-test",
        "config_hash": "cafe1234",
        "source_etag": None,
        "warnings": None,
    }
    return row


def write_status(out: Path, rows: list[dict]) -> None:
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for r in rows:
        dest = out / "videos" / f"{r['video_id']}.parquet"
        pq.write_table(pa.Table.from_pylist([r], VIDEOS), dest)


def planted_job(out: Path) -> Path:
    """OUT with the events tests' happy and spike videos, one no_face and one failed video."""
    (out / "timelines").mkdir(parents=True)
    rows = []
    for table in (happy_video(), spike_video()):
        vid = table["video_id"][0].as_py()
        pq.write_table(table, out / "timelines" / f"{vid}.parquet")
        rows.append(status_row(vid, table["uri"][0].as_py()))
    rows.append(status_row("sky", "s3://bucket/videos/sky.mp4", "no_face"))
    rows.append(status_row("bad", "s3://bucket/videos/bad.mp4", "failed", reason="empty file"))
    write_status(out, rows)
    run = {"frames_per_s": 42.5, "model_id": "ssvaerr_tiny-test", "untrained": False}
    (out / "run.json").write_text(json.dumps(run))
    return out


class Page(HTMLParser):
    """The parts of the page the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, str] = {}
        self.events: list[dict[str, str]] = []
        self.images: list[str] = []
        self.sections: list[str] = []
        self.refs: list[str] = []
        self._count: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if "data-count" in a:
            self._count = a["data-count"]
        if tag == "tr" and a.get("class") == "event":
            self.events.append(a)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "section":
            self.sections.append(a.get("data-video-id", ""))
        for k in ("src", "href"):
            if k in a and tag != "img":
                self.refs.append(a[k])

    def handle_data(self, data: str) -> None:
        if self._count is not None:
            self.counts[self._count] = data.strip()
            self._count = None


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    return p


def test_report_of_a_planted_job(tmp_path: Path, capsys):
    out = planted_job(tmp_path / "out")
    report = tmp_path / "r" / "report.html"
    assert main(["report", str(out), "--output", str(report)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    text = report.read_text()
    page = parse(text)
    assert page.counts == {
        "videos": "4", "ok": "2", "no_face": "1", "failed": "1", "faces": "6", "hours": "0.07"
    }  # fmt: skip
    both = pa.concat_tables([happy_video(), spike_video()])
    assert summary["happy"] == find_happy(both).num_rows  # vaerr query's detectors
    assert summary["spikes"] == find_spikes(both).num_rows == len(SPIKE_PLANTED)
    happy = sorted((e["data-tracks"], float(e["data-start"])) for e in page.events
                   if e["data-kind"] == "happy" and e["data-video-id"] == "happy")  # fmt: skip
    assert happy == sorted((str(ids[0]), s) for ids, s, _ in HAPPY_PLANTED)
    spikes = sorted(float(e["data-start"]) for e in page.events if e["data-kind"] == "spike")
    assert np.allclose(spikes, [s for _, s, _ in SPIKE_PLANTED], atol=0.11)
    # One figure per video with timelines, all inline PNG; nothing fetched from anywhere.
    assert sorted(page.sections) == ["happy", "spikes"]
    assert len(page.images) == 2
    assert all(i.startswith("data:image/png;base64,") for i in page.images)
    assert not [r for r in page.refs if re.match(r"(https?:)?//", r)]
    assert "empty file" in text  # the failure reason
    assert "<video" not in text  # s3:// sources: URI and times, no player
    assert "s3://bucket/videos/spikes.mp4" in text


def test_video_sources():
    assert video_src("/data/a.mp4", "/data/reports/r.html") == "../a.mp4"
    assert video_src("/data/a b.mp4", None) == "file:///data/a%20b.mp4"
    assert video_src("https://h/x.webm?sig=1", "/r.html") == "https://h/x.webm?sig=1"
    assert video_src("s3://bucket/a.mp4", "/r.html") is None
    assert video_src("/data/grid.mpg", "/r.html") is None  # MPEG-1: no browser plays it


def test_a_job_of_10000_videos_gives_a_small_page():
    """Status rows for 10,000 videos, 2,000 of them with timelines (30 s, 10 Hz) and one
    planted happy episode each: the page stays under 5 MB and shows the cap."""
    n, n_tl = 10_000, 2_000
    t = np.arange(300) / 10.0
    tracks = []
    for i in range(n_tl):
        on = ((t >= 5) & (t < 5 + 3 + (i % 50) / 10)).astype(float)
        tracks.append(dict(video_id=f"v{i:05d}", track_id=0, time_s=t,
                           arousal=0.4 * on, valence=0.6 * on))  # fmt: skip
    timelines = make_timelines(tracks)
    status = pa.Table.from_pylist(
        [status_row(f"v{i:05d}", f"s3://bucket/videos/v{i:05d}.mp4", tracks=1) for i in range(n_tl)]
        + [status_row(f"f{i:05d}", f"s3://bucket/videos/f{i:05d}.mp4", "failed",
                      reason="no decodable video frames") for i in range(n_tl, n)],
        VIDEOS,
    )  # fmt: skip
    t0 = time.perf_counter()
    text, facts = build_report(JobData(status, timelines, {}), "s3://bucket/out", ReportOptions())
    took = time.perf_counter() - t0
    size = len(text.encode())
    assert facts["happy"] == n_tl and facts["videos_shown"] == 40
    assert size < 5_000_000, size
    page = parse(text)
    assert len(page.sections) == 40 and len(page.events) == 25
    assert page.counts["failed"] == "8000" and text.count("no decodable video frames") == 200
    # The best-scoring episodes (the longest: i % 50 == 49) come first.
    assert all(int(s[1:]) % 50 == 49 for s in page.sections[:40])
    assert "40 of 2000 videos" in text
    print(f"10,000-video report: {size / 1e6:.2f} MB in {took:.1f} s")


def test_report_on_s3(s3_server: str, s3_bucket: str, tmp_path: Path, capsys):
    import fsspec

    local = planted_job(tmp_path / "out")
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_server})
    fs.put(str(local) + "/", f"{s3_bucket}/out/", recursive=True)
    uri = f"s3://{s3_bucket}/out"
    assert main(["report", uri, "--output", f"{uri}/report.html"]) == 0
    text = fs.cat(f"{s3_bucket}/out/report.html").decode()
    assert parse(text).counts["videos"] == "4"


def test_face_stills_blurred_on_request(tmp_path: Path):
    import cv2

    clip = tmp_path / "speaker.mp4"
    h264_clip(asset("videos/grid_bbaf2n.mpg"), clip, loops=1)
    box = [120.0, 40.0, 240.0, 190.0]  # the speaker's face in the 360x288 GRID frame
    sharp, blurred = (face_still(str(clip), 1.0, box, blur) for blur in (False, True))
    imgs = [
        cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE) for b in (sharp, blurred)
    ]
    assert imgs[0].shape == imgs[1].shape and imgs[0].shape[0] == 80
    h, w = imgs[0].shape
    centre = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))  # inside the face box
    detail = [cv2.Laplacian(i, cv2.CV_64F)[centre].var() for i in imgs]
    assert detail[1] < 0.2 * detail[0], detail
    assert face_still(str(clip), 1.0, None, False) is None


# --------------------------------------------------------------------------------------------
# In a real browser


def find_chromium() -> str | None:
    """The Chromium executable: $VAERR_CHROMIUM, else Debian's package (`chromium`)."""
    env = os.environ.get("VAERR_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for p in ("/usr/lib/chromium/chromium",):  # the binary behind Debian's wrapper script
        if Path(p).exists():
            return p
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def chromium_and_playwright() -> tuple[str, object]:
    """(Chromium executable, playwright's sync_playwright), or the test is skipped saying
    which is missing (no browser is ever downloaded)."""
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set VAERR_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; no browser download)")
    return exe, sync_playwright


def h264_clip(src: Path, dest: Path, loops: int = 4) -> float:
    """Transcode a (MPEG-1) clip to H.264 MP4, played `loops` times over; returns seconds."""
    from pipeline.encode import write_video
    from pipeline.video import VideoReader

    with VideoReader(str(src)) as r:
        frames = np.concatenate([c.frames for c in r.chunks(25.0)])
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    frames = frames[:, :h, :w]
    write_video(str(dest), (f for _ in range(loops) for f in frames), 25.0, crf=28)
    return loops * len(frames) / 25.0


@pytest.mark.slow
def test_report_in_chromium(tmp_path: Path, tiny_checkpoint: str, capsys):
    exe, sync_playwright = chromium_and_playwright()
    grid = asset("videos/grid_bbaf2n.mpg")
    clips = tmp_path / "clips"
    clips.mkdir()
    h264_clip(grid, clips / "speaker.mp4", loops=1)
    (clips / "broken.mp4").write_bytes(b"")  # a failed row with its reason
    out = tmp_path / "out"
    overrides = [f"--set={o}" for o in face_overrides()] + [f"--set=cache_dir={tmp_path / 'c'}"]
    args = ["infer", str(clips), "--output", str(out), "--checkpoint", tiny_checkpoint, "--local"]
    assert main([*args, *overrides]) == 0
    err = capsys.readouterr().err  # progress on the terminal (plain lines: not a TTY here)
    assert re.search(r"infer: 2/2 videos, [\d,]+/[\d,]+ frames, [\d.]+ frames/s, done in", err)

    # A second, longer H.264 video whose timelines are planted: two faces, a happy episode on
    # face 0 and a distress spike on face 1, written where `vaerr infer` writes its own.
    planted = clips / "planted.mp4"
    duration = h264_clip(grid, planted, loops=4)
    uri = str(planted)
    vid = video_id(uri)
    t = np.arange(int(duration * 10)) / 10.0
    happy = ((t >= 2.0) & (t < 6.0)).astype(float)
    spike = ramp(t, 8.0, 8.5, 11.0)
    table = make_timelines(
        [
            dict(video_id=vid, uri=uri, track_id=0, time_s=t, arousal=0.4 * happy,
                 valence=0.6 * happy),
            dict(video_id=vid, uri=uri, track_id=1, time_s=t, arousal=0.8 * spike,
                 valence=-0.5 * spike),
        ]
    )  # fmt: skip
    pq.write_table(table, out / "timelines" / f"{vid}.parquet")
    row = status_row(vid, uri, tracks=2, duration_s=duration)
    write_status(out, [{**row, "source_etag": source_version(uri)}])  # stills need the version

    report = tmp_path / "report" / "report.html"
    assert main(["report", str(out), "--output", str(report), "--stills"]) == 0
    facts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    status = pq.read_table(out / "videos").to_pylist()
    expect = {s: sum(r["status"] == s for r in status) for s in ("ok", "no_face", "failed")}
    assert expect["failed"] == 1 and expect["ok"] == 2

    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            counts = {
                k: int(page.locator(f'#status-counts [data-count="{k}"]').inner_text())
                for k in ("videos", "ok", "no_face", "failed")
            }
            assert counts == {"videos": len(status), **expect}
            # Every figure is there and decoded (naturalWidth > 0), one per video with timelines.
            widths = page.eval_on_selector_all(
                "img.timeline", "els => els.map(e => e.naturalWidth)"
            )
            assert len(widths) == facts["videos_shown"] == 2 and min(widths) > 0
            stills = page.eval_on_selector_all("img.still", "els => els.map(e => e.naturalWidth)")
            assert len(stills) == 2 and min(stills) > 0  # one face in each planted episode
            happy = page.locator(f'#events-happy tr.event[data-video-id="{vid}"]')
            assert happy.count() == 1 and float(happy.get_attribute("data-start")) == pytest.approx(
                2.0, abs=0.11
            )
            spikes = page.locator(f'#events-spike tr.event[data-video-id="{vid}"]')
            assert spikes.count() == 1
            spike_start = float(spikes.get_attribute("data-start"))
            assert spike_start == pytest.approx(8.0, abs=0.11)
            # The planted episode's link seeks the video to its start.
            section = f'section[data-video-id="{vid}"]'  # element ids are video-N, player-N
            player = f"{section} video"
            page.wait_for_function(
                f"document.querySelector('{player}').readyState >= 1", timeout=20_000
            )
            link = page.locator(f'{section} li.episode[data-kind="spike"] a.seek')
            link.click()
            page.wait_for_function(
                f"Math.abs(document.querySelector('{player}').currentTime - {spike_start}) < 0.05",
                timeout=10_000,
            )
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
