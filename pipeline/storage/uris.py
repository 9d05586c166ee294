"""URIs and the filesystems behind them: what a URI is (local or remote, its scheme, joined,
its base name) and the fsspec filesystem with the run's endpoint and credentials. Only the
storage package calls `filesystem`; the pyarrow filesystem Ray Train needs comes from
`arrow_filesystem`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote, urlparse

import fsspec

from schemas.config import StorageConfig

log = logging.getLogger(__name__)


# What filesystem calls accept: the job's Storage (made once and passed down), the run's
# StorageConfig, a dict of fsspec keyword arguments (checkpoint and weight readers are handed
# one), or None (local files, anonymous defaults).
class HoldsSettings(Protocol):
    """What `Storage` (store.py) is to this module: an object holding the storage settings."""

    cfg: StorageConfig


Options = StorageConfig | HoldsSettings | Mapping[str, Any] | None


# ---------------------------------------------------------------------------------------------
# What a URI is


def protocol(uri: str) -> str:
    """'s3', 'gs', 'file'... of a URI; plain paths are 'file'."""
    scheme = urlparse(str(uri)).scheme
    return scheme if len(scheme) > 1 else "file"  # 'C:' style drive letters are local


def is_remote(uri: str) -> bool:
    """True for anything not on the local filesystem (s3://, gs://, memory://, http(s)://...)."""
    return protocol(uri) != "file"


def is_local(uri: str) -> bool:
    """True for plain paths and file:// URIs."""
    return not is_remote(uri)


def is_plain_path(uri: str) -> bool:
    """A local path written without a scheme (`out/x`, `/data/x`; not `file:///data/x`)."""
    uri = str(uri)
    return is_local(uri) and "://" not in uri


def without_scheme(uri: str) -> str:
    """The URI without `scheme://` (`bucket/key` for object stores, the path for local)."""
    return str(uri).split("://", 1)[-1]


def local_path(uri: str | os.PathLike) -> Path:
    """The local Path of a plain path or file:// URI (`~` expanded); ValueError when remote."""
    uri = os.fspath(uri)
    if is_remote(uri):
        raise ValueError(f"{uri} is not a local path")
    return Path(uri.removeprefix("file://")).expanduser()


def absolute(uri: str) -> str:
    """Plain local paths made absolute (Ray workers run in their own working directory);
    file:// and remote URIs unchanged."""
    return str(Path(uri).expanduser().resolve()) if is_plain_path(uri) else uri


def as_uri(path: str, like: str) -> str:
    """A filesystem path (as fsspec lists it) written back as a URI of the same kind as `like`:
    a plain path when `like` is one, else `scheme://path`."""
    return path if is_plain_path(like) else f"{protocol(like)}://{path}"


def file_uri(path: str | os.PathLike) -> str:
    """`file:///abs/path` (percent-quoted) of a local path, for a browser's `src`."""
    return "file://" + quote(os.path.abspath(os.fspath(path)))


def basename(uri: str) -> str:
    """The last name on a URI's path, without query or fragment (`s3://b/k/x.pt?v=2` -> x.pt)."""
    if is_local(uri):
        return Path(without_scheme(uri)).name
    return PurePosixPath(urlparse(uri).path).name


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with '/'."""
    out = str(base).rstrip("/")
    for p in parts:
        out += "/" + str(p).strip("/")
    return out


# ---------------------------------------------------------------------------------------------
# Filesystems


def storage_options(cfg: StorageConfig | None, uri: str) -> dict[str, Any]:
    """fsspec keyword arguments for `uri` under `cfg` (empty for local files)."""
    if protocol(uri) not in ("s3", "s3a") or cfg is None:
        return {}
    opts: dict[str, Any] = {"anon": cfg.anon}
    endpoint = (
        cfg.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    client: dict[str, Any] = {}
    if endpoint:
        client["endpoint_url"] = endpoint
    region = cfg.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        client["region_name"] = region
    if client:
        opts["client_kwargs"] = client
    if cfg.key is not None:
        opts["key"] = cfg.key.get_secret_value()
    if cfg.secret is not None:
        opts["secret"] = cfg.secret.get_secret_value()
    opts["default_block_size"] = cfg.block_size_mb << 20
    # Fail fast at the client; outages are retried by Storage within storage.retry_s.
    opts["config_kwargs"] = {
        "connect_timeout": 10,
        "read_timeout": 60,
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    return opts


def _options(cfg: Options, uri: str) -> dict[str, Any]:
    if isinstance(getattr(cfg, "cfg", None), StorageConfig):  # a Storage: its settings
        cfg = cfg.cfg  # type: ignore[union-attr]
    if cfg is None or isinstance(cfg, StorageConfig):
        return storage_options(cfg, uri)
    return dict(cfg)


# s3fs retries each call 5 times itself, and again around every ranged read inside that, with
# botocore's attempts inside each: 50 tries (about 40 s) before a dead endpoint is reported.
# Two tries per layer ride out one dropped connection; outages are Storage's to wait out.
S3FS_RETRIES = 2


def filesystem(uri: str, cfg: Options = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI."""
    fs, path = fsspec.core.url_to_fs(str(uri), **_options(cfg, str(uri)))
    if protocol(uri) in ("s3", "s3a"):
        fs.retries = S3FS_RETRIES  # an instance attribute: s3fs takes no such argument
    return fs, path


def arrow_filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[str, Any]:
    """(path, pyarrow filesystem) for libraries that take a pyarrow filesystem (Ray Train's
    RunConfig): object stores go through fsspec with the config's endpoint and credentials,
    like every other vaerr write; local paths give (uri, None), pyarrow's own local files."""
    if protocol(uri) not in ("s3", "s3a"):
        return uri, None
    import pyarrow.fs as pafs

    fs, _ = filesystem(uri, cfg)
    return without_scheme(uri), pafs.PyFileSystem(pafs.FSSpecHandler(fs))
