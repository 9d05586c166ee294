"""Failed or discarded writes never appear, on the real S3 API (moto server) and locally:
`atomic_write` blocks that raise, `ParquetStream.close(ok=False)`, and `vaerr faces` on a bad
video (no empty tracks/clips published, no stale ones left beside a new config)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipeline.storage import ParquetStream, atomic_write, write_text
from schemas.config import StorageConfig
from tests.conftest import face_overrides

SCHEMA = pa.schema([("a", pa.int32())])


def keys(endpoint: str, bucket: str) -> list[str]:
    """Every object key of the bucket."""
    r = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in r.get("Contents", []))


def open_uploads(endpoint: str, bucket: str) -> list:
    """Multipart uploads started and neither completed nor aborted."""
    r = boto3.client("s3", endpoint_url=endpoint).list_multipart_uploads(Bucket=bucket)
    return r.get("Uploads", [])


def test_failed_and_discarded_writes_leave_nothing_on_s3(s3_server, s3_bucket):
    st = StorageConfig()
    base = f"s3://{s3_bucket}/out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(f"{base}/small.bin", st) as f:
            f.write(b"x" * 100)
            raise RuntimeError("boom")
    # Over the 8 MiB block size: parts were uploaded; the multipart upload must be aborted.
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(f"{base}/big.bin", st) as f:
            for _ in range(3):
                f.write(b"x" * (6 << 20))
            raise RuntimeError("boom")
    stream = ParquetStream(f"{base}/t.parquet", SCHEMA, st)
    stream.write(pa.table({"a": pa.array([1, 2], pa.int32())}))
    stream.close(ok=False)
    assert keys(s3_server, s3_bucket) == []
    assert open_uploads(s3_server, s3_bucket) == []

    # Successful writes appear whole under their own names, and nothing else is left.
    write_text(f"{base}/ok.txt", "hi", st)
    stream = ParquetStream(f"{base}/t.parquet", SCHEMA, st)
    stream.write(pa.table({"a": pa.array([1, 2], pa.int32())}))
    stream.close()
    assert keys(s3_server, s3_bucket) == ["out/ok.txt", "out/t.parquet"]
    body = boto3.client("s3", endpoint_url=s3_server).get_object(
        Bucket=s3_bucket, Key="out/t.parquet"
    )["Body"]
    assert pq.read_table(pa.BufferReader(body.read()))["a"].to_pylist() == [1, 2]


def test_failed_local_write_leaves_neither_file_nor_temporary(tmp_path: Path):
    target = tmp_path / "sub" / "x.parquet"
    with pytest.raises(ValueError):
        with atomic_write(str(target)) as f:
            f.write(b"partial")
            raise ValueError("no")
    stream = ParquetStream(str(target), SCHEMA)
    stream.close(ok=False)
    assert list((tmp_path / "sub").iterdir()) == []


def test_faces_on_a_bad_s3_video_publishes_no_tables(s3_server, s3_bucket, capsys):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="in/bad.mp4", Body=b"\x00\x01 not a video " * 200)
    sets = [x for o in face_overrides() for x in ("--set", o)]
    argv = ["faces", f"s3://{s3_bucket}/in/bad.mp4", "-o", f"s3://{s3_bucket}/faces", *sets]
    code = main([*argv, "--set", "storage.retry_s=0"])
    assert code == 1
    assert '"status": "failed"' in capsys.readouterr().out.strip().splitlines()[-1]
    published = [k for k in keys(s3_server, s3_bucket) if k.startswith("faces/")]
    assert published == ["faces/config.yaml"], published  # no empty tracks/clips
    assert open_uploads(s3_server, s3_bucket) == []


def test_failed_faces_run_removes_an_earlier_runs_tables(tmp_path: Path, capsys):
    out = tmp_path / "faces"
    out.mkdir()
    for name in ("tracks.parquet", "clips.parquet"):
        pq.write_table(pa.table({"a": [1]}), out / name)  # an earlier run's tables
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"garbage" * 100)
    sets = [x for o in face_overrides() for x in ("--set", o)]
    assert main(["faces", str(bad), "-o", str(out), *sets]) == 1
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
