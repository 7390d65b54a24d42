"""Logs that follow jobs, read from a real ``remus server``'s stderr: one ``remus.jobs`` line
per job that ends (INFO when it finished, WARNING when not), job ids in every ``-v`` trace
line about a message, and a worker process that logs each job it takes and ends."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers_cli import ECHO, Handler
from helpers_e2e import start_cli_server

from remus.client import BasicClient
from remus.errors import JobFailedError
from remus.server import ServerPorts
from remus.types import JobSubmission

pytestmark = pytest.mark.timeout(30)

#: a worker process that logs at INFO (as a tool author's worker would, with remus.log)
WORKER = """
import sys
from remus.log import configure
from remus.types import IOType, JobRequirements
from remus.worker import Worker

configure("INFO")

def handle(job):
    if job["data"] == b"boom":
        raise ValueError("the input says boom")
    return b"echo:" + job["data"]

with Worker(JobRequirements(IOType("Text", "Echo"), worker_name="logged"), sys.argv[1],
            heartbeat_interval=0.2) as w:
    w.run(handle)
"""


class Log:
    """A process's stderr, written to a file (a pipe nobody reads would stall it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = path.open("w")

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def wait_line(self, pred: Callable[[str], bool], timeout: float = 10.0) -> str:
        """The first line that satisfies ``pred``, waiting for it up to ``timeout`` s."""
        found = wait_for(lambda: [line for line in self.lines() if pred(line)], timeout=timeout)
        return str(found[0])

    def close(self) -> None:
        self.file.close()


@pytest.fixture
def make_log(tmp_path: Path) -> Any:
    made: list[Log] = []

    def make(name: str) -> Log:
        log = Log(tmp_path / f"{name}.log")
        made.append(log)
        return log

    yield make
    for log in made:
        log.close()


def server(make_process: Any, log: Log, *extra: str) -> ServerPorts:
    _, ports = start_cli_server(make_process, *extra, stderr=log.file)
    return ports


def job_lines(log: Log, job_id: str) -> list[str]:
    """The ``remus.jobs`` lines about one job."""
    return [line for line in log.lines() if " remus.jobs: " in line and f"job {job_id} " in line]


def run_two_jobs(ports: ServerPorts, make_client: Any) -> tuple[str, str]:
    """A job that finishes and one that fails; their ids."""
    c: BasicClient = make_client(ports.client, basic=True, timeout=10.0)
    done = c.run(ECHO, b"hello", timeout=20)
    assert done.data == b"echo:hello"
    failing = c.submit(ECHO, b"boom")
    with pytest.raises(JobFailedError, match="the input says boom"):
        c.wait(failing, timeout=20)
    return done.job_id, failing.id


def test_a_job_that_ends_gets_one_line_info_or_warning(
    make_process: Any, make_client: Any, make_log: Any
) -> None:
    broker_log, worker_log = make_log("broker"), make_log("worker")
    ports = server(make_process, broker_log)  # the default level: INFO
    worker = make_process(["-c", WORKER, ports.worker], stderr=worker_log.file)
    c: BasicClient = make_client(ports.client, basic=True, timeout=10.0)
    wait_for(lambda: c.client.workers(), timeout=15.0)
    finished, failed = run_two_jobs(ports, make_client)

    line = broker_log.wait_line(lambda line: f"job {failed} " in line and " remus.jobs: " in line)
    assert " WARNING " in line, line
    assert f"job {failed} FAILED: Text->Echo on logged@" in line, line
    assert f":{worker.pid}, queued " in line and ", ran " in line, line
    assert line.endswith(": ValueError: the input says boom"), line

    (line,) = job_lines(broker_log, finished)  # written before the failure's: already there
    assert " INFO " in line, line
    assert re.search(
        rf"job {finished} FINISHED: Text->Echo on logged@\S+:{worker.pid}, "
        r"queued \d+\.\d{3} s, ran \d+\.\d{3} s$",
        line,
    ), line
    assert len(job_lines(broker_log, failed)) == 1

    # the worker process logs each job it takes and how it ends, at INFO
    worker_log.wait_line(lambda line: f"job {failed} failed: ValueError" in line)
    lines = worker_log.lines()
    taken = {}
    for job_id in (finished, failed):
        (taken[job_id],) = [x for x in lines if f"job {job_id} taken" in x]
        assert " INFO " in taken[job_id], lines
    (ended,) = [x for x in lines if f"job {finished} finished" in x]
    assert " INFO " in ended and "s of CPU" in ended, lines
    assert lines.index(taken[finished]) < lines.index(ended) < lines.index(taken[failed])
    assert not [x for x in lines if f"job {failed} finished" in x]


def test_at_warning_only_the_failure_is_logged(
    make_process: Any, make_client: Any, make_worker: Any, make_log: Any
) -> None:
    broker_log = make_log("broker")
    ports = server(make_process, broker_log, "--log-level", "WARNING")
    make_worker(ECHO, ports.worker, run=Handler())
    finished, failed = run_two_jobs(ports, make_client)

    line = broker_log.wait_line(lambda line: f"job {failed} FAILED" in line)
    assert " WARNING " in line and " remus.jobs: " in line, line
    # the finished job's line would have been written first, by the same thread
    assert job_lines(broker_log, finished) == []
    assert not [line for line in broker_log.lines() if " INFO " in line]


def test_trace_lines_name_the_jobs_they_carry(
    make_process: Any, make_client: Any, make_worker: Any, make_log: Any
) -> None:
    broker_log = make_log("broker")
    ports = server(make_process, broker_log, "-v")
    make_worker(ECHO, ports.worker, run=Handler())
    c: BasicClient = make_client(ports.client, basic=True, timeout=10.0)
    job = c.submit(ECHO, b"traced")
    assert c.wait(job, timeout=20).data == b"echo:traced"

    def about(*words: str) -> Callable[[str], bool]:
        return lambda line: " TRACE " in line and all(w in line for w in words)

    tag = f"jobs={job.id}"
    broker_log.wait_line(about("client in <- ", "submit ", tag))  # the client edge
    broker_log.wait_line(about("core <- ", "SubmitRequest", tag))  # the core
    broker_log.wait_line(about("worker out -> ", "jobs ", tag))  # to the worker
    broker_log.wait_line(about("worker in <- ", "report ", tag))  # its report
    broker_log.wait_line(about("core <- ", "Report", tag))

    # a message about many jobs names the first three and counts the rest
    jobs = c.submit_many(JobSubmission.of(ECHO, f"n{i}".encode()) for i in range(5))
    assert len(list(c.as_completed(jobs, timeout=20))) == 5
    ids = [j.id for j in jobs]
    many = f"jobs={ids[0]},{ids[1]},{ids[2]} (+2 more)"
    broker_log.wait_line(about("client in <- ", "submit ", many))
    broker_log.wait_line(about("core <- ", "SubmitRequest", many))
    # a message that names no job says nothing of jobs
    heartbeat = broker_log.wait_line(about("worker in <- ", "heartbeat "))
    assert "jobs=" not in heartbeat, heartbeat


def test_the_trace_is_off_at_info(
    make_process: Any, make_client: Any, make_worker: Any, make_log: Any
) -> None:
    broker_log = make_log("broker")
    ports = server(make_process, broker_log)
    make_worker(ECHO, ports.worker, run=Handler())
    c: BasicClient = make_client(ports.client, basic=True, timeout=10.0)
    done = c.run(ECHO, b"quiet", timeout=20)
    broker_log.wait_line(lambda line: f"job {done.job_id} FINISHED" in line)
    assert not [line for line in broker_log.lines() if " TRACE " in line]
