"""pipeline/outputs/plot.py, pipeline/outputs/render.py, `vaerr plot` and `vaerr render`: the
images and videos are decoded back and checked (size, frame count, where the dots are)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipeline.ids import video_id
from pipeline.outputs.events import find_happy, find_spikes
from pipeline.outputs.identity import source_version
from pipeline.outputs.plot import EVENT_COLORS, figure_size_px, plot_timelines
from pipeline.outputs.render import (
    annotations_for,
    inset_center,
    inset_rect,
    layout_for,
    output_size,
    place_insets,
    render_video,
    sample_track,
    track_series,
    truth_at,
    va_point,
)
from pipeline.video import VideoReader
from tests.conftest import asset
from tests.test_events import happy_video, make_timelines, spike_video

GRID = "videos/grid_bbaf2n.mpg"  # 360x288, 25 fps, 75 frames, one talking face
GRID_BOX = (110.0, 50.0, 250.0, 230.0)  # around the speaker's face, source pixels
PRED = (0.5, -0.5)  # (arousal, valence) planted: up and to the left of the centre
TRUTH = (-0.5, 0.6)  # down and to the right


def decode_png(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not a PNG"
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def shade_pixels(img: np.ndarray, hex_color: str, alpha: float = 0.22) -> int:
    """Pixels of the colour an episode's shading (alpha over white) gives."""
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], np.float64)
    want = alpha * rgb + (1 - alpha) * 255
    return int((np.abs(img.astype(np.float64) - want).max(axis=2) <= 3).sum())


def decode_all(path: Path) -> list[np.ndarray]:
    with VideoReader(str(path)) as r:
        return [f for c in r.chunks(r.info.src_fps) for f in c.frames]


def blob(img: np.ndarray, rect: tuple, kind: str) -> tuple[float, float, int]:
    """(x, y) centroid and pixel count of the red or green dot pixels inside rect."""
    x1, y1, x2, y2 = (int(round(c)) for c in rect)
    roi = img[max(y1, 0) : y2, max(x1, 0) : x2].astype(np.int32)
    r, g, b = roi[..., 0], roi[..., 1], roi[..., 2]
    if kind == "red":
        mask = (r > 170) & (g < 90) & (b < 90)
    else:
        mask = (g > 150) & (r < 120) & (b < 140)
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return float("nan"), float("nan"), 0
    return xs.mean() + max(x1, 0), ys.mean() + max(y1, 0), len(xs)


# --------------------------------------------------------------------------------------------
# Plot


def test_plot_png_size_and_episodes_shaded(tmp_path: Path):
    tl = happy_video()
    events = find_happy(tl)
    png = plot_timelines(tl, events, output=str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes() == png
    img = decode_png(png)
    w, h = figure_size_px(3)
    assert img.shape == (h, w, 3)
    assert shade_pixels(img, EVENT_COLORS["happy"]) > 2000
    # Without episodes, no shading of that colour anywhere.
    assert shade_pixels(decode_png(plot_timelines(tl)), EVENT_COLORS["happy"]) == 0
    # Spikes get their own colour.
    st = spike_video()
    assert shade_pixels(decode_png(plot_timelines(st, find_spikes(st))), EVENT_COLORS["spike"]) > 50


def test_plot_refuses_several_videos():
    both = pa.concat_tables([happy_video(), spike_video()])
    with pytest.raises(ValueError, match="one video"):
        plot_timelines(both)


def test_cli_plot(tmp_path: Path, capsys):
    out = tmp_path / "out" / "timelines"
    out.mkdir(parents=True)
    pq.write_table(happy_video(), out / "happy.parquet")
    pq.write_table(spike_video(), out / "spikes.parquet")
    png = tmp_path / "spikes.png"
    assert main(["plot", str(tmp_path / "out"), "--video", "spikes.mp4", "-o", str(png)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["video_id"] == "spikes" and record["tracks"] == 3 and record["events"] == 3
    w, h = figure_size_px(3)
    assert decode_png(png.read_bytes()).shape == (h, w, 3)
    # Episodes from a file written by `vaerr query ... -o` instead of the defaults.
    events = tmp_path / "events.parquet"
    assert (
        main(["query", "spikes", str(tmp_path / "out"), "--min-faces", "2", "-o", str(events)]) == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "plot",
                str(tmp_path / "out"),
                "--video",
                "spikes",
                "-o",
                str(png),
                "--events",
                str(events),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["events"] == 1
    # Several videos and no --video: one clear error, exit 2.
    assert main(["plot", str(tmp_path / "out"), "-o", str(png)]) == 2
    assert "--video" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Render: geometry


def test_output_size_is_even_and_never_smaller():
    assert output_size(360, 288) == (676, 540)  # scaled so the short side is 540
    assert output_size(1920, 1080) == (1920, 1080)
    assert output_size(360, 288, 1.0) == (360, 288)
    assert all(x % 2 == 0 for x in output_size(361, 287, 1.0))


def test_va_point_axes():
    assert va_point((100, 100), 50, 1.0, 0.0) == (100, 50)  # arousal up
    assert va_point((100, 100), 50, 0.0, -1.0) == (50, 100)  # negative valence left
    assert va_point((100, 100), 50, -3.0, 3.0) == (150, 150)  # clipped to the circle's square


def test_insets_avoid_faces_and_each_other():
    lay = layout_for(1280, 720)
    boxes = [np.array([100.0, 200, 300, 450]), np.array([700.0, 200, 900, 450])]
    placed = place_insets(boxes, lay, 1280, 720)
    rects = [inset_rect(c, lay) for c, _ in placed]
    for r in rects:
        assert r[0] >= 0 and r[1] >= 0 and r[2] <= 1280 and r[3] <= 720
        for b in boxes:  # no inset covers a face
            assert min(r[2], b[2]) <= max(r[0], b[0]) or min(r[3], b[3]) <= max(r[1], b[1])
    a, b = rects
    assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])
    # A face at the right edge gets its inset on the left; the previous place is kept.
    edge = [np.array([1100.0, 200, 1270, 400])]
    (c, place) = place_insets(edge, lay, 1280, 720)[0]
    assert place[0] == "left" and c[0] < 1100
    assert place_insets(edge, lay, 1280, 720, [("below", "centre")])[0][1] == ("below", "centre")


def test_track_visibility_and_interpolation():
    t = np.r_[np.arange(0, 10) / 10, np.arange(20, 30) / 10]  # a 1 s gap in the rows
    tl = make_timelines(
        [dict(video_id="v", track_id=4, time_s=t, arousal=t / 10, valence=-t / 10, box=GRID_BOX)]
    )
    [s] = track_series(tl)
    a, v, box = sample_track(s, 0.45)
    assert a == pytest.approx(0.045, abs=1e-6) and v == pytest.approx(-0.045, abs=1e-6)
    assert np.allclose(box, GRID_BOX)
    assert sample_track(s, 0.94) is not None  # within half a step after the last row
    assert sample_track(s, 1.5) is None  # inside the gap
    assert sample_track(s, 3.0) is None  # after the track


def test_annotations_match_by_file_name_and_face():
    ann = pa.table(
        {
            "video": ["clip.mp4"] * 4 + ["other.mp4"],
            "time_s": [0.0, 1.0, 0.0, 1.0, 0.0],
            "arousal": [0.0, 1.0, -0.5, -0.5, 0.9],
            "valence": [0.2, 0.2, 0.1, 0.1, 0.9],
            "face": [0, 0, 1, 1, 0],
        }
    )
    gts = annotations_for(ann, "abc", "s3://b/videos/clip.mp4")
    assert sorted(g.face for g in gts) == [0, 1]
    assert truth_at(gts, 0, 0.5) == pytest.approx((0.5, 0.2))
    assert truth_at(gts, 1, 0.5) == pytest.approx((-0.5, 0.1))
    assert truth_at(gts, 7, 0.5) is None  # no rows for that face
    assert truth_at(gts, 0, 5.0) is None  # outside the annotated span
    no_face = annotations_for(ann.drop_columns(["face"]).slice(0, 2), "abc", "clip.mp4")
    assert truth_at(no_face, 7, 1.0) == pytest.approx((1.0, 0.2))  # every face
    assert annotations_for(ann, "abc", "s3://b/videos/nothing.mp4") == []


# --------------------------------------------------------------------------------------------
# Render: real clip, decoded back


def grid_timelines(uri: str, until_s: float = 2.0) -> pa.Table:
    """Track 0 on the GRID clip from 0 to `until_s`, constant PRED values."""
    t = np.arange(int(round(until_s * 10)) + 1) / 10
    a, v = np.full(len(t), PRED[0]), np.full(len(t), PRED[1])
    return make_timelines(
        [
            dict(
                video_id=video_id(uri),
                uri=uri,
                track_id=0,
                time_s=t,
                arousal=a,
                valence=v,
                box=GRID_BOX,
            )
        ]  # fmt: skip
    )


def test_render_grid_dots_where_the_values_put_them(tmp_path: Path):
    clip = str(asset(GRID))
    ann = pa.table(
        {
            "video": ["grid_bbaf2n.mpg"] * 2,
            "time_s": [0.0, 3.0],
            "arousal": [TRUTH[0]] * 2,
            "valence": [TRUTH[1]] * 2,
        }
    )
    out = tmp_path / "grid.mp4"
    info = render_video(clip, grid_timelines(clip), str(out), annotations=ann)
    assert info["frames"] == 75 and info["truth"] and info["tracks"] == 1
    frames = decode_all(out)
    w, h = output_size(360, 288)
    assert len(frames) == 75
    assert frames[0].shape == (h, w, 3) == (info["height"], info["width"], 3)

    lay = layout_for(w, h)
    box = np.array(GRID_BOX) * np.array([w / 360, h / 288, w / 360, h / 288])
    center = inset_center(box, lay, w, h)
    reach = lay.radius + lay.dot + 2  # the circle (the green truth text is outside it)
    rect = (center[0] - reach, center[1] - reach, center[0] + reach, center[1] + reach)
    red = va_point(center, lay.radius, *PRED)
    green = va_point(center, lay.radius, *TRUTH)
    for i in (0, 25, 50):  # t = 0, 1, 2 s: the track is on screen
        x, y, n = blob(frames[i], rect, "red")
        assert n >= 20, f"frame {i}: no red dot"
        assert abs(x - red[0]) <= 1.5 and abs(y - red[1]) <= 1.5, (i, (x, y), red)
        gx, gy, gn = blob(frames[i], rect, "green")
        assert gn >= 20 and abs(gx - green[0]) <= 1.5 and abs(gy - green[1]) <= 1.5
    # Up-left of the centre for arousal +0.5, valence -0.5.
    assert red[0] < center[0] and red[1] < center[1]
    # After the track ends (2.0 s + half a step), no inset and no dot.
    assert blob(frames[60], rect, "red")[2] == 0


def write_grid_status(out: Path, uri: str, storage=None, **kw) -> None:
    """OUT/videos/<id>.parquet of the GRID clip at `uri` (3 s, its current source version)."""
    from tests.test_report import status_row, write_status

    row = status_row(video_id(uri), uri, tracks=1, duration_s=3.0, frames=75)
    row["source_etag"] = source_version(uri, storage)
    row.update(kw)
    write_status(out, [row])


def test_cli_render_blurs_faces_and_reports(tmp_path: Path, capsys):
    clip = str(asset(GRID))
    tl = tmp_path / "out" / "timelines"
    tl.mkdir(parents=True)
    pq.write_table(grid_timelines(clip, until_s=3.0), tl / "grid.parquet")
    write_grid_status(tmp_path / "out", clip)
    sharp, blurred = tmp_path / "sharp.mp4", tmp_path / "blurred.mp4"
    base = ["render", clip, str(tmp_path / "out"), "--scale", "1"]
    assert main(base + ["-o", str(sharp)]) == 0
    assert main(base + ["-o", str(blurred), "--blur-faces"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["status"] == "ok" and record["reason"] is None
    assert (record["frames"], record["width"], record["height"]) == (75, 360, 288)
    assert record["video_id"] == video_id(clip) and record["tracks"] == 1

    x1, y1, x2, y2 = (int(c) + d for c, d in zip(GRID_BOX, (8, 8, -8, -8)))  # inside the box

    def detail(path: Path) -> float:
        img = decode_all(path)[30][y1:y2, x1:x2]
        return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())

    assert detail(blurred) < 0.1 * detail(sharp)


def test_cli_render_errors(tmp_path: Path, capsys):
    out = tmp_path / "out" / "timelines"
    out.mkdir(parents=True)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    pq.write_table(grid_timelines(str(bad)), out / "bad.parquet")
    # Timelines found, video undecodable: a failed status record, exit 1.
    assert main(["render", str(bad), str(tmp_path / "out"), "-o", str(tmp_path / "x.mp4")]) == 1
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["status"] == "failed" and record["reason"]
    assert not (tmp_path / "x.mp4").exists()
    # No rows for the video: one clear error, exit 2.
    rc = main(["render", "/nope/clip.mp4", str(tmp_path / "out"), "-o", str(tmp_path / "y.mp4")])
    assert rc == 2
    assert "no timeline rows" in capsys.readouterr().err


def test_render_from_and_to_s3(s3_server: str, s3_bucket: str, tmp_path: Path, capsys):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.put(str(asset(GRID)), f"{s3_bucket}/videos/grid_bbaf2n.mpg")
    uri = f"s3://{s3_bucket}/videos/grid_bbaf2n.mpg"
    with fs.open(f"{s3_bucket}/out/timelines/grid.parquet", "wb") as f:
        pq.write_table(grid_timelines(uri), f)
    dest = f"s3://{s3_bucket}/renders/grid.mp4"
    rc = main(
        ["render", uri, f"s3://{s3_bucket}/out", "-o", dest, "--scale", "1"]
        + ["--set", f"storage.endpoint_url={s3_server}"]
    )
    assert rc == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["status"] == "ok" and record["video_id"] == video_id(uri)
    local = tmp_path / "grid.mp4"
    fs.get(f"{s3_bucket}/renders/grid.mp4", str(local))
    frames = decode_all(local)
    assert len(frames) == 75 and frames[0].shape == (288, 360, 3)


def test_a_failed_render_leaves_no_file(tmp_path: Path):
    clip = str(asset(GRID))
    t = np.arange(10, 21) / 10  # the face appears at 1 s, with a box that cannot be drawn
    bad = make_timelines(
        [
            dict(
                video_id="grid",
                uri=clip,
                track_id=0,
                time_s=t,
                arousal=t * 0,
                valence=t * 0,
                box=(np.nan, 0.0, 10.0, 10.0),
            )
        ]
    )
    with pytest.raises(ValueError):
        render_video(clip, bad, str(tmp_path / "half.mp4"), scale=1.0)
    assert list(tmp_path.iterdir()) == []  # neither the video nor its temporary file
