"""Introspection without sockets: the ``workers``, ``list_jobs`` and ``stats`` answers of a
BrokerCore, read back as the client reads them (remus.introspect records).

Every request goes through the wire codec on the way in and every reply on the way out, so a
field the protocol cannot carry fails here. The harness is tests/core_helpers.py.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from core_helpers import EDGES, VOLUME, W1, W2, Core, finish, run_a_little_of_everything

from remus import __version__
from remus import protocol as p
from remus.introspect import BrokerStats, JobInfo, WorkerInfo
from remus.server.introspection import MAX_LIST, MAX_WORKER_JOBS
from remus.server.journal import JournaledJob
from remus.server.thread_factory import ThreadWorkerFactory
from remus.types import IOType, JobRequirements, Status

pytestmark = pytest.mark.timeout(60)

NAMED = JobRequirements(EDGES, "EdgeMesher", {"quality": "fine"})
NOBODY = IOType("Nobody", "Serves")


def ask(c: Core, msg: p.Request) -> Any:
    """The reply data to ``msg``, sent as its frames (decoded on the client socket's terms)."""
    c.core.client_message(b"client-1", p.decode(p.encode(msg), p.CLIENT_COMMANDS), c.now)
    reply = c.take_reply(msg.rid, c.core.out)
    assert isinstance(reply, p.Reply), reply
    return reply.data


def workers(c: Core) -> dict[str, WorkerInfo]:
    return {w.id: w for w in map(WorkerInfo.from_wire, ask(c, p.WorkersRequest(c.rid())))}


def jobs(
    c: Core, status: Status | None = None, io: IOType | None = None, limit: int = 100
) -> list[JobInfo]:
    rows = ask(c, p.ListJobsRequest(c.rid(), status, io, limit))
    return [JobInfo.from_wire(r) for r in rows]


def ids(c: Core, status: Status | None = None, io: IOType | None = None, limit: int = 100) -> list:
    return [j.id for j in jobs(c, status, io, limit)]


def stats(c: Core) -> BrokerStats:
    return BrokerStats.from_wire(ask(c, p.StatsRequest(c.rid())))


def recount(c: Core) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """Jobs by status and by io type and status, counted the slow way."""
    by_status = Counter(j.status.name for j in c.core.jobs.values())
    by_io: dict[str, Counter[str]] = {}
    for j in c.core.jobs.values():
        by_io.setdefault(str(j.reqs.io_type), Counter())[j.status.name] += 1
    names = [s.name for s in Status if s is not Status.INVALID]
    return (
        {n: by_status[n] for n in names},
        {io: {n: counts[n] for n in names} for io, counts in by_io.items()},
    )


def assert_counts_hold(c: Core) -> None:
    s = stats(c)
    assert (s.jobs, s.jobs_by_io_type) == recount(c)
    # every filter answers what a brute-force walk of every job answers, newest first
    everything = sorted(c.core.jobs.values(), key=lambda j: -j.order)
    for status in [None, *Status]:
        for io in [None, EDGES, VOLUME, NOBODY]:
            if status is Status.INVALID:
                continue
            want = [
                j.id
                for j in everything
                if (status is None or j.status is status) and (io is None or j.reqs.io_type == io)
            ]
            assert ids(c, status, io, 1000) == want[:1000], (status, io)


# ============================================================================ workers


def test_a_worker_record_says_what_it_serves_holds_and_did() -> None:
    c = Core()
    c.register(W1, NAMED, credit=2, pid=4242)
    (w,) = workers(c).values()
    assert w.id == W1.hex()
    assert w.name == "EdgeMesher@host-a:4242"
    assert (w.io_type, w.worker_name, w.tag) == (EDGES, "EdgeMesher", {"quality": "fine"})
    assert (w.host, w.pid, w.state, w.credit) == ("host-a", 4242, "idle", 2)
    assert (w.jobs_held, w.jobs_running, w.jobs_finished, w.jobs) == (0, 0, 0, ())
    assert (w.worker_file, w.resources) == ("", {})

    c.submit("a", "b", "c", reqs=NAMED)
    c.flush()
    c.now = 0.75
    (w,) = workers(c).values()
    assert (w.state, w.jobs_held, w.jobs_running, w.credit) == ("busy", 2, 0, 0)
    assert w.jobs == ("a", "b")
    assert w.last_heard == pytest.approx(0.75)

    c.report(W1, started=["a"])
    (w,) = workers(c).values()
    assert (w.jobs_held, w.jobs_running, w.last_heard) == (2, 1, 0.0)

    finish(c, W1, "a")
    c.report(W1, failures=[("b", "no", "")], credit=2)
    c.flush()  # "c" goes to it
    (w,) = workers(c).values()
    assert (w.state, w.jobs_held, w.jobs_finished, w.jobs) == ("busy", 1, 1, ("c",))
    finish(c, W1, "c")
    (w,) = workers(c).values()
    assert (w.state, w.jobs_held, w.jobs_finished) == ("idle", 0, 2)


def test_workers_are_leaving_while_the_broker_drains_and_gone_once_lost() -> None:
    c = Core()
    c.register(W1, credit=1)
    c.register(W2, VOLUME, credit=1)
    c.submit("a")
    c.flush()
    assert {w.state for w in workers(c).values()} == {"busy", "idle"}
    assert stats(c).workers == {"idle": 1, "busy": 1, "leaving": 0}
    c.core.drain()
    assert {w.state for w in workers(c).values()} == {"leaving"}
    assert stats(c).workers == {"idle": 0, "busy": 0, "leaving": 2}
    c.goodbye(W2)
    assert list(workers(c)) == [W1.hex()]


def test_a_worker_record_names_at_most_a_hundred_jobs_oldest_first() -> None:
    c = Core()
    c.register(W1, credit=MAX_WORKER_JOBS + 20)
    c.submit(*(f"j{i:03}" for i in range(MAX_WORKER_JOBS + 20)))
    c.flush()
    (w,) = workers(c).values()
    assert w.jobs_held == MAX_WORKER_JOBS + 20
    assert list(w.jobs) == [f"j{i:03}" for i in range(MAX_WORKER_JOBS)]


# ============================================================================ jobs


def test_job_records_newest_first_with_times_worker_progress_and_reason() -> None:
    c = Core()
    c.submit("old")
    c.now = 2.0
    c.submit("new", reqs=VOLUME)
    c.now = 5.0
    new, old = jobs(c)
    assert (new.id, old.id) == ("new", "old")
    assert (old.io_type, old.status, old.attempt, old.worker) == (EDGES, Status.QUEUED, 1, "")
    assert (old.queued_for, old.running_for, old.progress) == (5.0, None, None)
    assert new.queued_for == 3.0
    assert "no connected worker serves" in old.reason  # the status request's own words

    c.register(W1, credit=1)
    c.flush()
    c.now = 6.5
    c.report(W1, started=["old"], progress=[("old", 40, "meshing")])
    (old,) = jobs(c, Status.IN_PROGRESS)
    assert (old.worker, old.queued_for, old.running_for) == ("worker@host-a:100", 5.0, 1.5)
    assert (old.progress.value, old.progress.message, old.progress.seq) == (40, "meshing", 1)
    c.now = 7.0
    finish(c, W1, "old")
    c.now = 9.0
    (old,) = jobs(c, Status.FINISHED)
    assert (old.worker, old.queued_for, old.running_for) == ("", 5.0, 2.0)  # frozen at the end

    c.terminate("new")
    (new,) = jobs(c, Status.TERMINATED)
    assert (new.queued_for, new.running_for, new.reason) == (7.0, None, "terminated by a client")


def test_a_requeued_job_waits_again_on_its_next_attempt() -> None:
    c = Core(max_retries=1)
    c.register(W1, credit=1)
    c.submit("a")
    c.flush()
    c.report(W1, started=["a"])
    c.now = 1.0
    c.goodbye(W1)
    (a,) = jobs(c)
    assert (a.status, a.attempt, a.running_for) == (Status.QUEUED, 2, None)
    assert a.queued_for == 1.0
    assert stats(c).totals["requeued"] == 1


def test_limit_filters_and_the_cap() -> None:
    c = Core()
    c.submit(*(f"e{i}" for i in range(10)))
    c.submit(*(f"v{i}" for i in range(5)), reqs=VOLUME)
    assert ids(c, limit=3) == ["v4", "v3", "v2"]
    assert ids(c, io=EDGES, limit=3) == ["e9", "e8", "e7"]
    assert ids(c, Status.QUEUED, VOLUME) == [f"v{i}" for i in range(4, -1, -1)]
    assert ids(c, Status.FINISHED) == []
    assert ids(c, io=NOBODY) == []
    c.submit(*(f"x{i}" for i in range(MAX_LIST)))
    assert len(ids(c, limit=MAX_LIST + 500)) == MAX_LIST


def test_a_list_jobs_request_the_core_cannot_read_is_refused_on_the_wire() -> None:
    body = {"rid": 3, "status": 0, "limit": 5}
    with pytest.raises(p.ProtocolError, match="'status' must be a job status"):
        p.decode([p.VERSION, b"list_jobs", p.pack(body)], p.CLIENT_COMMANDS)


# ============================================================================ stats and counts


def test_stats_names_the_broker_its_limits_and_its_factory() -> None:
    c = Core(max_queued_jobs=500, max_queued_bytes=10_000)
    c.core.catalog = ThreadWorkerFactory({JobRequirements(EDGES, "Edger"): lambda job: b""})
    c.core.endpoints = {"client": "tcp://h:1", "worker": "tcp://h:2", "status": "tcp://h:3"}
    c.now = 12.5
    c.submit("a", data=b"x" * 100)
    s = stats(c)
    assert (s.version, s.uptime, s.host, s.journal) == (__version__, 12.5, c.core.host, False)
    assert s.endpoints == {"client": "tcp://h:1", "worker": "tcp://h:2", "status": "tcp://h:3"}
    assert (s.queued_bytes, s.max_queued_bytes, s.max_queued_jobs) == (100, 10_000, 500)
    assert s.worker_files == [
        {
            "path": "",
            "io_type": "Edges->Mesh2D",
            "worker_name": "Edger",
            "spawned": 0,
            "alive": 0,
            "quarantined": "",
        }
    ]
    assert s.jobs["QUEUED"] == 1
    assert s.jobs_by_io_type == {
        "Edges->Mesh2D": {
            "QUEUED": 1,
            "IN_PROGRESS": 0,
            "FINISHED": 0,
            "FAILED": 0,
            "EXPIRED": 0,
            "TERMINATED": 0,
            "WAITING": 0,
        }
    }


def test_counts_follow_every_change_of_status() -> None:
    c = Core(max_retries=1, result_ttl=100.0)
    c.register(W1, credit=2)
    c.submit("done", "lost", "queued")
    c.submit("vol", reqs=VOLUME)
    c.flush()
    assert stats(c).jobs["IN_PROGRESS"] == 2
    assert_counts_hold(c)
    c.report(W1, started=["lost"])
    finish(c, W1, "done")
    c.goodbye(W1)  # "lost" is requeued (a retry left), "queued" never left the queue
    assert stats(c).jobs == {
        "QUEUED": 3,
        "IN_PROGRESS": 0,
        "FINISHED": 1,
        "FAILED": 0,
        "EXPIRED": 0,
        "TERMINATED": 0,
        "WAITING": 0,
    }
    assert_counts_hold(c)
    c.terminate("vol")
    c.register(W2, credit=5)
    c.flush()
    c.report(W2, failures=[("lost", "boom", "")])
    assert_counts_hold(c)
    s = stats(c)
    assert (s.jobs["FAILED"], s.jobs["TERMINATED"], s.jobs["IN_PROGRESS"]) == (1, 1, 1)
    assert s.totals == {
        "submitted": 4,
        "finished": 1,
        "failed": 1,
        "terminated": 1,
        "expired": 0,
        "dropped_results": 0,
        "requeued": 1,
        "preempted": 0,
    }
    c.advance(101.0, alive=[W2])  # ended jobs are forgotten after result_ttl
    s = stats(c)
    assert (s.jobs["FINISHED"], s.jobs["FAILED"], s.jobs["TERMINATED"]) == (0, 0, 0)
    assert ids(c, Status.FAILED) == [] and not c.core.census.bad
    assert_counts_hold(c)


def test_counts_hold_through_every_lifecycle_event() -> None:
    c = Core()
    run_a_little_of_everything(c)
    assert_counts_hold(c)
    assert stats(c).jobs["EXPIRED"] == 1


def test_counts_after_a_restore_from_the_journal() -> None:
    c = Core(max_retries=1)

    def saved(job_id: str, status: Status, order: int, worker: str = "") -> JournaledJob:
        reqs = JobRequirements(EDGES)
        values = [] if status.done else [b"x"]
        keys = () if status.done else ("data",)
        result = b"r" if status is Status.FINISHED else None
        return JournaledJob(
            job_id, reqs, keys, values, order, 0.0, {}, status, "", "", 1, worker, result, [], 0.0
        )

    c.core.restore(
        [
            saved("q", Status.QUEUED, 1),
            saved("ran", Status.IN_PROGRESS, 2, "gone@elsewhere:1"),
            saved("ok", Status.FINISHED, 3),
            saved("bad", Status.FAILED, 4),
        ],
        c.now,
        gone=lambda name: True,
    )
    assert_counts_hold(c)
    s = stats(c)
    assert (s.jobs["QUEUED"], s.jobs["FINISHED"], s.jobs["FAILED"]) == (2, 1, 1)
    assert ids(c, Status.FAILED) == ["bad"]
    (ran,) = [j for j in jobs(c) if j.id == "ran"]
    assert ran.attempt == 2


def test_rates_are_per_second_over_the_last_minute() -> None:
    c = Core()
    c.register(W1, credit=1000)
    for second in range(120):
        c.submit(*(f"s{second}-{i}" for i in range(3)))
        c.flush()
        finish(c, W1, f"s{second}-0", f"s{second}-1")
        c.report(W1, failures=[(f"s{second}-2", "no", "")], credit=3)
        c.advance(second + 1.0, alive=[W1])
    rates = stats(c).rates
    assert rates == pytest.approx({"submitted": 3.0, "finished": 2.0, "failed": 1.0}, rel=0.05)
    c.advance(150.0, alive=[W1])  # half a minute of nothing: half the rate
    rates = stats(c).rates
    assert rates == pytest.approx({"submitted": 1.5, "finished": 1.0, "failed": 0.5}, rel=0.1)
    c.advance(220.0, alive=[W1])
    assert stats(c).rates == {"submitted": 0.0, "finished": 0.0, "failed": 0.0}


def test_rates_of_a_young_broker_count_from_its_start() -> None:
    c = Core()
    c.submit("a", "b", "c", "d")
    c.advance(2.0)
    assert stats(c).rates["submitted"] == pytest.approx(2.0)


def test_rare_statuses_are_found_where_they_are_kept_newest_first() -> None:
    c = Core(max_retries=1)
    c.submit(*(f"a{i:02}" for i in range(60)))
    c.register(W1, credit=3)
    c.flush()
    finish(c, W1, "a00", "a01", "a02")  # 3 FINISHED (the oldest) among 57 QUEUED: rare
    assert ids(c, Status.FINISHED) == ["a02", "a01", "a00"]
    assert_counts_hold(c)

    c.report(W1, credit=56)  # all but the newest queued one start; then most finish
    c.flush()
    c.report(W1, started=["a03"])
    finish(c, W1, *(f"a{i:02}" for i in range(5, 59)))
    c.goodbye(W1)  # a03 (started) is requeued among the oldest; a04 never started
    c.register(W2, VOLUME, credit=1)
    c.submit("v", reqs=VOLUME)  # handed to W2 in this very pass: QUEUED until the flush
    assert ids(c, Status.QUEUED) == ["v", "a59", "a04", "a03"]  # 4 of 61: rare
    assert [j.attempt for j in jobs(c, Status.QUEUED)] == [1, 1, 1, 2]
    assert ids(c, Status.QUEUED, EDGES, limit=2) == ["a59", "a04"]
    assert_counts_hold(c)
    c.flush()
    assert ids(c, Status.QUEUED) == ["a59", "a04", "a03"]
    assert ids(c, Status.IN_PROGRESS) == ["v"]
    assert_counts_hold(c)
