#!/usr/bin/env python3
"""A real remus worker for the broker-level factory tests, started by a worker file.

    factory_worker.py ENDPOINT [anything ...] --rw WORKER_FILE [--mode MODE] [--max-jobs N]
                      [--idle S] [--delay S] [--record DIR] [--runs DIR] [--heartbeat S]

As a Remus worker would, it reads what it serves (InputType, OutputType, WorkerName, Tag) from
its own worker file, which the file passes in with ``"Arguments": ["--rw", "@SELF@"]``. Options
are looked up by name anywhere in argv, so whatever else the factory passes is left alone.

Modes (what each job does):

  check     the job's data is JSON ``{"argv": [...], "env": {...}, "tag": ...}``: the expected
            ``sys.argv[1:]``, environment (null: must be unset) and requirements tag. The job
            fails, saying what differs, unless the process and the job match all of them.
  echo      returns ``echo:`` + data, after ``--delay`` seconds.
  hold      sends progress, then holds the job until the file named by $FW_RELEASE exists.
  stubborn  ignores SIGTERM and the broker's exit order, and never finishes its job.

``--record DIR`` writes ``DIR/<pid>.json`` (argv and pid) at start. ``--runs DIR`` appends
the id of each echo job whose handler ran to the end to ``DIR/<pid>.runs``, one line each.
``--heartbeat S`` is the worker's heartbeat interval (default 0.2 s).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from remus.types import IOType, JobRequirements
from remus.worker import Job, Worker

NEVER_LONGER_THAN = 60.0  # no mode outlives a test run, whatever happens to the test


def option(name: str, default: str | None = None) -> str | None:
    """The value after ``name`` in argv, or ``default``."""
    args = sys.argv[2:]
    if name in args and args.index(name) + 1 < len(args):
        return args[args.index(name) + 1]
    return default


def requirements_from(worker_file: str) -> JobRequirements:
    with open(worker_file) as f:
        raw = json.load(f)
    name = raw.get("WorkerName")
    if name is None:
        name = os.path.splitext(os.path.basename(raw["ExecutableName"]))[0]
    io_type = IOType(raw["InputType"], raw["OutputType"])
    return JobRequirements(io_type, worker_name=name, tag=raw.get("Tag"))


def differences(job: Job) -> list[str]:
    """What in this process or this job differs from what the job's data expects."""
    expected = json.loads(job["data"])
    problems = []
    if "argv" in expected and sys.argv[1:] != expected["argv"]:
        problems.append(f"argv is {sys.argv[1:]!r}, expected {expected['argv']!r}")
    for key, value in expected.get("env", {}).items():
        if os.environ.get(key) != value:
            problems.append(f"${key} is {os.environ.get(key)!r}, expected {value!r}")
    if "tag" in expected:
        tag = job.requirements.tag if job.requirements is not None else None
        if tag != expected["tag"]:
            problems.append(f"the job's tag is {tag!r}, expected {expected['tag']!r}")
    return problems


def main() -> int:
    mode = option("--mode", "echo")
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record = option("--record")
    if record:
        path = os.path.join(record, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"argv": sys.argv, "pid": os.getpid()}, f)
        os.replace(path + ".tmp", path)  # a reader never sees half a file

    worker_file = option("--rw")
    if worker_file is None:
        print("factory_worker.py: --rw WORKER_FILE is required", file=sys.stderr)
        return 2
    max_jobs = option("--max-jobs")
    delay = float(option("--delay", "0") or 0)
    runs = option("--runs")
    heartbeat = float(option("--heartbeat", "0.2") or 0.2)
    started = time.monotonic()

    with Worker(requirements_from(worker_file), sys.argv[1], heartbeat_interval=heartbeat) as w:

        def handle(job: Job) -> Any:
            if mode == "check":
                problems = differences(job)
                if problems:
                    raise RuntimeError("; ".join(problems))
                return json.dumps({"argv": sys.argv, "pid": os.getpid()})
            if mode == "hold":
                w.send_progress(job, 1, "holding")
                release = os.environ["FW_RELEASE"]
                while not os.path.exists(release):
                    if time.monotonic() - started > NEVER_LONGER_THAN:
                        raise RuntimeError("held for too long")
                    time.sleep(0.01)
                return b"released"
            if mode == "stubborn":
                w.send_progress(job, 1, "never finishing")
                while time.monotonic() - started < NEVER_LONGER_THAN:
                    time.sleep(0.05)  # deaf to the broker: only SIGKILL ends this
                return b"gave up"
            time.sleep(delay)
            if runs:
                with open(os.path.join(runs, f"{os.getpid()}.runs"), "a") as f:
                    f.write(job.id + "\n")
            return b"echo:" + job["data"]

        w.run(
            handle,
            max_jobs=None if max_jobs is None else int(max_jobs),
            idle_timeout=float(option("--idle", "10") or 10),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
