"""Helpers for the command-line tests: the CLI run in this process, a broker subprocess with a
real worker whose handler each test steers by the job's data."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any

from helpers_e2e import start_cli_server

from remus import IOType
from remus.cli import main
from remus.server import ServerPorts

ECHO = IOType("Text", "Echo")


@dataclass
class Ran:
    code: int
    out: str
    err: str
    raw: bytes


def cli(*argv: str) -> Ran:
    """``remus ARGV`` in this process, stdout and stderr captured (not a terminal)."""
    raw_out = io.BytesIO()
    out = io.TextIOWrapper(raw_out, encoding="utf-8")
    err = io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    out.flush()
    raw = raw_out.getvalue()
    return Ran(code, raw.decode(errors="replace"), err.getvalue(), raw)


class Handler:
    """A worker's handler: ``echo:`` + data; ``boom`` raises; ``hold`` sends progress until
    released (or terminated); ``steps`` reports 25/50/75 %."""

    def __init__(self) -> None:
        self.worker: Any = None
        self.release = threading.Event()

    def __call__(self, job: Any) -> bytes:
        data = job.get("data", b"")
        if data == b"boom":
            raise ValueError("the input says boom")
        if data == b"hold":
            deadline = time.monotonic() + 30
            while not self.release.wait(0.02) and time.monotonic() < deadline:
                if self.worker.job_should_be_terminated(job) or self.worker.should_terminate:
                    return b"held"
                self.worker.send_progress(job, 10, "holding")
            return b"released"
        if data == b"steps":
            for value in (25, 50, 75):
                self.worker.send_progress(job, value, f"step {value}")
        return b"echo:" + data


@dataclass
class Broker:
    ports: ServerPorts
    handler: Handler
    worker: Any

    @property
    def ep(self) -> str:
        return self.ports.client


def start_broker(make_process: Any, make_worker: Any) -> Iterator[Broker]:
    """For a fixture: ``remus server`` on free ports and one in-process Text->Echo worker."""
    _, ports = start_cli_server(make_process)
    handler = Handler()
    worker = make_worker(ECHO, ports.worker, run=handler)
    handler.worker = worker
    yield Broker(ports, handler, worker)
    handler.release.set()  # a held job ends, so the worker can be stopped
