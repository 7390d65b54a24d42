"""The default worker's loop, one slot on threads (``Runner._one_slot``), against a real broker:
what it keeps without the condition and locks that several slots need. Its credit stays at one
plus the prefetch, ``max_jobs`` asks for no more jobs than it runs, ``idle_timeout`` and
``Worker.close`` end it, a job cancelled while it waits in the prefetch never starts, and a
handler's return value that is not a result fails its job. (Cancels while a handler runs,
checkpoints, control messages and progress on one slot are in test_worker_scheduling.py;
failures with their traceback in test_end_to_end.py; what a job used in test_usage.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import wait_for

from remus import IOType, JobFailedError, JobSubmission, JobTerminatedError, Status
from remus.server import Server
from remus.worker import Job, Worker

pytestmark = pytest.mark.timeout(60)

IO = IOType("Fast", "Path")
#: a deadline for any one thing to happen
WAIT = 20.0


class Run:
    """``worker.run(handler, **options)`` on a thread of its own, with what it returns."""

    def __init__(self, worker: Worker, handler: Callable[[Job], Any], **options: Any) -> None:
        self.worker = worker
        self.returned: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.returned.append(worker.run(handler, **options)),
            name="remus-test-runner",
            daemon=True,
        )
        self.thread.start()

    def result(self, timeout: float = WAIT) -> int:
        """What run returned, once it has (fail the test if it has not within ``timeout``)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run() did not return within {timeout} s"
        return self.returned[0]


@pytest.fixture
def worker(server: Server) -> Iterator[Callable[[], Worker]]:
    """``worker()``: a one-slot Worker of ``server``, once the broker has answered it."""
    made: list[Worker] = []

    def make() -> Worker:
        w = Worker(IO, server.ports.worker, heartbeat_interval=0.2, slots=1)
        made.append(w)
        wait_for(lambda: w.connected, timeout=10.0)
        return w

    yield make
    for w in made:
        w.close()  # (a run() still waiting for a job returns)


def credit(c: Any) -> list[tuple[int, int]]:
    """(slots, credit) of each worker, as the broker counts them."""
    return [(i.slots, i.credit) for i in c.client.workers()]


def test_one_slot_keeps_its_credit_at_one_plus_the_prefetch(
    server: Server, make_client: Any, worker: Callable[[], Worker]
) -> None:
    """Each job that ends gives back exactly the credit it took: after 50 jobs the broker still
    counts one (the slot) plus the prefetch, and so does the worker."""
    c = make_client(server.ports.client, basic=True)
    w = worker()
    Run(w, lambda job: job["data"], prefetch=3)
    wait_for(lambda: credit(c) == [(1, 4)], timeout=WAIT)
    jobs = c.submit_many(JobSubmission.of(IO, str(i)) for i in range(50))
    results = {r.job_id: r.data for r in c.as_completed(jobs, timeout=WAIT)}
    assert sorted(results.values()) == sorted(str(i).encode() for i in range(50))
    wait_for(lambda: credit(c) == [(1, 4)], timeout=WAIT)
    assert w._conn.requested - w._conn.received == 4


def test_max_jobs_runs_that_many_and_asks_for_no_more(
    server: Server, make_client: Any, worker: Callable[[], Worker]
) -> None:
    """Five jobs queued for a worker that runs three: it asks for three (not one plus the
    prefetch), runs them, returns 3, and leaves the other two queued for someone else."""
    c = make_client(server.ports.client, basic=True)
    w = worker()
    jobs = c.submit_many(JobSubmission.of(IO, str(i)) for i in range(5))
    run = Run(w, lambda job: job["data"], prefetch=5, max_jobs=3)
    assert run.result() == 3
    assert w._conn.requested == 3

    def statuses() -> list[Status]:
        return sorted(c.client.job_status(j).status for j in jobs)

    # (the third result reaches the broker after run() returns)
    wait_for(lambda: statuses() == [Status.QUEUED] * 2 + [Status.FINISHED] * 3, timeout=WAIT)
    wait_for(lambda: credit(c) == [(1, 0)], timeout=WAIT)


def test_idle_timeout_ends_the_run_once_no_job_came_for_that_long(
    server: Server, make_client: Any, worker: Callable[[], Worker]
) -> None:
    c = make_client(server.ports.client, basic=True)
    w = worker()
    ended: list[float] = []

    def handler(job: Job) -> bytes:
        ended.append(time.monotonic())
        return job["data"]

    run = Run(w, handler, idle_timeout=0.3)
    assert c.run(IO, "one", timeout=WAIT).data == b"one"
    assert run.result() == 1
    assert time.monotonic() - ended[0] >= 0.3  # counted from the end of the last job


def test_closing_the_worker_ends_a_run_that_waits_for_a_job(
    worker: Callable[[], Worker],
) -> None:
    w = worker()
    run = Run(w, lambda job: job["data"])
    wait_for(lambda: w._conn.requested == 1, timeout=WAIT)  # run() asked for its job
    w.close()
    assert run.result(timeout=5.0) == 0


def test_a_job_cancelled_while_it_waits_in_the_prefetch_never_starts(
    server: Server, make_client: Any, worker: Callable[[], Worker]
) -> None:
    """One slot, one job of prefetch: the second job waits in the worker while the first
    runs; terminated there, its handler never runs, the broker hears it stopped, and its
    credit comes back."""
    c = make_client(server.ports.client, basic=True)
    w = worker()
    started = threading.Event()
    release = threading.Event()
    ran: list[bytes] = []

    def handler(job: Job) -> bytes:
        ran.append(job["data"])
        if job["data"] == b"hold":
            started.set()
            assert release.wait(WAIT), "the test never released the first job"
        return job["data"]

    Run(w, handler, prefetch=1)
    hold = c.submit(IO, "hold")
    assert started.wait(WAIT)
    waiting = c.submit(IO, "waiting")
    wait_for(lambda: w.pending_job_count() == 1, timeout=WAIT)  # here, not started
    c.client.terminate(waiting)
    wait_for(lambda: waiting.id in w._conn.cancelled, timeout=WAIT)  # the worker heard it
    release.set()
    assert c.wait(hold, timeout=WAIT).data == b"hold"
    with pytest.raises(JobTerminatedError):
        c.wait(waiting, timeout=WAIT)
    assert c.run(IO, "next", timeout=WAIT).data == b"next"
    assert ran == [b"hold", b"next"]
    wait_for(lambda: credit(c) == [(1, 2)], timeout=WAIT)


def test_a_return_value_that_is_not_a_result_fails_the_job_and_the_next_one_runs(
    server: Server, make_client: Any, worker: Callable[[], Worker]
) -> None:
    c = make_client(server.ports.client, basic=True)
    w = worker()
    Run(w, lambda job: 42 if job["data"] == b"bad" else job["data"])
    bad = c.submit(IO, "bad")
    with pytest.raises(JobFailedError, match="the handler's return value is not a result"):
        c.wait(bad, timeout=WAIT)
    assert c.run(IO, "good", timeout=WAIT).data == b"good"
