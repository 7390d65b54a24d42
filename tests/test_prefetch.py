"""``Worker.run(prefetch="auto")``, the default: jobs wait here only when jobs are tiny.

The rule is pure (:class:`remus.worker.runner.AutoPrefetch`); the end-to-end tests look at
what the broker sees: how many jobs a worker holds at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from conftest import wait_for

from remus import IOType, JobSubmission
from remus.worker.runner import AUTO_COVER, AUTO_MAX, AutoPrefetch

ECHO = IOType("Auto", "Prefetch")


def test_slow_jobs_get_no_prefetch() -> None:
    auto = AutoPrefetch(slots=1)
    assert [auto.credit(0.05) for _ in range(20)] == [1] * 20
    assert auto.current == 0


def test_tiny_jobs_get_up_to_the_cap_at_once_then_one_for_one() -> None:
    auto = AutoPrefetch(slots=1)
    assert auto.credit(1e-5) == 1 + AUTO_MAX
    assert auto.current == AUTO_MAX
    assert [auto.credit(1e-5) for _ in range(10)] == [1] * 10


def test_the_prefetch_follows_the_pace_down_one_job_at_a_time() -> None:
    auto = AutoPrefetch(slots=1)
    auto.credit(1e-5)
    credits = [auto.credit(1.0) for _ in range(AUTO_MAX + 24)]
    assert credits[:AUTO_MAX] == [0] * AUTO_MAX, "each slow job ends without a replacement"
    assert set(credits[AUTO_MAX:]) == {1} and auto.current == 0


def test_jobs_that_take_about_a_round_trip_get_a_few() -> None:
    auto = AutoPrefetch(slots=4)
    auto.credit(AUTO_COVER)  # 4 slots, each job one round trip: 4 waiting cover the next one
    assert auto.current == 4


def test_tiny_jobs_are_prefetched_and_slow_ones_spread_over_workers(
    make_server: Callable[..., Any],
    make_worker: Callable[..., Any],
    make_client: Callable[..., Any],
) -> None:
    server = make_server()
    make_worker(ECHO, server.ports.worker, run=lambda job: job["data"])
    c = make_client(server.ports.client, basic=True, timeout=30)
    jobs = c.submit_many([JobSubmission(ECHO, {"data": b"x%d" % i}) for i in range(2000)])
    assert len(list(c.as_completed(jobs, timeout=60))) == 2000

    (info,) = c.client.workers()
    assert info.credit + info.jobs_held > 1, "tiny jobs: it asks for more than one at a time"

    # slow jobs on two fresh workers: each takes one at a time, so both get work at once
    slow = IOType("Auto", "Slow")
    release = threading.Event()
    started: dict[str, str] = {}

    def hold(job: Any) -> bytes:
        started[job.id] = threading.current_thread().name
        release.wait(10)
        return b"done"

    make_worker(slow, server.ports.worker, run=hold)
    make_worker(slow, server.ports.worker, run=hold)
    first, second = c.submit(slow, b"1"), c.submit(slow, b"2")
    wait_for(lambda: len(started) == 2, timeout=10)
    held = sorted(w.jobs for w in c.client.workers() if {first.id, second.id} & set(w.jobs))
    assert held == sorted([(first.id,), (second.id,)]), f"one job on each worker, not {held}"
    release.set()
    assert [c.wait(j, timeout=10).data for j in (first, second)] == [b"done", b"done"]
