"""Helpers for the worker file and factory tests: write .rw files, wait on a condition."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

WORKERS = Path(__file__).resolve().parent / "workers"
PROBE = str(WORKERS / "probe.py")
#: the worker of the scheduling tests (tests/workers/scheduling_worker.py)
SCHEDULING_WORKER = str(WORKERS / "scheduling_worker.py")


def poll_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01) -> T:
    """Return the first truthy value of ``predicate()``; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def write_worker_file(folder: Path, name: str = "probe.rw", **keys: Any) -> Path:
    """Write a worker file; defaults to the probe worker, Edges->Mesh2D."""
    body = {"ExecutableName": PROBE, "InputType": "Edges", "OutputType": "Mesh2D", **keys}
    body = {k: v for k, v in body.items() if v is not None}
    path = folder / name
    path.write_text(json.dumps(body, indent=2))
    return path


def write_scheduling_worker_file(folder: Path, io: Any, records: Path) -> Path:
    """``sched.rw``: the scheduling tests' worker for ``io``, recording its pid in ``records``."""
    return write_worker_file(
        folder,
        "sched.rw",
        ExecutableName=SCHEDULING_WORKER,
        InputType=io.input,
        OutputType=io.output,
        Arguments=["--record", str(records)],
    )


def write_executable(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (or is a zombie we are not the parent of)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
