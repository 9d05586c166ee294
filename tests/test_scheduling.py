"""pipeline/scheduling.py's local runner and pipeline/status.py's rerun rules: the parts every
job shares (the Ray runner runs in test_infer / test_preprocess on a real local Ray)."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pipeline.scheduling import StageSpec, batch_to_rows, run_stages, warm_up
from pipeline.status import attempt_outcome, pending_rows, prior_attempts
from schemas.tables import VIDEOS


class Repeat:
    """Yields each input row `times` times, one batch per copy (a generator stage)."""

    def __init__(self, times: int) -> None:
        self.times = times

    def __call__(self, batch):
        for k in range(self.times):
            yield {"uri": batch["uri"], "copy": np.full(len(batch["uri"]), k)}


class Count:
    """Returns one batch: the rows it was called with and the call's size."""

    def __call__(self, batch):
        n = len(batch["uri"])
        return {**batch, "size": np.full(n, n)}


def test_local_runner_chains_stages_rebatches_and_feeds_the_sink():
    rows = [{"uri": "a"}, {"uri": "b"}]
    specs = [StageSpec(Repeat, {"times": 5}), StageSpec(Count, batch_size=2)]
    got: list[dict] = []
    run_stages(rows, specs, lambda b: got.extend(batch_to_rows(b)), runner="local")
    assert [(r["uri"], int(r["copy"])) for r in got] == [(u, k) for u in "ab" for k in range(5)]
    assert {int(r["size"]) for r in got} == {1}  # each yielded batch holds one row
    injected = Count()
    spec = StageSpec(Count, instance=injected)
    assert spec.build() is injected and StageSpec(Count).build() is not injected
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.batch_size = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="runner"):
        run_stages(rows, specs, print, runner="threads")


def _status(vid, status, kind, attempts, etag="e", model="m", chash="h"):
    return {"video_id": vid, "uri": vid, "status": status, "failure_kind": kind,
            "attempts": attempts, "source_etag": etag, "model_id": model,
            "config_hash": chash}  # fmt: skip


def test_pending_rows_retry_environment_failures_until_max_attempts():
    done = pa.Table.from_pylist(
        [
            _status("ok", "ok", None, 1),
            _status("bad", "failed", "video", 1),
            _status("env1", "failed", "environment", 1),
            _status("env3", "failed", "environment", 3),
            _status("old", "ok", None, 1, model="other"),
        ],
        pa.schema([VIDEOS.field(f) for f in _status("x", "", None, 1)]),
    )
    rows = [
        {"video_id": v, "source_etag": "e"} for v in ("ok", "bad", "env1", "env3", "old", "new")
    ]
    rows.append({"video_id": "noetag", "source_etag": ""})
    version = {"model_id": "m", "config_hash": "h"}
    todo = [r["video_id"] for r in pending_rows(rows, done, version, False, max_attempts=3)]
    assert todo == ["env1", "old", "new", "noetag"]
    assert len(pending_rows(rows, done, version, True)) == len(rows)
    assert prior_attempts(rows, done, version) == {"env1": 1, "env3": 3}
    assert prior_attempts(rows, done, {"model_id": "n", "config_hash": "h"}) == {}
    reason, attempts, pending = attempt_outcome("failed", "x", "environment", 1, 3)
    assert (attempts, pending) == (2, True) and reason.endswith(
        "attempt 2 of 3: a rerun retries it"
    )
    assert attempt_outcome("failed", "x", "environment", 2, 3)[0].endswith("final")
    assert attempt_outcome("failed", "x", "video", 0, 3) == ("x", 1, False)


class _Slow:
    """A stage whose construction takes a while (a model loading), on whichever thread."""

    built_on: list[str] = []

    def __init__(self, fail: bool = False) -> None:
        time.sleep(0.3)
        _Slow.built_on.append(threading.current_thread().name)
        if fail:
            raise ValueError("cannot read weights w.pt")

    def __call__(self, batch):
        return batch


def test_local_stages_warm_up_while_the_job_lists_its_inputs():
    """`warm_up`: the local runner's stages build in a background thread from the moment it
    is called (the caller goes on at once, as the job lists its INPUTs); `build()` hands over
    that same object; a stage that fails to build raises there, as it did before; under Ray
    the specs are left as they are (actors build their own)."""
    _Slow.built_on.clear()
    t0 = time.perf_counter()
    specs = warm_up([StageSpec(_Slow), StageSpec(_Slow, {"fail": True})], "local")
    assert time.perf_counter() - t0 < 0.2  # not waiting for 0.6 s of building
    stage = specs[0].build()
    assert isinstance(stage, _Slow) and specs[0].build() is stage
    with pytest.raises(ValueError, match="cannot read weights"):
        specs[1].build()
    assert _Slow.built_on and all(n.startswith("vaerr-warm-up") for n in _Slow.built_on)
    ray_specs = [StageSpec(_Slow)]
    assert warm_up(ray_specs, "ray") == ray_specs
