"""The client's side of scheduling (issue 11), end to end against a real broker: submit
options ``priority`` / ``protected`` / ``parent`` on every submit path, ``send_control``, the
new JobStatus fields, and the ``remus submit --priority/--unprotected``, ``remus status`` and
``remus control`` commands.

Control messages are read off the wire by :class:`RawWorker`, a worker that speaks the
protocol itself, so a test sees each ``controls`` message exactly as the broker sent it (and
where, relative to the ``jobs`` message that hands the job over)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import wait_for
from helpers_cli import cli
from helpers_e2e import free_tcp_endpoint

from remus import (
    IOType,
    Job,
    JobNotRunningError,
    JobSubmission,
    Status,
    UnknownJobError,
)
from remus import protocol as p
from remus.client.client import _status, scheduling
from remus.hostid import host_id
from remus.server import Server
from remus.server.core_thread import CoreThread
from remus.types import JobRequirements

pytestmark = pytest.mark.timeout(60)

ECHO = IOType("Text", "Echo")
#: served by nobody in these tests: its jobs stay QUEUED
NOBODY = IOType("Text", "Nobody")
#: more than travels inline: a control message that goes as its own frame
BIG = b"c" * (p.INLINE_MAX + 1)


class RawWorker:
    """A worker that speaks docs/protocol.md on its own DEALER socket: it registers with
    ``credit``, keeps every message the broker sends it (in ``got``), heartbeats while it
    reads, and reports only what a test tells it to."""

    HEARTBEAT = 1.0

    def __init__(self, endpoint: str, io_type: IOType = ECHO, credit: int = 1) -> None:
        self.sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.got: list[p.Message] = []
        self.seq = 0
        self.last_sent = 0.0
        reqs = JobRequirements(io_type)
        self.send(p.Register(reqs, self.HEARTBEAT, host_id(), os.getpid(), credit))
        # registered once the broker answers, with a heartbeat naming its client endpoint
        # (its later heartbeats name none: an answer without it is final)
        try:
            answer = self.until(
                lambda got: next((m for m in got if isinstance(m, p.Heartbeat)), None)
            )
            assert answer.client, "the broker answered register without its client endpoint"
        except BaseException:
            self.sock.close(0)  # (no fixture closes a worker that never registered)
            raise
        self.client_endpoint: str = answer.client

    def send(self, msg: p.Message) -> None:
        self.sock.send_multipart(p.encode(msg))
        self.last_sent = time.monotonic()

    def read(self, timeout: float) -> None:
        """Keep what arrives within ``timeout`` s, heartbeating meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now - self.last_sent > self.HEARTBEAT / 3:
                self.send(p.Heartbeat())
            if self.sock.poll(max(0, int(min(deadline - now, 0.1) * 1000))):
                frames = self.sock.recv_multipart(copy=False)
                self.got.append(p.decode(frames, p.BROKER_TO_WORKER))
                continue
            if time.monotonic() >= deadline:
                return

    def until(self, pred: Callable[[list[p.Message]], Any], timeout: float = 10.0) -> Any:
        """Read until ``pred(self.got)`` is truthy; return it (fail at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            found = pred(self.got)
            if found:
                return found
            if time.monotonic() >= deadline:
                kinds = [type(m).__name__ for m in self.got]
                raise AssertionError(f"not received within {timeout} s; got {kinds}")
            self.read(0.05)

    def jobs(self) -> list[str]:
        return [j.id for m in self.got if isinstance(m, p.Jobs) for j in m.jobs]

    def controls(self, job_id: str) -> list[tuple[int, bytes]]:
        """The control messages received for ``job_id``, as (seq, data), in arrival order."""
        return [
            (seq, bytes(data))
            for m in self.got
            if isinstance(m, p.Controls)
            for jid, seq, data in m.messages
            if jid == job_id
        ]

    def report(self, credit: int = 0, **fields: Any) -> None:
        self.seq += 1
        self.send(p.Report(credit=credit, seq=self.seq, **fields))

    def close(self) -> None:
        self.send(p.Goodbye())
        self.sock.close(0)


@pytest.fixture
def ep(make_server: Callable[..., Server]) -> Iterator[tuple[str, str]]:
    """A broker's (client, worker) endpoints."""
    server = make_server()
    yield server.ports.client, server.ports.worker


@pytest.fixture
def raw_workers() -> Iterator[Callable[..., RawWorker]]:
    made: list[RawWorker] = []

    def make(endpoint: str, io_type: IOType = ECHO, credit: int = 1) -> RawWorker:
        worker = RawWorker(endpoint, io_type, credit)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


def running_job(c: Any, worker: RawWorker, data: bytes = b"x") -> Job:
    """A job the raw worker holds (IN_PROGRESS)."""
    job: Job = c.submit_job(JobSubmission.of(ECHO, data), wait_for_worker=True)
    worker.until(lambda _: job.id in worker.jobs())
    assert c.job_status(job).status is Status.IN_PROGRESS
    return job


# ------------------------------------------------------------------ submit options


def test_priorities_dispatch_in_order(ep: tuple[str, str], make_client: Any, make_worker: Any):
    """Jobs queued before any worker, then one 1-slot worker with prefetch 1: protected jobs
    first, by priority (higher first), equals in submission order; then the spare-capacity
    ones, also by priority, however high theirs is."""
    client_ep, worker_ep = ep
    bc = make_client(client_ep, basic=True)
    plan = [
        ("p0-a", 0, True),
        ("p5-a", 5, True),
        ("u100", 100, False),
        ("m3", -3, True),
        ("p5-b", 5, True),
        ("u1", 1, False),
        ("p10", 10, True),
        ("p0-b", 0, True),
        ("top", 2**30, True),
        ("bottom", -(2**30), True),
    ]
    for label, priority, protected in plan:
        bc.submit(ECHO, label, priority=priority, protected=protected, wait_for_worker=True)
    # (also through submit_many: one batch, one priority for all of it)
    bc.submit_many([JobSubmission.of(ECHO, f"many-{i}") for i in range(2)], priority=7,
                   wait_for_worker=True)  # fmt: skip
    infos = {i.id: i for i in bc.client.jobs(status=Status.QUEUED)}
    assert sorted((i.priority, i.protected) for i in infos.values()) == sorted(
        [(pr, pt) for _, pr, pt in plan] + [(7, True)] * 2
    )

    order: list[str] = []
    lock = threading.Lock()

    def handler(job: Any) -> bytes:
        with lock:
            order.append(job["data"].decode())
        return b"done"

    make_worker(ECHO, worker_ep, run=handler, prefetch=1)
    wait_for(lambda: len(order) == len(plan) + 2)
    assert order == [
        "top", "p10", "many-0", "many-1", "p5-a", "p5-b", "p0-a", "p0-b", "m3", "bottom",
        "u100", "u1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("opts", "error", "words"),
    [
        ({"priority": True}, TypeError, "priority must be an int"),
        ({"priority": 1.5}, TypeError, "priority must be an int"),
        ({"priority": "3"}, TypeError, "priority must be an int"),
        ({"priority": 2**30 + 1}, ValueError, "out of range"),
        ({"priority": -(2**30) - 1}, ValueError, "out of range"),
        ({"protected": 0}, TypeError, "protected must be True or False"),
        ({"protected": None}, TypeError, "protected must be True or False"),
        ({"parent": 5}, TypeError, "parent must be a Job or a job id"),
        ({"parent": ""}, TypeError, "parent must be a Job or a job id"),
    ],
    ids=repr,
)
def test_bad_submit_options_are_refused_before_anything_is_sent(
    make_client: Any, opts: dict[str, Any], error: type[Exception], words: str
) -> None:
    """Every submit path checks the options itself: against no broker at all, the error
    comes at once (not a TimeoutError)."""
    nowhere = free_tcp_endpoint()
    bc = make_client(nowhere, basic=True, timeout=0.5)
    sub = JobSubmission.of(ECHO, b"x")
    calls: list[Callable[[], Any]] = [
        lambda: bc.submit(ECHO, b"x", **opts),
        lambda: bc.run(ECHO, b"x", **opts),
        lambda: bc.submit_many([sub], **opts),
        lambda: bc.client.submit_jobs([sub], **opts),
        lambda: bc.client.submit_job(sub, **opts),
    ]
    for call in calls:
        with pytest.raises(error, match=words):
            call()
    assert bc.client.calls == 0, "nothing reached the wire"


def test_scheduling_options_on_the_wire() -> None:
    assert scheduling() == {}
    assert scheduling(3, False, "m-1") == {"priority": 3, "protected": False, "parent": "m-1"}
    job = Job("m-2", JobRequirements(ECHO))
    assert scheduling(parent=job) == {"parent": "m-2"}
    assert scheduling(-(2**30)) == {"priority": -(2**30)}


# ------------------------------------------------------------------ control messages


def test_control_messages_to_a_queued_then_a_running_job(
    ep: tuple[str, str], make_client: Any, raw_workers: Any
) -> None:
    client_ep, worker_ep = ep
    c = make_client(client_ep)
    job = c.submit_job(JobSubmission.of(ECHO, b"x"), wait_for_worker=True)
    assert c.send_control(job, b"one") == 1
    assert c.send_control(job.id, "two") == 2  # a str goes as UTF-8; an id does as a Job

    worker = raw_workers(worker_ep)
    worker.until(lambda _: worker.controls(job.id))
    assert worker.jobs() == [job.id]
    kinds = [type(m) for m in worker.got if not isinstance(m, p.Heartbeat)]
    # what was sent while it was queued goes right after the jobs message that hands it over
    assert kinds[kinds.index(p.Jobs) + 1] is p.Controls
    assert worker.controls(job.id) == [(1, b"one"), (2, b"two")]

    assert c.send_control(job, b"three") == 3
    assert c.send_control(job, BIG) == 4  # (as a frame of its own)
    assert c.send_control(job, b"") == 5
    worker.until(lambda _: len(worker.controls(job.id)) == 5)
    assert worker.controls(job.id) == [(1, b"one"), (2, b"two"), (3, b"three"), (4, BIG), (5, b"")]

    worker.report(results=[(job.id, b"done")])
    wait_for(lambda: c.job_status(job).status is Status.FINISHED)
    with pytest.raises(JobNotRunningError) as over:
        c.send_control(job, b"late")
    assert over.value.job_id == job.id and over.value.code == "job-not-running"
    assert job.id in str(over.value) and "FINISHED" in str(over.value)
    worker.read(0.2)
    assert len(worker.controls(job.id)) == 5, "nothing more reached the worker"


def test_control_message_errors(ep: tuple[str, str], make_client: Any) -> None:
    client_ep, _ = ep
    bc = make_client(client_ep, basic=True)
    with pytest.raises(UnknownJobError) as unknown:
        bc.send_control("feed-1", b"x")
    assert unknown.value.job_id == "feed-1" and "does not know job feed-1" in str(unknown.value)

    job = bc.submit(NOBODY, b"x", wait_for_worker=True)
    assert bc.send_control(job, b"queued") == 1
    bc.client.terminate(job)
    with pytest.raises(JobNotRunningError) as over:
        bc.send_control(job, b"x")
    assert over.value.job_id == job.id and "TERMINATED" in str(over.value)

    with pytest.raises(TypeError, match="bytes or str"):
        bc.send_control(job, 5)


def test_a_job_that_runs_again_gets_every_message_again(
    ep: tuple[str, str], make_client: Any, raw_workers: Any
) -> None:
    """A handler failure with retries_on_error left: the job runs again and its worker gets
    every message sent to it so far, in order; the status history says why it ran again."""
    client_ep, worker_ep = ep
    c = make_client(client_ep)
    worker = raw_workers(worker_ep)
    job = c.submit_job(JobSubmission.of(ECHO, b"x"), retries_on_error=1)
    worker.until(lambda _: job.id in worker.jobs())
    assert [c.send_control(job, m) for m in (b"a", b"b")] == [1, 2]
    worker.until(lambda _: len(worker.controls(job.id)) == 2)

    worker.report(credit=1, failures=[(job.id, "ValueError: once", "")])
    worker.until(lambda _: worker.jobs().count(job.id) == 2)
    worker.until(lambda _: len(worker.controls(job.id)) == 4)
    assert worker.controls(job.id) == [(1, b"a"), (2, b"b"), (1, b"a"), (2, b"b")]
    st = c.job_status(job)
    assert st.attempt == 2 and len(st.history) == 1
    assert "ValueError: once" in st.history[0] and "running it again" in st.history[0]


# ------------------------------------------------------------------ assistants


def test_parent_and_assistants_in_job_status(
    ep: tuple[str, str], make_client: Any, raw_workers: Any
) -> None:
    client_ep, worker_ep = ep
    bc = make_client(client_ep, basic=True)
    c = bc.client
    worker = raw_workers(worker_ep)
    master = running_job(c, worker)

    a1 = bc.submit(ECHO, b"a1", parent=master, protected=False, wait_for_worker=True)
    a2, a3 = bc.submit_many(
        [JobSubmission.of(ECHO, b"a2"), JobSubmission.of(ECHO, b"a3")],
        parent=master.id,
        protected=False,
        wait_for_worker=True,
    )
    ms, s1 = c.job_statuses([master, a1])
    assert ms.parent == "" and ms.assistants == (a1.id, a2.id, a3.id)
    assert s1.parent == master.id and s1.assistants == () and s1.history == ()
    assert s1.status is Status.QUEUED  # the worker's one slot is the master's
    infos = {i.id: i for i in c.jobs()}
    assert infos[a1.id].parent == master.id and infos[a1.id].protected is False

    # the parent ends: every assistant not over yet ends TERMINATED, saying why
    worker.report(results=[(master.id, b"done")])
    wait_for(lambda: all(s.done for s in c.job_statuses([a1, a2, a3])))
    for s in c.job_statuses([a1, a2, a3]):
        assert s.status is Status.TERMINATED
        assert master.id in s.reason and "FINISHED" in s.reason, s.reason

    # a parent that is over, or unknown, takes no assistants (on every submit path)
    with pytest.raises(JobNotRunningError) as over:
        bc.submit(ECHO, b"late", parent=master, wait_for_worker=True)
    assert over.value.job_id == master.id and "FINISHED" in str(over.value)
    with pytest.raises(JobNotRunningError) as over_run:
        bc.run(ECHO, b"late", parent=master, wait_for_worker=True, timeout=5)
    assert over_run.value.job_id == master.id
    with pytest.raises(UnknownJobError) as unknown:
        c.submit_jobs([JobSubmission.of(ECHO, b"x")], parent="feed-1", wait_for_worker=True)
    assert unknown.value.job_id == "feed-1" and "feed-1" in str(unknown.value)


def test_status_rows_of_eight_elements_still_read() -> None:
    """A broker from before scheduling sends 8-element status rows."""
    old = _status(["j-1", 2, 50, "half", 3, "", 1, "w@h:1"])
    assert (old.worker, old.parent, old.assistants, old.history) == ("w@h:1", "", (), ())
    assert old.progress is not None and old.progress.value == 50
    new = _status(["j-1", 1, None, "", 0, "", 2, "", "m-1", ["a-1"], ["requeued"]])
    assert (new.parent, new.assistants, new.history, new.attempt) == (
        "m-1", ("a-1",), ("requeued",), 2
    )  # fmt: skip


def test_stats_count_preemptions(ep: tuple[str, str], make_client: Any) -> None:
    assert make_client(ep[0]).stats().totals["preempted"] == 0


# ------------------------------------------------------------------ the command line


def test_cli_submit_with_priority_and_unprotected(ep: tuple[str, str], make_client: Any) -> None:
    client_ep, _ = ep
    ran = cli("submit", "Text", "Nobody", "--data", "x", "--priority", "-7", "--unprotected",
              "--wait-for-worker", "--client", client_ep)  # fmt: skip
    assert ran.code == 0, ran.err
    job_id = ran.out.strip()
    plain = cli(
        "submit", "Text", "Nobody", "--data", "y", "--wait-for-worker", "--client", client_ep
    )
    assert plain.code == 0, plain.err
    infos = {i.id: i for i in make_client(client_ep).jobs()}
    assert (infos[job_id].priority, infos[job_id].protected) == (-7, False)
    assert (infos[plain.out.strip()].priority, infos[plain.out.strip()].protected) == (0, True)


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "Text", "Echo", "--data", "x", "--priority", "high"],
        ["submit", "Text", "Echo", "--data", "x", "--priority", "1.5"],
        ["submit", "Text", "Echo", "--data", "x", "--priority", str(2**30 + 1)],
        ["submit", "Text", "Echo", "--data", "x", "--unprotected=yes"],
        ["control", "a-1"],
        ["control", "a-1", "--data", "x", "--data-file", "y"],
        ["control", "--data", "x"],
        ["control", "a-1", "--data-file", "/no/such/file"],
    ],
    ids=" ".join,
)
def test_cli_exit_2_for_usage_errors(argv: list[str]) -> None:
    ran = cli(*argv, "--client", free_tcp_endpoint(), "--timeout", "0.5")
    assert ran.code == 2, ran
    assert ran.err.strip() and "Traceback" not in ran.err


def test_cli_control(ep: tuple[str, str], make_client: Any, tmp_path: Path, raw_workers: Any):
    client_ep, worker_ep = ep
    c = make_client(client_ep)
    job = c.submit_job(JobSubmission.of(NOBODY, b"x"), wait_for_worker=True)
    first = cli("control", job.id, "--data", "hello", "--client", client_ep)
    assert (first.code, first.out, first.err) == (0, "1\n", "")
    src = tmp_path / "msg.bin"
    src.write_bytes(b"\x00binary\xff")
    second = cli("control", job.id, "--data-file", str(src), "--client", client_ep)
    assert (second.code, second.out) == (0, "2\n"), second.err

    # the worker that takes the job gets both, as sent
    worker = raw_workers(worker_ep, NOBODY)
    worker.until(lambda _: len(worker.controls(job.id)) == 2)
    assert worker.controls(job.id) == [(1, b"hello"), (2, b"\x00binary\xff")]

    c.terminate(job)
    over = cli("control", job.id, "--data", "x", "--client", client_ep)
    assert over.code == 1 and over.out == ""
    assert over.err.startswith(f"remus control: job {job.id} is over (TERMINATED)"), over.err
    unknown = cli("control", "feed-1", "--data", "x", "--client", client_ep)
    assert unknown.code == 1 and "does not know job feed-1" in unknown.err


def test_cli_control_exit_3_when_no_broker_answers() -> None:
    nowhere = free_tcp_endpoint()
    ran = cli("control", "a-1", "--data", "x", "--client", nowhere, "--timeout", "0.5")
    assert ran.code == 3 and "no broker answers" in ran.err


def test_cli_status_shows_parent_assistants_and_history(
    ep: tuple[str, str], make_client: Any, raw_workers: Any
) -> None:
    client_ep, worker_ep = ep
    c = make_client(client_ep)
    worker = raw_workers(worker_ep)
    master = c.submit_job(JobSubmission.of(ECHO, b"m"), retries_on_error=1)
    worker.until(lambda _: master.id in worker.jobs())
    # it fails once and runs again: a line in its history
    worker.report(failures=[(master.id, "OSError: flaky disk", "")])
    wait_for(lambda: c.job_status(master).history)
    assistants = c.submit_jobs(
        [JobSubmission.of(ECHO, b"a"), JobSubmission.of(ECHO, b"b")],
        parent=master,
        protected=False,
        wait_for_worker=True,
    )

    table = cli("status", master.id, "--client", client_ep)
    assert table.code == 0, table.err
    assert f"assistants: {assistants[0].id}, {assistants[1].id}" in table.out
    assert "history:\n  attempt 1 on " in table.out and "OSError: flaky disk" in table.out
    assert "assistant of" not in table.out
    doc = json.loads(cli("status", master.id, "--json", "--client", client_ep).out)
    assert doc["parent"] == "" and doc["assistants"] == [a.id for a in assistants]
    assert len(doc["history"]) == 1 and "running it again" in doc["history"][0]

    one = cli("status", assistants[0].id, "--client", client_ep)
    assert f"assistant of: {master.id}" in one.out and "history" not in one.out
    doc = json.loads(cli("status", assistants[0].id, "--json", "--client", client_ep).out)
    assert (doc["parent"], doc["assistants"], doc["history"]) == (master.id, [], [])


def test_a_worker_that_registers_before_the_core_reads_learns_the_client_endpoint(
    make_server: Callable[..., Server], monkeypatch: pytest.MonkeyPatch, raw_workers: Any
) -> None:
    """start() returns while the core thread may not have read its control messages yet (an
    OS that does not schedule it at once): a worker that registers then must still be told
    the client endpoint. The core is held until the register is in its pipe."""
    loop = CoreThread._loop

    def held(self: CoreThread, control: Any, client: Any, worker: Any, status: Any) -> None:
        worker.poll(5000)  # (the register has come from the edge)
        loop(self, control, client, worker, status)

    monkeypatch.setattr(CoreThread, "_loop", held)
    server = make_server()
    worker = raw_workers(server.ports.worker)
    assert worker.client_endpoint == server.ports.client
