"""The one package that owns URIs: local paths, file://, s3://, gs://, memory://, http(s)://.

Everything else in vaerr asks this package whether a URI is local, joins and opens URIs, lists
and removes files, and writes outputs; nothing else tests a string for "://", builds an fsspec
filesystem or is handed one (tests/test_layout.py checks): it reads, lists and writes through
the verbs here. Modules: `uris` (what a URI is, its filesystem), `files` (read, list, remove;
Parquet folders read with one policy for an unreadable file), `atomic` (atomic writes,
exclusive creation, compare-and-swap), `retry` (which faults are transient, the backoff) and
`store`: `Storage`, a job's storage made once from `cfg.storage` and passed down, whose verbs
retry transient faults within `storage.retry_s`. No retry loop exists outside this package.

Filesystems come from `StorageConfig` (or, where a caller already holds them, a dict of fsspec
keyword arguments). Credentials come from the config or the standard AWS environment
variables; they are passed to the filesystem only and never logged or written to outputs.

Writes are atomic per file: a hidden temporary name is written, then renamed, so a reader
never sees a partial file and a failed or discarded write never appears. On object stores (S3,
GCS...) closing a file commits it, so the temporary name is a real key: the block writes
`.NAME.tmp-XXXX` beside the final key, which is copied to its name only when the block succeeds
(a server-side copy: the final key appears whole or not at all). On failure the upload is
discarded (S3's multipart upload aborted) and the temporary key removed.
"""

from pipeline.storage.atomic import (
    TEMP_PATTERN,
    ParquetStream,
    atomic_write,
    check_output,
    create_exclusive,
    local_output,
    swap_if,
    sweep_temp,
    temp_name,
    write_bytes,
    write_parquet,
    write_text,
)
from pipeline.storage.files import (
    Unreadable,
    copy,
    download,
    exists,
    file_info,
    find,
    find_detail,
    glob_detail,
    is_dir,
    is_file,
    iter_tables,
    list_files,
    open_uri,
    parquet_dataset,
    read_bytes,
    read_json,
    read_jsonl,
    read_parquet,
    read_parquet_schema,
    read_tables,
    read_text,
    remove,
    upload_tree,
    version_of,
    warn_unreadable,
)
from pipeline.storage.retry import StorageUnavailable, is_transient
from pipeline.storage.store import Storage
from pipeline.storage.uris import (
    S3FS_RETRIES,
    Options,
    absolute,
    arrow_filesystem,
    as_uri,
    basename,
    file_uri,
    filesystem,
    is_local,
    is_plain_path,
    is_remote,
    join,
    local_path,
    protocol,
    storage_options,
    without_scheme,
)

__all__ = [
    "Options",
    "ParquetStream",
    "S3FS_RETRIES",
    "Storage",
    "StorageUnavailable",
    "TEMP_PATTERN",
    "Unreadable",
    "absolute",
    "arrow_filesystem",
    "as_uri",
    "atomic_write",
    "basename",
    "check_output",
    "copy",
    "create_exclusive",
    "download",
    "exists",
    "file_uri",
    "filesystem",
    "find",
    "find_detail",
    "glob_detail",
    "file_info",
    "is_dir",
    "is_file",
    "is_local",
    "is_plain_path",
    "is_remote",
    "is_transient",
    "iter_tables",
    "join",
    "list_files",
    "local_output",
    "local_path",
    "open_uri",
    "parquet_dataset",
    "protocol",
    "read_bytes",
    "read_json",
    "read_jsonl",
    "read_parquet",
    "read_parquet_schema",
    "read_tables",
    "read_text",
    "remove",
    "storage_options",
    "swap_if",
    "sweep_temp",
    "temp_name",
    "upload_tree",
    "version_of",
    "warn_unreadable",
    "without_scheme",
    "write_bytes",
    "write_parquet",
    "write_text",
]
