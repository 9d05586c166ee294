"""The named-checkpoint catalog: a team's YAML file mapping names to checkpoint URIs.

    team-r18-sewa:
      uri: s3://models/r18-sewa.pt      # or a path relative to the catalog file
      sha256: 0f3c...                    # 64 hex digits, quoted; required for remote entries
      description: fine-tuned on SEWA train

The catalog is given by `model.registry_file` or env VAERR_MODEL_REGISTRY (names kept for
compatibility, and user messages call it "the model registry"; in code it is the catalog, not
to be confused with the architecture registry, pipeline.model.registry). A named entry is
fetched through the weights cache with its checksum checked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pipeline.storage import Options, is_local, is_remote, local_path, read_text
from schemas.yamlsafe import load_yaml

__all__ = ["CATALOG_ENV", "read_catalog", "resolve_checkpoint"]

CATALOG_ENV = "VAERR_MODEL_REGISTRY"
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def _entry(catalog_file: str, name: Any, entry: Any, base: Path | None) -> dict[str, Any]:
    """One validated entry {uri, sha256?, description?}; relative local URIs resolved
    against `base` (the catalog file's folder)."""
    if isinstance(entry, str):
        entry = {"uri": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("uri"), str):
        raise ValueError(f"{catalog_file}: entry {name!r} needs a `uri` string")
    unknown = set(entry) - {"uri", "sha256", "description"}
    if unknown:
        raise ValueError(f"{catalog_file}: entry {name!r} has unknown keys {sorted(unknown)}")
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA_RE.match(sha)):
        raise ValueError(
            f"{catalog_file}: entry {name!r}: sha256 must be a string of 64 hex digits "
            "(quote it in YAML)"
        )
    uri = entry["uri"]
    if base is not None and is_local(uri) and not local_path(uri).is_absolute():
        uri = str(base / local_path(uri))
    return {**entry, "uri": uri}


def read_catalog(catalog_file: str, storage_options: Options = None) -> dict[str, dict[str, Any]]:
    """Parse a catalog YAML `name: {uri: ..., sha256: ..., description: ...}` (a bare string
    is the uri). Relative local URIs are resolved against the catalog file's folder."""
    base: Path | None = None
    if is_local(catalog_file):
        path = local_path(catalog_file)
        if not path.is_file():
            raise FileNotFoundError(f"model registry file not found: {path}")
        base = path.resolve().parent
    data = load_yaml(read_text(catalog_file, storage_options), str(catalog_file)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{catalog_file}: a model registry is a mapping name -> {{uri, sha256}}")
    return {str(name): _entry(catalog_file, name, e, base) for name, e in data.items()}


def resolve_checkpoint(
    name_or_uri: str,
    registry_file: str | None = None,
    cache_dir: str | None = None,
    storage_options: Options = None,
) -> str:
    """Map a catalog name or a URI to what `load_checkpoint` reads.

    A name listed in the catalog (`registry_file`, else env VAERR_MODEL_REGISTRY) is fetched
    into the weights cache (`<cache>/checkpoints/<name>/<basename>`; cache = cache_dir, else
    VAERR_CACHE, else ~/.cache/vaerr) and its sha256 checked (mismatch -> ValueError); remote
    entries must give a sha256, so a stale cached copy can never pass for a new one. Anything
    else is a path or URI and is returned unchanged (read directly, not cached).
    """
    from pipeline.weights import cache_dir as weights_cache
    from pipeline.weights import resolve_file

    catalog_file = registry_file or os.environ.get(CATALOG_ENV)
    if catalog_file:
        catalog = read_catalog(catalog_file, storage_options)
        if name_or_uri in catalog:
            entry = catalog[name_or_uri]
            uri, sha = entry["uri"], entry.get("sha256")
            if is_local(uri):  # used in place, checksum checked
                return resolve_file(uri, None, sha256=sha, storage_options=storage_options)
            if not sha:
                raise ValueError(
                    f"registry {catalog_file}: remote entry {name_or_uri!r} needs a sha256 "
                    "(it is cached by file name and checked against it)"
                )
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", name_or_uri)
            cache = weights_cache(cache_dir) / "checkpoints" / safe
            return resolve_file(uri, str(cache), sha256=sha, storage_options=storage_options)
    if is_remote(name_or_uri) or local_path(name_or_uri).exists():
        return name_or_uri
    where = (
        f"registry {catalog_file}"
        if catalog_file
        else f"any registry (none given: --set model.registry_file=FILE or env {CATALOG_ENV})"
    )
    raise FileNotFoundError(
        f"{name_or_uri!r} is neither an existing checkpoint path/URI nor a name in {where}"
    )
