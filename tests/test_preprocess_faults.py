"""`vaerr preprocess` under storage faults, as inference handles them (issue 14): transient
S3 errors on shard writes are retried within storage.retry_s, a video whose reads fail for the
whole budget is a pending environment failure, and the rerun completes it; nothing is lost
(every video ends as exactly one status row).

Real parts: the moto S3 server behind the fault proxy (tests/faultproxy.py), real RetinaFace on
real clips, the local runner, Parquet read back from S3.
"""

from __future__ import annotations

import logging
import time

import boto3
import pytest

from pipeline.status import ENVIRONMENT_FAILURE
from schemas.config import load_config
from tests.conftest import asset, face_overrides
from tests.faultproxy import FaultProxy
from training.datasets.shards import read_sequences, read_shard_status
from training.preprocess import run_preprocess


@pytest.fixture
def proxy(s3_server):
    p = FaultProxy(s3_server).start()
    yield p
    p.stop()


@pytest.mark.slow
def test_preprocess_on_s3_loses_nothing_under_transient_faults(proxy, s3_server, s3_bucket, caplog):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for name in ("a.mpg", "b.mpg"):
        s3.upload_file(str(asset("videos/grid_swiz3n.mpg")), s3_bucket, f"in/{name}")
    root = f"s3://{s3_bucket}/shards"
    cfg = load_config(
        None,
        face_overrides()
        + ["faces.detector.every_k=5", "data.threads=1", "video.end_s=1.0"]
        + [f"data.videos=s3://{s3_bucket}/in", f"data.shards={root}"]
        # 6 s: waits of 0.5, 1 and 2 s fit, so a write's try after 3.5 s (past the 2.5 s of
        # failing writes below) is always allowed; a.mpg's reads give up after ~3.5 s.
        + [f"storage.endpoint_url={proxy.url}", "storage.retry_s=6"],
    )
    # a.mpg cannot be read for the whole run; every write under shards/ fails for 2.5 s from
    # the first shard write on (longer than the S3 client's own retries).
    faults = {"read": True, "writes_from": None}

    def fail(method: str, path: str) -> int:
        if faults["read"] and method == "GET" and path.split("?")[0].endswith("/in/a.mpg"):
            return 503
        if method in ("PUT", "POST", "DELETE") and "/shards/clips/" in path:
            faults["writes_from"] = faults["writes_from"] or time.monotonic()
        since = faults["writes_from"]
        if since and method in ("PUT", "POST", "DELETE") and "/shards/" in path:
            return 503 if time.monotonic() - since < 2.5 else 0
        return 0

    proxy.fail = fail
    with caplog.at_level(logging.WARNING, logger="pipeline.storage.retry"):
        first = run_preprocess(cfg, runner="local")
    status = {
        r["uri"].rsplit("/", 1)[-1]: r for r in read_shard_status(root, cfg.storage).to_pylist()
    }
    assert sorted(status) == ["a.mpg", "b.mpg"]  # one status row per video, none lost
    a, b = status["a.mpg"], status["b.mpg"]
    assert (first["ok"], first["pending"], first["failed"]) == (1, 1, 0) and "rerun" in first[
        "note"
    ]
    assert a["status"] == "failed" and a["failure_kind"] == ENVIRONMENT_FAILURE
    assert a["attempts"] == 1 and "storage unreachable" in a["reason"]
    assert "a rerun retries it" in a["reason"]
    assert b["status"] == "ok" and b["failure_kind"] is None and b["attempts"] == 1
    assert faults["writes_from"] is not None
    assert any(
        "writing" in r.getMessage() and "transient" in r.getMessage() for r in caplog.records
    )
    (seq,) = read_sequences(root, cfg.storage)
    assert seq["uri"].endswith("/in/b.mpg") and seq["n_frames"] > 10

    faults["read"] = False
    again = run_preprocess(cfg, runner="local")
    status = {
        r["uri"].rsplit("/", 1)[-1]: r for r in read_shard_status(root, cfg.storage).to_pylist()
    }
    assert (again["processed"], again["ok"], again["pending"], again["failed"]) == (1, 2, 0, 0)
    assert status["a.mpg"]["status"] == "ok" and status["a.mpg"]["attempts"] == 2
    assert status["a.mpg"]["failure_kind"] is None and "note" not in again
    assert len(read_sequences(root, cfg.storage)) == 2
    assert run_preprocess(cfg, runner="local")["processed"] == 0  # nothing left to do
