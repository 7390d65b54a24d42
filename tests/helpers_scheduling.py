"""Handlers for ``Worker.run(..., pool="process")`` in tests/test_worker_scheduling.py.

They live in a module of their own because a process pool's handler is pickled by reference:
each handler process imports it by name (a small module, not the test module with pytest)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

#: no handler here outlives a test, whatever happens to the test
NEVER_LONGER_THAN = 60.0


def rendezvous(job: Any) -> bytes:
    """Notes itself in ``dir``, waits until ``n`` handlers have (so ``n`` run at once), then
    burns ``burn`` seconds of CPU. Returns its pid, when it ran (from ``entered`` to ``end``,
    the clock is system-wide), when it started burning and how much CPU that took."""
    entered = time.monotonic()
    spec = json.loads(job["data"])
    folder = Path(spec["dir"])
    (folder / f"{os.getpid()}-{job.id}").touch()
    deadline = time.monotonic() + NEVER_LONGER_THAN
    while len(list(folder.iterdir())) < spec["n"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the other handlers never came")
        time.sleep(0.005)
    start = time.monotonic()
    cpu0 = time.process_time()
    spins = 0
    while time.process_time() - cpu0 < spec["burn"]:
        spins += 1  # pure Python: only another process runs beside it
    return json.dumps(
        {
            "pid": os.getpid(),
            "entered": entered,
            "start": start,
            "end": time.monotonic(),
            "cpu": time.process_time() - cpu0,
        }
    ).encode()


def until_cancelled(job: Any, path: str) -> bytes:
    """Runs until the broker cancels it; writes the reason into the file at ``path`` (and
    ``PATH.started`` when it starts: a job cancelled before it starts never does)."""
    Path(path + ".started").touch()
    deadline = time.monotonic() + NEVER_LONGER_THAN
    while not job.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    # written aside and renamed: a test waiting for the file never reads it half written
    Path(path + ".tmp").write_text(str(job.cancel_reason))
    Path(path + ".tmp").replace(path)
    return b"stopped"


def progress(job: Any) -> bytes:
    """Tries to report progress: not possible from a process."""
    job.send_progress(50, "half way")
    return b"unreachable"


def unpicklable_result(job: Any) -> Any:
    return lambda: None


def dispatch(job: Any) -> Any:
    """A process handler whose data names what to do: ``echo TEXT``, ``until_cancelled
    PATH``, ``progress``, ``unpicklable_result``."""
    name, _, arg = job["data"].decode().partition(" ")
    if name == "echo":
        return arg.encode()
    if name == "until_cancelled":
        return until_cancelled(job, arg)
    if name == "progress":
        return progress(job)
    if name == "unpicklable_result":
        return unpicklable_result(job)
    raise ValueError(f"unknown job {name!r}")
