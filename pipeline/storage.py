"""fsspec access to any URI (local, file://, s3://, gs://...), configured from StorageConfig.

Credentials come from the config or the standard AWS environment variables; they are passed
to the filesystem only and never logged or written to outputs.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import fsspec

from schemas.config import StorageConfig


def protocol(uri: str) -> str:
    """'s3', 'gs', 'file'... of a URI; plain paths are 'file'."""
    scheme = urlparse(str(uri)).scheme
    return scheme if len(scheme) > 1 else "file"  # 'C:' style drive letters are local


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
    # Fail fast at the client; outages are retried by pipeline.retry within storage.retry_s.
    opts["config_kwargs"] = {
        "connect_timeout": 10,
        "read_timeout": 60,
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    return opts


def filesystem(uri: str, cfg: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI."""
    fs, path = fsspec.core.url_to_fs(str(uri), **storage_options(cfg, str(uri)))
    return fs, path


def open_uri(uri: str, mode: str = "rb", cfg: StorageConfig | None = None) -> Any:
    """Open a URI as a file object (a context manager); remote reads are block-cached."""
    fs, path = filesystem(uri, cfg)
    return fs.open(path, mode)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with '/'."""
    out = str(base).rstrip("/")
    for p in parts:
        out += "/" + str(p).strip("/")
    return out
