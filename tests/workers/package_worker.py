#!/usr/bin/env python3
"""A remus worker process for the work package tests (tests/test_packages.py).

    package_worker.py ENDPOINT LOG STOP_AT

Each job's data is its number. The handler appends ``start N PID`` to the file LOG before it
works and ``end N PID`` after (each line flushed at once), and returns its PID. Job number
STOP_AT never ends by itself (it waits up to a minute): the test SIGKILLs the worker then.
"""

from __future__ import annotations

import os
import sys
import time

from remus.types import IOType
from remus.worker import Job, Worker

PACK = IOType("Pack", "Unit")


def main() -> int:
    endpoint, log, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pid = os.getpid()

    def note(line: str) -> None:
        with open(log, "a") as f:
            f.write(line + "\n")

    def handler(job: Job) -> bytes:
        n = int(job["data"])
        note(f"start {n} {pid}")
        if n == stop_at:
            time.sleep(60)  # the job the worker is killed in; no test waits this long
        time.sleep(0.002)  # the job's own work
        note(f"end {n} {pid}")
        return str(pid).encode()

    with Worker(PACK, endpoint, heartbeat_interval=0.2) as w:
        w.run(handler, prefetch=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
