"""Reliability, round three (issue 23 part C) and issue 22's "the demo's model says what it
is": one writer per OUT, checkpoints checked before any work, non-finite outputs never `ok`,
bounded settings, and `training_data` carried from the synthetic corpus to every output.

Real parts: local files and the moto S3 server (`s3_server`), the real RetinaFace on a short
real clip, the local runner, the session's untrained `tiny_checkpoint`; CLI runs in-process.
"""

from __future__ import annotations

import copy
import json
import logging
import socket
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli import main
from pipeline import outlock
from pipeline.model.checkpoint import (
    Checkpoint,
    checkpoint_from_model,
    init_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from pipeline.outlock import LOCK_NAME, OutputLocked, acquire, output_lock, release
from pipeline.runner import read_status, run_inference
from pipeline.stages import END, FaceStage
from pipeline.storage import exists, read_text, write_text
from pipeline.writer import TimelineWriter
from schemas.config import config_hash, load_config
from schemas.model import ModelConfig
from schemas.tables import SYNTHETIC, VIDEOS
from tests.conftest import asset, face_overrides
from training.datasets.items import VideoItem, apply_manifest, read_manifest
from training.datasets.shards import read_sequences, training_data
from training.preprocess import run_preprocess
from training.tasks import FinetuneTask, TaskExtras

CLIP = "videos/grid_swiz3n.mpg"
SMALL = ["infer.window_frames=25", "infer.hop_frames=10", "infer.batch_size=4", "video.end_s=0.8"]
TINY = ModelConfig(arch="ssvaerr_tiny")


def _cfg(*extra: str, s3: str | None = None):
    over = face_overrides() + SMALL + list(extra)
    if s3:
        over.append(f"storage.endpoint_url={s3}")
    return load_config(None, over)


@pytest.fixture(params=["local", "s3"])
def out_root(request, tmp_path) -> str:
    """An output folder: a local path, or a prefix of a fresh bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "out")
    import uuid

    import boto3

    s3 = request.getfixturevalue("s3_server")
    bucket = f"b-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/out"


# -- finding 6: one writer per OUT --------------------------------------------------------------


def test_a_second_job_on_a_held_output_is_refused(out_root, tiny_checkpoint, capsys, caplog):
    """Another job holds OUT: `vaerr infer` stops with exit 2 naming the holder, writing
    nothing (before: exit 0 and both jobs wrote the same OUT)."""
    storage = load_config(None, []).storage
    clip = str(asset(CLIP))
    with output_lock(out_root, storage, "vaerr infer (the other job)"):
        sets = sum((["--set", s] for s in face_overrides() + SMALL), [])
        args = [clip, "--output", out_root, "--checkpoint", tiny_checkpoint, "--local", *sets]
        with caplog.at_level(logging.ERROR):
            code = main(["infer", *args])
        assert not exists(f"{out_root}/run.json", storage)
        assert not exists(f"{out_root}/videos", storage)
    err = capsys.readouterr().err + caplog.text
    assert code == 2
    assert "in use by another job" in err and "the other job" in err
    assert socket.gethostname() in err
    # the holder's lock is gone once it ends: the next job gets it
    assert not exists(f"{out_root}/{LOCK_NAME}", storage)
    release(out_root, storage, acquire(out_root, storage, "next"))


def test_two_jobs_at_once_one_wins(out_root, tiny_checkpoint, monkeypatch):
    """Two jobs with different configs started together on one OUT: exactly one runs, the
    other is refused; run.json and every status row carry the winner's config (before: both
    completed and the OUT mixed two configs). Both jobs meet at their first lock write, so
    they race for the lock itself (started only together, one could load its checkpoint
    while the other finished its whole job: in CI the later one met a completed OUT)."""
    configs = [_cfg("infer.output_hz=10"), _cfg("infer.output_hz=5")]
    clip = str(asset(CLIP))
    meet = threading.Barrier(2, timeout=60)
    met = threading.local()
    real_create = outlock.create_exclusive

    def create_together(*args, **kwargs):
        if not getattr(met, "done", False):
            met.done = True
            meet.wait()
        return real_create(*args, **kwargs)

    monkeypatch.setattr(outlock, "create_exclusive", create_together)
    results: list[object] = [None, None]

    def job(i: int) -> None:
        try:
            results[i] = run_inference(configs[i], [clip], out_root, tiny_checkpoint,
                                       runner="local")  # fmt: skip
        except BaseException as exc:  # shown by the assertion below, never lost in a thread
            results[i] = exc

    threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [i for i, r in enumerate(results) if isinstance(r, OutputLocked)]
    assert len(refused) == 1, results
    winner = configs[1 - refused[0]]
    storage = winner.storage
    record = json.loads(read_text(f"{out_root}/run.json", storage))
    assert record["state"] == "completed" and record["config_hash"] == config_hash(winner)
    assert set(read_status(out_root, storage).column("config_hash").to_pylist()) == {
        config_hash(winner)
    }


def _stale_record(kind: str) -> dict:
    """A lock left by a job that died: its process gone on this host, or another host's job
    silent for longer than the limit."""
    if kind == "dead_pid":
        return {"job": "x", "host": socket.gethostname(), "pid": 2**22 + 12345,
                "heartbeat": time.time(), "token": "old"}  # fmt: skip
    return {"job": "x", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600,
            "token": "old"}  # fmt: skip


def _take_over_at_once(out_root: str, storage, record: dict) -> tuple[list[dict], list]:
    """Four jobs find the same stale lock at once: (records of those that got it, refusals)."""
    write_text(f"{out_root}/{LOCK_NAME}", json.dumps(record), storage)
    start = threading.Barrier(4)
    won: list[dict] = []
    refused: list[Exception] = []

    def contender() -> None:
        start.wait()
        try:
            won.append(acquire(out_root, storage, "contender"))
        except OutputLocked as exc:
            refused.append(exc)

    threads = [threading.Thread(target=contender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


@pytest.mark.parametrize("kind", ["dead_pid", "old_heartbeat"])
def test_a_stale_lock_is_taken_over_once(out_root, kind, caplog):
    """A crashed job's lock is taken over, and when several jobs find it at once exactly one
    of them gets it (a compare-and-swap); a live one on another host is still refused. A hundred
    rounds locally: the local swap once left a gap in which a third job created the lock
    (two winners in 55 of 300 four-way takeovers before 1fcfaf3)."""
    storage = load_config(None, []).storage
    uri = f"{out_root}/{LOCK_NAME}"
    for _ in range(100 if out_root.startswith("/") else 3):
        with caplog.at_level(logging.WARNING, logger="pipeline.outlock"):
            won, refused = _take_over_at_once(out_root, storage, _stale_record(kind))
        assert len(won) == 1 and len(refused) == 3, won
        held = json.loads(read_text(uri, storage))
        assert held["token"] == won[0]["token"] and held["pid"] > 0
        release(out_root, storage, won[0])
        assert not exists(uri, storage)
    assert "taking over the lock" in caplog.text
    live = {**_stale_record(kind), "host": "elsewhere", "heartbeat": time.time()}
    write_text(uri, json.dumps(live), storage)
    with pytest.raises(OutputLocked, match="elsewhere"):
        acquire(out_root, storage, "late")


# -- finding 7 and 9: checkpoints checked before any work; non-finite outputs fail ----------


def _broken(kind: str) -> Checkpoint:
    ckpt = init_checkpoint(TINY, seed=5)
    bad = copy.deepcopy(ckpt)
    name = "gru.weight_hh_l0"
    t = bad.state_dict[name].clone()
    if kind == "nan":
        t.view(-1)[7] = float("nan")
    elif kind == "inf":
        t.view(-1)[0] = float("inf")
    elif kind == "wrong_shape":
        t = t[:, :5].contiguous()
    elif kind == "extra_tensor":
        bad.state_dict["head.extra"] = torch.zeros(3)
        return bad
    bad.state_dict[name] = t
    return bad


@pytest.mark.parametrize(
    "kind, words",
    [
        ("nan", "non-finite weights: tensor gru.weight_hh_l0"),
        ("inf", "non-finite weights: tensor gru.weight_hh_l0"),
        ("wrong_shape", "tensor gru.weight_hh_l0 has shape"),
        ("extra_tensor", "tensor head.extra is not part of the network"),
    ],
)
def test_a_bad_checkpoint_is_a_usage_error_before_any_work(tmp_path, kind, words, capsys):
    """NaN/inf weights or tensors that do not fit the declared arch: exit 2 naming the file
    and the tensor, no output folder (before: `ok` rows of NaN, or an internal error)."""
    path = tmp_path / f"{kind}.pt"
    save_checkpoint(_broken(kind), str(path))
    out = tmp_path / "out"
    sets = sum((["--set", s] for s in face_overrides() + SMALL), [])
    code = main(["infer", str(asset(CLIP)), "--output", str(out), "--checkpoint", str(path),
                 "--local", *sets])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and words in err, err
    assert "internal error" not in err and not out.exists()
    assert main(["model", "info", str(path)]) == 2


@pytest.mark.parametrize("relabel_config", [False, True], ids=["arch_only", "arch_and_config"])
def test_a_mislabelled_checkpoint_is_refused(tmp_path, relabel_config):
    """Tiny weights saved as ssvaerr_r18 would get an r18 model id: refused, naming the real
    arch. Valid checkpoints keep their id (content hash under the declared arch)."""
    ckpt = init_checkpoint(TINY, seed=2)
    good = tmp_path / "good.pt"
    save_checkpoint(ckpt, str(good))
    assert load_checkpoint(str(good)).model_id == ckpt.model_id
    assert ckpt.model_id.startswith("ssvaerr_tiny-")
    d = ckpt.to_dict()
    d["arch"] = "ssvaerr_r18"
    if relabel_config:
        d["model_config"] = {**d["model_config"], "arch": "ssvaerr_r18"}
    bad = tmp_path / "mislabelled.pt"
    save_checkpoint(d, str(bad))
    with pytest.raises(ValueError, match="holds ssvaerr_tiny weights|model_config says") as e:
        load_checkpoint(str(bad))
    assert str(bad) in str(e.value)


def _window_rows(stage: FaceStage, values: np.ndarray) -> dict[str, np.ndarray]:
    head = {"video_id": "va", "uri": "a.mp4", "source_etag": "e"}
    w = {
        "crop": np.zeros((4, 96, 96), np.uint8),
        "frame_index": np.arange(4, dtype=np.int32),
        "box_xyxy": np.ones((4, 4), np.float32),
        "det_score": np.ones(4, np.float32),
        "interpolated": np.zeros(4, bool),
    }
    end = {**head, "kind": END, "status": "ok", "frames": 4, "tracks": 1, "windows": 1}
    batch = stage._stack([stage._window(head, 0, 0, w), end])
    batch.pop("crops")
    width = stage.window
    aro = np.zeros((2, width), np.float32)
    aro[0, :4] = values
    return {**batch, "arousal": aro, "valence": np.zeros((2, width), np.float32)}


@pytest.mark.parametrize(
    "values, dtype",
    [
        (np.array([0.1, np.nan, np.nan, 0.2]), "float32"),
        (np.array([0.1, np.inf, -np.inf, 0.2]), "float16"),
    ],
    ids=["nan", "half_overflow"],
)
def test_non_finite_outputs_are_a_failed_row(tmp_path, values, dtype):
    """The network gives NaN/inf at run time: a failed status row naming the cause, no
    timeline (before: an `ok` video of NaN rows labelled Neutral)."""
    cfg = load_config(None, ["infer.window_frames=4", "infer.hop_frames=2",
                             "infer.output_hz=25", f"model.dtype={dtype}"])  # fmt: skip
    stage = FaceStage(cfg, pipeline=object())  # type: ignore[arg-type]
    writer = TimelineWriter(cfg, str(tmp_path), "m", False)
    writer.consume(_window_rows(stage, values.astype(np.float32)))
    assert writer.pending == [] and writer.counts["ok"] == 0 and writer.counts["failed"] == 1
    row = pq.read_table(tmp_path / "videos" / "va.parquet").to_pylist()[0]
    assert row["status"] == "failed" and row["failure_kind"] == "video"
    assert "NonFiniteOutput: the model gave 2 NaN/inf" in row["reason"]
    assert ("model.dtype=float32" in row["reason"]) == (dtype != "float32")
    assert not (tmp_path / "timelines" / "va.parquet").exists()


# -- finding 10: bounded settings, NaN is not a number ------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["query", "spikes", "{out}", "--window-seconds", "1e9"], "less than or equal to 60"),
        (["query", "happy", "{out}", "--min-seconds", "nan"], "not a number"),
        (["query", "sql", "{out}", "SELECT 1", "--timeout-s", "nan"], "not a number"),
        (["query", "sql", "{out}", "SELECT 1", "--memory-mb", "99999999"], "outside [16,"),
        (
            ["query", "happy", "{out}", "--set", "faces.track.min_length=100000"],
            "faces.track.min_length: Input should be less than or equal to 250",
        ),
        (
            ["query", "happy", "{out}", "--set", "faces.detector.threshold=nan"],
            "faces.detector.threshold: not a number",
        ),
        (["query", "happy", "{out}", "--set", "train.lr=.nan"], "train.lr: not a number"),
        (
            ["query", "happy", "{out}", "--set", "infer.batch_size=1000000000"],
            "less than or equal to 1024",
        ),
    ],  # fmt: skip
)
def test_unbounded_settings_are_refused_naming_the_limit(tmp_path, argv, words, capsys):
    """Before: window 1e9 ran out of memory ("larger machine"), min_length had no bound,
    threshold=nan said "should be <= 1". Now exit 2, the message names the limit."""
    argv = [a.replace("{out}", str(tmp_path)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusal of an option's value
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and words in err, err


def test_every_size_count_and_duration_field_has_an_upper_bound():
    """No int or float config field of a size, count or duration is unbounded (loss weights,
    learning rates and temperatures are not sizes)."""
    import typing

    import annotated_types as at

    from schemas.base import Section
    from schemas.config import VaerrConfig
    from schemas.query import HappyConfig, SpikeConfig

    not_sizes = {"w_ccc", "w_mse", "w_ce", "w_ncce", "l2", "mean", "std", "lr", "min_lr",
                 "weight_decay", "teacher_temp", "student_temp", "brightness", "contrast",
                 "fmin", "fmax", "log_floor", "grad_clip", "split_fractions", "scale", "betas",
                 "stable_points", "angles"}  # fmt: skip
    open_ended = []

    def walk(cls: type) -> None:
        for name, f in cls.model_fields.items():
            args = typing.get_args(f.annotation) or (f.annotation,)
            for a in args:
                if isinstance(a, type) and issubclass(a, Section):
                    walk(a)
            if any(a in (int, float) for a in args) and name not in not_sizes:
                if not any(isinstance(m, at.Le | at.Lt) for m in f.metadata):
                    open_ended.append(f"{cls.__name__}.{name}")

    walk(VaerrConfig)
    walk(HappyConfig)
    walk(SpikeConfig)
    assert open_ended == []


# -- issue 22: training_data from the synthetic corpus to every output ------------------------


def test_synthetic_manifest_marks_items_and_sequences(tmp_path):
    """make_corpus's manifest says synthetic; the dataset reader carries it to the items."""
    from training.synth.corpus import MANIFEST_COLUMNS

    assert "synthetic" in MANIFEST_COLUMNS
    (tmp_path / "m.csv").write_text("video,split,synthetic\nvideos/a.mp4,train,True\n"
                                    "videos/b.mp4,train,\n")  # fmt: skip
    keys = ("videos/a.mp4", "videos/b.mp4")
    items = [VideoItem("generic", k, f"/x/{k}", "train", "s") for k in keys]
    items = apply_manifest(items, read_manifest(str(tmp_path / "m.csv")))
    assert [it.synthetic for it in items] == [True, False]
    assert training_data([{"dataset": "generic", "synthetic": False},
                          {"dataset": "generic", "synthetic": True}]) == SYNTHETIC  # fmt: skip
    assert training_data([{"dataset": "sewa", "synthetic": None}]) == "sewa"
    assert training_data([]) is None


@pytest.mark.parametrize("synthetic", [True, False])
def test_preprocess_carries_synthetic_into_the_index(tmp_path, synthetic):
    """A synthetic item's sequences say so in the shards' index (and preprocess holds the
    output lock while it writes: none is left behind)."""
    root = tmp_path / "shards"
    cfg = _cfg(f"data.shards={root}", "faces.detector.every_k=5", "data.threads=1")
    clip = str(asset(CLIP))
    item = VideoItem("generic", "clip", clip, "pretext", "s1", synthetic=synthetic)
    summary = run_preprocess(cfg, runner="local", items=[item])
    assert summary["ok"] == 1
    seqs = read_sequences(str(root))
    assert seqs and all(s["synthetic"] is synthetic for s in seqs)
    assert not (root / LOCK_NAME).exists()


@pytest.mark.parametrize("data", [SYNTHETIC, "sewa", None])
def test_every_output_says_what_trained_the_model(tmp_path, data, capsys, caplog):
    """Fine-tuning writes provenance training_data; infer puts it in each status row,
    run.json, the summary line (plus a warning when synthetic); `model info` prints it."""
    cfg = _cfg()
    model = init_checkpoint(TINY, seed=1).build()
    task = FinetuneTask(cfg.model_copy(update={"model": TINY}), TaskExtras(training_data=data))
    ckpt = task.product(model, 0, {})
    assert ckpt.provenance["training_data"] == data and ckpt.training_data == data
    path = tmp_path / "m.pt"
    save_checkpoint(ckpt, str(path))
    out = tmp_path / "out"
    sets = sum((["--set", s] for s in face_overrides() + SMALL), [])
    with caplog.at_level(logging.WARNING, logger="pipeline.runner"):
        code = main(["infer", str(asset(CLIP)), "--output", str(out), "--checkpoint",
                     str(path), "--local", *sets])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["training_data"] == data
    assert json.loads((out / "run.json").read_text())["training_data"] == data
    status = read_status(str(out), cfg.storage)
    assert status.schema.equals(VIDEOS)
    assert status.column("training_data").to_pylist() == [data]
    assert ("SYNTHETIC" in caplog.text) == (data == SYNTHETIC)
    assert main(["model", "info", str(path)]) == 0
    info = capsys.readouterr().out
    assert f"training_data: {data or 'unknown'}" in info
    assert ("synthetic (rendered) faces" in info) == (data == SYNTHETIC)


def test_old_status_files_read_back_with_null_training_data(tmp_path):
    """Status rows written before the column existed read back with training_data null."""
    old = VIDEOS.remove(VIDEOS.get_field_index("training_data"))
    row = {f.name: None for f in old} | {"video_id": "v", "uri": "a.mp4", "status": "ok"}
    (tmp_path / "videos").mkdir()
    pq.write_table(pa.Table.from_pylist([row], old), tmp_path / "videos" / "v.parquet")
    back = read_status(str(tmp_path), load_config(None, []).storage)
    assert back.schema.equals(VIDEOS) and back.column("training_data").to_pylist() == [None]


def test_a_checkpoint_from_model_keeps_its_id_and_training_data(tmp_path):
    """Provenance (training_data included) is outside the model id: re-saving keeps it."""
    model = init_checkpoint(TINY, seed=4).build()
    a = checkpoint_from_model(model, TINY, provenance={"training_data": SYNTHETIC})
    b = checkpoint_from_model(model, TINY, provenance={"training_data": "sewa"})
    assert a.model_id == b.model_id and a.training_data == SYNTHETIC


def test_a_store_without_conditional_writes_warns(caplog):
    """memory:// (like any fsspec store but local files and S3) cannot create exclusively:
    the lock still refuses a second job, and a warning says the guarantee is weaker."""
    import uuid

    out = f"memory://vaerr-{uuid.uuid4().hex[:8]}/out"
    with caplog.at_level(logging.WARNING, logger="pipeline.storage"):
        with output_lock(out, None, "first"):
            with pytest.raises(OutputLocked, match="first"):
                acquire(out, None, "second")
    assert "no conditional writes" in caplog.text
    assert not exists(f"{out}/{LOCK_NAME}")
