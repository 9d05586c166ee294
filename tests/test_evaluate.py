"""`vaerr evaluate`: whole-sequence scoring equals the network run in one piece; the windows
protocol is the batch job's windows and blend; reports agree with their own predictions."""

from __future__ import annotations

import json
from hashlib import sha256

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli import main
from pipeline.model.registry import build_model
from pipeline.windows import blend_weights, window_starts
from schemas.config import load_config
from schemas.evaluation import EVAL_METRICS, EVAL_PER_SEQUENCE, eval_predictions_schema
from tests.conftest import asset, face_overrides
from training.evaluate import predict_whole, predict_windows
from training.metrics import ccc_concat
from training.preprocess import run_preprocess


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine a second one only spins."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("ssvaerr_tiny").eval()


def test_predict_whole_is_the_network_in_one_piece(model):
    crops = np.random.default_rng(0).integers(0, 256, (40, 96, 96), dtype=np.uint8)
    with torch.inference_mode():
        ref = model(torch.from_numpy(crops)[None])
    for chunk in (7, 16, 64):  # memory bound only: the result never depends on it
        out = predict_whole(model, crops, chunk)
        np.testing.assert_allclose(out["arousal"], ref.arousal[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(out["valence"], ref.valence[0].numpy(), atol=1e-5)


def test_predict_windows_is_the_batch_jobs_blend(model):
    crops = np.random.default_rng(1).integers(0, 256, (53, 96, 96), dtype=np.uint8)
    w, h = 20, 8
    out = predict_windows(model, crops, w, h, batch_size=3)
    num = np.zeros(53)
    den = np.zeros(53)
    for s in window_starts(53, w, h):  # an independent blend of independently run windows
        with torch.inference_mode():
            a = model(torch.from_numpy(crops[s : s + w])[None]).arousal[0].numpy()
        num[s : s + w] += blend_weights(w) * a
        den[s : s + w] += blend_weights(w)
    np.testing.assert_allclose(out["arousal"], num / den, atol=1e-5)
    # one window covering the sequence is the whole-sequence protocol
    whole = predict_windows(model, crops, 60, 30)
    np.testing.assert_allclose(whole["valence"], predict_whole(model, crops)["valence"], atol=1e-5)


@pytest.fixture(scope="module")
def labelled_shards(tmp_path_factory):
    """Two GRID clips with known labels (test split) as shards."""
    root = tmp_path_factory.mktemp("evalshards")
    videos = root / "videos"
    videos.mkdir()
    rows = ["video,time_s,arousal,valence"]
    for i, name in enumerate(("grid_bbaf2n.mpg", "grid_lbbc2a.mpg")):
        (videos / name).symlink_to(asset(f"videos/{name}"))
        rows += [f"{name},{k / 10},{np.sin(k / 5 + i):.4f},{np.cos(k / 7):.4f}" for k in range(31)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "manifest.csv").write_text("video,split\ngrid_bbaf2n.mpg,test\ngrid_lbbc2a.mpg,test\n")
    over = face_overrides() + [
        "faces.detector.every_k=5", "data.threads=1", f"data.videos={videos}",
        f"data.labels={root / 'labels.csv'}", f"data.manifest={root / 'manifest.csv'}",
        f"data.shards={root / 'shards'}",
    ]  # fmt: skip
    assert run_preprocess(load_config(None, over), runner="local")["ok"] == 2
    return str(root / "shards")


def test_evaluate_cli_reports_both_protocols(labelled_shards, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--checkpoint", tiny_checkpoint, "-o", str(out)]
    for s in (f"data.shards={labelled_shards}", "infer.window_frames=25", "infer.hop_frames=10"):
        args += ["--set", s]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sequences"] == 2 and summary["untrained"] is True
    assert set(summary["protocols"]) == {"sequence", "windows"}
    assert json.loads((out / "summary.json").read_text())["model_id"] == summary["model_id"]

    declared = {  # the report tables are written exactly as schemas/evaluation.py declares
        "predictions": eval_predictions_schema(["sequence", "windows"]),
        "metrics": EVAL_METRICS,
        "per_sequence": EVAL_PER_SEQUENCE,
    }
    for name, schema in declared.items():
        assert pq.read_schema(out / f"{name}.parquet").remove_metadata().equals(schema), name
    pred = pq.read_table(out / "predictions.parquet").to_pandas()
    metrics = pq.read_table(out / "metrics.parquet").to_pandas()
    per_seq = pq.read_table(out / "per_sequence.parquet").to_pandas()
    assert len(per_seq) == 4 and set(per_seq.protocol) == {"sequence", "windows"}
    for proto in ("sequence", "windows"):
        for target in ("arousal", "valence"):
            groups = [g for _, g in pred.groupby("video_id")]
            pooled = ccc_concat(
                [g[f"{target}_{proto}"].to_numpy() for g in groups],
                [g[f"{target}_true"].to_numpy() for g in groups],
            )
            row = metrics[
                (metrics.protocol == proto) & (metrics.target == target)
                & (metrics.scope == "pooled")
            ]  # fmt: skip
            assert row.ccc.item() == pytest.approx(pooled, abs=1e-6)
            assert summary["protocols"][proto][target]["ccc"] == pytest.approx(pooled, abs=1e-6)
            mean_seq = per_seq[per_seq.protocol == proto][f"ccc_{target}"].mean()
            scope = metrics[(metrics.protocol == proto) & (metrics.target == target)
                            & (metrics.scope == "mean_per_sequence")]  # fmt: skip
            assert scope.ccc.item() == pytest.approx(mean_seq, abs=1e-6)
    # 25-frame windows see less context than the whole sequence: the protocols differ
    assert not np.allclose(pred.arousal_sequence, pred.arousal_windows, atol=1e-4)
    with pytest.raises(ValueError, match="no labelled sequences"):
        from training.evaluate import run_evaluate

        cfg = load_config(None, [f"data.shards={labelled_shards}", "evaluate.splits=[train]"])
        run_evaluate(cfg, tiny_checkpoint, str(tmp_path / "none"))


def test_a_named_checkpoint_behind_config_credentials_loads(
    labelled_shards, tiny_checkpoint, s3_server, s3_bucket, tmp_path, monkeypatch, capsys
):
    """A registry and the checkpoint it lists on an S3 endpoint that only the config reaches
    (storage.endpoint_url, key, secret; no AWS env vars): `vaerr infer`, `vaerr evaluate` and
    `vaerr model info` load it by name. Before (issue 25), the storage settings were built
    from the checkpoint's name, which is no URI: none at all, so the registry was read
    without endpoint or credentials."""
    import boto3

    data = open(tiny_checkpoint, "rb").read()
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.put_object(Bucket=s3_bucket, Key="models/tiny.pt", Body=data)
    sha = sha256(data).hexdigest()
    entry = f"team-tiny:\n  uri: s3://{s3_bucket}/models/tiny.pt\n  sha256: {sha}\n"
    s3.put_object(Bucket=s3_bucket, Key="models/registry.yaml", Body=entry.encode())
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    sets = [
        f"storage.endpoint_url={s3_server}", "storage.key=testing",
        "storage.secret=testing-secret", f"cache_dir={tmp_path / 'cache'}",
        f"model.registry_file=s3://{s3_bucket}/models/registry.yaml",
        f"data.shards={labelled_shards}", "infer.window_frames=25", "infer.hop_frames=10",
        "video.end_s=0.8", *face_overrides(),
    ]  # fmt: skip
    flags = sum((["--set", s] for s in sets), [])
    assert main(["model", "info", "team-tiny", *flags]) == 0
    info = capsys.readouterr().out
    model_id = next(ln.split(": ")[1] for ln in info.splitlines() if ln.startswith("model_id:"))
    out = tmp_path / "out"
    clip = str(asset("videos/grid_swiz3n.mpg"))
    args = ["infer", clip, "-o", str(out), "--checkpoint", "team-tiny", "--local", *flags]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ok"] == 1
    assert json.loads((out / "run.json").read_text())["model_id"] == model_id
    assert main(["evaluate", "--checkpoint", "team-tiny", "-o", str(tmp_path / "ev"), *flags]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model_id"] == model_id and summary["sequences"] == 2
