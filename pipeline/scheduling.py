"""How stages are scheduled: one `run_stages` for every job that maps callable stages over
rows (inference: FaceStage -> ModelStage; preprocessing: ShardStage).

"What runs" is a `StageSpec` (the stage's class and constructor arguments); "how it is
scheduled" is the runner: `local` loops the same stage objects in this process (tests, one
machine without Ray), `ray` maps them over Ray Data actor pools inside a `ray_session`
(pipeline/raysetup.py, the only module that starts or stops Ray). The consumer of the last
stage's batches (the sink: inference's TimelineWriter, preprocessing's progress) is injected,
so the scheduler knows nothing about what is written. Stages never import Ray.

Batches are dicts of numpy columns (DESIGN.md principle 3); a stage's `__call__` returns one
batch or yields several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from pipeline.raysetup import ray_session

Batch = dict[str, np.ndarray]
Sink = Callable[[Batch], None]


@dataclass(frozen=True)
class StageSpec:
    """One stage: `stage(**kwargs)` is built once per actor (Ray) or once per run (local).

    batch_size: rows per call (None: whatever block arrives); num_cpus / num_gpus: resources of
    each actor (fractions share a device); pool_size: actors at most (the pool starts with one,
    so a cluster still scaling up makes progress). `instance`: an already built stage used by
    the local runner instead of building one (tests inject fakes this way)."""

    stage: type
    kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    batch_size: int | None = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    pool_size: int = 1
    instance: Any = None

    def build(self) -> Any:
        """The stage object for the local runner (waiting for it if `warm_up` builds it)."""
        if isinstance(self.instance, Future):
            return self.instance.result()
        return self.instance if self.instance is not None else self.stage(**self.kwargs)


def warm_up(specs: Sequence[StageSpec], runner: str) -> list[StageSpec]:
    """For the local runner: start building the stages now, in a background thread, and
    return specs whose `build()` waits for them. Building loads the models (weights read and
    moved to the device, the CUDA context made), which then overlaps what the job does before
    its first video: the checkpoint's id, listing the INPUTs, reading the status rows, the
    opening files. An error building a stage is raised where it was before, at `build()`.
    Under Ray each actor builds its stage where it runs: the specs are returned as they are."""
    if runner != "local":
        return list(specs)
    pool = ThreadPoolExecutor(1, thread_name_prefix="vaerr-warm-up")
    try:
        return [replace(s, instance=pool.submit(s.build)) for s in specs]
    finally:
        pool.shutdown(wait=False)  # the thread ends after its builds


def text(x: Any) -> str:
    """A batch cell as text: None (a missing value) is ""."""
    return "" if x is None else str(x)


def rows_to_batch(rows: Sequence[Mapping[str, Any]]) -> Batch:
    """Row dicts (same keys) -> one batch of object columns."""
    keys = list(rows[0]) if rows else []
    return {k: np.array([r[k] for r in rows], dtype=object) for k in keys}


def batch_to_rows(batch: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """One batch -> its rows as dicts."""
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: batch[k][i] for k in batch} for i in range(n)]


def run_stages(
    rows: Sequence[Mapping[str, Any]],
    specs: Sequence[StageSpec],
    sink: Sink,
    runner: str = "ray",
    *,
    address: str | None = None,
    ray_init: dict[str, Any] | None = None,
) -> None:
    """Map `specs` in order over `rows` (one input row per video) and hand every batch the last
    stage returns to `sink`, in arrival order (not input order under Ray). `runner`: "local"
    or "ray" (a local Ray unless one is running or `address` names a cluster)."""
    if not rows:
        return
    if runner == "local":
        _run_local(rows, specs, sink)
    elif runner == "ray":
        _run_ray(rows, specs, sink, address, ray_init)
    else:
        raise ValueError(f"unknown runner {runner!r}: local or ray")


def _outputs(result: Batch | Iterator[Batch]) -> Iterator[Batch]:
    if isinstance(result, dict):
        yield result
    else:
        yield from result


def _run_local(rows: Sequence[Mapping[str, Any]], specs: Sequence[StageSpec], sink: Sink) -> None:
    """The rows through the stage chain, in order, `batch_size` input rows per call of the
    first stage; a stage's output is cut into batches of the next stage's batch_size."""
    stages = [s.build() for s in specs]

    def feed(i: int, batch: Batch) -> None:
        if i == len(stages):
            sink(batch)
            return
        n = len(next(iter(batch.values()))) if batch else 0
        size = specs[i].batch_size or max(n, 1)
        for s in range(0, n, size):
            for out in _outputs(stages[i]({k: v[s : s + size] for k, v in batch.items()})):
                feed(i + 1, out)

    first = specs[0].batch_size or 1  # input rows per call of the first stage, as under Ray
    for s in range(0, len(rows), first):
        feed(0, rows_to_batch(rows[s : s + first]))


def _run_ray(
    rows: Sequence[Mapping[str, Any]],
    specs: Sequence[StageSpec],
    sink: Sink,
    address: str | None,
    ray_init: dict[str, Any] | None,
) -> None:
    """The stages on Ray Data actor pools, one block per input row (a video per task)."""
    with ray_session(address, ray_init):
        import ray
        from ray.data import ActorPoolStrategy

        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([dict(r) for r in rows], override_num_blocks=max(1, len(rows)))
        for spec in specs:
            ds = ds.map_batches(
                spec.stage,
                fn_constructor_kwargs=dict(spec.kwargs),
                batch_size=spec.batch_size,
                batch_format="numpy",
                compute=ActorPoolStrategy(min_size=1, max_size=spec.pool_size),
                num_cpus=spec.num_cpus,
                num_gpus=spec.num_gpus,
            )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            sink(batch)
