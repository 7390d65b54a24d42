#!/usr/bin/env python3
"""A real remus worker process for the end-to-end and robustness tests.

    echo_worker.py ENDPOINT [--mode echo|hold|crash] [--heartbeat S] [--input T] [--output T]
                            [--name NAME]

``echo`` returns each job's ``data`` content with ``echo:`` in front. ``hold`` keeps every job
it takes until the job is terminated or the broker tells the worker to exit, then returns
``held``; the tests kill it mid-job or stop the broker under it. Either way the process exits by
itself once ``Worker.run`` returns (the broker said exit), with status 0 (1 if the worker
stopped for an error, such as a wrong endpoint). ``crash`` SIGKILLs its
own process as soon as it takes a job (a poison job that takes its worker down with it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from remus.types import IOType, JobRequirements
from remus.worker import Job, Worker


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--mode", choices=("echo", "hold", "crash"), default="echo")
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--input", default="Text")
    parser.add_argument("--output", default="Echo")
    parser.add_argument("--name", default="echo")
    args = parser.parse_args()
    reqs = JobRequirements(IOType(args.input, args.output), worker_name=args.name)

    with Worker(reqs, args.endpoint, heartbeat_interval=args.heartbeat) as w:

        def echo(job: Job) -> bytes:
            return b"echo:" + job.get("data", b"")

        def hold(job: Job) -> bytes:
            deadline = time.monotonic() + 60  # never outlive a test run
            while not (w.should_terminate or w.job_should_be_terminated(job)):
                if time.monotonic() > deadline:
                    raise RuntimeError("held a job for 60 s and nobody came for it")
                time.sleep(0.01)
            return b"held"

        def crash(job: Job) -> bytes:
            os.kill(os.getpid(), signal.SIGKILL)
            return b"never"

        w.run({"echo": echo, "hold": hold, "crash": crash}[args.mode])
    return 0 if w.error is None else 1  # e.g. pointed at a broker's client endpoint


if __name__ == "__main__":
    sys.exit(main())
