"""The HTML of `vaerr report` (pipeline/outputs/report.py gathers the data): inline CSS and script,
the run summary, the episode tables and the per-video sections.

Built with Jinja2 templates (below, as strings) with autoescape on: every value from OUT (a
shared bucket: untrusted) reaches the page through `{{ }}` and is escaped for HTML text and
quoted attributes. Element ids never come from OUT: a video's section and player are
`video-N` / `player-N` by its place on the page (`dom_ids`); its id is only ever an escaped
`data-video-id` value. URLs (a `<video>` src) pass `safe_url` (http, https, file or a relative
path, else no player). Images are base64 PNGs in `data:` URIs made here.
"""

from __future__ import annotations

import base64
import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jinja2
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.outputs.caveats import SYNTHETIC_NOTE
from pipeline.outputs.plot import plot_timelines
from pipeline.status import FAILED, NO_FACE, OK
from pipeline.storage import protocol
from schemas.config import EmotionConfig


@dataclass(frozen=True)
class ReportOptions:
    """What goes into the page and the caps that keep it small (see the module doc)."""

    max_videos: int = 40
    max_events: int = 25
    max_failed: int = 200
    max_video_events: int = 30
    max_bytes: int = 4_500_000  # stop adding video sections past this page size
    stills: bool = False
    blur_faces: bool = False
    dpi: int = 72


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

MACROS = """
{%- macro seek(player, t, label) -%}
{%- if player -%}
<a href="#{{ player }}" class="seek" data-video="{{ player }}"
 data-t="{{ '%.3f' % t }}">{{ label }}</a>
{%- else %}{{ label }}{% endif -%}
{%- endmacro -%}
"""

HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>vaerr report: {{ out }}</title><style>{{ css | safe }}</style></head><body>
<h1>vaerr report</h1><p class="note">job <code>{{ out }}</code> &middot; written {{ written }}
&middot; <a href="#summary">summary</a> &middot; <a href="#happy">happy</a> &middot;
<a href="#spike">spikes</a> &middot; <a href="#videos">videos</a></p>
"""

SUMMARY = """<h2 id="summary">Run summary</h2>
<div style="display:flex;gap:32px;flex-wrap:wrap">
<table id="status-counts"><tr><th colspan=2>videos by status</th></tr>
{%- for k, v in counts %}<tr><th>{{ k }}</th><td class="n" data-count="{{ k }}">{{ v }}</td></tr>
{%- endfor %}</table>
<table id="facts">
<tr><th>faces (tracks in ok videos)</th><td><span data-count="faces">{{ s.faces }}</span></td></tr>
<tr><th>hours of video</th><td><span data-count="hours">{{ '%.2f' % s.hours }}</span>
 ({{ '%.1f' % (s.hours * 60) }} min)</td></tr>
<tr><th>frames analysed</th><td>{{ '{:,}'.format(s.frames) }}</td></tr>
<tr><th>frames/s (last run)</th><td>{{ 'n/a' if fps is none else '%.1f' % fps }}</td></tr>
<tr><th>model</th><td>{% for m in s.model_ids %}<code>{{ m }}</code>{% if not loop.last %}<br>
{%- endif %}{% else %}n/a{% endfor %}</td></tr>
<tr><th>untrained</th><td><span data-untrained="{{ 'true' if s.untrained else 'false' }}">
{{- 'yes' if s.untrained else 'no' }}</span></td></tr>
<tr><th>training data</th><td data-training-data="{{ s.training_data | join(',') }}">
{{- s.training_data | join(', ') or 'not recorded' }}</td></tr>
<tr><th>config hash</th><td>{% for c in s.config_hashes %}<code>{{ c }}</code>
{%- if not loop.last %}<br>{% endif %}{% else %}n/a{% endfor %}</td></tr>
<tr><th>run</th><td>{{ s.started or '?' }} to {{ s.ended or '?' }}</td></tr>
</table></div>
{% if s.untrained %}<div class="warn" id="untrained-warning">UNTRAINED model: these values are
not predictions of emotion; the episodes below show the plumbing, not what happened.</div>
{% endif %}{% if s.synthetic_only %}<div class="warn" id="synthetic-warning">{{ synthetic }}:
these values say how the model reads rendered faces, not people.</div>
{% endif %}{% if bad %}<h3>Videos not ok ({{ n_bad }})</h3><table id="not-ok"><tr><th>status</th>
<th>video</th><th>reason</th></tr>
{%- for r in bad %}<tr><td>{{ r.status }}</td><td>{{ r.uri }}</td><td>{{ r.reason }}</td></tr>
{%- endfor %}</table>
{% if n_bad > bad | length %}<p class="note">{{ n_bad - bad | length }} more: every status row is
in <code>OUT/videos/</code> (Parquet); <code>vaerr verify OUT</code> checks them.</p>{% endif %}
{% endif %}"""

EVENTS = (
    MACROS
    + """<h2 id="{{ kind }}">{{ title }}</h2><p class="note">{{ total }} found with
<code>vaerr query</code>'s defaults; the {{ rows | length }} best shown.
{%- if total > rows | length %} All of them: <code>vaerr query {{ command }} OUT --output
all.csv</code>.{% endif %}</p>
{% if rows %}<table id="events-{{ kind }}"><tr><th>#</th><th>video</th><th>time</th>
<th>faces</th><th>track ids</th><th>peak arousal</th><th>peak valence</th><th>score</th>
{%- if stills %}<th>stills</th>{% endif %}</tr>
{% for r in rows %}<tr class="event" data-kind="{{ kind }}" data-video-id="{{ r.video_id }}"
 data-start="{{ '%.3f' % r.start_s }}" data-end="{{ '%.3f' % r.end_s }}"
 data-faces="{{ r.track_ids | length }}" data-tracks="{{ r.track_ids | join(', ') }}">
<td class="n">{{ loop.index }}</td><td title="{{ r.uri }}">
{%- if r.anchor %}<a href="#{{ r.anchor }}">{{ r.name }}</a>{% else %}{{ r.name }}{% endif %}</td>
<td>{{ seek(r.player, r.start_s, r.span) }}</td>
<td class="n">{{ r.track_ids | length }}</td><td>{{ r.track_ids | join(', ') }}</td>
<td class="n">{{ '%.2f' % r.peak_arousal }}</td><td class="n">{{ '%.2f' % r.peak_valence }}</td>
<td class="n">{{ '%.2f' % r.score }}</td>
{%- if stills %}<td>{% for src, alt in r.stills %}<img class="still" alt="{{ alt }}"
 src="{{ src }}">{% endfor %}</td>{% endif %}</tr>
{% endfor %}</table>{% endif %}"""
)

VIDEO = (
    MACROS
    + """<section class="video" id="{{ anchor }}" data-video-id="{{ vid }}">
<h3>{{ name }}</h3>
<p class="note"><code>{{ uri }}</code> &middot; {{ tracks }} face track(s) &middot; id
<code>{{ vid }}</code></p>
<img class="timeline" alt="arousal and valence of {{ uri }}" src="{{ png }}">
{% if src is not none and player %}<video id="{{ player }}" controls preload="metadata"
 src="{{ src }}"></video>
{% elif src is none %}<p class="note">Not playable in a browser from this page (not a local or
http(s) mp4/webm file): open the URI above at the times below, or <code>vaerr render {{ uri }}
OUT --output {{ vid }}.mp4</code>.</p>
{% endif %}{% if episodes %}<ul>{% for r in episodes %}<li class="episode" data-kind="{{ r.kind }}"
 data-start="{{ '%.3f' % r.start_s }}" data-faces="{{ r.track_ids | length }}"><span
 class="kind-{{ r.kind }}">{{ r.kind }}</span> {{ seek(player, r.start_s, r.span) }}
 {{ r.track_ids | length }} face{{ '' if r.track_ids | length == 1 else 's' }} (track ids
 {{ r.track_ids | join(', ') }}), score {{ '%.2f' % r.score }}</li>{% endfor %}
{%- if more > 0 %}<li class="note">{{ more }} more (vaerr query ... --output)</li>{% endif %}
</ul>{% else %}<p class="note">No happy episode or spike found.</p>{% endif %}
</section>"""
)

ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
TEMPLATES = {k: ENV.from_string(v) for k, v in (("head", HEAD), ("summary", SUMMARY),
             ("events", EVENTS), ("video", VIDEO))}  # fmt: skip
TEXT_TEMPLATES = {
    "cap": '<p class="note" id="video-cap">{{ shown }} of {{ total }} videos with timelines shown '
    "(at most {{ cap }}: those with the best-scoring episodes first). Any other: <code>vaerr plot "
    "OUT --video NAME --output NAME.png</code>; all episodes: <code>vaerr query happy|spikes OUT "
    "--output all.csv</code>.</p>",
    "limit": '<p class="note">Page size limit reached: {{ left }} more video sections left out '
    "(use <code>vaerr plot</code>).</p>",
    "tail": "<script>{{ script | safe }}</script></body></html>",
}
TEMPLATES.update({k: ENV.from_string(v) for k, v in TEXT_TEMPLATES.items()})


def render(template: str, **values: Any) -> str:
    """One of `TEMPLATES` filled with `values`, each escaped by autoescape (only our own CSS
    and script, constants of this module, go in unescaped: `| safe`)."""
    return TEMPLATES[template].render(**values)


def dom_ids(videos: list[str]) -> dict[str, int]:
    """Each video id's place on the page: its section is `video-N`, its player `player-N`.
    Element ids never carry a value from OUT."""
    return {vid: i for i, vid in enumerate(videos)}


def safe_url(url: str | None) -> str | None:
    """`url` when a browser may load it as a media source (http, https, file, or a relative
    path without a scheme), else None: never `javascript:`, `data:` or another scheme."""
    if url is None:
        return None
    return url if protocol(url).lower() in ("http", "https", "file") else None


def fmt_time(seconds: float) -> str:
    """m:ss.s (h:mm:ss.s from an hour) for episode times."""
    s = max(0.0, float(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{int(h)}:{int(m):02d}:{sec:04.1f}" if h else f"{int(m)}:{sec:04.1f}"


def png_src(png: bytes) -> str:
    """A `data:` URI of PNG bytes (base64: letters, digits, +/=, nothing to escape)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _name(uri: str) -> str:
    return posixpath.basename(str(uri).rstrip("/")) or str(uri)


def _number(x: Any) -> float | None:
    """A run.json number as a float, None when it is not one (run.json is untrusted too)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def summary_html(s: dict[str, Any], status: pa.Table, options: ReportOptions) -> str:
    """The run summary: counts, facts, the untrained / synthetic warnings, rows not ok."""
    bad = [r for r in status.to_pylist() if r["status"] != OK]
    bad.sort(key=lambda r: (r["status"] != FAILED, str(r["uri"])))
    counts = [("videos", s["videos"]), ("ok", s[OK]), ("no_face", s[NO_FACE]),
              ("failed", s[FAILED])]  # fmt: skip
    return render(
        "summary",
        s=s,
        counts=counts,
        fps=_number(s["frames_per_s"]),
        bad=bad[: options.max_failed],
        n_bad=len(bad),
        synthetic=SYNTHETIC_NOTE[0].upper() + SYNTHETIC_NOTE[1:],
    )


def _event_row(
    r: dict[str, Any], ids: dict[str, int], players: set[str], stills: dict, with_stills: bool
) -> dict[str, Any]:
    vid = r["video_id"]
    shots = []
    if with_stills:
        shots = [(png_src(stills[(event_key(r), t)]), f"face {t} at the peak")
                 for t in r["track_ids"] if (event_key(r), t) in stills]  # fmt: skip
    return {
        **r,
        "name": _name(r["uri"]),
        "anchor": f"video-{ids[vid]}" if vid in ids else None,
        "player": f"player-{ids[vid]}" if vid in players else None,
        "span": f"{fmt_time(r['start_s'])}-{fmt_time(r['end_s'])}",
        "stills": shots,
    }


def events_html(
    events: pa.Table,
    kind: str,
    ids: dict[str, int],
    players: set[str],
    stills: dict[tuple[Any, int], bytes],
    options: ReportOptions,
    title: str,
) -> str:
    """The table of the best episodes of one kind (happy | spike) across the job."""
    rows = [r for r in events.to_pylist() if r["kind"] == kind]
    rows.sort(key=lambda r: -r["score"])
    shown = [_event_row(r, ids, players, stills, options.stills)
             for r in rows[: options.max_events]]  # fmt: skip
    return render(
        "events",
        kind=kind,
        title=title,
        total=len(rows),
        rows=shown,
        stills=options.stills,
        command="happy" if kind == "happy" else "spikes",
    )


def event_key(r: dict[str, Any]) -> tuple[str, str, float, tuple[int, ...]]:
    """The identity of an event row within one report."""
    return (r["video_id"], r["kind"], round(r["start_s"], 3), tuple(r["track_ids"]))


def video_html(
    vid: str,
    uri: str,
    rows: pa.Table,
    events: pa.Table,
    index: int,
    src: str | None,
    options: ReportOptions,
    emotion: EmotionConfig | None,
) -> str:
    """One video's section: its figure, its player (when `src` is playable) and episodes.
    `index` is its place on the page (`dom_ids`)."""
    ev = events.filter(pc.equal(events["video_id"], vid))
    png = plot_timelines(rows, ev, emotion=emotion, dpi=options.dpi, title=f"{_name(uri)}  ({vid})")
    src = safe_url(src)
    episodes = sorted(ev.to_pylist(), key=lambda r: r["start_s"])
    for r in episodes:
        r["span"] = f"{fmt_time(r['start_s'])}-{fmt_time(r['end_s'])}"
    return render(
        "video",
        vid=vid,
        uri=uri,
        name=_name(uri),
        anchor=f"video-{index}",
        player=f"player-{index}" if src is not None else None,
        src=src,
        png=png_src(png),
        tracks=len(pc.unique(rows["track_id"])),
        episodes=episodes[: options.max_video_events],
        more=len(episodes) - options.max_video_events,
    )


def page_head(
    out: str,
    s: dict[str, Any],
    status: pa.Table,
    events: pa.Table,
    ids: dict[str, int],
    players: set[str],
    stills: dict[tuple[Any, int], bytes],
    options: ReportOptions,
) -> list[str]:
    """The page up to the per-video sections: head, run summary, top episodes, the Videos
    heading (`s`: summary_of's summary; `ids`: dom_ids of the shown videos; `players`: the
    ids of those with a player)."""
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        render("head", out=out, css=CSS, written=written),
        summary_html(s, status, options),
        events_html(events, "happy", ids, players, stills, options, "Top happy episodes"),
        events_html(events, "spike", ids, players, stills, options, "Top distress spikes"),
        '<p class="note">A spike is a reaction seen on faces (a scare, a shout, a jump cut look '
        "the same); it says nothing about its cause.</p>",
        '<h2 id="videos">Videos</h2>',
    ]
