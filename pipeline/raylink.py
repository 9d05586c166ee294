"""Which Ray a job uses, said in its log: the cluster named by --ray-address, the one in
RAY_ADDRESS (set inside `ray job submit` jobs), or else a fresh local Ray started by the job.

A running `ray start` cluster on this machine is joined only when asked (`--ray-address auto`):
Ray's own default (address=None) would join it silently, which is not what the help says."""

from __future__ import annotations

import os


def ray_target(address: str | None) -> tuple[str, str]:
    """(address for `ray.init`, a log line saying what the job does)."""
    if address:
        return address, f"joining the Ray cluster at {address} (--ray-address)"
    env = os.environ.get("RAY_ADDRESS")
    if env:
        return env, f"joining the Ray cluster at RAY_ADDRESS={env}"
    return "local", (
        "starting a local Ray for this job (a running `ray start` cluster is joined only "
        "with --ray-address auto)"
    )
