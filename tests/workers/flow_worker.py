#!/usr/bin/env python3
"""A remus worker process for the workflow tests (tests/test_workflows.py).

    flow_worker.py ENDPOINT

Each job's result is its ``data``, then ``(`` the results of the jobs it ran after, in order,
joined by ``+`` ``)``: a chain a -> b -> c ends as ``c(b(a))``. A job whose data is ``fail``
raises.
"""

from __future__ import annotations

import sys

from remus.types import IOType
from remus.worker import Job, Worker

FLOW = IOType("Flow", "Step")


def step(job: Job) -> bytes:
    if job["data"] == b"fail":
        raise RuntimeError("this step fails on purpose")
    inputs = [job.inputs_from(pred).data for pred in job.after]
    return job["data"] + (b"(" + b"+".join(bytes(i) for i in inputs) + b")" if inputs else b"")


def main() -> int:
    with Worker(FLOW, sys.argv[1], heartbeat_interval=0.2) as w:
        w.run(step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
