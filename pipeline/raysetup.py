"""Start (or join) Ray with a quiet first screen, using Ray's supported settings only.

Which Ray a job uses is said in its log: the cluster named by --ray-address, the one in
RAY_ADDRESS (set inside `ray job submit` jobs), or else a fresh local Ray started by the job.
A running `ray start` cluster on this machine is joined only when asked (`--ray-address auto`):
Ray's own default (address=None) would join it silently, which is not what the help says.
`ray_session` is the one place that starts and stops Ray: every job that uses Ray (infer,
preprocess, training, the demo) enters it, and only the outermost one that started Ray shuts it
down.

What a single-machine user saw and could not act on, and what happens to it here:

* "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt
  out": Ray prints it when RAY_AUTH_MODE is unset and it turns token authentication on by
  default for a new local cluster. For a local Ray started by vaerr, RAY_AUTH_MODE is set to
  `token` (the same secure default, stated explicitly, so Ray does not warn) before Ray is
  imported; never when joining a cluster (`--ray-address`, RAY_ADDRESS), whose own setting
  applies, nor when the user set RAY_AUTH_MODE.
* Ray's and Ray Data's INFO lines ("Started a local Ray instance", "Starting execution of
  Dataset ...", the execution plan) and Ray Data's "Progress bars disabled" note (vaerr draws
  its own progress): `ray.init(logging_level=WARNING)` and the `ray`, `ray.data`,
  `ray.train` loggers at WARNING (`vaerr -v`: INFO), as Ray's logging docs show; the
  progress-bar note's logger at ERROR.
* Two lines come from Ray's C++ core and raylet, outside Python logging, and no supported
  setting turns them off without hiding real errors too: an actor "has constructor arguments
  in the object store and max_restarts > 0" and "N PYTHON worker processes have been
  started". `NOTE` says in one line, before them, what they mean for the user.

A local Ray started here also sets RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (unless the user did) to
`TRAIN_POLL_S`: Ray Train's controller notices a finished worker group only at its next poll,
2 s apart by default, so every training run's end waited for it (a one-worker run took 18.4 s
from fit() to its return, 5.0 s of it after the training function ended; 13.5 s and 1.0 s at
0.25 s; the controller's processes inherit the variable from this one through the raylet).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from pipeline.progress import verbosity

log = logging.getLogger("vaerr")

NOTE = (
    "Ray may print 'constructor arguments in the object store and max_restarts > 0' and "
    "'N PYTHON worker processes have been started': both are expected on one machine and need "
    "no action (an interrupted run is resumed by running it again)."
)
_noted = False

TRAIN_POLL_S = "0.25"
"""Ray Train's controller poll interval, s, in a local Ray started here (module docstring)."""


def before_local_start(address: str | None) -> None:
    """Environment for a Ray that this process is about to start (nothing when joining).
    Only before Ray is first imported: Ray reads RAY_AUTH_MODE into its C++ config then (when
    it turns token mode on by default itself it sets the same variable and refreshes that
    config, which is why a process that already imported Ray is left as it is)."""
    if "ray" in sys.modules:
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def quiet_loggers() -> None:
    """Ray's driver-side loggers at WARNING (INFO with `vaerr -v`). Call after importing
    ray.data: it installs its own logging config (level DEBUG, console handler at INFO)."""
    level = logging.INFO if verbosity() >= 1 else logging.WARNING
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


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


def start_ray(address: str | None = None, ray_init: dict[str, Any] | None = None) -> bool:
    """`ray.init` unless Ray is already initialised; returns True when it started it here (the
    caller shuts it down). Worker logs stay off the driver (`log_to_driver=False`): progress
    comes through the stages' results and Ray Train's reported metrics instead."""
    global _noted
    before_local_start(address)
    import ray
    import ray.data  # noqa: F401  (its logging config must exist before quiet_loggers)

    started = False
    if not ray.is_initialized():
        target, how = ray_target(address)
        log.info("Ray: %s", how)
        if target == "local":
            os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)
        quiet_loggers()
        if not _noted and verbosity() >= 0 and address is None:
            log.info(NOTE)
            _noted = True
        level = logging.INFO if verbosity() >= 1 else logging.WARNING
        kwargs = {"logging_level": level, **(ray_init or {})}  # ray.init's own setting
        ray.init(address=target, log_to_driver=False, **kwargs)
        started = True
    else:
        log.info("Ray: using the Ray this process already joined")
    quiet_loggers()
    return started


@contextlib.contextmanager
def ray_session(
    address: str | None = None, ray_init: dict[str, Any] | None = None
) -> Iterator[None]:
    """Ray for the duration of the block: started (or joined) on entry unless this process
    already joined one, shut down on exit only when this block started it (so nested sessions
    and a caller's own Ray are left running)."""
    started = start_ray(address, ray_init)  # before `import ray`: see before_local_start
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()
