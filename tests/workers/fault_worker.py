#!/usr/bin/env python3
"""A real remus worker process for the fault tests (tests/test_faults*.py).

    fault_worker.py ENDPOINT [--rw WORKER_FILE | --input T --output T --name NAME]
                    [--heartbeat S] [--record DIR]

What each job does is said by its ``data`` content, so one program serves every case:

  ``sleep:S``  sleeps S seconds without a word of progress, then returns ``slept``;
  ``deaf:S``   the same, deaf to everything: it ignores SIGTERM, the broker's cancel and its
               exit order (only SIGKILL ends it early), then returns ``late``;
  anything else is echoed back with ``echo:`` in front.

With ``--rw`` it serves what its worker file declares (as a spawned Remus worker would),
otherwise ``--input``/``--output``/``--name``. ``--record DIR`` writes ``DIR/<pid>.taken``
holding the ``time.monotonic()`` at which it took its latest job (the clock is system-wide on
Linux, so a test can compare it with its own).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from remus.types import IOType, JobRequirements
from remus.worker import Job, Worker


def requirements(args: argparse.Namespace) -> JobRequirements:
    if args.rw is None:
        return JobRequirements(IOType(args.input, args.output), worker_name=args.name)
    declared = json.loads(Path(args.rw).read_text())
    name = declared.get("WorkerName") or Path(declared["ExecutableName"]).stem
    io_type = IOType(declared["InputType"], declared["OutputType"])
    return JobRequirements(io_type, worker_name=name, tag=declared.get("Tag"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--rw")
    parser.add_argument("--input", default="Text")
    parser.add_argument("--output", default="Fault")
    parser.add_argument("--name", default="fault")
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--record")
    args = parser.parse_args()

    def handle(job: Job) -> bytes:
        if args.record:
            taken = Path(args.record) / f"{os.getpid()}.taken"
            taken.with_suffix(".tmp").write_text(repr(time.monotonic()))
            os.replace(taken.with_suffix(".tmp"), taken)
        data = job.get("data", b"")
        kind, _, seconds = data.partition(b":")
        if kind == b"deaf":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(float(seconds))  # the point: it looks at nothing meanwhile
            return b"late"
        if kind == b"sleep":
            time.sleep(float(seconds))
            return b"slept"
        return b"echo:" + data

    with Worker(requirements(args), args.endpoint, heartbeat_interval=args.heartbeat) as w:
        w.run(handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
