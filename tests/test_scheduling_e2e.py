"""Scheduling (issue 11) end to end, the points the other scheduling tests leave out: the
journal keeps priorities, protection, parents and checkpoints across a broker SIGKILL; a worker
that ignores a preemption is killed after ``preempt_grace`` when the broker spawned it, and
only abandoned when it merely connected; priorities dispatch in order under load.

The worker processes run tests/workers/scheduling_worker.py (its modes: ``obey``,
``checkpoint``, ``master``, ``deaf``, ``pid:S``)."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from factory_helpers import (
    SCHEDULING_WORKER,
    pid_gone,
    write_scheduling_worker_file,
)
from helpers_e2e import launch_cli_server, restart_cli_server, sigkill

from remus import IOType, JobRequirements, JobStatus, JobSubmission, Status
from remus.client import Client
from remus.server import Server, ServerConfig
from remus.server.factory import Backoff, WorkerFactory
from remus.worker import Job as WorkerJob

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="signals and process groups"),
]

#: what tests/workers/scheduling_worker.py serves by default
SCHED = IOType("Sched", "Run")
#: served by an in-process worker that notes the order in which its jobs start
LATER = IOType("Sched", "Later")
#: a deadline for any one thing to happen (a worker process starts in well under it)
WAIT = 20.0
#: short, so that a restarted broker soon runs elsewhere what its lost worker held
RESTART_GRACE = "0.3"
PREEMPT_GRACE = 0.5

MakeProcess = Callable[..., subprocess.Popen[str]]


def wait_status(c: Client, job: Any, pred: Callable[[JobStatus], bool]) -> JobStatus:
    """The job's status once ``pred`` holds; at the deadline, fail naming the last one."""
    last: list[JobStatus] = []

    def check() -> JobStatus | None:
        last[:] = [c.job_status(job)]
        return last[0] if pred(last[0]) else None

    try:
        return wait_for(check, timeout=WAIT)
    except AssertionError:
        raise AssertionError(f"not within {WAIT} s; last status: {last[0]!r}") from None


def progress_messages(c: Client, job: Any) -> list[str]:
    return [u.message for u in c.job_progress(job)]


def cancels(records: Path) -> list[str]:
    """The ``job-id reason`` lines the worker processes noted in ``records``."""
    return sorted(
        line for f in records.glob("*.cancels") for line in f.read_text().splitlines() if line
    )


def spawned_pids(records: Path) -> set[int]:
    return {int(f.stem) for f in records.glob("*.json")}


# ============================================================================ the journal


def test_the_journal_keeps_priorities_protection_parents_and_checkpoints(
    tmp_path: Path, make_process: MakeProcess, make_client: Any, make_worker: Any
) -> None:
    """Queued jobs of mixed priority and protection, a running master with a queued
    assistant and a running job that saved a checkpoint (both held by a worker process):
    the broker and that worker are SIGKILLed, the broker comes back on its journal alone."""
    options = ("--journal", str(tmp_path / "remus.db"), "--restart-grace", RESTART_GRACE)
    broker, ports = launch_cli_server(make_process, *options)
    assert ports is not None
    c = make_client(ports.client)

    plan = [
        ("p0-a", 0, True),
        ("p5-a", 5, True),
        ("u9", 9, False),
        ("m2", -2, True),
        ("p0-b", 0, True),
        ("u-1", -1, False),
        ("p5-b", 5, True),
    ]
    queued = {
        c.submit_job(
            JobSubmission.of(LATER, label),
            priority=priority,
            protected=protected,
            wait_for_worker=True,
        ).id: (label, priority, protected)
        for label, priority, protected in plan
    }

    first = tmp_path / "first"
    first.mkdir()
    worker = make_process([SCHEDULING_WORKER, ports.worker, "--record", str(first), "--slots", "2"])
    # the checkpointing job first: the assistant must not take the second slot before it
    saver = c.submit_job(JobSubmission.of(SCHED, "checkpoint"), wait_for_worker=True)
    wait_for(lambda: "checkpointed" in progress_messages(c, saver), timeout=WAIT)
    master = c.submit_job(JobSubmission.of(SCHED, "master"))
    (assistant,) = wait_status(c, master, lambda s: bool(s.assistants)).assistants
    # its checkpoint (the assistant's id) went before this progress: journaled too
    wait_for(lambda: f"assistant {assistant}" in progress_messages(c, master), timeout=WAIT)
    assert c.job_status(assistant).status is Status.QUEUED  # both slots are taken
    assert c.job_status(saver).status is Status.IN_PROGRESS

    sigkill(broker)
    sigkill(worker)  # gone too: nothing it held can reach the new broker but the journal
    broker = restart_cli_server(make_process, ports, *options)

    # parents and assistants
    ms, a = c.job_statuses([master, assistant])
    assert (ms.parent, ms.assistants) == ("", (assistant,))
    assert (a.status, a.parent, a.assistants) == (Status.QUEUED, master.id, ())
    # priorities and protection, in list_jobs
    infos = {i.id: i for i in c.jobs()}
    for job_id, (label, priority, protected) in queued.items():
        info = infos[job_id]
        got = (info.status, info.priority, info.protected)
        assert got == (Status.QUEUED, priority, protected), label
    assert (infos[assistant].protected, infos[assistant].parent) == (False, master.id)
    assert (infos[saver.id].priority, infos[saver.id].protected) == (0, True)

    # past the restart grace the lost worker's jobs run again, an attempt counted
    for job in (saver, master):
        requeued = wait_status(c, job, lambda s: s.status is Status.QUEUED and s.attempt == 2)
        assert len(requeued.history) == 1 and "the broker restarted" in requeued.history[0]

    # the queued jobs go to a fresh worker by priority, protected ones first
    order: list[str] = []

    def note(job: WorkerJob) -> bytes:
        order.append(job["data"].decode())
        return b"done"

    make_worker(JobRequirements(LATER), ports.worker, run=note, prefetch=0)
    wait_for(lambda: len(order) == len(plan), timeout=WAIT)
    assert order == ["p5-a", "p5-b", "p0-a", "p0-b", "m2", "u9", "u-1"]

    # the checkpointed job resumes from the journal's checkpoint; the master, from its own,
    # does not submit a second assistant; the assistant runs in the slot the saver frees
    second = tmp_path / "second"
    second.mkdir()
    said_before = progress_messages(c, master).count("running until cancelled")
    make_process([SCHEDULING_WORKER, ports.worker, "--record", str(second), "--slots", "2"])
    wait_status(c, saver, lambda s: s.status.done)
    assert c.retrieve_result(saver).data == b"resumed from cp-1"
    wait_status(c, assistant, lambda s: s.status is Status.IN_PROGRESS)
    wait_for(lambda: "running until cancelled" in progress_messages(c, assistant), timeout=WAIT)
    # the master's second run is under way too (its first may have said the same): a
    # job cancelled before its handler starts would never note its cancel
    wait_for(
        lambda: progress_messages(c, master).count("running until cancelled") > said_before,
        timeout=WAIT,
    )
    assert c.job_status(master).status is Status.IN_PROGRESS

    # the parent link is live: ending the master ends its assistant
    c.terminate(master)
    ended = wait_status(c, assistant, lambda s: s.status.done)
    assert ended.status is Status.TERMINATED
    assert ended.reason == f"its parent job {master.id} ended (TERMINATED)"
    assert c.job_status(master).assistants == (assistant,)
    wait_for(lambda: len(cancels(second)) == 2, timeout=WAIT)
    assert cancels(second) == sorted([f"{master.id} terminated", f"{assistant} parent ended"])
    assert cancels(first) == []  # it was killed in the middle of both

    broker.terminate()
    assert broker.wait(10) == 0


# ============================================================================ preemption ignored


def test_a_spawned_worker_that_ignores_a_preemption_is_killed_after_the_grace(
    tmp_path: Path, make_server: Any, make_client: Any
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    write_scheduling_worker_file(tmp_path, SCHED, records)
    factory = WorkerFactory([tmp_path], max_workers=1, backoff=Backoff(quick_exit=0.0))
    config = ServerConfig(preempt_grace=PREEMPT_GRACE, stop_timeout=1.0)
    server = make_server(factory=factory, config=config)
    c = make_client(server.ports.client)

    spare = c.submit_job(JobSubmission.of(SCHED, "deaf"), protected=False)
    wait_for(lambda: "deaf" in progress_messages(c, spare), timeout=WAIT)
    (deaf,) = spawned_pids(records)

    asked = time.monotonic()
    protected = c.submit_job(JobSubmission.of(SCHED, "pid:0"))
    wait_for(lambda: pid_gone(deaf), timeout=10)
    assert time.monotonic() - asked >= PREEMPT_GRACE
    preempted = c.job_status(spare)
    assert preempted.status in (Status.QUEUED, Status.IN_PROGRESS)  # (on the next worker)
    assert preempted.attempt == 1
    assert len(preempted.history) == 1 and "preempted" in preempted.history[0]

    (records / "release").touch()  # its next run ends at once
    wait_status(c, protected, lambda s: s.status.done)
    ran_on = int(c.retrieve_result(protected).data)
    assert ran_on != deaf and ran_on in spawned_pids(records)
    done = wait_status(c, spare, lambda s: s.status.done)
    assert done.status is Status.FINISHED
    assert c.retrieve_result(spare).data == b"released (not cancelled)"
    # its preemption and the kill that followed did not count as a failed attempt
    assert done.attempt == 1 and done.history == preempted.history
    assert cancels(records) == [f"{spare.id} None"]  # the killed run never got to note it
    assert c.stats().totals["preempted"] == 1


def test_a_connected_worker_that_ignores_a_preemption_has_its_run_abandoned(
    tmp_path: Path,
    make_server: Any,
    make_client: Any,
    make_process: MakeProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It is not the broker's to kill (even a broker with a factory): after the grace the
    broker stops waiting and says so; what the old run returns at last is not taken, and the
    job runs again, and finishes, once the slot frees."""
    caplog.set_level(logging.WARNING, logger="remus.server.preemption")
    records = tmp_path / "records"
    records.mkdir()
    (tmp_path / "no workers").mkdir()
    factory = WorkerFactory([tmp_path / "no workers"], max_workers=1)
    config = ServerConfig(preempt_grace=PREEMPT_GRACE, stop_timeout=1.0)
    server = make_server(factory=factory, config=config)
    c = make_client(server.ports.client)
    worker = make_process([SCHEDULING_WORKER, server.ports.worker, "--record", str(records)])

    spare = c.submit_job(JobSubmission.of(SCHED, "deaf"), protected=False, wait_for_worker=True)
    wait_for(lambda: "deaf" in progress_messages(c, spare), timeout=WAIT)
    asked = time.monotonic()
    protected = c.submit_job(JobSubmission.of(SCHED, "pid:0"))

    def warning() -> logging.LogRecord | None:
        return next(
            (
                r
                for r in caplog.records
                if r.levelno == logging.WARNING
                and "did not stop preempted job" in r.getMessage()
                and spare.id in r.getMessage()
            ),
            None,
        )

    wait_for(warning, timeout=10)
    assert time.monotonic() - asked >= PREEMPT_GRACE
    assert worker.poll() is None, "a worker the broker did not spawn is not killed"
    status = c.job_status(spare)
    assert (status.status, status.attempt) == (Status.QUEUED, 1)
    assert len(status.history) == 1 and "preempted" in status.history[0]
    # the deaf run still holds the worker's only slot
    assert c.job_status(protected).status is Status.QUEUED

    (records / "release").touch()
    wait_for(lambda: worker.poll() is not None or c.job_status(protected).done, timeout=WAIT)
    assert worker.poll() is None, "a worker the broker did not spawn is not killed"
    assert c.retrieve_result(protected).data == str(worker.pid).encode()
    done = wait_status(c, spare, lambda s: s.status.done)
    assert done.status is Status.FINISHED
    # the first run returned "released (preempted)": not taken; the second run's result is
    assert c.retrieve_result(spare).data == b"released (not cancelled)"
    assert cancels(records) == sorted([f"{spare.id} preempted", f"{spare.id} None"])
    assert done.attempt == 1 and len(done.history) == 1
    assert c.stats().totals["preempted"] == 1
    assert worker.poll() is None


# ============================================================================ priorities


def test_priorities_dispatch_in_order_under_load(
    server: Server, make_client: Any, make_worker: Any
) -> None:
    """300 jobs of three priorities, queued before any worker, then two one-slot workers with
    no prefetch: each worker starts its jobs by priority, then in submission order. Across
    both (one clock, noted under one lock), at most one job due before a job starts after it:
    the one the other worker has in hand."""
    c = make_client(server.ports.client)
    rng = random.Random(11)
    priorities = [rng.choice((7, 0, -3)) for _ in range(300)]
    ids = [
        c.submit_job(JobSubmission.of(LATER, str(i)), priority=pr, wait_for_worker=True).id
        for i, pr in enumerate(priorities)
    ]
    lock = threading.Lock()
    starts: list[tuple[float, int, int]] = []  # (when, job index, worker)

    def handler_of(worker: int) -> Callable[[WorkerJob], bytes]:
        def handle(job: WorkerJob) -> bytes:
            with lock:  # one clock for both workers, noted in order
                starts.append((time.monotonic(), int(job["data"]), worker))
            return b""

        return handle

    workers = 2
    for n in range(workers):
        make_worker(JobRequirements(LATER), server.ports.worker, run=handler_of(n), prefetch=0)
    wait_for(lambda: len(starts) == len(ids), timeout=WAIT)
    wait_for(lambda: all(s.status is Status.FINISHED for s in c.job_statuses(ids)), timeout=WAIT)

    def due(i: int) -> tuple[int, int]:
        return (-priorities[i], i)

    assert sorted(i for _, i, _ in starts) == list(range(len(ids)))  # each once
    for n in range(workers):
        mine = [i for _, i, w in starts if w == n]
        assert mine, f"worker {n} took no job"
        assert mine == sorted(mine, key=due), f"worker {n} started its jobs out of order"
    order = [i for _, i, _ in starts]
    for pos, i in enumerate(order):
        overtaken = [j for j in order[pos + 1 :] if due(j) < due(i)]
        assert len(overtaken) <= workers - 1, (i, priorities[i], overtaken)
