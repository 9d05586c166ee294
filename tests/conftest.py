"""Shared fixtures: the real assets in ../shared/assets, face configs, a local S3 server."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from schemas.config import VaerrConfig, load_config

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("VAERR_ASSETS", REPO.parent / "shared" / "assets"))
RETINA = ASSETS / "detectors" / "retinaface_mobilenet0.25_Final.pth"
MEAN_FACE = ASSETS / "landmarks" / "20words_mean_face.npy"
VIDEOS = ASSETS / "videos"
# Ray Train's controller looks at its workers every 2 s (Ray's default): every start, restart
# and end of a run waits for the next look. The tests' runs are seconds long, so they look
# every 0.5 s (inherited by the Ray clusters ray.init starts in the tests).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Under pytest-xdist (`make test`: 2 workers), each worker process gets its share of the cores
# for torch's threads: two workers of two threads each would oversubscribe 2 cores.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS))


def asset(rel: str) -> Path:
    """Path of an asset, or skip the test with the reason."""
    p = ASSETS / rel
    if not p.exists():
        pytest.skip(f"asset {p} not found (set VAERR_ASSETS to the shared/assets folder)")
    return p


# The device parameter of the face-stage tests: every path on CPU tensors, and on CUDA
# (marked gpu) where a GPU exists.
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


def face_overrides(kind: str = "retina5") -> list[str]:
    """--set lines pointing the face stage at the real weights in the assets."""
    asset("detectors/retinaface_mobilenet0.25_Final.pth")
    asset("landmarks/20words_mean_face.npy")
    return [
        f"faces.landmarks.kind={kind}",
        f"faces.detector.weights={RETINA}",
        f"faces.align.mean_face={MEAN_FACE}",
    ]


@pytest.fixture
def face_cfg(tmp_path: Path) -> VaerrConfig:
    """retina5 config on the real RetinaFace weights; cache in the test's temp dir."""
    return load_config(None, face_overrides() + [f"cache_dir={tmp_path / 'cache'}"])


@pytest.fixture(scope="session")
def retina_pipeline():
    """One FacePipeline (retina5, real weights) shared by the session: models load once."""
    from pipeline.faces.extract import FacePipeline

    return FacePipeline(load_config(None, face_overrides()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto) on loopback for the whole session; yields its endpoint URL.

    Credentials are fake; the AWS env vars are set so s3fs/pyarrow/boto3 all find them.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
        )
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server: str):
    """A fresh, empty bucket; yields its name."""
    import uuid

    import boto3

    name = f"b-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory, s3_server):
    """One local Ray for the session (2 CPUs), its files inside the test temp dir. Started
    after the S3 server so its workers inherit the AWS env vars, as cluster nodes would."""
    import ray

    tmp = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """An untrained ssvaerr_tiny checkpoint file (flagged untrained)."""
    from pipeline.model.checkpoint import init_checkpoint, save_checkpoint
    from schemas.model import ModelConfig

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(init_checkpoint(ModelConfig(arch="ssvaerr_tiny")), str(path))
    return str(path)


@pytest.fixture
def one_torch_thread():
    """The local runner at Ray's thread count: Ray starts its actors with OMP_NUM_THREADS=1,
    and a different intra-op thread count sums in another order (1.6e-5 apart in valence
    when this process ran 2 threads, the test run alone; within 1e-5 at 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
