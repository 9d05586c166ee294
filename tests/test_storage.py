"""pipeline.storage, the one module that owns URIs: what a URI is (local or remote, its path,
its name), and listing, copying, uploading and writing through a local file, locally and on
the real S3 API (moto server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import storage
from schemas.config import StorageConfig


def test_what_a_uri_is(tmp_path, monkeypatch):
    for uri in ("clips/a.mp4", "/data/a.mp4", "file:///data/a.mp4", "C:/data/a.mp4"):
        assert storage.is_local(uri) and not storage.is_remote(uri)
    for uri in ("s3://b/k.mp4", "gs://b/k", "memory://x/y", "https://h/a.pth"):
        assert storage.is_remote(uri) and not storage.is_local(uri)
    assert storage.is_plain_path("out/x") and not storage.is_plain_path("file:///out/x")
    assert storage.without_scheme("s3://b/k/x.pt") == "b/k/x.pt"
    assert storage.without_scheme("/a/b") == "/a/b"
    assert storage.local_path("file:///tmp/x.pt") == Path("/tmp/x.pt")
    assert storage.local_path("~/x.pt") == Path.home() / "x.pt"
    with pytest.raises(ValueError, match="not a local path"):
        storage.local_path("s3://b/x.pt")
    assert storage.basename("https://h/dl/r.pth?token=1#f") == "r.pth"
    assert storage.basename("file:///tmp/w.pt") == "w.pt"
    # fsspec paths back to URIs of the caller's kind (listing a prefix keeps the scheme)
    assert storage.as_uri("b/k/x.mp4", "s3://b/k") == "s3://b/k/x.mp4"
    assert storage.as_uri("/d/x.mp4", "file:///d") == "file:///d/x.mp4"
    assert storage.as_uri("/d/x.mp4", "/d") == "/d/x.mp4"
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("runs") == str(tmp_path.resolve() / "runs")
    assert storage.absolute("s3://b/runs") == "s3://b/runs"
    assert storage.absolute("file://runs") == "file://runs"
    assert storage.join("s3://b/", "/out/", "x.parquet") == "s3://b/out/x.parquet"
    assert storage.file_uri("/a b/c.mp4") == "file:///a%20b/c.mp4"


def test_local_output_commits_only_whole_files(tmp_path):
    dest = tmp_path / "sub" / "v.mp4"
    with storage.local_output(str(dest)) as tmp:
        assert Path(tmp).parent == dest.parent and Path(tmp).name.startswith(".v.mp4.tmp-")
        Path(tmp).write_bytes(b"video")
    assert dest.read_bytes() == b"video"
    with pytest.raises(RuntimeError), storage.local_output(f"file://{tmp_path}/w.mp4") as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("encoder died")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_remote_listing_copy_upload_and_local_output(s3_server, s3_bucket, tmp_path):
    st = StorageConfig()
    base = f"s3://{s3_bucket}/tree"
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "one.csv").write_text("x\n1\n")
    (src / "two.mp4").write_bytes(b"\x00\x01")
    storage.upload_tree(src, base, st)
    assert storage.find(base, st) == [f"{base}/a/one.csv", f"{base}/two.mp4"]
    assert storage.find(f"{base}/two.mp4", st) == [f"{base}/two.mp4"]
    with pytest.raises(FileNotFoundError, match="not found"):
        storage.find(f"{base}/nothing", st)
    storage.copy(f"{base}/a/one.csv", str(tmp_path / "copy.csv"), st)
    assert storage.read_text(str(tmp_path / "copy.csv")) == "x\n1\n"
    with storage.local_output(f"{base}/out/v.mp4", st) as tmp:
        assert tmp.endswith(".mp4") and not tmp.startswith(str(tmp_path))
        Path(tmp).write_bytes(b"whole")
    assert not Path(tmp).exists()  # the local temporary is gone once uploaded
    assert storage.read_bytes(f"{base}/out/v.mp4", st) == b"whole"
    with pytest.raises(RuntimeError), storage.local_output(f"{base}/out/bad.mp4", st) as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("encoder died")
    assert not storage.exists(f"{base}/out/bad.mp4", st)
    storage.remove(f"{base}/out", st, recursive=True)
    assert not storage.exists(f"{base}/out/v.mp4", st)
    path, fs = storage.arrow_filesystem(f"{base}/a/one.csv", st)
    assert path == f"{s3_bucket}/tree/a/one.csv"
    with fs.open_input_stream(path) as f:
        assert f.read() == b"x\n1\n"
    assert storage.arrow_filesystem(str(tmp_path), st) == (str(tmp_path), None)


@pytest.mark.parametrize("relative", [True, False])
def test_listing_skips_hidden_names_below_the_folder_only(tmp_path, monkeypatch, relative):
    """Names starting with "." or "_" below the listed folder are skipped (writes in progress),
    whatever the folder itself sits under: a relative root inside `.cache/` once listed nothing,
    every absolute path holding a hidden part."""
    home = tmp_path / ".cache" / "_work"
    for name in ("a.parquet", ".b.parquet", "_c.parquet", "sub/d.parquet", ".tmp/e.parquet",
                 "f.json"):  # fmt: skip
        (home / "out" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "out" / name).write_bytes(b"x")
    monkeypatch.chdir(home)
    root = "out" if relative else str(home / "out")
    found = [Path(u).relative_to(home / "out").as_posix() for u in
             storage.list_files(root, None, ".parquet")]  # fmt: skip
    assert found == ["a.parquet", "sub/d.parquet"]
    assert storage.list_files(f"{root}/nothing", None, ".parquet") == []


def test_storage_verbs_retry_transient_faults_only(tmp_path, monkeypatch):
    """Storage's verbs retry a transient fault (a refused connection) until it clears, fail at
    once on one that is not (a missing file), and give up with StorageUnavailable when the
    budget is spent; a video's attempts are made again from its start."""
    monkeypatch.setattr("pipeline.storage.retry.time.sleep", lambda s: None)
    store = storage.Storage(StorageConfig(retry_s=5))
    tries = []

    def flaky():
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionRefusedError("endpoint down")
        return "listed"

    assert store.call(flaky, "listing") == "listed" and len(tries) == 3
    with pytest.raises(FileNotFoundError):
        store.call(lambda: (tries.append(1), open(tmp_path / "nope"))[1], "reading")
    assert len(tries) == 4  # one try: a missing file is not retried
    with pytest.raises(storage.StorageUnavailable, match="unreachable") as err:
        storage.Storage(StorageConfig(retry_s=1)).call(flaky_forever, "writing x")
    assert err.value.cause == "ConnectionResetError"
    made = []

    def video():
        made.append(1)
        yield "window 0"
        if len(made) == 1:
            raise ConnectionResetError("peer went away")
        yield "window 1"

    def tried() -> Iterator[str]:
        for attempt in store.attempts("v.mp4"):
            with attempt:
                yield from video()

    assert list(tried()) == ["window 0", "window 0", "window 1"]
    with pytest.raises(ValueError):  # not transient: no second try
        for attempt in store.attempts("v.mp4"):
            with attempt:
                made.append(1)
                raise ValueError("corrupt")
    assert len(made) == 3
    # the writing verbs go through the same retries
    uri = str(tmp_path / "a" / "b.txt")
    store.write_text(uri, "hello")
    assert storage.read_text(uri) == "hello"
    store.remove(uri)
    assert not storage.exists(uri)


def flaky_forever():
    raise ConnectionResetError("reset")


def test_weights_download_over_http_into_the_cache_once(tmp_path):
    """A weights URL is fetched over real HTTP into the cache (whole or not at all), checked
    against its sha256, then used without the network; a missing one names the cache path."""
    import functools
    import hashlib
    import http.server
    import threading

    from pipeline.weights import resolve_file

    served = tmp_path / "www"
    served.mkdir()
    (served / "w.pth").write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(b"weights" * 1000).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    cache = tmp_path / "cache"
    try:
        path = resolve_file(f"{url}/w.pth", str(cache), sha256=digest)
        assert Path(path) == cache / "w.pth" and Path(path).read_bytes() == b"weights" * 1000
        assert sorted(p.name for p in cache.iterdir()) == [".w.pth.lock", "w.pth"]
        with pytest.raises(FileNotFoundError, match="copy the file there"):
            resolve_file(f"{url}/gone.pth", str(cache))  # a 404
        assert not (cache / "gone.pth").exists()
        server.shutdown()
        server.server_close()  # the cached copy needs no network
        assert resolve_file(f"{url}/w.pth", str(cache), sha256=digest) == path
        with pytest.raises(ValueError, match="checksum mismatch"):
            resolve_file(f"{url}/w.pth", str(cache), sha256="0" * 64)
    finally:
        server.server_close()


@pytest.mark.parametrize("taken", [False, True])
def test_create_exclusive_survives_a_sweep_of_its_temporary_file(tmp_path, monkeypatch, taken):
    """A job that lost the race for OUT's lock writes its temporary lock file while the winner
    sweeps OUT's temporary files (sweep_temp): the sweep may remove it before the link. The
    attempt is then made again: True when the name was free, False when it is taken, never a
    FileNotFoundError (before: the loser failed with it instead of "locked")."""
    import os

    from pipeline.storage import atomic

    lock = tmp_path / "_vaerr.lock"
    if taken:
        lock.write_bytes(b"winner")
    real_link, swept = os.link, []

    def link_after_a_sweep(src, dst):
        if not swept:
            swept.append(atomic.sweep_temp(str(tmp_path)))  # the winner's sweep, in between
        return real_link(src, dst)

    monkeypatch.setattr(atomic.os, "link", link_after_a_sweep)
    assert storage.create_exclusive(str(lock), b"me") is (not taken)
    assert swept == [1] and lock.read_bytes() == (b"winner" if taken else b"me")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_vaerr.lock"]  # no temporary left
