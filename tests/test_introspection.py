"""Introspection end to end: ``Client.workers()``, ``jobs()`` and ``stats()`` against a real
in-process Server, with real workers (threads in this process, and a process the factory
spawns from a worker file)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from factory_helpers import write_worker_file

import remus
from remus.client import Client
from remus.server.factory import WorkerFactory
from remus.types import IOType, JobRequirements, JobSubmission, Status

pytestmark = pytest.mark.timeout(60)

EDGES = IOType("Edges", "Mesh2D")
NOBODY = IOType("Nobody", "Serves")
FACTORY_WORKER = str(Path(__file__).resolve().parent / "workers" / "factory_worker.py")
SLOW = 20.0  # a Python worker process starting on a loaded machine


def result(c: Client, job: Any, timeout: float = 10.0) -> bytes:
    wait_for(lambda: c.job_status(job).status.done, timeout=timeout)
    return bytes(c.retrieve_result(job).data)


def test_workers_and_jobs_follow_a_job_from_queue_to_finish(
    make_server: Any, make_client: Any, make_worker: Any
) -> None:
    server = make_server()
    c: Client = make_client(server.ports.client)
    gate = threading.Event()

    def hold(job: Any) -> bytes:
        gate.wait(30)
        return b"meshed"

    reqs = JobRequirements(EDGES, "Mesher", {"quality": "fine"})
    make_worker(reqs, server.ports.worker, run=hold)
    (idle,) = c.workers()
    assert (idle.state, idle.jobs_held, idle.jobs_finished) == ("idle", 0, 0)
    assert (idle.io_type, idle.worker_name, idle.tag) == (EDGES, "Mesher", {"quality": "fine"})
    assert idle.name.startswith("Mesher@") and idle.pid > 0 and idle.worker_file == ""
    assert 0.0 <= idle.last_heard < 5.0

    waiting = c.submit_job(JobSubmission.of(NOBODY, b"w"), wait_for_worker=True)
    job = c.submit_job(JobSubmission.of(reqs, b"edges"))

    def busy() -> Any:
        (w,) = c.workers()
        return w if w.state == "busy" and w.jobs_running == 1 else None

    w = wait_for(busy)
    assert (w.jobs_held, w.jobs, w.jobs_finished) == (1, (job.id,), 0)
    (running,) = c.jobs(Status.IN_PROGRESS)
    assert (running.id, running.worker, running.status) == (job.id, w.name, Status.IN_PROGRESS)
    assert running.running_for is not None and running.running_for >= 0.0
    (queued,) = c.jobs(Status.QUEUED)
    assert queued.id == waiting.id and queued.running_for is None
    assert "no connected worker serves Nobody->Serves" in queued.reason
    assert [j.id for j in c.jobs()] == [job.id, waiting.id]  # newest first
    assert [j.id for j in c.jobs(io_type=NOBODY)] == [waiting.id]
    assert [j.id for j in c.jobs(limit=1)] == [job.id]

    gate.set()
    assert result(c, job) == b"meshed"

    def idle_again() -> Any:
        (w,) = c.workers()
        return w if w.state == "idle" and w.jobs_finished == 1 else None

    w = wait_for(idle_again)
    assert (w.jobs_held, w.jobs_running, w.jobs) == (0, 0, ())
    (done,) = c.jobs(Status.FINISHED)
    assert (done.id, done.worker, done.reason) == (job.id, "", "")
    assert done.running_for is not None and done.queued_for >= 0.0
    assert c.jobs(Status.FAILED) == []


def test_stats_count_jobs_and_workers_and_name_the_endpoints(
    make_server: Any, make_client: Any, make_worker: Any
) -> None:
    server = make_server()
    c: Client = make_client(server.ports.client)
    make_worker(EDGES, server.ports.worker, run=lambda job: b"ok")
    jobs = c.submit_jobs([JobSubmission.of(EDGES, b"%d" % i) for i in range(5)])
    stuck = c.submit_job(JobSubmission.of(NOBODY, b"w"), wait_for_worker=True)
    for job in jobs:
        assert result(c, job) == b"ok"
    c.terminate(stuck)

    def settled() -> Any:
        s = c.stats()
        return s if s.jobs["FINISHED"] == 5 and s.workers["idle"] == 1 else None

    s = wait_for(settled)
    assert s.version == remus.__version__
    assert s.endpoints == {
        "client": server.ports.client,
        "worker": server.ports.worker,
        "status": server.ports.status,
    }
    assert s.host and s.journal is False and s.uptime > 0.0
    assert s.jobs == {
        "QUEUED": 0,
        "IN_PROGRESS": 0,
        "FINISHED": 5,
        "FAILED": 0,
        "EXPIRED": 0,
        "TERMINATED": 1,
        "WAITING": 0,
    }
    assert s.jobs_by_io_type["Edges->Mesh2D"]["FINISHED"] == 5
    assert s.jobs_by_io_type["Nobody->Serves"]["TERMINATED"] == 1
    assert s.totals["submitted"] == 6 and s.totals["finished"] == 5
    assert s.totals["terminated"] == 1 and s.totals["requeued"] == 0
    assert s.workers == {"idle": 1, "busy": 0, "leaving": 0}
    assert s.rates["submitted"] > 0 and s.rates["finished"] > 0 and s.rates["failed"] == 0
    assert s.queued_bytes == 0 and s.max_queued_jobs == server.config.max_queued_jobs
    assert s.max_queued_bytes == server.config.max_queued_bytes
    assert s.worker_files == []


@pytest.mark.skipif(sys.platform == "win32", reason="worker file executables")
def test_a_spawned_worker_names_its_worker_file(
    tmp_path: Path, make_server: Any, make_client: Any
) -> None:
    rw = write_worker_file(
        tmp_path,
        "mesher.rw",
        ExecutableName=FACTORY_WORKER,
        WorkerName="mesher",
        Arguments=["--rw", "@SELF@", "--idle", "30"],
    )
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=1))
    c: Client = make_client(server.ports.client)
    job = c.submit_job(JobSubmission.of(EDGES, b"x"))
    assert result(c, job, SLOW) == b"echo:x"

    def registered() -> Any:
        found = c.workers()
        return found[0] if found and found[0].jobs_finished == 1 else None

    w = wait_for(registered, timeout=SLOW)
    assert w.worker_file == str(rw)
    assert (w.worker_name, w.state) == ("mesher", "idle")
    (described,) = c.stats().worker_files
    assert described == {
        "path": str(rw),
        "io_type": "Edges->Mesh2D",
        "worker_name": "mesher",
        "spawned": 1,
        "alive": 1,
        "quarantined": "",
    }


def test_jobs_refuses_bad_arguments_before_asking(make_server: Any, make_client: Any) -> None:
    server = make_server()
    c: Client = make_client(server.ports.client)
    with pytest.raises(ValueError, match="limit"):
        c.jobs(limit=0)
    with pytest.raises(TypeError, match="status"):
        c.jobs(status=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="INVALID"):
        c.jobs(status=Status.INVALID)
    assert c.calls == 0
    assert c.jobs(limit=50_000) == []
