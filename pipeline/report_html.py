"""The HTML of `vaerr report` (pipeline/report.py gathers the data): inline CSS and script,
the run summary, the episode tables and the per-video sections. Every value from the data
is escaped (`_e`); images are base64 PNGs in `data:` URIs."""

from __future__ import annotations

import base64
import html
import posixpath
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.plot import plot_timelines
from pipeline.status import FAILED, NO_FACE, OK
from schemas.config import EmotionConfig

if TYPE_CHECKING:
    from pipeline.report import ReportOptions

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1260px;
padding:0 16px 48px;color:#222}
h1{font-size:1.5em;margin:18px 0 4px} h2{margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fde2e1;border:1px solid #d62728;padding:8px 12px;margin:10px 0}
.note{color:#555;font-size:.9em} .kind-happy{color:#2ca02c} .kind-spike{color:#d62728}
section.video{border-top:2px solid #ccc;margin-top:28px}
img.timeline{max-width:100%;height:auto;display:block} img.still{height:60px;margin-right:4px}
video{max-width:640px;max-height:360px;background:#000;display:block;margin:6px 0}
code{background:#f4f4f4;padding:1px 4px}
"""

SCRIPT = """
document.querySelectorAll('a.seek').forEach(function (a) {
  a.addEventListener('click', function (ev) {
    ev.preventDefault();
    var v = document.getElementById(a.dataset.video);
    if (!v) { return; }
    v.currentTime = parseFloat(a.dataset.t);
    v.scrollIntoView({block: 'center'});
  });
});
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def fmt_time(seconds: float) -> str:
    """m:ss.s (h:mm:ss.s from an hour) for episode times."""
    s = max(0.0, float(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{sec:04.1f}" if h else f"{int(m)}:{sec:04.1f}"


def _png_img(png: bytes, cls: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{cls}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _name(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/")) or uri


def _summary_html(s: dict[str, Any], status: pa.Table, options: ReportOptions) -> str:
    rows = [
        ("videos", s["videos"]),
        ("ok", s[OK]),
        ("no_face", s[NO_FACE]),
        ("failed", s[FAILED]),
    ]
    counts = "".join(
        f'<tr><th>{k}</th><td class="n" data-count="{k}">{v}</td></tr>' for k, v in rows
    )
    fps = s["frames_per_s"]
    facts = [
        ("faces (tracks in ok videos)", f'<span data-count="faces">{s["faces"]}</span>'),
        (
            "hours of video",
            f'<span data-count="hours">{s["hours"]:.2f}</span> ({s["hours"] * 60:.1f} min)',
        ),  # fmt: skip
        ("frames analysed", f"{s['frames']:,}"),
        ("frames/s (last run)", "n/a" if fps is None else f"{fps:.1f}"),
        ("model", "<br>".join(f"<code>{_e(m)}</code>" for m in s["model_ids"]) or "n/a"),
        (
            "untrained",
            f'<span data-untrained="{str(s["untrained"]).lower()}">'
            f"{'yes' if s['untrained'] else 'no'}</span>",
        ),  # fmt: skip
        ("config hash", "<br>".join(f"<code>{_e(c)}</code>" for c in s["config_hashes"]) or "n/a"),
        ("run", f"{_e(s['started'] or '?')} to {_e(s['ended'] or '?')}"),
    ]
    facts_html = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    out = [
        '<h2 id="summary">Run summary</h2>',
        '<div style="display:flex;gap:32px;flex-wrap:wrap">',
        f'<table id="status-counts"><tr><th colspan=2>videos by status</th></tr>{counts}</table>',
        f'<table id="facts">{facts_html}</table></div>',
    ]
    if s["untrained"]:
        out.append(
            '<div class="warn">UNTRAINED model: these values are not predictions of emotion; '
            "the episodes below show the plumbing, not what happened.</div>"
        )
    bad = [r for r in status.to_pylist() if r["status"] != OK]
    if bad:
        bad.sort(key=lambda r: (r["status"] != FAILED, r["uri"]))
        shown = bad[: options.max_failed]
        body = "".join(
            f"<tr><td>{_e(r['status'])}</td><td>{_e(r['uri'])}</td><td>{_e(r['reason'])}</td></tr>"
            for r in shown
        )
        out.append(
            f'<h3>Videos not ok ({len(bad)})</h3><table id="not-ok"><tr><th>status</th>'
            f"<th>video</th><th>reason</th></tr>{body}</table>"
        )
        if len(bad) > len(shown):
            out.append(
                f'<p class="note">{len(bad) - len(shown)} more: every status row is in '
                "<code>OUT/videos/</code> (Parquet); <code>vaerr verify OUT</code> checks them."
                "</p>"
            )
    return "\n".join(out)


def _faces(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids)


def _seek_link(video_dom: str | None, t: float, label: str) -> str:
    if video_dom is None:
        return _e(label)
    attrs = f'href="#{video_dom}" class="seek" data-video="{video_dom}" data-t="{t:.3f}"'
    return f"<a {attrs}>{label}</a>"


def _events_html(
    events: pa.Table,
    kind: str,
    anchors: dict[str, str],
    players: dict[str, str],
    stills: dict[tuple[Any, int], bytes],
    options: ReportOptions,
    title: str,
) -> str:
    rows = [r for r in events.to_pylist() if r["kind"] == kind]
    rows.sort(key=lambda r: -r["score"])
    total = len(rows)
    rows = rows[: options.max_events]
    head = (
        "<tr><th>#</th><th>video</th><th>time</th><th>faces</th><th>peak arousal</th>"
        "<th>peak valence</th><th>score</th>" + ("<th>stills</th>" if options.stills else "")
    )
    body = []
    for i, r in enumerate(rows):
        vid = r["video_id"]
        name = _e(_name(r["uri"]))
        video = f'<a href="#{anchors[vid]}">{name}</a>' if vid in anchors else name
        span = f"{fmt_time(r['start_s'])}-{fmt_time(r['end_s'])}"
        when = _seek_link(players.get(vid), r["start_s"], span)
        cells = [
            f'<td class="n">{i + 1}</td>',
            f'<td title="{_e(r["uri"])}">{video}</td>',
            f"<td>{when}</td>",
            f"<td>{_faces(r['track_ids'])}</td>",
            f'<td class="n">{r["peak_arousal"]:.2f}</td>',
            f'<td class="n">{r["peak_valence"]:.2f}</td>',
            f'<td class="n">{r["score"]:.2f}</td>',
        ]
        if options.stills:
            imgs = "".join(
                _png_img(stills[(event_key(r), t)], "still", f"face {t} at the peak")
                for t in r["track_ids"]
                if (event_key(r), t) in stills
            )
            cells.append(f"<td>{imgs}</td>")
        body.append(
            f'<tr class="event" data-kind="{kind}" data-video-id="{_e(vid)}" '
            f'data-start="{r["start_s"]:.3f}" data-end="{r["end_s"]:.3f}" '
            f'data-tracks="{_faces(r["track_ids"])}">{"".join(cells)}</tr>'
        )
    note = (
        f'<p class="note">{total} found with <code>vaerr query</code>\'s defaults; the '
        f"{len(rows)} best shown."
    )
    if total > len(rows):
        note += " All of them: <code>vaerr query " + ("happy" if kind == "happy" else "spikes")
        note += " OUT --output all.csv</code>."
    note += "</p>"
    table = f'<table id="events-{kind}">{head}</tr>{"".join(body)}</table>' if rows else ""
    return f'<h2 id="{kind}">{title}</h2>{note}{table}'


def event_key(r: dict[str, Any]) -> tuple[str, str, float, tuple[int, ...]]:
    """The identity of an event row within one report."""
    return (r["video_id"], r["kind"], round(r["start_s"], 3), tuple(r["track_ids"]))


def video_html(
    vid: str,
    uri: str,
    rows: pa.Table,
    events: pa.Table,
    anchor: str,
    player: str | None,
    src: str | None,
    options: ReportOptions,
    emotion: EmotionConfig | None,
) -> str:
    ev = events.filter(pc.equal(events["video_id"], vid))
    png = plot_timelines(rows, ev, emotion=emotion, dpi=options.dpi, title=f"{_name(uri)}  ({vid})")
    tracks = len(pc.unique(rows["track_id"]))
    out = [
        f'<section class="video" id="{anchor}" data-video-id="{_e(vid)}">',
        f"<h3>{_e(_name(uri))}</h3>",
        f'<p class="note"><code>{_e(uri)}</code> &middot; {tracks} face track(s) &middot; '
        f"id <code>{_e(vid)}</code></p>",
        _png_img(png, "timeline", f"arousal and valence of {uri}"),
    ]
    if src is not None and player is not None:
        out.append(f'<video id="{player}" controls preload="metadata" src="{_e(src)}"></video>')
    elif src is None:
        out.append(
            '<p class="note">Not playable in a browser from this page (not a local or http(s) '
            "mp4/webm file): open the URI above at the times below, or "
            f"<code>vaerr render {_e(uri)} OUT --output {_e(vid)}.mp4</code>.</p>"
        )
    rows_ev = sorted(ev.to_pylist(), key=lambda r: r["start_s"])
    if rows_ev:
        items = []
        for r in rows_ev[: options.max_video_events]:
            span = f"{fmt_time(r['start_s'])}-{fmt_time(r['end_s'])}"
            link = _seek_link(player if src else None, r["start_s"], span)
            items.append(
                f'<li class="episode" data-kind="{r["kind"]}" data-start="{r["start_s"]:.3f}">'
                f'<span class="kind-{r["kind"]}">{r["kind"]}</span> {link} '
                f"faces {_faces(r['track_ids'])}, score {r['score']:.2f}</li>"
            )
        more = len(rows_ev) - len(items)
        if more > 0:
            items.append(f'<li class="note">{more} more (vaerr query ... --output)</li>')
        out.append(f"<ul>{''.join(items)}</ul>")
    else:
        out.append('<p class="note">No happy episode or spike found.</p>')
    out.append("</section>")
    return "\n".join(out)


def page_head(
    out: str,
    s: dict[str, Any],
    status: pa.Table,
    events: pa.Table,
    anchors: dict[str, str],
    players: dict[str, str],
    stills: dict[tuple[Any, int], bytes],
    options: ReportOptions,
) -> list[str]:
    """The page up to the per-video sections: head, run summary, top episodes, the Videos
    heading (`s`: summary_of's summary)."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>vaerr report: {_e(out)}</title><style>{CSS}</style></head><body>",
        f'<h1>vaerr report</h1><p class="note">job <code>{_e(out)}</code> &middot; written '
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} &middot; "
        '<a href="#summary">summary</a> &middot; <a href="#happy">happy</a> &middot; '
        '<a href="#spike">spikes</a> &middot; <a href="#videos">videos</a></p>',
        _summary_html(s, status, options),
        _events_html(events, "happy", anchors, players, stills, options, "Top happy episodes"),
        _events_html(events, "spike", anchors, players, stills, options, "Top distress spikes"),
        '<p class="note">A spike is a reaction seen on faces (a scare, a shout, a jump cut look '
        "the same); it says nothing about its cause.</p>",
        '<h2 id="videos">Videos</h2>',
    ]
