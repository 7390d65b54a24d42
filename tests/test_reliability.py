"""Issue 5 with real sockets and processes: worker processes killed mid-job, time limits, a
broker SIGKILLed and started again on its journal, and a bounded queue.

A broker that must come back on the same endpoints is first started on port 0; the endpoints
it prints are the ones it is restarted on (see ``restart``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from factory_helpers import pid_gone, write_worker_file
from helpers_e2e import ECHO_WORKER, launch_cli_server, restart_cli_server, sigkill

import remus
from remus import IOType, JobRequirements, JobSubmission, Status
from remus import protocol as p
from remus.client import Client
from remus.server import Server, ServerConfig, ServerPorts
from remus.server.factory import Backoff, WorkerFactory
from remus.worker import Job as WorkerJob

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="signals and process groups"),
]

#: what tests/workers/echo_worker.py serves by default
ECHO = IOType("Text", "Echo")
EDGES = IOType("Edges", "Mesh2D")
FACTORY_WORKER = str(Path(__file__).resolve().parent / "workers" / "factory_worker.py")
#: long enough for a Python worker process to start and take a job on a loaded machine
SLOW = 20.0
#: the factory's back-off for crashes, off: these tests kill workers on purpose
NO_BACKOFF = Backoff(quick_exit=0.0)

MakeProcess = Callable[..., subprocess.Popen[str]]


def wait_status(c: Client, job: Any, pred: Callable[[remus.JobStatus], bool]) -> remus.JobStatus:
    return wait_for(lambda: (lambda s: s if pred(s) else None)(c.job_status(job)), timeout=SLOW)


def spawned_pids(records: Path) -> set[int]:
    """The pids of the factory workers that wrote a record (``--record DIR``)."""
    return {int(f.stem) for f in records.glob("*.json")}


def factory_worker_file(folder: Path, *args: str, **keys: Any) -> Path:
    return write_worker_file(
        folder,
        "edges.rw",
        ExecutableName=FACTORY_WORKER,
        Arguments=["--rw", "@SELF@", *args],
        **keys,
    )


# ============================================================================ requeue


def test_a_job_whose_worker_process_is_killed_finishes_on_another_worker(
    server: Server, make_client: Any, make_process: MakeProcess, make_worker: Any
) -> None:
    c = make_client(server.ports.client)
    proc = make_process([ECHO_WORKER, server.ports.worker, "--mode", "hold", "--heartbeat", "0.1"])
    wait_for(lambda: c.can_mesh(ECHO), timeout=SLOW)  # the worker process registered
    job = c.submit_job(JobSubmission.of(ECHO, b"precious"))
    wait_status(c, job, lambda s: s.status is Status.IN_PROGRESS)

    proc.kill()  # SIGKILL mid-job: no goodbye, no result
    proc.wait(5)
    requeued = wait_status(c, job, lambda s: s.attempt == 2)
    assert requeued.status is Status.QUEUED

    make_worker(JobRequirements(ECHO), server.ports.worker, run=lambda j: b"second:" + j["data"])
    done = wait_status(c, job, lambda s: s.status.done)
    assert (done.status, done.attempt) == (Status.FINISHED, 2)
    assert c.retrieve_result(job).data == b"second:precious"


def test_a_job_that_loses_every_worker_fails_with_the_evidence(
    server: Server, make_client: Any, make_process: MakeProcess
) -> None:
    c = make_client(server.ports.client)
    # queued before its workers exist: each worker process is started for it, one after another
    job = c.submit_job(JobSubmission.of(ECHO, b"doomed"), max_retries=1, wait_for_worker=True)
    pids = []
    for attempt in (1, 2):
        proc = make_process(
            [ECHO_WORKER, server.ports.worker, "--mode", "hold", "--heartbeat", "0.1"]
        )
        pids.append(proc.pid)
        wait_status(c, job, lambda s, a=attempt: s.status is Status.IN_PROGRESS and s.attempt == a)
        proc.kill()
        proc.wait(5)

    failed = wait_status(c, job, lambda s: s.status.done)
    assert (failed.status, failed.attempt) == (Status.FAILED, 2)
    with pytest.raises(remus.JobFailedError) as info:
        c.retrieve_result(job)
    evidence = info.value.reason
    assert evidence.startswith("its worker was lost on 2 attempts (max_retries=1): ")
    first, second = evidence.split(": ", 1)[1].split("; ")
    assert first.startswith("attempt 1 on echo@") and f":{pids[0]}: " in first
    assert second.startswith("attempt 2 on echo@") and f":{pids[1]}: " in second
    assert "stopped heartbeating" in first and "stopped heartbeating" in second


def test_a_poison_job_that_kills_its_worker_at_once_fails_after_max_retries(
    server: Server, make_client: Any, make_process: MakeProcess
) -> None:
    c = make_client(server.ports.client)
    # queued before its workers exist: each worker process is started for it, one after another
    job = c.submit_job(JobSubmission.of(ECHO, b"poison"), max_retries=1, wait_for_worker=True)
    for _ in range(4):  # two more workers than the job may take down
        proc = make_process(
            [ECHO_WORKER, server.ports.worker, "--mode", "crash", "--heartbeat", "0.1"]
        )
        assert proc.wait(SLOW) == -signal.SIGKILL, "the poison job took its worker down"
        wait_for(lambda: not c.can_mesh(ECHO), timeout=SLOW)  # the broker saw it go
        if c.job_status(job).status.done:
            break
    failed = c.job_status(job)
    assert (failed.status, failed.attempt) == (Status.FAILED, 2), failed


def test_a_worker_killed_while_a_client_waits_on_its_job_is_noticed_in_time(
    server: Server, make_client: Any, make_process: MakeProcess
) -> None:
    c = make_client(server.ports.client)
    proc = make_process([ECHO_WORKER, server.ports.worker, "--mode", "hold", "--heartbeat", "0.1"])
    wait_for(lambda: c.can_mesh(ECHO), timeout=SLOW)  # the worker process registered
    job = c.submit_job(JobSubmission.of(ECHO, b"watched"))
    wait_status(c, job, lambda s: s.status is Status.IN_PROGRESS)
    c.send(p.ProgressRequest, job.id, 0, 30.0, True)  # a wait, held by the broker
    # replies come in request order: once this one is here, the wait above is held
    assert c.job_status(job).status is Status.IN_PROGRESS

    proc.kill()
    proc.wait(5)
    killed = time.monotonic()
    wait_for(lambda: c.job_status(job).attempt == 2, timeout=3.0)
    assert time.monotonic() - killed < 2.0


def test_a_spawned_worker_killed_mid_job_is_named_with_its_signal(
    tmp_path: Path, make_server: Any, make_client: Any
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    factory_worker_file(
        tmp_path,
        "--mode",
        "hold",
        "--record",
        str(records),
        Environment={"FW_RELEASE": str(tmp_path / "never")},
    )
    factory = WorkerFactory([tmp_path], max_workers=1, backoff=NO_BACKOFF)
    server = make_server(factory=factory, config=ServerConfig(stop_timeout=1.0))
    c = make_client(server.ports.client)
    job = c.submit_job(JobSubmission.of(EDGES, b"doomed"), max_retries=1)

    killed: list[int] = []
    for attempt in (1, 2):
        wait_status(c, job, lambda s, a=attempt: s.status is Status.IN_PROGRESS and s.attempt == a)
        (pid,) = wait_for(lambda: spawned_pids(records) - set(killed), timeout=SLOW)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    failed = wait_status(c, job, lambda s: s.status.done)
    assert failed.status is Status.FAILED
    evidence = failed.reason
    for n, pid in enumerate(killed, 1):
        assert f"attempt {n} on factory_worker@" in evidence
        assert f":{pid} process was killed by SIGKILL" in evidence, evidence


# ============================================================================ time limits


def test_time_limit_fails_a_job_whose_handler_ignores_the_cancel(
    server: Server, make_client: Any, make_worker: Any
) -> None:
    release = threading.Event()
    calls: list[bytes] = []

    def deaf(job: WorkerJob) -> bytes:
        calls.append(job["data"])
        release.wait(30)  # never looks at job_should_be_terminated
        return b"late:" + job["data"]

    c = make_client(server.ports.client)
    make_worker(JobRequirements(ECHO), server.ports.worker, run=deaf)
    try:
        started = time.monotonic()  # before the job is sent, so before its limit is armed
        job = c.submit_job(JobSubmission.of(ECHO, b"slow"), time_limit=0.5)
        failed = wait_status(c, job, lambda s: s.status.done)
        assert time.monotonic() - started >= 0.5
        assert failed.status is Status.FAILED
        assert failed.reason == "time limit: ran over 0.5 s"
        with pytest.raises(remus.JobFailedError, match="time limit"):
            c.retrieve_result(job)
    finally:
        release.set()

    # the handler returns at last: its result is not taken, and the worker goes on serving
    after = c.submit_job(JobSubmission.of(ECHO, b"next"))
    assert wait_status(c, after, lambda s: s.status.done).status is Status.FINISHED
    assert c.retrieve_result(after).data == b"late:next"
    assert calls == [b"slow", b"next"]
    assert c.job_status(job).status is Status.FAILED


def test_a_spawned_worker_that_ignores_its_time_limit_is_killed_after_the_grace(
    tmp_path: Path, make_server: Any, make_client: Any
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    factory_worker_file(tmp_path, "--mode", "stubborn", "--record", str(records))
    factory = WorkerFactory([tmp_path], max_workers=1, backoff=NO_BACKOFF)
    config = ServerConfig(kill_grace=0.5, stop_timeout=1.0)
    server = make_server(factory=factory, config=config)
    c = make_client(server.ports.client)

    job = c.submit_job(JobSubmission.of(EDGES, b"forever"), time_limit=1.0)
    wait_status(c, job, lambda s: s.status is Status.IN_PROGRESS)
    (pid,) = wait_for(lambda: spawned_pids(records), timeout=SLOW)
    failed = wait_status(c, job, lambda s: s.status.done)
    assert failed.status is Status.FAILED
    assert failed.reason == "time limit: ran over 1 s"
    wait_for(lambda: pid_gone(pid), timeout=10)
    assert c.job_status(job).status is Status.FAILED


def test_queue_time_limit_expires_a_job_no_worker_takes(server: Server, make_client: Any) -> None:
    c = make_client(server.ports.client, basic=True)
    reqs = JobRequirements(IOType("Nobody", "Serves"), worker_name="Ghost")
    job = c.submit(reqs, b"x", queue_time_limit=0.3, wait_for_worker=True)
    with pytest.raises(remus.JobExpiredError) as info:
        c.wait(job, timeout=10)
    # the reason ends with why it waited: the reason it had while QUEUED
    assert info.value.reason == (
        "no worker for Nobody->Serves named 'Ghost' took it within its queue time limit of 0.3 s"
        " (no connected worker serves Nobody->Serves named 'Ghost'; waiting for one to connect)"
    )
    assert c.client.job_status(job).status is Status.EXPIRED


# ============================================================================ the journal


def launch(
    make_process: MakeProcess, journal: Path, ports: ServerPorts | None = None
) -> tuple[subprocess.Popen[str], ServerPorts | None]:
    """``remus server --journal PATH`` on ``ports`` (default: free ports). Returns the process
    and its endpoints, or None for them if it did not start (it has exited)."""
    return launch_cli_server(make_process, "--journal", str(journal), ports=ports)


def restart(
    make_process: MakeProcess, journal: Path, ports: ServerPorts, timeout: float = 15.0
) -> subprocess.Popen[str]:
    """Start the broker again on the same journal and endpoints."""
    return restart_cli_server(make_process, ports, "--journal", str(journal), timeout=timeout)


def test_a_broker_killed_and_restarted_on_its_journal_loses_nothing(
    tmp_path: Path, make_process: MakeProcess, make_client: Any, make_worker: Any
) -> None:
    journal = tmp_path / "remus.db"
    broker, ports = launch(make_process, journal)
    assert ports is not None
    c = make_client(ports.client)
    progress_type = JobRequirements(IOType("Text", "Progress"))
    later_type = JobRequirements(IOType("Text", "Later"))

    # a job that runs through the restart: it reports progress, then holds
    release = threading.Event()
    calls: list[str] = []
    holder: list[Any] = []

    def progress_then_hold(job: WorkerJob) -> bytes:
        calls.append(job.id)
        for value, message in ((10, "a"), (20, "b"), (30, "c")):
            holder[0].send_progress(job, value, message)
        release.wait(SLOW * 2)
        return b"kept working on " + job["data"]

    holder.append(make_worker(progress_type, ports.worker, run=progress_then_hold))
    make_worker(JobRequirements(ECHO), ports.worker, run=lambda j: b"done")
    try:
        finished = c.submit_job(JobSubmission.of(ECHO, b"before"))
        wait_status(c, finished, lambda s: s.status is Status.FINISHED)
        # queued for a worker that connects only after the restart
        later = [JobSubmission.of(later_type, b"%d" % i) for i in range(3)]
        queued = c.submit_jobs(later, wait_for_worker=True)
        running = c.submit_job(JobSubmission.of(progress_type, b"the long one"))
        wait_for(lambda: len(c.job_progress(running)) == 3, timeout=SLOW)

        # a wait in progress when the broker dies: the client's timeout bounds how long the
        # broker may be silent (SIGKILL: no word that it stops), so a restart must fit in it
        waiter = make_client(ports.client, basic=True, timeout=SLOW)
        outcome: dict[str, Any] = {}

        def wait() -> None:
            try:
                outcome["result"] = waiter.wait(running, timeout=SLOW * 2)
            except Exception as e:
                outcome["error"] = e

        thread = threading.Thread(target=wait, name="test-waiter", daemon=True)
        thread.start()
        # its first request brings the three updates at once; its second is held by the broker
        # (almost surely by the time another client's round trip is over: if not, it reaches
        # the restarted broker instead, and the wait must return all the same)
        wait_for(lambda: waiter.client.calls >= 2, timeout=SLOW)
        assert c.job_status(running).status is Status.IN_PROGRESS

        sigkill(broker)
        broker = restart(make_process, journal, ports)

        assert c.retrieve_result(finished).data == b"done"
        assert [s.status for s in c.job_statuses(queued)] == [Status.QUEUED] * 3
        assert [(u.value, u.message, u.seq) for u in c.job_progress(running)] == [
            (10, "a", 1),
            (20, "b", 2),
            (30, "c", 3),
        ]
        # its worker kept it through the restart and says so when it registers again
        wait_status(c, running, lambda s: s.status is Status.IN_PROGRESS)

        make_worker(later_type, ports.worker, run=lambda j: b"later:" + j["data"])
        for job in queued:
            wait_status(c, job, lambda s: s.status.done)
        assert [c.retrieve_result(j).data for j in queued] == [b"later:0", b"later:1", b"later:2"]
        assert thread.is_alive(), "the wait is still waiting for the held job"
    finally:
        release.set()
    thread.join(SLOW)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["result"].data == b"kept working on the long one"
    assert calls == [running.id], "the held job was not run a second time"
    assert c.job_status(running).status is Status.FINISHED
    broker.terminate()
    assert broker.wait(10) == 0


def test_a_worker_process_reconnects_and_takes_jobs_after_a_restart(
    tmp_path: Path, make_process: MakeProcess, make_client: Any
) -> None:
    journal = tmp_path / "remus.db"
    broker, ports = launch(make_process, journal)
    assert ports is not None
    c = make_client(ports.client)
    worker = make_process([ECHO_WORKER, ports.worker, "--heartbeat", "0.1"])
    wait_for(lambda: c.can_mesh(ECHO), timeout=SLOW)  # the worker process registered
    before = c.submit_job(JobSubmission.of(ECHO, b"before"))
    wait_status(c, before, lambda s: s.status is Status.FINISHED)

    sigkill(broker)
    broker = restart(make_process, journal, ports)
    wait_for(lambda: c.can_mesh(ECHO), timeout=SLOW)  # the same worker registered again
    after = c.submit_job(JobSubmission.of(ECHO, b"after"))
    wait_status(c, after, lambda s: s.status is Status.FINISHED)
    assert c.retrieve_result(after).data == b"echo:after"
    assert c.retrieve_result(before).data == b"echo:before"
    assert worker.poll() is None, "the same process served both brokers"

    broker.terminate()  # a broker that stops tells its workers to exit
    assert broker.wait(10) == 0
    assert worker.wait(10) == 0


def test_jobs_accepted_just_before_the_kill_are_not_lost(
    tmp_path: Path, make_process: MakeProcess, make_client: Any
) -> None:
    """A job is in the journal before the client is told it was accepted."""
    journal = tmp_path / "remus.db"
    broker, ports = launch(make_process, journal)
    assert ports is not None
    c = make_client(ports.client)
    # no worker yet: they wait for one, which connects only after the restart
    jobs = c.submit_jobs(
        [JobSubmission.of(ECHO, b"%d" % i) for i in range(500)], wait_for_worker=True
    )
    sigkill(broker)  # at once: nothing but the journal can remember them
    broker = restart(make_process, journal, ports)
    assert {s.status for s in c.job_statuses(jobs)} == {Status.QUEUED}
    make_process([ECHO_WORKER, ports.worker])
    wait_for(lambda: all(s.status.done for s in c.job_statuses(jobs)), timeout=SLOW)
    assert [c.retrieve_result(j).data for j in jobs] == [b"echo:%d" % i for i in range(500)]


def test_as_completed_paused_across_a_restart_yields_the_rest(
    tmp_path: Path, make_client: Any, make_worker: Any
) -> None:
    journal = tmp_path / "remus.db"
    config = ServerConfig(stop_timeout=1.0)
    first = Server(ServerPorts.ephemeral(), config=config, journal=journal).start()
    second = None
    try:
        ports = first.ports
        c = make_client(ports.client, basic=True, timeout=2.0)
        # queued before the worker connects (it takes them one by one, by hand)
        both = [JobSubmission.of(ECHO, b"1"), JobSubmission.of(ECHO, b"2")]
        jobs = c.submit_many(both, wait_for_worker=True)
        one = make_worker(JobRequirements(ECHO), ports.worker)
        job = one.get_job(5)
        one.return_result(job, b"first")
        results = c.as_completed(jobs, timeout=3.0)
        assert next(results).data == b"first"
        # the caller works on the first result while the broker restarts
        first.stop()
        second = Server(ports, config=config, journal=journal).start()
        make_worker(JobRequirements(ECHO), ports.worker, run=lambda j: b"second")
        assert next(results).data == b"second"
    finally:
        first.stop()
        if second is not None:
            second.stop()


# ============================================================================ backpressure


def test_a_full_queue_makes_submit_busy_and_the_broker_serves_on(
    make_server: Any, make_client: Any, make_worker: Any
) -> None:
    server = make_server(config=ServerConfig(max_queued_jobs=10, stop_timeout=1.0))
    c = make_client(server.ports.client)
    # no worker yet, so the queue fills: these jobs wait for one
    jobs = [
        c.submit_job(JobSubmission.of(ECHO, b"%d" % i), wait_for_worker=True) for i in range(10)
    ]
    with pytest.raises(remus.BusyError) as info:
        c.submit_job(JobSubmission.of(ECHO, b"one too many"), wait_for_worker=True)
    assert "queue is full" in str(info.value) and "max_queued_jobs" in str(info.value)
    with pytest.raises(remus.BusyError):
        pair = [JobSubmission.of(ECHO, b"x"), JobSubmission.of(ECHO, b"y")]
        c.submit_jobs(pair, wait_for_worker=True)
    assert {s.status for s in c.job_statuses(jobs)} == {Status.QUEUED}

    make_worker(JobRequirements(ECHO), server.ports.worker, run=lambda j: b"echo:" + j["data"])
    wait_for(lambda: all(s.status.done for s in c.job_statuses(jobs)), timeout=SLOW)
    assert [c.retrieve_result(j).data for j in jobs] == [b"echo:%d" % i for i in range(10)]
    again = c.submit_job(JobSubmission.of(ECHO, b"room again"))
    assert wait_status(c, again, lambda s: s.status.done).status is Status.FINISHED
