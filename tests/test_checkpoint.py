"""Checkpoints: bit-exact round trips (local, file://, a local S3 server), refusal of pickled
objects, model ids, encoder loading reports, the named-checkpoint registry and the CLI."""

from __future__ import annotations

import argparse
import hashlib
import io
import socket
from pathlib import Path

import pytest
import torch

from pipeline.model import (
    Checkpoint,
    build_encoder,
    build_model,
    cached_model_id,
    checkpoint_from_model,
    init_checkpoint,
    load_checkpoint,
    load_encoder_weights,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from pipeline.model.checkpoint import FORMAT
from pipeline.storage import storage_options
from schemas.config import StorageConfig
from schemas.model import ModelConfig

TINY = ModelConfig(arch="ssvaerr_tiny")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never touch the user's ~/.cache/vaerr or registry."""
    monkeypatch.setenv("VAERR_CACHE", str(tmp_path / "vaerr-cache"))
    monkeypatch.delenv("VAERR_MODEL_REGISTRY", raising=False)


@pytest.fixture(scope="module")
def ckpt() -> Checkpoint:
    return init_checkpoint(TINY, seed=3)


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _crops(t: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, t, 96, 96), dtype=torch.uint8, generator=g)


# --- round trips --------------------------------------------------------------------------------


def test_round_trip_local_bit_exact(tmp_path, ckpt):
    path = tmp_path / "sub" / "tiny.pt"
    assert save_checkpoint(ckpt, str(path)) == str(path)
    back = load_checkpoint(str(path))
    _same_weights(ckpt.state_dict, back.state_dict)
    assert torch.equal(ckpt.bin_centres, back.bin_centres)
    assert back.arch == "ssvaerr_tiny" and back.untrained is True and back.version == 1
    assert back.preprocessing == ckpt.preprocessing and back.provenance == ckpt.provenance
    assert back.model_config == ckpt.model_config
    assert back.model_id == ckpt.model_id and back.model_id.startswith("ssvaerr_tiny-")
    # the rebuilt network computes exactly what the original did
    m1, m2 = ckpt.build(), back.build()
    with torch.no_grad():
        assert torch.equal(m1(_crops()).arousal, m2(_crops()).arousal)
    # file:// URIs too
    back2 = load_checkpoint(path.as_uri())
    _same_weights(ckpt.state_dict, back2.state_dict)
    # no stray temporary files
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pt"]


def test_checkpoint_contents(ckpt):
    d = ckpt.to_dict()
    assert d["format"] == FORMAT
    assert set(d) == {
        "format",
        "version",
        "arch",
        "model_config",
        "state_dict",
        "bin_centres",
        "preprocessing",
        "provenance",
        "untrained",
    }
    assert d["bin_centres"].shape == (2, 20)
    assert d["preprocessing"] == {
        "fps": 25.0,
        "crop_size": 96,
        "grayscale": True,
        "mean": 0.421,
        "std": 0.165,
        "detector": "retinaface",  # the detector the crops were found with (issue 26)
        "landmarks": "fan68",
        "crop_scale": 1.3,
    }
    # resolved sizes are stored, so a checkpoint describes its network without the registry
    assert d["model_config"]["widths"] == [8, 16, 32, 64] and d["model_config"]["gru_hidden"] == 32
    for key in ("created", "by", "data", "epochs", "seed", "git_sha"):
        assert key in d["provenance"]
    assert d["provenance"]["epochs"] == 0


def test_model_id_stable_and_content_based(tmp_path, ckpt):
    again = init_checkpoint(TINY, seed=3)
    assert again.model_id == ckpt.model_id  # same weights, different creation time
    other = init_checkpoint(TINY, seed=4)
    assert other.model_id != ckpt.model_id
    model = ckpt.build()
    with torch.no_grad():
        model.head.bias[0] += 1e-3
    trained = checkpoint_from_model(model, TINY, provenance={"epochs": 5, "data": "synthetic"})
    assert trained.model_id != ckpt.model_id and trained.untrained is False
    assert trained.provenance["epochs"] == 5


def test_model_id_hashed_once_per_version_of_the_file(tmp_path, ckpt, monkeypatch):
    """The id of a checkpoint file is remembered in the weights cache under its URI and
    version: the second job does not hash; a file rewritten in place (new weights, new
    version) is hashed again and gets its own id; a corrupt cache is ignored."""
    import json
    import os

    from pipeline.model import checkpoint as module

    path, cache = str(tmp_path / "m.pt"), str(tmp_path / "cache")
    save_checkpoint(ckpt, path)
    first = cached_model_id(path, load_checkpoint(path), cache=cache)
    assert first == ckpt.model_id
    hashed = []
    monkeypatch.setattr(module, "model_id", lambda c: hashed.append(c) or "hashed-again")
    assert cached_model_id(path, load_checkpoint(path), cache=cache) == first and not hashed

    other = init_checkpoint(TINY, seed=4)
    save_checkpoint(other, path)
    os.utime(path, ns=(1, 1))  # a new mtime even within the clock's resolution
    assert cached_model_id(path, load_checkpoint(path), cache=cache) == "hashed-again"
    assert len(hashed) == 1
    monkeypatch.undo()
    (Path(cache) / module.MODEL_IDS_FILE).write_text("{not json")
    assert cached_model_id(path, other, cache=cache) == other.model_id != first
    assert other.model_id in json.loads((Path(cache) / module.MODEL_IDS_FILE).read_text()).values()


def test_rebuild_uses_runtime_fields(ckpt):
    runtime = ModelConfig(arch="ssvaerr_r18", finetune="frozen_encoder", gru_hidden=999)
    m = ckpt.build(runtime)  # architecture from the checkpoint, runtime from the config
    assert m.arch == "ssvaerr_tiny" and m.gru.hidden_size == 32
    assert m.finetune_mode == "frozen_encoder" and not m.training
    auto = ckpt.build(device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(auto.parameters()).device.type == expected


def test_kmeans_centres_travel(tmp_path):
    model = build_model(TINY)
    centres = torch.stack([torch.linspace(-0.8, 0.8, 20), torch.linspace(-0.6, 0.9, 20)])
    model.set_bin_centres(centres)
    c = checkpoint_from_model(model, TINY.model_copy(update={"bin_edges": "kmeans"}))
    save_checkpoint(c, str(tmp_path / "k.pt"))
    back = load_checkpoint(str(tmp_path / "k.pt"))
    assert torch.equal(back.bin_centres, centres)
    assert torch.equal(back.build().bin_centres, centres)
    assert back.model_config["bin_edges"] == "kmeans"


# --- refusals ---------------------------------------------------------------------------------


class Evil:
    """Stands for any pickled object (which could run code when unpickled)."""


def test_pickled_object_refused(tmp_path, ckpt):
    payload = ckpt.to_dict()
    payload["provenance"] = {"by": Evil()}
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = tmp_path / "evil.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_checkpoint(str(path))
    # and save refuses to write one
    with pytest.raises(TypeError, match="plain types"):
        save_checkpoint(payload, str(tmp_path / "no.pt"))


def test_not_a_checkpoint_and_newer_version(tmp_path, ckpt):
    sd = tmp_path / "sd.pt"
    torch.save(ckpt.state_dict, sd)
    with pytest.raises(ValueError, match="bare state dict"):
        load_checkpoint(str(sd))
    newer = ckpt.to_dict()
    newer["version"] = 99
    save_checkpoint(newer, str(tmp_path / "new.pt"))
    with pytest.raises(ValueError, match="upgrade"):
        load_checkpoint(str(tmp_path / "new.pt"))
    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / "missing.pt"))


# --- encoder weights --------------------------------------------------------------------------


def test_load_encoder_weights_report():
    torch.manual_seed(1)
    pretext = build_encoder(TINY)
    state = {f"module.online.encoder.{k}": v.clone() for k, v in pretext.state_dict().items()}
    state["module.online.projector.weight"] = torch.zeros(4, 64)
    bad = "module.online.encoder.trunk.layer4.1.conv2.weight"
    state[bad] = torch.zeros(3, 3)  # wrong shape: must be skipped, not crash
    del state["module.online.encoder.frontend.bn.running_var"]  # absent: reported
    torch.manual_seed(2)
    model = build_model(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_encoder_weights(model, {"state_dict": state, "epoch": 3})
    assert report.prefix == "module.online.encoder."
    assert set(report.skipped) == {"trunk.layer4.1.conv2.weight", "frontend.bn.running_var"}
    assert "shape mismatch" in report.skipped["trunk.layer4.1.conv2.weight"]
    assert "absent" in report.skipped["frontend.bn.running_var"]
    assert report.unused == ["module.online.projector.weight"]
    assert not report.complete
    enc_names = set(pretext.state_dict())
    assert set(report.loaded) == enc_names - set(report.skipped)
    after = model.state_dict()
    for name in report.loaded:
        assert torch.equal(after[f"encoder.{name}"], pretext.state_dict()[name]), name
    for name in report.skipped:
        assert torch.equal(after[f"encoder.{name}"], before[f"encoder.{name}"]), name
    for k in before:  # GRU and head untouched
        if not k.startswith("encoder."):
            assert torch.equal(after[k], before[k]), k
    assert "skipped trunk.layer4.1.conv2.weight: shape mismatch" in str(report)


def test_load_encoder_weights_from_ssvaerr_checkpoint_and_no_match(ckpt):
    model = build_model(TINY)
    report = load_encoder_weights(model, ckpt)  # a whole SS-VAERR checkpoint: prefix encoder.
    assert report.prefix == "encoder." and report.complete
    assert any(u.startswith("gru.") for u in report.unused)
    with pytest.raises(ValueError, match="no encoder tensor matched"):
        load_encoder_weights(model, {"foo.weight": torch.zeros(2)})


# --- S3 (moto) ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    import boto3

    for k, v in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"models-{_free_port()}"
    client.create_bucket(Bucket=bucket)
    opts = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": s3_endpoint}}
    return bucket, opts, client


def test_round_trip_s3_bit_exact(s3, ckpt):
    bucket, opts, client = s3
    uri = f"s3://{bucket}/runs/1/tiny.pt"
    save_checkpoint(ckpt, uri, storage_options=opts)
    assert client.head_object(Bucket=bucket, Key="runs/1/tiny.pt")["ContentLength"] > 0
    back = load_checkpoint(uri, storage_options=opts)
    _same_weights(ckpt.state_dict, back.state_dict)
    assert back.model_id == ckpt.model_id
    # storage options derived from the run config work the same
    storage = StorageConfig(endpoint_url=opts["client_kwargs"]["endpoint_url"], key="k", secret="s")
    model, loaded = load_model(uri, storage_options=storage_options(storage, uri))
    assert loaded.model_id == ckpt.model_id and not model.training


# --- named checkpoints --------------------------------------------------------------------------


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_registry_local_and_errors(tmp_path, ckpt, monkeypatch):
    local = tmp_path / "ckpts" / "tiny.pt"
    save_checkpoint(ckpt, str(local))
    reg = tmp_path / "models.yaml"
    reg.write_text(
        f"team-tiny:\n  uri: ckpts/tiny.pt\n  sha256: {_sha(local)}\n"
        f"bad-sum:\n  uri: {local}\n  sha256: {'b' * 64}\n"
    )
    path = resolve_checkpoint("team-tiny", str(reg), cache_dir=str(tmp_path / "cache"))
    assert Path(path).resolve() == local.resolve()  # relative to the registry file
    model, loaded = load_model("team-tiny", registry_file=str(reg))
    assert loaded.model_id == ckpt.model_id
    with pytest.raises(ValueError, match="checksum"):
        resolve_checkpoint("bad-sum", str(reg))
    with pytest.raises(FileNotFoundError, match="registry"):
        resolve_checkpoint("nobody", str(reg))
    # a plain path passes through unchanged; the env var names a default registry
    assert resolve_checkpoint(str(local)) == str(local)
    monkeypatch.setenv("VAERR_MODEL_REGISTRY", str(reg))
    assert Path(resolve_checkpoint("team-tiny")).resolve() == local.resolve()
    bad = tmp_path / "bad.yaml"
    bad.write_text("x:\n  url: a\n")
    with pytest.raises(ValueError, match="uri"):
        resolve_checkpoint("x", str(bad))
    bad.write_text(f"x:\n  uri: a.pt\n  sha256: {'0' * 64}\n")  # YAML reads an int
    with pytest.raises(ValueError, match="quote"):
        resolve_checkpoint("x", str(bad))


def test_registry_remote_cached_and_checked(s3, tmp_path, ckpt):
    bucket, opts, client = s3
    local = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, str(local))
    client.upload_file(str(local), bucket, "team/tiny.pt")
    reg = tmp_path / "models.yaml"
    reg.write_text(
        f"tiny-v1:\n  uri: s3://{bucket}/team/tiny.pt\n  sha256: {_sha(local)}\n"
        f"tiny-nosum:\n  uri: s3://{bucket}/team/tiny.pt\n"
        f"tiny-wrong:\n  uri: s3://{bucket}/team/tiny.pt\n  sha256: {'a' * 64}\n"
    )
    cache = tmp_path / "cache"
    path = resolve_checkpoint("tiny-v1", str(reg), str(cache), opts)
    assert Path(path) == cache / "checkpoints" / "tiny-v1" / "tiny.pt"
    assert _sha(Path(path)) == _sha(local)
    client.delete_object(Bucket=bucket, Key="team/tiny.pt")  # cached copy is used from now on
    assert resolve_checkpoint("tiny-v1", str(reg), str(cache), opts) == path
    assert load_checkpoint(path).model_id == ckpt.model_id
    with pytest.raises(ValueError, match="sha256"):
        resolve_checkpoint("tiny-nosum", str(reg), str(cache), opts)
    client.upload_file(str(local), bucket, "team/tiny.pt")
    with pytest.raises(ValueError, match="checksum"):
        resolve_checkpoint("tiny-wrong", str(reg), str(cache), opts)


# --- the CLI --------------------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    from jobs import model as model_cmd

    parser = argparse.ArgumentParser(prog="vaerr")
    sub = parser.add_subparsers(dest="command", required=True)
    model_cmd.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_init_and_info(tmp_path, capsys):
    out = tmp_path / "m" / "tiny.pt"
    assert (
        _cli(["model", "init", "ssvaerr_tiny", "--output", str(out), "--set", "video.fps=30"]) == 0
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"untrained": true' in line and "ssvaerr_tiny-" in line
    ckpt = load_checkpoint(str(out))
    assert ckpt.untrained and ckpt.arch == "ssvaerr_tiny" and ckpt.preprocessing["fps"] == 30.0
    assert ckpt.provenance["by"] == "vaerr model init"
    assert _cli(["model", "info", str(out)]) == 0
    text = capsys.readouterr().out
    n = sum(p.numel() for p in build_model(TINY).parameters())
    assert f"parameters: {n}\n" in text
    for needle in ("arch: ssvaerr_tiny", "untrained: true", "preprocessing:", "provenance:"):
        assert needle in text
    assert "fps: 30.0" in text
    with pytest.raises(ValueError, match="unknown model arch"):
        _cli(["model", "init", "nope", "--output", str(tmp_path / "x.pt")])


def test_cli_through_s3(s3, capsys):
    bucket, opts, _ = s3
    endpoint = opts["client_kwargs"]["endpoint_url"]
    flags = ["--set", f"storage.endpoint_url={endpoint}", "--set", "storage.key=k"]
    flags += ["--set", "storage.secret=s"]
    uri = f"s3://{bucket}/cli/tiny.pt"
    assert _cli(["model", "init", "ssvaerr_tiny", "--output", uri, *flags]) == 0
    assert _cli(["model", "info", uri, *flags]) == 0
    text = capsys.readouterr().out
    assert f"checkpoint: {uri}" in text and "untrained: true" in text
