"""The worker's side of scheduling (issue 11), end to end against a real broker with real
workers: slots (threads and processes), cancel reasons and ``stopped``, checkpoints across a
preemption, control messages, assistants, and the Mandelbrot example.

Concurrency is measured, not assumed: each handler notes when it starts and ends under one
lock, and the test computes the most handlers that ever ran at once from those timestamps."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers_scheduling
import pytest
import zmq
from conftest import ROOT, wait_for
from factory_helpers import (
    pid_gone,
    write_scheduling_worker_file,
)
from helpers_e2e import free_tcp_endpoint, start_cli_server

from remus import IOType, JobRequirements, JobSubmission, JobTerminatedError, Status
from remus import protocol as p
from remus.client import BasicClient
from remus.server import Server, ServerConfig
from remus.server.factory import Backoff, WorkerFactory
from remus.worker import Job, Worker
from remus.worker.connection import Connection, client_endpoint
from remus.worker.jobstate import JobState

pytestmark = pytest.mark.timeout(60)

IO = IOType("Sched", "Run")
#: a deadline for any one thing to happen (a worker process starts in well under it)
WAIT = 20.0


@pytest.fixture
def start_worker() -> Iterator[Callable[..., Worker]]:
    """``start_worker(endpoint, handler, slots=N, client_endpoint=..., **run_options)``: a
    Worker with those slots running ``handler`` on a thread, once the broker has answered."""
    made: list[tuple[Worker, threading.Thread]] = []

    def start(
        endpoint: str,
        handler: Any,
        *,
        slots: int = 1,
        client_endpoint: str | None = None,
        **run_options: Any,
    ) -> Worker:
        worker = Worker(
            IO, endpoint, heartbeat_interval=0.2, slots=slots, client_endpoint=client_endpoint
        )
        thread = threading.Thread(
            target=worker.run,
            args=(handler,),
            kwargs=run_options,
            name="remus-test-runner",
            daemon=True,
        )
        thread.start()
        made.append((worker, thread))
        wait_for(lambda: worker.connected, timeout=10.0)
        return worker

    yield start
    for worker, _ in made:
        worker._conn.shutdown.set()
        worker._conn.inbox.put(None)
    for worker, thread in made:
        thread.join(10)
        worker.close()


class Spans:
    """When each handler ran, noted under one lock: the most that ever ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.spans: list[tuple[float, float]] = []
        self._open: dict[int, float] = {}

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self._open[threading.get_ident()] = time.monotonic()

    def leave(self) -> None:
        with self.lock:
            self.running -= 1
            self.spans.append((self._open.pop(threading.get_ident()), time.monotonic()))

    def most_at_once(self) -> int:
        return most_at_once(self.spans)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of [start, end] intervals that overlap (an end before a start at
    the same instant: a slot freed, then taken)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """In a handler: wait for ``predicate`` with a deadline (a test waiting for a test)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.005)


# ============================================================================ slots


@pytest.mark.parametrize(("slots", "prefetch"), [(1, 0), (3, 0), (3, 2)])
def test_n_slots_run_n_handlers_at_once_and_never_more(
    server: Server, make_client: Any, start_worker: Any, slots: int, prefetch: int
) -> None:
    """Three rounds of ``slots`` jobs: a barrier of ``slots`` lets a round through only when
    that many handlers run together, and the timestamps never show one more."""
    c = make_client(server.ports.client, basic=True)
    spans = Spans()
    together = threading.Barrier(slots, timeout=WAIT)

    def handler(job: Job) -> bytes:
        spans.enter()
        try:
            together.wait()
        finally:
            spans.leave()
        return job["data"]

    start_worker(server.ports.worker, handler, slots=slots, prefetch=prefetch)
    jobs = c.submit_many(JobSubmission.of(IO, str(i)) for i in range(3 * slots))
    results = {r.job_id: r.data for r in c.as_completed(jobs, timeout=WAIT)}
    assert sorted(results.values()) == sorted(str(i).encode() for i in range(3 * slots))
    assert len(spans.spans) == 3 * slots
    assert spans.most_at_once() == slots


def test_a_worker_declares_its_slots_and_asks_for_free_slots_plus_prefetch(
    server: Server, make_client: Any, make_worker: Any
) -> None:
    c = make_client(server.ports.client)
    w = Worker(IO, server.ports.worker, heartbeat_interval=0.2, slots=5)
    try:
        wait_for(lambda: w.connected)
        assert w.slots == 5
        (info,) = c.workers()
        assert (info.slots, info.credit) == (5, 0)
    finally:
        w.close()
    # run(slots=...) declares another number first (the worker registers again)
    w = make_worker(IO, server.ports.worker, run=bytes, slots=2, prefetch=3)
    wait_for(lambda: [(i.slots, i.credit) for i in c.workers()] == [(2, 5)])
    assert w.slots == 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"slots": 0}, ValueError),
        ({"slots": 1025}, ValueError),
        ({"slots": True}, TypeError),
        ({"slots": 2.0}, TypeError),
    ],
    ids=repr,
)
def test_bad_slots_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match="slots"):
        Worker(IO, free_tcp_endpoint(), **kwargs)


def test_bad_run_options_are_refused_before_any_job_is_asked_for() -> None:
    with Worker(IO, free_tcp_endpoint()) as w:
        with pytest.raises(ValueError, match="prefetch"):
            w.run(bytes, prefetch=-1)
        with pytest.raises(ValueError, match="slots"):
            w.run(bytes, slots=0)
        with pytest.raises(ValueError, match="pool"):
            w.run(bytes, pool="fibres")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="picklable handler"):
            w.run(lambda job: b"", pool="process")
        assert w._conn.requested == 0


def test_process_slots_run_handlers_in_parallel_processes(
    server: Server, make_client: Any, start_worker: Any, tmp_path: Path
) -> None:
    """Two CPU-bound handlers meet (each waits until both run), each in a process of its own,
    and burn CPU side by side."""
    c = make_client(server.ports.client, basic=True)
    start_worker(server.ports.worker, helpers_scheduling.rendezvous, slots=2, pool="process")
    spec = json.dumps({"dir": str(tmp_path), "n": 2, "burn": 0.3})
    jobs = c.submit_many([JobSubmission.of(IO, spec), JobSubmission.of(IO, spec)])
    runs = [json.loads(r.data) for r in c.as_completed(jobs, timeout=WAIT)]
    pids = {run["pid"] for run in runs}
    assert len(pids) == 2 and os.getpid() not in pids
    assert most_at_once([(run["entered"], run["end"]) for run in runs]) == 2
    assert all(run["cpu"] >= 0.3 for run in runs)  # each burned its CPU in its own process


def test_a_process_handler_sees_its_cancel_and_is_told_progress_is_not_for_it(
    server: Server, make_client: Any, start_worker: Any, tmp_path: Path
) -> None:
    c = make_client(server.ports.client, basic=True)
    w = start_worker(server.ports.worker, helpers_scheduling.dispatch, slots=2, pool="process")
    noted = tmp_path / "reason"
    job = c.submit(IO, f"until_cancelled {noted}")
    wait_for((tmp_path / "reason.started").exists, timeout=WAIT)  # its handler runs
    c.client.terminate(job)
    wait_for(noted.exists, timeout=WAIT)
    assert noted.read_text() == "terminated"

    with pytest.raises(Exception, match="progress is not available to a handler run with pool="):
        c.run(IO, "progress", timeout=WAIT)
    with pytest.raises(Exception, match="pickle"):
        c.run(IO, "unpicklable_result", timeout=WAIT)
    assert c.run(IO, "echo hello", timeout=WAIT).data == b"hello"  # its slots are all free
    assert c.run(IO, "echo again", timeout=WAIT).data == b"again"
    assert w.slots == 2


# ============================================================================ cancels


@pytest.mark.skipif(sys.platform == "win32", reason="the factory's process groups and signals")
def test_a_spawned_worker_that_stops_at_its_time_limit_is_not_killed(
    tmp_path: Path, make_server: Any, make_client: Any
) -> None:
    """The handler sees "time limit", returns; the worker says the job stopped, so the broker
    does not kill it after ``kill_grace``: the same process then runs the next job, which
    works well past the grace."""
    records = tmp_path / "records"
    records.mkdir()
    write_scheduling_worker_file(tmp_path, IO, records)
    factory = WorkerFactory([tmp_path], max_workers=1, backoff=Backoff(quick_exit=0.0))
    server = make_server(factory=factory, config=ServerConfig(kill_grace=0.3, stop_timeout=1.0))
    c = make_client(server.ports.client, basic=True)

    job = c.submit(IO, "obey", time_limit=1.0)
    with pytest.raises(Exception, match="time limit: ran over 1 s"):
        c.wait(job, timeout=WAIT)
    (pid,) = wait_for(lambda: [int(f.stem) for f in records.glob("*.json")], timeout=WAIT)
    cancels = records / f"{pid}.cancels"
    wait_for(cancels.exists, timeout=WAIT)
    assert cancels.read_text() == f"{job.id} time limit\n"

    # 1 s of work, more than three times the grace: a kill would have come meanwhile
    assert c.run(IO, "pid:1.0", timeout=WAIT).data == str(pid).encode()
    assert not pid_gone(pid)
    assert c.client.job_status(job).status is Status.FAILED


def test_a_terminated_job_is_reported_stopped_and_its_slot_comes_back(
    server: Server, make_client: Any, start_worker: Any
) -> None:
    c = make_client(server.ports.client, basic=True)
    seen: list[tuple[str, str | None]] = []
    started = threading.Event()

    def handler(job: Job) -> bytes:
        if job["data"] == b"long":
            started.set()
            until(lambda: job.cancelled, "the cancel")
            seen.append((job.id, job.cancel_reason))
            return b"a result nobody takes"
        return b"quick"

    start_worker(server.ports.worker, handler)  # one slot
    job = c.submit(IO, "long")
    assert started.wait(WAIT)
    c.client.terminate(job)
    with pytest.raises(JobTerminatedError):
        c.wait(job, timeout=WAIT)
    assert c.run(IO, "next", timeout=WAIT).data == b"quick"  # the slot is free again
    assert seen == [(job.id, "terminated")]


# ============================================================================ preemption


def test_a_preempted_job_runs_again_from_its_checkpoint_without_losing_an_attempt(
    server: Server, make_client: Any, start_worker: Any
) -> None:
    """One slot: a spare-capacity job checkpoints, a protected job comes, the spare one is
    preempted (it sees why and stops), the protected one runs, then the spare one runs again
    and finds its checkpoint; its attempt is still 1."""
    c = make_client(server.ports.client, basic=True)
    runs: list[tuple[str, bytes | None, str | None, bool]] = []
    lock = threading.Lock()

    def handler(job: Job) -> bytes:
        data = job["data"]
        if data == b"spare" and job.last_checkpoint is None:
            job.checkpoint(b"step-0")  # (only the latest of these two needs to go)
            job.checkpoint(b"step-1")
            job.send_progress(10, "checkpointed")
            until(lambda: job.cancelled, "the preemption")
            with lock:
                runs.append(("spare", job.last_checkpoint, job.cancel_reason, job.preempted))
            job.checkpoint(b"step-2")  # as it stops: kept, it starts nowhere else meanwhile
            return b"not finished"
        with lock:
            runs.append((data.decode(), job.last_checkpoint, job.cancel_reason, job.protected))
        if data == b"spare":
            return b"resumed from " + (job.last_checkpoint or b"nothing")
        return b"protected done"

    start_worker(server.ports.worker, handler)  # one slot, no prefetch
    spare = c.submit(IO, "spare", protected=False)
    wait_for(
        lambda: (lambda s: s.progress is not None and s.progress.message == "checkpointed")(
            c.client.job_status(spare)
        ),
        timeout=WAIT,
    )
    protected = c.submit(IO, "protected")
    assert c.wait(protected, timeout=WAIT).data == b"protected done"
    assert c.wait(spare, timeout=WAIT).data == b"resumed from step-2"
    assert runs == [
        ("spare", None, "preempted", True),
        ("protected", None, None, True),
        ("spare", b"step-2", None, False),  # (its last field: job.protected)
    ]
    status = c.client.job_status(spare)
    assert status.attempt == 1
    assert len(status.history) == 1 and "preempted" in status.history[0]


# ============================================================================ control messages


def test_control_messages_arrive_in_order_before_and_after_the_job_starts(
    server: Server, make_client: Any, start_worker: Any
) -> None:
    c = make_client(server.ports.client, basic=True)
    release = threading.Event()
    started = threading.Event()
    called: list[bytes] = []
    polled: list[bytes] = []

    def handler(job: Job) -> bytes:
        if job["data"] == b"blocker":
            until(release.is_set, "the release")
            return b""
        polled.extend(job.control_messages())  # those sent while it was queued
        job.on_control(called.append)  # gets those too, first
        started.set()
        until(lambda: polled.extend(job.control_messages()) or len(polled) >= 4, "4 messages")
        until(lambda: len(called) >= 4, "4 callbacks")
        return b"|".join(polled)

    start_worker(server.ports.worker, handler)  # one slot
    blocker = c.submit(IO, "blocker")
    wait_for(lambda: c.client.job_status(blocker).status is Status.IN_PROGRESS, timeout=WAIT)
    job = c.submit(IO, "listener")
    assert [c.send_control(job, m) for m in (b"m1", "m2")] == [1, 2]
    release.set()
    assert started.wait(WAIT)
    assert [c.send_control(job, m) for m in (b"m3", b"m4")] == [3, 4]
    assert c.wait(job, timeout=WAIT).data == b"m1|m2|m3|m4"
    assert called == [b"m1", b"m2", b"m3", b"m4"]
    assert polled == [b"m1", b"m2", b"m3", b"m4"]  # each returned once


def test_a_report_carries_the_latest_checkpoint_of_each_job_and_is_kept_until_acked() -> None:
    """Checkpoints and stops queued before one flush go in one numbered report: the latest
    checkpoint of each job only."""
    conn = Connection(zmq.Context.instance(), free_tcp_endpoint(), JobRequirements(IO), 1.0, b"w-x")
    sent: list[p.Message] = []

    class Keep:  # a socket that keeps what is sent (the connection thread is not started)
        frames: list[Any] = []

        def send(self, frame: Any, flags: int = 0, copy: bool = True) -> None:
            self.frames.append(frame)
            if not flags & zmq.SNDMORE:  # the message's last frame
                sent.append(p.decode(self.frames))
                self.frames = []

    try:
        for item in (("checkpoint", "a", b"a1"), ("checkpoint", "b", b"b1")):
            conn.post(*item)
        conn.post("checkpoint", "a", b"a2")
        conn.post("credit", 1, wake=False)
        conn.post("stopped", "c")
        conn._flush_outbox(Keep())  # type: ignore[arg-type]
    finally:
        conn.close()
    (report,) = sent
    assert isinstance(report, p.Report)
    assert [(i, bytes(d)) for i, d in report.checkpoints] == [("b", b"b1"), ("a", b"a2")]
    assert (report.stopped, report.credit, report.seq) == (["c"], 1, 1)
    assert [r.seq for r in conn._unacked] == [1]  # numbered: kept until the broker acks it


def test_a_copy_of_a_control_message_is_dropped_by_its_seq() -> None:
    state = JobState("j")
    assert state.control(1, b"a") and state.control(2, b"b")
    assert not state.control(1, b"a") and not state.control(2, b"b")
    assert state.control(3, b"c")
    assert state.take_controls() == [b"a", b"b", b"c"]
    assert state.take_controls() == []


# ============================================================================ assistants


def test_a_master_collects_three_assistants(
    server: Server, make_client: Any, start_worker: Any
) -> None:
    c = make_client(server.ports.client, basic=True)
    seen: dict[bytes, tuple[str, bool]] = {}

    def handler(job: Job) -> bytes:
        if job["data"] == b"master":
            for i in range(3):
                job.submit_assistant(JobSubmission.of(IO, f"part-{i}"))
            done = {r.job_id: r.data for r in job.client.as_completed(job.assistants, timeout=WAIT)}
            return b"+".join(done[a.id] for a in job.assistants)
        seen[job["data"]] = (job.parent, job.protected)
        return job["data"].upper()

    start_worker(server.ports.worker, handler, slots=4)  # its client endpoint: the broker's word
    master = c.submit(IO, "master")
    assert c.wait(master, timeout=WAIT).data == b"PART-0+PART-1+PART-2"
    assert seen == {f"part-{i}".encode(): (master.id, False) for i in range(3)}
    status = c.client.job_status(master)
    assert len(status.assistants) == 3
    for assistant in status.assistants:
        assert c.client.job_status(assistant).parent == master.id


def test_terminating_a_master_terminates_its_assistants(
    server: Server, make_client: Any, start_worker: Any
) -> None:
    """Each assistant's handler hears "parent ended" and stops; every slot comes back."""
    c = make_client(server.ports.client, basic=True)
    reasons: dict[str, str | None] = {}
    assistants: list[str] = []
    running: set[str] = set()

    def handler(job: Job) -> bytes:
        running.add(job.id)
        if job["data"] == b"master":
            for _ in range(3):
                assistants.append(job.submit_assistant(JobSubmission.of(IO, "helper")).id)
        elif job["data"] == b"quick":
            return b"quick"
        until(lambda: job.cancelled, "the cancel")
        reasons[job.id] = job.cancel_reason
        return b"never taken"

    start_worker(server.ports.worker, handler, slots=4, client_endpoint=server.ports.client)
    master = c.submit(IO, "master")
    wait_for(lambda: len(assistants) == 3, timeout=WAIT)
    # every handler runs (IN_PROGRESS comes at the hand-over; a job cancelled before its
    # handler starts never starts, and then says nothing of its cancel)
    wait_for(lambda: running >= {master.id, *assistants}, timeout=WAIT)
    c.client.terminate(master)
    for a in assistants:
        wait_for(lambda a=a: c.client.job_status(a).status.done, timeout=WAIT)
        status = c.client.job_status(a)
        assert status.status is Status.TERMINATED
        assert status.reason == f"its parent job {master.id} ended (TERMINATED)"
    wait_for(lambda: len(reasons) == 4, timeout=WAIT)
    assert reasons == {master.id: "terminated", **dict.fromkeys(assistants, "parent ended")}
    quick = c.submit_many([JobSubmission.of(IO, "quick") for _ in range(4)])
    assert [r.data for r in c.as_completed(quick, timeout=WAIT)] == [b"quick"] * 4


def test_the_client_endpoint_with_a_wildcard_host_is_the_worker_endpoints_host() -> None:
    assert client_endpoint("tcp://0.0.0.0:5000", "tcp://10.0.0.7:5001") == "tcp://10.0.0.7:5000"
    assert client_endpoint("tcp://*:5000", "tcp://broker.lan:5001") == "tcp://broker.lan:5000"
    assert client_endpoint("tcp://[::]:5000", "tcp://[::1]:5001") == "tcp://[::1]:5000"
    assert client_endpoint("tcp://10.0.0.8:5000", "tcp://10.0.0.7:5001") == "tcp://10.0.0.8:5000"
    assert client_endpoint("ipc:///tmp/c", "tcp://10.0.0.7:5001") == "ipc:///tmp/c"


def test_a_job_not_from_a_worker_says_so() -> None:
    job = Job("x", JobRequirements(IO))
    assert not job.cancelled and job.cancel_reason is None and job.assistants == []
    with pytest.raises(RuntimeError, match="does not come from a worker"):
        job.checkpoint(b"x")
    with pytest.raises(RuntimeError, match="does not come from a worker"):
        job.control_messages()


# ============================================================================ the example


@pytest.mark.skipif(sys.platform == "win32", reason="the example's worker file runs a script")
def test_the_mandelbrot_example_splits_its_job_into_assistants(make_process: Any) -> None:
    """``remus server --workers examples``: the master and its three assistants run on the
    worker it starts, and the image comes back whole."""
    _, ports = start_cli_server(
        make_process, "--workers", str(ROOT / "examples"), "--max-workers", "1"
    )
    with BasicClient(ports.client, timeout=WAIT) as c:
        reqs = JobRequirements(IOType("Region", "Image"), worker_name="Mandelbrot")
        job = c.submit(reqs, json.dumps({"width": 40, "height": 24, "iterations": 30}))
        image = c.wait(job, timeout=WAIT).data
        status = c.client.job_status(job)
        parents = {c.client.job_status(a).parent for a in status.assistants}
    header = b"P5\n40 24\n255\n"
    assert image.startswith(header) and len(image) == len(header) + 40 * 24
    pixels = image[len(header) :]
    assert 255 in pixels and min(pixels) < 255  # points in the set and out of it
    assert len(status.assistants) == 3 and parents == {job.id}
