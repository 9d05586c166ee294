"""Running on a cluster: `vaerr submit` against a real Ray head (`ray start --head`) over a real
S3 API, a two-node Ray cluster against a single-node run, and ray_cluster.yaml against the
autoscaler's own schema.

The head and the two-node cluster are separate Ray clusters with their own temp dirs, ports and
token; the pytest process may hold another Ray session (`ray_local`), which they never touch.
Every Ray process they start is killed at the end by process session and by a marker in its
environment, never by name.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
import yaml

from jobs import submit
from jobs.cli import build_parser, main
from tests.conftest import REPO, asset, face_overrides, free_port

VENV_BIN = str(Path(sys.executable).parent)
# Short windows so 2-3 s clips still get several overlapping windows; tiny batches.
SMALL = ["infer.window_frames=25", "infer.hop_frames=12", "infer.batch_size=2"]


# --------------------------------------------------------------------------- process hygiene


def _marked_pids(marker: str, sid: int | None = None) -> list[int]:
    """Our processes: in session `sid`, or with `marker` (a unique temp dir) in their env."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        pid = int(d)
        try:
            if sid is not None and os.getsid(pid) == sid:
                found.append(pid)
            elif marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except (OSError, PermissionError):
            continue
    return found


def _kill_marked(marker: str, sid: int | None = None) -> None:
    for sig, grace_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        pids = _marked_pids(marker, sid)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while pids and time.time() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _ray_env(tmp: str, token: str) -> dict[str, str]:
    """Environment of every Ray process and client a test starts: this venv first on PATH (the
    job's `python` must be this one, as ray_cluster.yaml puts ~/venv first), Ray's files under
    `tmp` (RAY_TMPDIR also keeps `ray_current_cluster` away from /tmp/ray), its own token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        RAY_TMPDIR=tmp,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        VAERR_CACHE=str(Path(tmp) / "vaerr-cache"),  # one weights cache per node, as on AWS
        PYTHONUNBUFFERED="1",
    )
    return env


# --------------------------------------------------------------------------- a real Ray head


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """`ray start --head --block` on loopback with its own temp dir, ports and token. Started
    after the S3 server, so the head (and the jobs it runs) inherit the AWS_* env vars the way
    cluster nodes get them from their instance profile."""
    tmp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # short: unix socket paths max ~107 chars
    token = secrets.token_hex(32)
    env = _ray_env(tmp, token)
    base = random.Random(os.getpid()).randrange(20000, 32000 - 200, 200)
    ports = {
        k: free_port()
        for k in (
            "port",
            "dashboard-port",
            "ray-client-server-port",
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    }
    cmd = [
        f"{VENV_BIN}/ray",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={tmp}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        f"--min-worker-port={base}",
        f"--max-worker-port={base + 199}",
        *(f"--{k}={v}" for k, v in ports.items()),
    ]
    log = open(Path(tmp) / "ray-start.log", "w")  # closed at teardown
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        _wait_for_jobs_api(address, token, proc, tmp)
        yield SimpleNamespace(address=address, env=env, tmp=tmp)
    finally:
        proc.send_signal(signal.SIGTERM)  # --block: `ray start` stops what it started
        try:  # it rarely finishes in 10 s here: what is left is killed below
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        _kill_marked(tmp, sid=proc.pid)  # stragglers: workers, job drivers
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_for_jobs_api(address: str, token: str, proc: subprocess.Popen, tmp: str) -> None:
    deadline = time.time() + 120
    req = urllib.request.Request(
        f"{address}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("ray start exited:\n" + (Path(tmp) / "ray-start.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail("the Ray head's Jobs API did not come up in 120 s")


def _vaerr(head: SimpleNamespace, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=REPO,
        env=head.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


@pytest.mark.slow
def test_submit_infer_to_a_ray_head_over_s3(ray_head, s3_server, s3_bucket, tiny_checkpoint):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.upload_file(str(asset("videos/grid_lbbc2a.mpg")), s3_bucket, "in/grid_lbbc2a.mpg")
    s3.upload_file(tiny_checkpoint, s3_bucket, "models/tiny.pt")
    bucket = f"s3://{s3_bucket}"
    res = _vaerr(
        ray_head,
        "submit",
        "infer",
        f"{bucket}/in",
        "--output",
        f"{bucket}/out",
        "--checkpoint",
        f"{bucket}/models/tiny.pt",
        *_sets(face_overrides() + SMALL),
        "--address",
        ray_head.address,
        "--follow",
    )
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
    record = json.loads(res.stdout.strip().splitlines()[-1])
    assert record["status"] == "SUCCEEDED" and record["job"] == "infer"
    sid = record["submission_id"]
    assert sid.startswith("raysubmit_") and f"submitted {sid}" in res.stderr
    # --follow streamed the job's own output, down to its summary line.
    summaries = [json.loads(x) for x in res.stdout.splitlines() if x.startswith('{"videos"')]
    assert summaries and summaries[-1]["ok"] == 1 and summaries[-1]["output"] == f"{bucket}/out"

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    videos = pq.read_table(f"{s3_bucket}/out/videos", filesystem=fs).to_pandas()
    assert list(videos.status) == ["ok"] and list(videos.uri) == [f"{bucket}/in/grid_lbbc2a.mpg"]
    timelines = pq.read_table(f"{s3_bucket}/out/timelines", filesystem=fs).to_pandas()
    assert len(timelines) == 30 and timelines.untrained.all()  # 3 s at 10 Hz, one face
    run = json.loads(fs.cat(f"{s3_bucket}/out/run.json"))
    assert run["ok"] == 1 and run["runner"] == "ray"


@pytest.mark.slow
def test_submit_exit_code_follows_a_failed_job(ray_head, s3_bucket):
    res = _vaerr(
        ray_head,
        "submit",
        "infer",
        f"s3://{s3_bucket}/in",
        "--output",
        f"s3://{s3_bucket}/out",
        "--checkpoint",
        f"s3://{s3_bucket}/models/missing.pt",
        "--address",
        ray_head.address,
    )
    record = json.loads(res.stdout.strip().splitlines()[-1])
    assert (res.returncode, record["status"]) == (1, "FAILED"), res.stderr[-3000:]
    assert record["message"]


def test_submit_without_a_reachable_cluster_is_one_clear_error(capsys):
    code = main(
        ["submit", "infer", "x", "-o", "y", "--checkpoint", "z", "--address", "http://127.0.0.1:9"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray Jobs API at http://127.0.0.1:9" in err


# --------------------------------------------------------------------------- two nodes

TWO_NODES = r"""
import json, sys, time
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_tasks
from pipeline.runner import run_inference
from schemas.config import load_config

t0 = time.perf_counter()
spec = json.loads(sys.argv[1])
cfg = load_config(None, spec["overrides"])
ports = iter(spec["ports"])


def node_ports(head=False):
    p = dict(
        dashboard_agent_listen_port=next(ports),
        runtime_env_agent_port=next(ports),
        metrics_agent_port=next(ports),
        metrics_export_port=next(ports),
    )
    if head:
        p.update(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=next(ports))
    return p


cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, **node_ports(True)))
cluster.add_node(num_cpus=1, **node_ports())
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
secs = {"two_nodes_up": time.perf_counter() - t0}
two = run_inference(cfg, spec["inputs"], spec["two"], spec["checkpoint"])

# Which node ran each stage's batches: the finished `submit` tasks of the pools' actors.
ran, deadline = {}, time.time() + 30
while time.time() < deadline:
    ran = {}
    for t in list_tasks(filters=[("type", "=", "ACTOR_TASK")], limit=10000, detail=True):
        if t.state == "FINISHED" and t.name.endswith(".submit") and "MapBatches(" in t.name:
            stage = t.name.split("MapBatches(")[1].split(")")[0]
            ran.setdefault(stage, set()).add(t.node_id)
    if {"FaceStage", "ModelStage"} <= set(ran):
        break
    time.sleep(1)
ray.shutdown()
cluster.shutdown()
secs["two_nodes_done"] = time.perf_counter() - t0

# The one-process reference: the local runner at one torch thread, as Ray's actors run
# (tests/test_infer.py::test_ray_and_local_runners_agree holds Ray on one node to it).
import torch

torch.set_num_threads(1)
one = run_inference(cfg, spec["inputs"], spec["one"], spec["checkpoint"], runner="local")
secs["one_node_done"] = time.perf_counter() - t0
ran = {k: sorted(v) for k, v in ran.items()}
print(json.dumps({"nodes": nodes, "ran": ran, "two": two, "one": one, "secs": secs}))
"""


@pytest.mark.slow
def test_two_nodes_share_the_work_and_match_one_node(tmp_path, tiny_checkpoint):
    """Two 1-CPU nodes; each stage's actor asks for 0.6 CPU, so the face actor and the model
    actor cannot share a node: both nodes run batches, deterministically, and the timelines
    equal one process's (the local runner)."""
    tmp = tempfile.mkdtemp(prefix="vr", dir="/tmp")
    inputs = [str(asset("videos/grid_bbaf2n.mpg")), str(asset("videos/grid_two_speakers_sbs.mp4"))]
    spec = {
        "overrides": face_overrides()
        + SMALL
        + [
            "video.end_s=2.0",
            "infer.face_actors=1",
            "infer.model_actors=1",
            "infer.face_num_cpus=0.6",
            "infer.model_num_cpus=0.6",
        ],
        "inputs": inputs,
        "checkpoint": tiny_checkpoint,
        "two": str(tmp_path / "two"),
        "one": str(tmp_path / "one"),
        "ports": [free_port() for _ in range(9)],
    }
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODES)
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(spec)],
        cwd=REPO,
        env={**_ray_env(tmp, secrets.token_hex(32)), "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        _kill_marked(tmp, sid=proc.pid)
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-4000:]
    res = json.loads(out.strip().splitlines()[-1])
    print("timings, s:", res["secs"], "runs:", res["two"]["wall_s"], res["one"]["wall_s"])
    assert len(res["nodes"]) == 2
    face_nodes, model_nodes = res["ran"].get("FaceStage", []), res["ran"].get("ModelStage", [])
    assert face_nodes and model_nodes, res["ran"]
    assert set(face_nodes) | set(model_nodes) == set(res["nodes"]), res  # work on both nodes
    assert res["two"]["ok"] == res["one"]["ok"] == 2

    key = ["video_id", "track_id", "time_s"]
    a = pq.read_table(tmp_path / "two" / "timelines").to_pandas().sort_values(key)
    b = pq.read_table(tmp_path / "one" / "timelines").to_pandas().sort_values(key)
    assert len(a) == len(b) == 3 * 20  # three face tracks, 2 s at 10 Hz
    assert (a[key].values == b[key].values).all()
    np.testing.assert_allclose(a.arousal.values, b.arousal.values, atol=1e-5)
    np.testing.assert_allclose(a.valence.values, b.valence.values, atol=1e-5)
    assert (a.emotion.values == b.emotion.values).all()


# --------------------------------------------------------------------------- ray_cluster.yaml


def test_ray_cluster_yaml_validates_and_has_gpu_workers():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs before AWS calls

    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    gpu = {k: t for k, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu and cfg["head_node_type"] not in gpu
    autoscaling = [t for t in gpu.values() if t.get("min_workers", 0) < t["max_workers"]]
    assert autoscaling and autoscaling[0]["node_config"]["InstanceType"].startswith(("g5.", "g6"))
    assert any(
        t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        for t in gpu.values()
    )
    assert 0 < cfg["idle_timeout_minutes"] <= 30
    for t in types.values():  # S3 through instance profiles, never keys
        assert "IamInstanceProfile" in t["node_config"]
    text = (REPO / "ray_cluster.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text
    assert any("pip install -q -c constraints.txt -e ." in c for c in cfg["setup_commands"])


def test_cluster_config_loads_and_uses_the_gpu():
    from schemas.config import load_config

    cfg = load_config(REPO / "jobs" / "configs" / "cluster.yaml")
    inf = cfg.infer
    # Both stages hold a GPU share; one node's worth (6 face + 1 model actors) fits one GPU.
    assert inf.face_num_gpus > 0 and inf.model_num_gpus > 0
    assert 6 * inf.face_num_gpus + inf.model_num_gpus <= 1.0
    assert 6 * inf.face_num_cpus + inf.model_num_cpus <= 8 - 1
    assert inf.face_actors == 6 * inf.model_actors


# --------------------------------------------------------------------------- submit, no cluster


class FakeJobs:
    """Stands in for JobSubmissionClient: records the submission, ends in `final`."""

    def __init__(self, final: str = "SUCCEEDED", logs: tuple[str, ...] = ()) -> None:
        from ray.job_submission import JobStatus

        self.final = JobStatus(final)
        self.logs = logs
        self.submitted: dict = {}
        self.polls = 0

    def submit_job(self, **kwargs):
        self.submitted = kwargs
        return "raysubmit_fake"

    def get_job_status(self, job_id):
        from ray.job_submission import JobStatus

        self.polls += 1
        return self.final if self.polls > 1 else JobStatus.RUNNING

    def get_job_info(self, job_id):
        return SimpleNamespace(message=f"Job finished: {self.final.value}")

    async def tail_job_logs(self, job_id):
        for chunk in self.logs:
            await asyncio.sleep(0)
            yield chunk


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["submit", *argv])


def test_submit_options_may_follow_the_job_args():
    opts, job_args = submit.split_args(
        _args(
            "--env",
            "A=1",
            "infer",
            "s3://b/in",
            "--set",
            "infer.batch_size=4",
            "--address",
            "http://h:8265",
            "--follow",
            "--env",
            "B=2",
            "--",
            "--force",
        )
    )
    assert (opts.address, opts.follow, opts.env) == ("http://h:8265", True, ["A=1", "B=2"])
    assert job_args == ["s3://b/in", "--set", "infer.batch_size=4", "--force"]
    assert (
        submit.entrypoint("infer", ["a b", "--set", "x=1"])
        == "python -m jobs.infer 'a b' --set x=1"
    )


@pytest.mark.parametrize("final, code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 3)])
def test_exit_code_is_the_final_state(final, code, capsys, monkeypatch):
    monkeypatch.setattr(submit, "POLL_S", 0.0)
    fake = FakeJobs(final, logs=("line 1\n", "line 2\n"))
    assert submit.run(_args("infer", "in", "--address", "http://h:1", "--follow"), fake) == code
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["line 1", "line 2"]
    assert json.loads(out[-1])["status"] == final
    assert fake.submitted["entrypoint"] == "python -m jobs.infer in"


def test_no_wait_returns_after_submitting(capsys):
    fake = FakeJobs("FAILED")
    assert submit.run(_args("infer", "in", "--address", "http://h:1", "--no-wait"), fake) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["status"] == "RUNNING"


def test_runtime_env_ships_code_and_endpoint_not_venv_outputs_or_keys(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-shipped")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    fake = FakeJobs()
    submit.run(_args("infer", "in", "--address", "http://h:1", "--env", "X=1", "--no-wait"), fake)
    env = fake.submitted["runtime_env"]
    assert env["env_vars"] == {"AWS_ENDPOINT_URL": "http://minio:9000", "X": "1"}
    assert "never-shipped" not in json.dumps(fake.submitted)
    assert "pip" not in env and "conda" not in env and "uv" not in env
    assert Path(env["working_dir"]) == REPO

    # What Ray would zip, by Ray's own rules (.gitignore + excludes).
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    files: list[Path] = []
    _dir_travel(
        REPO,
        [_get_excludes(REPO, env["excludes"])],
        lambda p: files.append(p.relative_to(REPO)) if p.is_file() else None,
        include_gitignore=True,
    )
    names = {str(f) for f in files}
    assert {
        "jobs/infer.py",
        "jobs/submit.py",
        "jobs/configs/cluster.yaml",
        "pyproject.toml",
    } <= names
    for bad in (".venv", ".git", "demo_out", "__pycache__"):
        assert not any(bad in f.parts for f in files), bad
    assert sum((REPO / f).stat().st_size for f in files) < 20 * 2**20


def test_missing_or_unrunnable_job_module_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "infer.py").write_text("print('no main block')\n")
    with pytest.raises(
        ValueError, match=r"jobs\.pretrain.*not implemented.*Submittable here: infer"
    ):
        submit.check_job_module("pretrain", tmp_path)
    with pytest.raises(ValueError, match="__main__"):
        submit.check_job_module("infer", tmp_path)
    # Through the CLI: exit 2 and one line, before any connection (the address is dead).
    argv = ["submit", "pretrain", "--working-dir", str(tmp_path), "--address", "http://127.0.0.1:9"]
    assert main(argv) == 2
    assert "jobs.pretrain" in capsys.readouterr().err
    submit.check_job_module("infer", REPO)  # the real one runs as `python -m jobs.infer`


def test_python_m_jobs_infer_is_the_cli_infer():
    res = subprocess.run(
        [sys.executable, "-m", "jobs.infer", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "usage: vaerr infer" in res.stdout
