"""Resolve a weight or template file (local path, fsspec URI or http(s) URL) to a local path.

Every remote file is cached once in one directory (env `VAERR_CACHE`, default
`~/.cache/vaerr`) under the file name of its URL; a cached file is used without touching the
network, so an air-gapped cluster works once its cache is seeded by copying files in.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
from pathlib import Path

from pipeline.storage import Options, basename, download, is_local, local_path

log = logging.getLogger(__name__)


def cache_dir(override: str | None = None) -> Path:
    """The weights cache: `override`, else $VAERR_CACHE, else ~/.cache/vaerr (created)."""
    d = Path(override or os.environ.get("VAERR_CACHE") or "~/.cache/vaerr").expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, sha256: str | None, uri: str) -> str:
    if sha256 and sha256_file(path) != sha256.lower():
        raise ValueError(f"checksum mismatch for {uri} ({path}): expected sha256 {sha256}")
    return str(path)


def resolve_file(
    uri: str,
    cache: str | None = None,
    sha256: str | None = None,
    storage_options: Options = None,
) -> str:
    """Return a local path for `uri`, downloading into the cache only when it is not there.

    Local paths and file:// URIs are used in place. Anything else (http(s), s3://, gs://...)
    is cached as `<cache>/<basename of the URL path>`. A missing file that cannot be fetched
    raises FileNotFoundError naming the URL and the cache path to seed.
    """
    if is_local(uri):
        path = local_path(uri)
        if not path.is_file():
            raise FileNotFoundError(f"weights/template file not found: {path}")
        return _check(path, sha256, uri)
    name = basename(uri)
    if not name:
        raise ValueError(f"cannot derive a cache file name from {uri!r}")
    dest = cache_dir(cache) / name
    if dest.is_file():
        return _check(dest, sha256, uri)
    # One download per node: actors sharing the cache wait for the first one's file.
    with open(dest.with_name(f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.is_file():
            log.info("downloading %s -> %s", uri, dest)
            try:
                download(uri, dest, storage_options)
            except Exception as exc:  # network down, 403, no such key: one clear message
                raise FileNotFoundError(
                    f"cannot fetch {uri} ({type(exc).__name__}: {exc}); "
                    f"no cached copy at {dest}. On an offline machine, copy the file there."
                ) from None
    return _check(dest, sha256, uri)


# Files of a shared assets folder (../shared/assets layout) -> the cache names of their URLs.
ASSET_CACHE_NAMES = {
    "detectors/retinaface_mobilenet0.25_Final.pth": "retinaface_mobilenet0.25.pth",
    "landmarks/20words_mean_face.npy": "20words_mean_face.npy",
}


def seed_cache(assets_dir: str | Path, cache: str | None = None) -> list[str]:
    """Copy the weights found in an assets folder into the cache under their URL names, so
    the default URLs resolve offline. Existing cache files are kept. Returns what was copied."""
    dest = cache_dir(cache)
    copied = []
    for rel, name in ASSET_CACHE_NAMES.items():
        src = Path(assets_dir) / rel
        if src.is_file() and not (dest / name).is_file():
            shutil.copyfile(src, dest / name)
            copied.append(name)
    return copied
