"""Work packages (issue 14): ``package_size=K`` hands a worker K tiny jobs on one credit, run in
one slot, reported on once (docs/protocol.md, "Work packages").

First the broker's rules without sockets (tests/core_helpers.py; its ``Core`` defaults
``max_retries`` to 0, so a test that loses a worker says how many retries it means), then end to
end: the messages each way, the pool loop, and a worker SIGKILLed in the middle of a package.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helpers_scheduling
import pytest
from conftest import wait_for
from core_helpers import EDGES, VOLUME, W1, W2, Core, ids_sent, jobs_sent, to_worker

from remus import IOType, JobSubmission, Status
from remus import protocol as p
from remus.errors import ProtocolError
from remus.worker import Job, Worker
from remus.worker.runner import AUTO_MAX

QUEUED, RUNNING, FINISHED = Status.QUEUED, Status.IN_PROGRESS, Status.FINISHED


def packed(size: int, **opts: Any) -> dict[str, Any]:
    """Submit options: packages of ``size``, queued whoever is connected."""
    return {"wait_for_worker": True, "package_size": size, **opts}


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def rows(out: Any, wid: bytes) -> list[list[tuple[str, str]]]:
    """Per ``jobs`` message to ``wid``: (job id, its package) of each row, as decoded."""
    found = []
    for msg in to_worker(out, wid, p.Jobs):
        back = p.decode(p.encode(msg), p.BROKER_TO_WORKER)
        assert isinstance(back, p.Jobs)
        found.append([(j.id, j.package) for j in back.jobs])
    return found


def queued_counts(c: Core) -> tuple[int, int]:
    """(jobs queued, their bytes) as the matcher counts them."""
    return c.core.matcher.queued, c.core.matcher.queued_bytes


# ============================================================ the rules, without sockets


def test_one_credit_takes_a_whole_package_in_one_message() -> None:
    c = Core()
    c.submit(*ids("j", 10), opts=packed(4))
    assert queued_counts(c) == (10, 20)  # every job counted, in a queue or riding in one
    c.register(W1, credit=1)
    sent = rows(c.flush(), W1)
    assert sent == [[(i, "j0") for i in ids("j", 4)]]
    assert queued_counts(c) == (6, 12)
    worker = c.core.workers[W1]
    assert len(worker.jobs) == 4 and worker.riders == 3, "four jobs, one slot"
    for job_id in ids("j", 4):
        assert c.status(job_id) is RUNNING


def test_the_package_gives_its_slot_back_with_its_last_job() -> None:
    c = Core()
    c.register(W1, credit=1)
    c.submit(*ids("j", 8), opts=packed(4))  # (straight to the ready worker)
    assert ids_sent(c.flush(), W1) == ids("j", 4)
    c.report(W1, results={i: b"r" for i in ids("j", 3)})
    worker = c.core.workers[W1]
    assert (len(worker.jobs), worker.riders) == (1, 0), "one job left: it holds the slot"
    assert not jobs_sent(c.flush()), "no credit yet: the package holds the slot"
    c.report(W1, results={"j3": b"r"}, credit=1)
    assert rows(c.flush(), W1) == [[(i, "j4") for i in ids("j", 8)[4:]]]
    assert worker.riders == 3 and worker.packs == {"j4": 4}


def test_packages_are_cut_per_queue_key_in_order() -> None:
    c = Core()
    jobs = [p.SubmittedJob(f"e{i}", p.JobRequirements(EDGES), ("data",), [b"x"]) for i in range(3)]
    jobs += [
        p.SubmittedJob(f"v{i}", p.JobRequirements(VOLUME), ("data",), [b"x"]) for i in range(2)
    ]
    jobs.insert(4, p.SubmittedJob("e3", p.JobRequirements(EDGES), ("data",), [b"x"]))
    c.ask(p.SubmitRequest(c.rid(), jobs, packed(2)))
    c.register(W1, EDGES, credit=10)
    c.register(W2, VOLUME, credit=10)
    out = c.flush()
    # e0 e1 | e2 | v0 | e3 | v1 : a change of key ends a package
    assert rows(out, W1) == [[("e0", "e0"), ("e1", "e0"), ("e2", ""), ("e3", "")]]
    assert rows(out, W2) == [[("v0", ""), ("v1", "")]]


def test_a_worker_with_two_slots_runs_two_packages() -> None:
    c = Core()
    c.submit(*ids("j", 12), opts=packed(4))
    c.register(W1, credit=2, slots=2)
    assert rows(c.flush(), W1) == [
        [(i, "j0") for i in ids("j", 4)] + [(i, "j4") for i in ids("j", 8)[4:]]
    ]
    worker = c.core.workers[W1]
    assert len(worker.jobs) - worker.riders == 2, "two packages, two slots"
    c.report(W1, results={i: b"r" for i in ids("j", 4)}, credit=1)
    assert ids_sent(c.flush(), W1) == ids("j", 12)[8:]


def test_a_job_terminated_while_queued_is_left_out_of_its_package() -> None:
    c = Core()
    c.submit(*ids("j", 4), opts=packed(4))
    c.terminate("j2")
    assert c.status("j2") is Status.TERMINATED
    assert queued_counts(c) == (3, 6)
    c.register(W1, credit=1)
    assert rows(c.flush(), W1) == [[("j0", "j0"), ("j1", "j0"), ("j3", "j0")]]
    assert queued_counts(c) == (0, 0)


def test_a_leader_that_leaves_the_queue_hands_its_place_to_the_next_job() -> None:
    c = Core()
    c.submit(*ids("a", 4), opts=packed(4))
    c.submit("later")  # queued after the package
    c.terminate("a0", "a1")  # the leader, then its heir
    assert queued_counts(c) == (3, 9)
    c.register(W1, credit=1)
    out = c.flush()
    assert rows(out, W1) == [[("a2", "a2"), ("a3", "a2")]], "the package keeps its place"
    c.report(W1, results={"a2": b"r", "a3": b"r"}, credit=1)
    assert ids_sent(c.flush(), W1) == ["later"]


def test_a_package_whose_jobs_all_ended_in_the_queue_is_gone() -> None:
    c = Core()
    c.submit(*ids("a", 3), opts=packed(3))
    c.terminate(*ids("a", 3))
    assert queued_counts(c) == (0, 0)
    c.submit("b")
    c.register(W1, credit=1)
    assert ids_sent(c.flush(), W1) == ["b"]


def test_a_queue_time_limit_expires_a_package_whole() -> None:
    c = Core()
    c.submit(*ids("j", 4), opts=packed(4, queue_time_limit=1.0))
    c.tick(1.5)
    assert [c.status(i) for i in ids("j", 4)] == [Status.EXPIRED] * 4
    assert queued_counts(c) == (0, 0)


def test_terminating_a_package_job_not_sent_yet_gives_credit_back_with_the_last() -> None:
    c = Core()
    c.register(W1, credit=1)
    c.submit(*ids("j", 3), opts=packed(3))
    c.terminate("j0", "j1")  # (in the same pass: taken back before it is sent)
    assert c.core.workers[W1].credit == 0
    c.terminate("j2")
    assert c.core.workers[W1].credit == 1, "the whole package went back: so did its credit"
    assert not jobs_sent(c.flush())


def test_a_lost_worker_requeues_its_unfinished_package_jobs_one_by_one() -> None:
    c = Core()
    c.register(W1, credit=1, heartbeat=1.0)
    c.submit(*ids("j", 8), opts=packed(8, max_retries=1))
    assert ids_sent(c.flush(), W1) == ids("j", 8)
    c.report(W1, started=["j0", "j1", "j2", "j3"], results={i: b"r" for i in ids("j", 3)})
    c.advance(4.0)  # W1 falls silent: lost
    assert W1 not in c.core.workers
    assert [c.status(i) for i in ids("j", 3)] == [FINISHED] * 3, "finished stays finished"
    assert [c.status(i) for i in ids("j", 8)[3:]] == [QUEUED] * 5
    assert c.status_row("j3")[6] == 2, "it had started: its attempt counts"
    assert [c.status_row(i)[6] for i in ids("j", 8)[4:]] == [1] * 4, "never started: no attempt"
    assert queued_counts(c) == (5, 10)
    c.register(W2, credit=1)
    assert rows(c.flush(), W2) == [[("j3", "")]], "one job per credit: a package no more"
    c.report(W2, results={"j3": b"r"}, credit=3)
    assert rows(c.flush(), W2) == [[("j4", ""), ("j5", ""), ("j6", "")]]


def test_a_worker_that_reconnects_without_a_package_job_frees_its_slot() -> None:
    c = Core()
    c.register(W1, credit=1)
    c.submit(*ids("j", 3), opts=packed(3))
    assert ids_sent(c.flush(), W1) == ids("j", 3)
    c.report(W1, started=["j0"])
    c.register(W1, credit=0, held=["j0"])  # j1 and j2 never reached it
    worker = c.core.workers[W1]
    assert worker.jobs == {"j0"} and worker.riders == 0 and worker.packs == {"j0": 1}
    assert [c.status(i) for i in ("j1", "j2")] == [QUEUED, QUEUED]


def test_waiting_jobs_are_not_packed_and_go_alone_when_ready() -> None:
    c = Core()
    c.submit("root")
    jobs = [
        p.SubmittedJob(i, p.JobRequirements(EDGES), ("data",), [b"x"], after=("root",))
        for i in ids("m", 3)
    ]
    c.ask(p.SubmitRequest(c.rid(), jobs, packed(3)))
    c.register(W1, credit=1)
    assert ids_sent(c.flush(), W1) == ["root"]
    c.report(W1, results={"root": b"r"}, credit=3)
    assert rows(c.flush(), W1) == [[("m0", ""), ("m1", ""), ("m2", "")]]


def test_queued_package_jobs_are_listed_as_queued() -> None:
    c = Core()
    c.submit(*ids("j", 5), opts=packed(5))
    c.terminate("j0")  # (its heir leads the package now)
    # many jobs over: queued ones are rare, and looked for in the queues
    c.submit(*ids("v", 50), reqs=VOLUME)
    c.register(W2, VOLUME, credit=50)
    c.flush()
    c.report(W2, results={i: b"r" for i in ids("v", 50)})
    reply = c.ask(p.ListJobsRequest(c.rid(), QUEUED))
    assert isinstance(reply, p.Reply)
    assert sorted(job["id"] for job in reply.data) == ids("j", 5)[1:]


@pytest.mark.parametrize(
    ("opts", "why"),
    [
        ({"package_size": 1}, "2-1000"),
        ({"package_size": 1001}, "2-1000"),
        ({"package_size": "8"}, "wrong type"),
        ({"package_size": 8, "protected": False}, "protected"),
    ],
)
def test_bad_package_sizes_are_refused(opts: dict[str, Any], why: str) -> None:
    job = p.SubmittedJob("j", p.JobRequirements(EDGES), ("data",), [b"x"])
    with pytest.raises(ProtocolError, match=why):
        p.decode(p.encode(p.SubmitRequest(1, [job], opts)), p.CLIENT_COMMANDS)


def test_the_package_row_extra_round_trips() -> None:
    job = p.AssignedJob("j1", p.JobRequirements(EDGES), ("data",), [b"x"], package="j0")
    back = p.decode(p.encode(p.Jobs([job])), p.BROKER_TO_WORKER)
    assert isinstance(back, p.Jobs) and back.jobs[0].package == "j0"


# ============================================================ end to end

PACKAGE_WORKER = str(Path(__file__).parent / "workers" / "package_worker.py")
PACK = IOType("Pack", "Unit")


def numbered(n: int) -> list[JobSubmission]:
    return [JobSubmission(PACK, {"data": str(i).encode()}) for i in range(n)]


def spy_on_messages(monkeypatch: pytest.MonkeyPatch) -> list[p.Message]:
    """Every message anything in this process encodes (broker, worker and client alike)."""
    seen: list[p.Message] = []
    encode = p.encode

    def spy(msg: p.Message) -> list[Any]:
        seen.append(msg)
        return encode(msg)

    monkeypatch.setattr(p, "encode", spy)
    return seen


def test_packages_of_16_go_in_one_message_each_way(
    monkeypatch: pytest.MonkeyPatch,
    make_server: Callable[..., Any],
    make_worker: Callable[..., Any],
    make_client: Any,
) -> None:
    seen = spy_on_messages(monkeypatch)
    server = make_server()
    # one package at a time (no prefetch), and no heartbeat during the test to flush a report
    make_worker(PACK, server.ports.worker, run=lambda job: job["data"], prefetch=0, heartbeat=5)
    c = make_client(server.ports.client, basic=True, timeout=10)
    jobs = c.submit_many(numbered(64), package_size=16)
    results = {r.job_id: r.data for r in c.as_completed(jobs, timeout=20)}
    assert results == {job.id: str(i).encode() for i, job in enumerate(jobs)}
    sent = [msg for msg in seen if isinstance(msg, p.Jobs)]
    assert [len(msg.jobs) for msg in sent] == [16] * 4
    for msg in sent:
        assert {j.package for j in msg.jobs} == {msg.jobs[0].id}
    reports = [msg for msg in seen if isinstance(msg, p.Report) and msg.results]
    assert [len(msg.results) for msg in reports] == [16] * 4, "one report per package"
    assert [msg.credit for msg in reports] == [1] * 4, "one credit per package"


def test_auto_prefetch_counts_a_package_as_one_job(
    make_server: Callable[..., Any], make_worker: Callable[..., Any], make_client: Any
) -> None:
    server = make_server()
    worker = make_worker(PACK, server.ports.worker, run=lambda job: job["data"])  # "auto"
    c = make_client(server.ports.client, basic=True, timeout=10)
    jobs = c.submit_many(numbered(320), package_size=16)
    assert len(list(c.as_completed(jobs, timeout=20))) == 320
    conn = worker._conn
    # a credit per package ended, and at most AUTO_MAX packages waiting: never one per job
    assert conn.received == 20, "a package is received on one credit"
    assert conn.requested <= 20 + 1 + AUTO_MAX


def test_a_pool_runs_each_package_in_one_slot_in_order(
    monkeypatch: pytest.MonkeyPatch,
    make_server: Callable[..., Any],
    make_client: Any,
) -> None:
    seen = spy_on_messages(monkeypatch)
    server = make_server()
    ran: list[tuple[str, str, tuple[str, int, int] | None]] = []
    lock = threading.Lock()

    def handler(job: Job) -> bytes:
        with lock:
            ran.append((threading.current_thread().name, job.id, job.package))
        return job["data"]

    worker = Worker(PACK, server.ports.worker, heartbeat_interval=5, slots=2)
    runner = threading.Thread(
        target=worker.run, args=(handler,), kwargs={"prefetch": 0}, name="remus-test-runner"
    )
    runner.start()
    try:
        wait_for(lambda: worker.connected)
        c = make_client(server.ports.client, basic=True, timeout=10)
        jobs = c.submit_many(numbered(32), package_size=8)
        assert len(list(c.as_completed(jobs, timeout=20))) == 32
    finally:
        worker._conn.shutdown.set()
        worker._conn.inbox.put(None)
        runner.join(10)
        worker.close()
    by_package: dict[str, list[tuple[str, str, int]]] = {}
    for thread, job_id, package in ran:
        assert package is not None and package[2] == 8
        by_package.setdefault(package[0], []).append((thread, job_id, package[1]))
    assert sorted(by_package) == sorted(jobs[i].id for i in range(0, 32, 8))
    for leader, members in by_package.items():
        assert len({thread for thread, _, _ in members}) == 1, f"package {leader}: one slot"
        assert [place for _, _, place in members] == list(range(8)), "in order"
    reports = [msg for msg in seen if isinstance(msg, p.Report) and msg.results]
    assert len(reports) <= 4 and sum(len(r.results) for r in reports) == 32
    assert sum(r.credit for r in reports) == 4, "one credit back per package"


def test_a_process_pool_runs_packages_too(
    make_server: Callable[..., Any], make_worker: Callable[..., Any], make_client: Any
) -> None:
    server = make_server()
    make_worker(PACK, server.ports.worker, run=helpers_scheduling.dispatch, pool="process")
    c = make_client(server.ports.client, basic=True, timeout=30)
    subs = [JobSubmission(PACK, {"data": f"echo {i}".encode()}) for i in range(8)]
    jobs = c.submit_many(subs, package_size=4)
    results = {r.job_id: r.data for r in c.as_completed(jobs, timeout=30)}
    assert results == {job.id: str(i).encode() for i, job in enumerate(jobs)}


def test_a_package_of_64_whose_worker_is_killed_midway(
    tmp_path: Path,
    make_server: Callable[..., Any],
    make_worker: Callable[..., Any],
    make_client: Any,
    make_process: Callable[..., subprocess.Popen[str]],
) -> None:
    """The finished ones stay finished, the rest run again, none twice."""
    log = tmp_path / "runs.log"
    stop_at = 20
    server = make_server()
    proc = make_process([PACKAGE_WORKER, server.ports.worker, str(log), str(stop_at)])
    c = make_client(server.ports.client, basic=True, timeout=10)
    jobs = c.submit_many(numbered(64), package_size=64, max_retries=1, wait_for_worker=True)

    def finished_before() -> bool:
        statuses = c.client.job_statuses(jobs[:stop_at])
        return all(s.status is FINISHED for s in statuses)

    # the finished ones' results reach the broker with the worker's heartbeat (the package's
    # last job has not ended: nothing else wakes its connection)
    wait_for(finished_before, timeout=20)
    wait_for(lambda: log.exists() and f"start {stop_at} " in log.read_text(), timeout=20)
    assert c.client.job_status(jobs[stop_at]).status is RUNNING
    os.kill(proc.pid, 9)  # SIGKILL, by PID
    proc.wait(10)

    again: list[tuple[str, tuple[str, int, int] | None]] = []

    def second(job: Job) -> bytes:
        again.append((job.id, job.package))
        return b"second"

    make_worker(PACK, server.ports.worker, run=second)
    results = {r.job_id: r.data for r in c.as_completed(jobs, timeout=30)}
    killed = str(proc.pid).encode()
    first = [job.id for job in jobs[:stop_at]]
    assert [results[i] for i in first] == [killed] * stop_at, "finished stays finished"
    assert [results[j.id] for j in jobs[stop_at:]] == [b"second"] * (64 - stop_at)
    assert sorted(i for i, _ in again) == sorted(j.id for j in jobs[stop_at:]), "none twice"
    assert all(package is None for _, package in again), "requeued one by one"
    runs = [line.split() for line in log.read_text().splitlines()]
    assert {pid for _, _, pid in runs} == {str(proc.pid)}
    starts = [int(n) for kind, n, _ in runs if kind == "start"]
    ends = [int(n) for kind, n, _ in runs if kind == "end"]
    assert starts == list(range(stop_at + 1)), "it never got past the job it was killed in"
    assert ends == list(range(stop_at)), "each ran once, in order, before the kill"
    attempts = [s.attempt for s in c.client.job_statuses(jobs)]
    assert attempts == [1] * stop_at + [2] + [1] * (63 - stop_at), "only the one it ran counts"


def test_the_asyncio_client_submits_work_packages_too(
    monkeypatch: pytest.MonkeyPatch,
    make_server: Callable[..., Any],
    make_worker: Callable[..., Any],
) -> None:
    import asyncio

    from remus.aio import AsyncClient

    seen = spy_on_messages(monkeypatch)
    server = make_server()
    make_worker(PACK, server.ports.worker, run=lambda job: job["data"], prefetch=0, heartbeat=5)

    async def main() -> dict[str, bytes]:
        async with AsyncClient(server.ports.client, timeout=10) as c:
            with pytest.raises(ValueError, match="package_size"):
                await c.submit_many(numbered(4), package_size=1)
            jobs = await c.submit_many(numbered(64), package_size=16)
            got = {r.job_id: r.data async for r in c.as_completed(jobs, timeout=20)}
            assert got == {job.id: str(i).encode() for i, job in enumerate(jobs)}
            return got

    asyncio.run(main())
    sent = [msg for msg in seen if isinstance(msg, p.Jobs)]
    assert [len(msg.jobs) for msg in sent] == [16] * 4, "a package a message"
