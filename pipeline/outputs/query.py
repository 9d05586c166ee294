"""Read a job's timelines from any URI, run read-only SQL over them, write result tables.

Timelines are read with pyarrow datasets on the fsspec filesystem of the URI (pipeline.storage),
so S3 and other stores need no DuckDB extension (none can be downloaded offline): DuckDB only
ever sees Arrow objects. SQL runs on a connection with external access disabled and its
configuration locked, after a parse-tree check that it is one SELECT reading nothing but the
registered `timelines` view (and harmless generators such as `range`), within bounds on its
length, nesting, run time, memory and result size (`SqlLimits`).

Only timeline tables are ever read as timelines: OUT/timelines/, a folder or file whose schema
has the timeline columns. An OUT without `timelines/` (no video had a face) is an empty result
with a one-line note; other tables (the manifest, status rows) are refused, never read.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.outpaths import OUT_MARKERS, TIMELINES_DIR, OutPaths
from pipeline.storage import (
    atomic_write,
    basename,
    exists,
    is_dir,
    is_file,
    join,
    list_files,
    parquet_dataset,
)
from schemas.config import StorageConfig
from schemas.tables import TIMELINES

log = logging.getLogger(__name__)

VIEW = "timelines"
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
"""Table functions a query may call: generators that read nothing. Everything else (read_parquet,
read_csv, read_json, glob, read_text, read_blob, parquet_scan, query, duckdb_* ...) is refused."""
_PATH_CHARS = set("/\\.:*?")
OUTPUT_FORMATS = (".parquet", ".csv", ".json")


class QueryRefused(ValueError):
    """SQL that is not a single read-only SELECT over the timelines; the message says why."""


class QueryLimit(ValueError):
    """A query that hit one of the `SqlLimits`; the message names the limit and what to do."""


@dataclass(frozen=True)
class SqlLimits:
    """Bounds on one `vaerr query sql` statement, checked before (length, nesting) and while
    (time, memory, result rows) it runs."""

    max_chars: int = 20_000
    """Longest statement, characters."""
    max_depth: int = 32
    """Deepest nesting of parentheses (subqueries, calls, expressions), counted on DuckDB's
    own tokens so brackets inside string literals do not count."""
    timeout_s: float = 60.0
    """Wall-clock budget of the query and its fetch, s; the query is interrupted past it."""
    memory_mb: int = 2048
    """DuckDB's memory limit, MiB (nothing spills to disk: no temp directory)."""
    threads: int = 2
    """DuckDB worker threads."""
    max_rows: int = 5_000_000
    """Most result rows fetched (aggregate or add LIMIT for more)."""


# --------------------------------------------------------------------------------------------
# Reading

REQUIRED = ("video_id", "uri", "track_id", "time_s", "arousal", "valence")
"""Columns a table must have to be read as timelines."""


def timeline_files(uri: str, storage: StorageConfig | None = None) -> list[str]:
    """Sorted URIs of the Parquet files of TIMELINES: a job's output folder OUT (its
    `timelines/` is used), the `timelines/` folder itself, or one Parquet file. Hidden names
    (a write in progress, `.x.parquet.tmp-*`) are skipped. An OUT without `timelines/` (or an
    empty `timelines/`) gives no files; a path that does not exist, or another folder without
    Parquet files, raises FileNotFoundError.
    The rest of OUT (manifest, status rows) is never listed."""
    uri = uri.rstrip("/")
    if is_file(uri, storage):
        return [uri]
    if not is_dir(uri, storage):
        raise FileNotFoundError(f"no timelines at {uri}: no such file or folder")
    root = OutPaths(uri).timelines
    if not is_dir(root, storage):
        if any(exists(join(uri, m), storage) for m in OUT_MARKERS):
            return []  # a job's OUT where no video had a face
        root = uri
    files = list_files(root, storage, ".parquet")
    if not files and root == uri and basename(uri) != TIMELINES_DIR:
        raise FileNotFoundError(f"no Parquet files under {uri} (expected OUT or OUT/timelines)")
    return files


def open_timelines(uri: str, storage: StorageConfig | None = None) -> ds.Dataset:
    """A lazy pyarrow dataset over TIMELINES (see `timeline_files`); nothing is read yet.

    No timeline files: an empty dataset of the TIMELINES schema and a one-line warning. Files
    without the timeline columns (a manifest, status rows, events) raise ValueError."""
    files = timeline_files(uri, storage)
    if not files:
        log.warning("%s holds no timelines (no video had a face?): the result is empty", uri)
        return ds.InMemoryDataset(TIMELINES.empty_table())
    dataset = parquet_dataset(files, storage)
    missing = [c for c in REQUIRED if c not in dataset.schema.names]
    if missing:
        raise ValueError(
            f"{uri} is not a timelines table (no column {missing[0]!r}): give a job's OUT, "
            "OUT/timelines/ or one of its Parquet files"
        )
    return dataset


def video_filter(dataset: ds.Dataset, video: str) -> pc.Expression:
    """Row filter for one video given as its `video_id`, its exact `uri`, or a unique suffix of
    the uri (a file name such as `talk.mp4`). Raises ValueError when none or several match."""
    exact = (pc.field("video_id") == video) | (pc.field("uri") == video)
    ids = dataset.to_table(columns=["video_id", "uri"], filter=exact)
    if ids.num_rows:
        return exact
    pairs = (
        dataset.to_table(columns=["video_id", "uri"]).group_by(["video_id", "uri"]).aggregate([])
    )
    hits = [
        (v, u)
        for v, u in zip(pairs["video_id"].to_pylist(), pairs["uri"].to_pylist())
        if u.endswith("/" + video.lstrip("/")) or u == video
    ]
    if not hits:
        raise ValueError(f"no video {video!r} in the timelines (give a video_id, uri or file name)")
    if len({v for v, _ in hits}) > 1:
        raise ValueError(f"{video!r} matches several videos: {sorted(u for _, u in hits)}")
    return pc.field("video_id") == hits[0][0]


def read_timelines(
    uri: str | ds.Dataset,
    storage: StorageConfig | None = None,
    video: str | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """TIMELINES rows (all, or one video's: see `video_filter`), sorted by video, track, time."""
    dataset = uri if isinstance(uri, ds.Dataset) else open_timelines(uri, storage)
    flt = video_filter(dataset, video) if video else None
    table = dataset.to_table(columns=columns, filter=flt)
    keys = [k for k in ("video_id", "track_id", "time_s") if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys]) if keys else table


# --------------------------------------------------------------------------------------------
# SQL


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a JSON parse tree, depth first."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _one_line(exc: BaseException) -> str:
    """DuckDB's message on one line, without the caret diagrams it adds."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "^" not in ln]
    return " ".join(lines)[:400] or type(exc).__name__


def check_bounds(sql: str, limits: SqlLimits = SqlLimits()) -> None:
    """QueryLimit when `sql` is longer or nests deeper than `limits` allow (checked before the
    parser sees it: DuckDB's parser and the JSON tree recurse per level)."""
    if len(sql) > limits.max_chars:
        raise QueryLimit(
            f"the query is {len(sql)} characters, over the limit of {limits.max_chars}"
        )
    try:
        tokens = duckdb.tokenize(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"cannot parse the query: {_one_line(exc)}") from None
    depth = deepest = 0
    for pos, kind in tokens:
        if kind != duckdb.token_type.operator:
            continue
        for ch in sql[pos : pos + 3]:
            if ch == "(":
                depth += 1
                deepest = max(deepest, depth)
            elif ch == ")":
                depth -= 1
            else:
                break
    if deepest > limits.max_depth:
        raise QueryLimit(
            f"the query nests {deepest} levels of parentheses, over the limit of "
            f"{limits.max_depth}: flatten subqueries into a WITH clause"
        )


def check_read_only(sql: str, limits: SqlLimits = SqlLimits()) -> str:
    """The one statement of `sql` if it is a read-only SELECT (WITH, FROM-first, DESCRIBE and
    SUMMARIZE included) whose table functions are generators and whose tables are names, not
    file paths; else QueryRefused (QueryLimit past `limits`' length or nesting). Parsed with
    DuckDB's own parser (`extract_statements`, then `json_serialize_sql` for the tree), so no
    hand-written SQL lexing decides."""
    check_bounds(sql, limits)
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"cannot parse the query: {_one_line(exc)}") from None
    if len(statements) != 1:
        raise QueryRefused(f"give exactly one statement, got {len(statements)}")
    st = statements[0]
    if st.type != duckdb.StatementType.SELECT:
        raise QueryRefused(f"only read-only SELECT/WITH queries run; this is {st.type.name}")
    with duckdb.connect(config={"enable_external_access": False}) as con:
        raw = con.execute("SELECT json_serialize_sql(?)", [st.query]).fetchone()[0]
    try:
        tree = json.loads(raw)
    except RecursionError:
        raise QueryLimit("the query nests too deeply: flatten it into a WITH clause") from None
    if tree.get("error"):
        raise QueryRefused(f"not a plain SELECT: {tree.get('error_message')}")
    for node in _nodes(tree):
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                raise QueryRefused(
                    f"table function {name}() is not allowed: queries read only the "
                    f"`{VIEW}` view (allowed generators: {sorted(ALLOWED_TABLE_FUNCTIONS)})"
                )
        elif kind == "BASE_TABLE":
            name = str(node.get("table_name", ""))
            if _PATH_CHARS & set(name):
                raise QueryRefused(f"{name!r} looks like a file: queries read only `{VIEW}`")
    return st.query


def connect(
    dataset: ds.Dataset | pa.Table, limits: SqlLimits = SqlLimits()
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that sees `dataset` as the view `timelines` and nothing
    else: no file system or network access, no Python variables by name, memory and threads
    bounded by `limits`, no spilling to disk, configuration locked (a query cannot turn access
    back on or raise its limits). Scans stream from the Arrow dataset, with column and filter
    push-down."""
    con = duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "python_enable_replacements": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "memory_limit": f"{limits.memory_mb}MB",
            "threads": limits.threads,
            "temp_directory": "",
        },
    )
    con.register(VIEW, dataset)
    con.execute("SET lock_configuration = true")
    return con


def run_sql(sql: str, dataset: ds.Dataset | pa.Table, limits: SqlLimits = SqlLimits()) -> pa.Table:
    """Run a read-only query (`check_read_only`) over `dataset` as `timelines` -> Arrow table.

    QueryLimit when it runs past `limits.timeout_s` (interrupted), needs more than
    `limits.memory_mb`, or returns more than `limits.max_rows` rows; ValueError with DuckDB's
    one-line message for an ordinary error (unknown column, bad type...)."""
    query = check_read_only(sql, limits)
    con = connect(dataset, limits)
    timer = threading.Timer(limits.timeout_s, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        reader = con.sql(query).to_arrow_reader(65_536)
        batches, rows = [], 0
        for batch in reader:
            rows += batch.num_rows
            if rows > limits.max_rows:
                raise QueryLimit(
                    f"the query returns more than {limits.max_rows} rows: aggregate, or add LIMIT"
                )
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException:
        raise QueryLimit(
            f"the query ran past its {limits.timeout_s:g} s limit and was stopped: "
            "filter or aggregate more (or raise --timeout-s)"
        ) from None
    except duckdb.OutOfMemoryException as exc:
        raise QueryLimit(
            f"the query needs more than its {limits.memory_mb} MiB memory limit "
            f"({_one_line(exc)}): filter or aggregate more (or raise --memory-mb)"
        ) from None
    except duckdb.Error as exc:
        raise ValueError(f"the query failed: {_one_line(exc)}") from None
    finally:
        timer.cancel()
        con.close()


# --------------------------------------------------------------------------------------------
# Output


def _csv_safe(table: pa.Table) -> pa.Table:
    """CSV holds no lists: list columns (track_ids, box_xyxy) become JSON text like `[0, 2]`."""
    for i, f in enumerate(table.schema):
        t = f.type
        if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_struct(t):
            text = [None if x is None else json.dumps(x) for x in table.column(i).to_pylist()]
            table = table.set_column(i, f.name, pa.array(text, pa.string()))
    return table


def _json_value(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def table_bytes(table: pa.Table, fmt: str) -> bytes:
    """Serialise a table as Parquet (zstd), CSV (header, lists as JSON text) or JSON (an array
    of records, NaN as null); `fmt` is the extension with its dot."""
    buf = io.BytesIO()
    if fmt == ".parquet":
        pq.write_table(table, buf, compression="zstd")
    elif fmt == ".csv":
        pacsv.write_csv(_csv_safe(table), buf)
    elif fmt == ".json":
        rows = [{k: _json_value(v) for k, v in r.items()} for r in table.to_pylist()]
        buf.write(json.dumps(rows, default=str, indent=1).encode("utf-8"))
    else:
        raise ValueError(f"output must end with one of {OUTPUT_FORMATS}, not {fmt!r}")
    return buf.getvalue()


def write_table(table: pa.Table, uri: str, storage: StorageConfig | None = None) -> None:
    """Write `table` to a local path or URI, the format chosen by its extension (.parquet,
    .csv, .json), atomically (a reader never sees half a file)."""
    fmt = "." + uri.rsplit(".", 1)[-1].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    data = table_bytes(table, fmt)
    with atomic_write(uri, storage) as f:
        f.write(data)


def _cell(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.3f}" if math.isfinite(x) else str(x)
    if isinstance(x, list):
        return ",".join(_cell(v) for v in x)
    return str(x)


def format_table(table: pa.Table, limit: int | None = 20, width: int = 40) -> str:
    """A plain-text table of the first `limit` rows (floats to 3 decimals, cells cut to
    `width` characters), with a line saying how many rows were left out."""
    rows = table.slice(0, limit).to_pylist() if limit is not None else table.to_pylist()
    names = table.column_names
    cells = [[_cell(r[n])[:width] for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(f.type) or pa.types.is_floating(f.type) for f in table.schema]

    def line(values: list[str]) -> str:
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(out).rstrip()

    lines = [line(names), line(["-" * w for w in widths])] + [line(c) for c in cells]
    if not rows:
        lines.append("(no rows)")
    elif limit is not None and table.num_rows > limit:
        lines.append(f"... {table.num_rows - limit} more rows (write them all with --output)")
    return "\n".join(lines)
