#!/usr/bin/env python3
"""A real remus worker whose handler runs until the test releases it (tests/test_acks.py).

    release_worker.py ENDPOINT FOLDER [--exit-after-one]

Serves ``Text -> Released``. Each job appends its id to ``FOLDER/runs`` (one line per run of
the handler), then waits until ``FOLDER/release`` exists; while it waits, it writes
``FOLDER/cancelled`` once the broker has cancelled the job. Then it writes ``FOLDER/returned``
and returns ``first run of <data>`` (``run N of <data>`` for a later run). With
``--exit-after-one`` the worker closes after its first job, whether or not a broker took the
result. Log lines go to stderr, where the tests read the warnings.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from remus.types import IOType, JobRequirements
from remus.worker import Job, Worker

NEVER_LONGER_THAN = 60.0


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    endpoint, folder = sys.argv[1], Path(sys.argv[2])
    once = "--exit-after-one" in sys.argv[3:]
    reqs = JobRequirements(IOType("Text", "Released"))

    with Worker(reqs, endpoint, heartbeat_interval=0.2) as w:

        def handle(job: Job) -> bytes:
            with open(folder / "runs", "a") as f:
                f.write(job.id + "\n")
            runs = len((folder / "runs").read_text().splitlines())
            deadline = time.monotonic() + NEVER_LONGER_THAN
            while not (folder / "release").exists():
                if w.job_should_be_terminated(job):
                    (folder / "cancelled").touch()
                if time.monotonic() > deadline:
                    raise RuntimeError("nobody released the job")
                time.sleep(0.01)
            (folder / "returned").touch()
            which = "first run" if runs == 1 else f"run {runs}"
            return f"{which} of ".encode() + job["data"]

        w.run(handle, max_jobs=1 if once else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
