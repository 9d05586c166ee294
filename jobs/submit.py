"""`vaerr submit JOB ARGS... --address http://HEAD:8265 [--follow]`: run a job on a Ray cluster.

Submits `python -m jobs.<JOB> ARGS...` through the Ray Jobs API (`JobSubmissionClient`, the
dashboard's HTTP port, 8265 by default), with this repository as the job's `working_dir`, so the
cluster runs exactly the code checked out here while its dependencies come from the nodes' own
environment (`ray_cluster.yaml` installs them with the pinned versions). Nothing is pip-installed
per job: a runtime-env pip install would cost minutes on every node and could drift from
constraints.txt.

Options of `submit` itself (`--address`, `--follow`, ...) may come before or after the job's
arguments; everything after a literal `--` goes to the job untouched.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Protocol, TextIO

from jobs.cli_io import print_json_line

# The jobs `vaerr submit` knows; each is `python -m jobs.<name>` on the cluster; `submit`
# checks at submit time that the module is there in the checkout being sent.
JOBS = ("infer", "preprocess", "pretrain", "finetune", "evaluate", "paper")

# The repository root: the folder holding jobs/ (an editable install points here).
REPO = Path(__file__).resolve().parents[1]

# Never uploaded (gitignore syntax, relative to the working dir; .gitignore is honoured too).
# The upload is a zip through the head's object store, capped at 512 MiB by Ray: a virtualenv,
# outputs, media or weights would blow that and are never needed, the nodes have their own.
EXCLUDES = (
    ".git",
    ".venv",
    "venv",
    "**/__pycache__",
    "*.pyc",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".cache",
    "/demo_out",
    "/out",
    "/outputs",
    "/data",
    "/datasets",
    "/models",
    "/checkpoints",
    "*.parquet",
    "*.pt",
    "*.pth",
    "*.mp4",
    "*.mpg",
    "*.mkv",
    "*.mov",
)

# Copied from this shell into the job's environment, only when set here. Credentials are not:
# on AWS the nodes' instance profile provides them, and a key in a runtime env would be shown
# in the dashboard and stored in the job table.
PASSTHROUGH_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION")

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
POLL_S = 1.0  # status polling period while waiting, s (a job runs minutes to hours)


class JobsClient(Protocol):
    """The part of `ray.job_submission.JobSubmissionClient` used here (tests pass a fake)."""

    def submit_job(self, **kwargs: Any) -> str: ...

    def get_job_status(self, job_id: str) -> Any: ...

    def get_job_info(self, job_id: str) -> Any: ...

    def tail_job_logs(self, job_id: str) -> Any: ...


def _add_submit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="Ray dashboard/Jobs API, e.g. http://HEAD:8265 (else $RAY_API_SERVER_ADDRESS, "
        "else $RAY_ADDRESS). With `ray up`, `ray dashboard ray_cluster.yaml` forwards it to "
        "http://127.0.0.1:8265.",
    )
    p.add_argument(
        "--follow", action="store_true", help="Stream the job's logs here until it ends."
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="Return right after submitting (exit 0); default: wait for the final state.",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="Set an env var in the job (KEY alone copies this shell's value; repeatable). "
        f"Always copied when set: {', '.join(PASSTHROUGH_ENV)}.",
    )
    p.add_argument(
        "--working-dir",
        default=None,
        help="Folder uploaded as the job's working dir (default: this repository).",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="Extra gitignore-style pattern left out of the upload (repeatable).",
    )
    p.add_argument("--submission-id", default=None, help="Job id (default: Ray picks one).")
    p.add_argument(
        "--python",
        default="python",
        help="Interpreter the entrypoint runs with on the head (default: `python` on its PATH).",
    )
    p.add_argument(
        "--entrypoint-num-cpus",
        type=float,
        default=None,
        help="CPUs reserved for the driver (default none: it runs on the head, which "
        "ray_cluster.yaml gives no CPUs for tasks, so stages land on the workers).",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `submit` subcommand."""
    p = sub.add_parser(
        "submit",
        help="Run a job (infer, ...) on a Ray cluster through the Jobs API.",
        description=(
            "Submit `python -m jobs.JOB ARGS...` to a Ray cluster (JobSubmissionClient) with this "
            "repository as the working dir (without .venv, .git, outputs, caches, data and "
            "weights) and the S3 endpoint/region env vars of this shell. Prints the submission "
            "id (stderr at once, and in the last stdout JSON line), waits for the final state "
            "(--follow also streams the logs) and exits 0 for SUCCEEDED, 1 for FAILED, 3 for "
            "STOPPED, 2 when it could not submit. Example: vaerr submit infer s3://b/videos "
            "--output s3://b/out --checkpoint s3://b/models/m.pt --address http://HEAD:8265 "
            "--follow"
        ),
    )
    p.add_argument("job", choices=JOBS, metavar="JOB", help=f"One of: {', '.join(JOBS)}.")
    p.add_argument(
        "job_args",
        nargs=argparse.REMAINDER,
        metavar="ARGS",
        help="The job's own arguments (see `vaerr JOB --help`); `--` ends submit's options.",
    )
    _add_submit_options(p)
    p.set_defaults(func=run)


def split_args(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """Pick submit's own options out of the job's arguments (they may follow the job name);
    everything after a literal `--` is the job's, untouched."""
    rest = list(args.job_args)
    tail: list[str] = []
    if "--" in rest:
        i = rest.index("--")
        rest, tail = rest[:i], rest[i + 1 :]
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_submit_options(own)
    defaults = own.parse_args([])
    # Options given before JOB are already in `args`; later ones override, lists accumulate.
    for key, default in vars(defaults).items():
        if isinstance(default, list):
            setattr(defaults, key, list(getattr(args, key)))
        else:
            setattr(defaults, key, getattr(args, key))
    parsed, job_args = own.parse_known_args(rest, namespace=defaults)
    parsed.job = args.job
    return parsed, job_args + tail


def check_job_module(job: str, working_dir: Path) -> None:
    """Fail before contacting the cluster when `python -m jobs.<job>` cannot run from
    `working_dir`: the module is missing (not implemented yet) or has no `__main__` block."""
    mod = working_dir / "jobs" / f"{job}.py"
    pkg = working_dir / "jobs" / job / "__main__.py"
    if pkg.is_file():
        return
    if not mod.is_file():
        ready = [j for j in JOBS if (working_dir / "jobs" / f"{j}.py").is_file()]
        raise ValueError(
            f"job {job!r}: no module jobs.{job} in {working_dir / 'jobs'} (not implemented in "
            f"this checkout). Submittable here: {', '.join(ready) or 'none'}"
        )
    if "__main__" not in mod.read_text():
        raise ValueError(
            f'job {job!r}: {mod} has no `if __name__ == "__main__":` block, so '
            f"`python -m jobs.{job}` would do nothing"
        )


def resolve_working_dir(path: str | None) -> Path:
    """The folder to upload: `path`, or this repository (it must be a source checkout, not an
    installed copy: an upload of site-packages would be huge and is never meant)."""
    wd = Path(path).expanduser().resolve() if path else REPO
    if not (wd / "jobs").is_dir():
        raise ValueError(f"working dir {wd} has no jobs/ folder (pass the repository root)")
    if path is None and not (wd / "pyproject.toml").is_file():
        raise ValueError(f"{wd} is not a source checkout of vaerr; pass --working-dir REPO_ROOT")
    return wd


def entrypoint(job: str, job_args: list[str], python: str = "python") -> str:
    """The shell command the cluster runs: `python -m jobs.<job> ARGS...`, quoted."""
    return shlex.join([python, "-m", f"jobs.{job}", *job_args])


def job_env(env_args: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Env vars for the job: PASSTHROUGH_ENV when set here, then each `--env KEY[=VALUE]`."""
    environ = dict(os.environ if environ is None else environ)
    out = {k: environ[k] for k in PASSTHROUGH_ENV if environ.get(k)}
    for item in env_args:
        key, sep, value = item.partition("=")
        if not key:
            raise ValueError(f"--env expects KEY or KEY=VALUE, got {item!r}")
        if sep:
            out[key] = value
        elif key in environ:
            out[key] = environ[key]
        else:
            raise ValueError(f"--env {key}: not set in this shell (use --env {key}=VALUE)")
    return out


def runtime_env(
    working_dir: Path, env_vars: dict[str, str], excludes: list[str] | None = None
) -> dict[str, Any]:
    """The job's runtime env: the code (working_dir minus EXCLUDES) and env vars; no pip."""
    env: dict[str, Any] = {
        "working_dir": str(working_dir),
        "excludes": [*EXCLUDES, *(excludes or [])],
    }
    if env_vars:
        env["env_vars"] = env_vars
    return env


def resolve_address(address: str | None) -> str:
    """`--address`, else the env vars `ray job submit` reads."""
    addr = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not addr:
        raise ValueError("no cluster: pass --address http://HEAD:8265 (or set RAY_ADDRESS)")
    return addr


async def _tail(client: JobsClient, sid: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(sid):
        out.write(chunk)
        out.flush()


def wait_for_job(
    client: JobsClient,
    sid: str,
    follow: bool,
    out: TextIO | None = None,
    poll_s: float | None = None,
) -> str:
    """Block until the job is terminal; returns its final status name. With `follow`, the
    job's logs are streamed to `out` (default stdout) first; the stream ends with the job."""
    if follow:
        asyncio.run(_tail(client, sid, out or sys.stdout))
    while True:
        status = client.get_job_status(sid)
        if status.is_terminal():
            return str(status.value)
        time.sleep(POLL_S if poll_s is None else poll_s)


def submit(
    client: JobsClient,
    job: str,
    job_args: list[str],
    *,
    working_dir: Path,
    env_vars: dict[str, str],
    excludes: list[str] | None = None,
    submission_id: str | None = None,
    python: str = "python",
    entrypoint_num_cpus: float | None = None,
) -> str:
    """Submit one job; returns its submission id."""
    check_job_module(job, working_dir)
    return client.submit_job(
        entrypoint=entrypoint(job, job_args, python),
        runtime_env=runtime_env(working_dir, env_vars, excludes),
        submission_id=submission_id,
        metadata={"vaerr_job": job, "submitted_by": "vaerr submit"},
        entrypoint_num_cpus=entrypoint_num_cpus,
    )


def _connect(address: str) -> JobsClient:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:  # a token cluster: RAY_AUTH_MODE/RAY_AUTH_TOKEN here
        raise ValueError(f"the Ray Jobs API at {address} refused us: {exc}") from None
    except (ConnectionError, RuntimeError) as exc:
        raise ValueError(f"cannot reach the Ray Jobs API at {address}: {exc}") from None


def run(args: argparse.Namespace, client: JobsClient | None = None) -> int:
    """Parse -> build -> run (submit, then wait/follow unless --no-wait)."""
    opts, job_args = split_args(args)
    working_dir = resolve_working_dir(opts.working_dir)
    check_job_module(opts.job, working_dir)  # before any network call
    address = resolve_address(opts.address)
    env_vars = job_env(opts.env)
    client = client or _connect(address)
    try:
        sid = submit(
            client,
            opts.job,
            job_args,
            working_dir=working_dir,
            env_vars=env_vars,
            excludes=opts.exclude,
            submission_id=opts.submission_id,
            python=opts.python,
            entrypoint_num_cpus=opts.entrypoint_num_cpus,
        )
    except (ConnectionError, RuntimeError) as exc:  # upload too big, id taken, server error
        raise ValueError(f"the cluster at {address} did not accept the job: {exc}") from None
    print(
        f"submitted {sid} to {address}: {entrypoint(opts.job, job_args, opts.python)}\n"
        f"  logs: ray job logs {sid} --address {address} --follow\n"
        f"  stop: ray job stop {sid} --address {address}",
        file=sys.stderr,
        flush=True,
    )
    record: dict[str, Any] = {"submission_id": sid, "job": opts.job, "address": address}
    if opts.no_wait:
        print_json_line({**record, "status": str(client.get_job_status(sid).value)})
        return 0
    try:
        status = wait_for_job(client, sid, opts.follow)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; {sid} keeps running on the cluster", file=sys.stderr)
        print_json_line({**record, "status": "DETACHED"})
        return 130
    message = getattr(client.get_job_info(sid), "message", None)
    print_json_line({**record, "status": status, "message": message})
    return EXIT_CODES.get(status, 1)
