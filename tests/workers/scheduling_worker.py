#!/usr/bin/env python3
"""A remus worker for tests/test_worker_scheduling.py, started by a worker file.

    scheduling_worker.py ENDPOINT --record DIR [--input I] [--output O] [--slots N]

Serves ``I->O`` (default ``Sched->Run``) named ``scheduling_worker`` (a worker file's default
name for it) with ``Worker.run``. What a job does is its data:

  obey      reports progress, then runs until the broker cancels it, notes the reason in
            ``DIR/<pid>.cancels`` (``job-id reason`` lines) and returns (the worker then
            reports it stopped)
  pid:S     works S seconds, then returns this process's pid
  checkpoint  on its first run saves the checkpoint ``cp-1``, reports progress "checkpointed"
            and obeys; run again, returns ``resumed from`` and the checkpoint it found
  master    on its first run submits one assistant (``obey``), saves its id as the
            checkpoint, reports progress ``assistant ID``; then (every run) obeys
  deaf      reports progress "deaf", then never looks at a cancel: it waits for the file
            ``DIR/release``, notes ``job-id reason`` in ``DIR/<pid>.cancels`` and returns
            ``released (REASON)`` (``not cancelled`` when it was not)

``DIR/<pid>.json`` is written at start.
"""

from __future__ import annotations

import json
import os
import sys
import time

from remus.types import IOType, JobRequirements, JobSubmission
from remus.worker import Job, Worker

NEVER_LONGER_THAN = 60.0  # no job outlives a test run, whatever happens to the test


def option(name: str, default: str) -> str:
    args = sys.argv[2:]
    if name in args and args.index(name) + 1 < len(args):
        return args[args.index(name) + 1]
    return default


def main() -> int:
    record = option("--record", "")
    if record:
        path = os.path.join(record, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"argv": sys.argv, "pid": os.getpid()}, f)
        os.replace(path + ".tmp", path)
    io_type = IOType(option("--input", "Sched"), option("--output", "Run"))
    requirements = JobRequirements(io_type, worker_name="scheduling_worker")
    slots = int(option("--slots", "1"))

    with Worker(requirements, sys.argv[1], heartbeat_interval=0.2, slots=slots) as w:

        def handle(job: Job) -> bytes:
            data = job["data"].decode()
            if data == "checkpoint" and job.last_checkpoint is not None:
                return b"resumed from " + job.last_checkpoint
            if data == "checkpoint":
                job.checkpoint(b"cp-1")
                job.send_progress(10, "checkpointed")
                data = "obey"
            if data == "master" and job.last_checkpoint is None:
                assistant = job.submit_assistant(JobSubmission.of(io_type, "obey"))
                job.checkpoint(assistant.id.encode())
                job.send_progress(10, f"assistant {assistant.id}")
            if data == "master":
                data = "obey"
            if data == "deaf":
                job.send_progress(1, "deaf")
                deadline = time.monotonic() + NEVER_LONGER_THAN
                while not os.path.exists(os.path.join(record, "release")):
                    if time.monotonic() > deadline:
                        raise TimeoutError("never released")
                    time.sleep(0.01)  # the work: it never looks at job.cancelled
                with open(os.path.join(record, f"{os.getpid()}.cancels"), "a") as f:
                    f.write(f"{job.id} {job.cancel_reason}\n")
                return f"released ({job.cancel_reason or 'not cancelled'})".encode()
            if data == "obey":
                job.send_progress(1, "running until cancelled")
                deadline = time.monotonic() + NEVER_LONGER_THAN
                while not job.cancelled and time.monotonic() < deadline:
                    time.sleep(0.01)  # the work, in small steps, looking at the cancel
                if record:
                    with open(os.path.join(record, f"{os.getpid()}.cancels"), "a") as f:
                        f.write(f"{job.id} {job.cancel_reason}\n")
                return b"stopped early"
            if data.startswith("pid:"):
                time.sleep(float(data[4:]))  # the work
                return str(os.getpid()).encode()
            raise ValueError(f"unknown job {data!r}")

        w.run(handle, idle_timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
