"""Issue 9's rules without sockets ("faults that tell the truth"): a job is IN_PROGRESS from
dispatch and names its worker, its time limit counts from dispatch, a lost worker's job FAILS
(EXPIRED only means the queue time limit), a submit nobody can serve is refused, a QUEUED job
says why, ``retries_on_error``, draining, and what a stopping broker tells waiting clients.

Time is whatever the test says it is; the harness is tests/core_helpers.py (its ``Core`` defaults
``max_retries`` to 0 and submits with ``wait_for_worker`` unless given ``opts``). Workers
register with their own pid so that each has its own name.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from core_helpers import (
    CLIENT,
    EDGES,
    VOLUME,
    W1,
    W2,
    W3,
    Core,
    collect,
    finish,
    ids_sent,
    jobs_sent,
    replies,
    to_worker,
)

from remus import protocol as p
from remus.server.core import BrokerCore
from remus.types import IOType, JobRequirements, Status

#: pids, so that each worker has its own name in status rows and evidence
PIDS = {W1: 101, W2: 102, W3: 103}


def name(wid: bytes, worker_name: str = "worker") -> str:
    """The name the broker gives a worker (WorkerRecord.name)."""
    return f"{worker_name}@host-a:{PIDS[wid]}"


def register(c: Core, wid: bytes, reqs: IOType | JobRequirements = EDGES, **kw: Any) -> None:
    c.register(wid, reqs, pid=PIDS[wid], **kw)


def row(c: Core, job_id: str) -> tuple[Status, str, int, str]:
    """(status, reason, attempt, worker) of a status row."""
    r = c.status_row(job_id)
    assert len(r) == 11, f"a status row has 11 elements: {r}"
    return Status(r[1]), r[5], r[6], r[7]


class Catalog:
    """A worker factory as the core sees it: what it could start, and its words about it."""

    def __init__(self, serves: IOType, words: str | None = None) -> None:
        self.serves = serves
        self.words = words

    def supported_io_types(self) -> set[IOType]:
        return {self.serves}

    def can_mesh(self, reqs: JobRequirements) -> bool:
        return reqs.io_type == self.serves

    def retrieve_requirements(self, io_type: IOType) -> list[JobRequirements]:
        return [JobRequirements(io_type)] if io_type == self.serves else []

    def explain(self, reqs: JobRequirements) -> str | None:
        return self.words if self.can_mesh(reqs) else None


def with_core(c: Core, **kw: Any) -> Core:
    """Give ``c`` a BrokerCore built with ``kw`` (catalog=..., journal=...), same config."""
    c.core = BrokerCore(c.core.config, now=c.now, **kw)
    return c


def busy(reason: str, serving: int) -> bool:
    """Does a queued reason say that all ``serving`` workers that serve the job are busy?"""
    return "busy" in reason and f"{serving} worker" in reason


def refused(reply: p.Message, code: str) -> p.Error:
    assert isinstance(reply, p.Error), reply
    assert reply.code == code, reply
    return reply


# ====================================================================== IN_PROGRESS at dispatch


def test_a_dispatched_job_is_in_progress_naming_its_worker_after_that_very_pass() -> None:
    c = Core(wants=lambda t: t == "job.assigned")
    register(c, W1)
    c.submit("j")
    out = c.flush()  # one pass: the job goes out to W1
    assert jobs_sent(out) == {W1: [["j"]]}
    assert [e["worker"] for t, e in out.events if t == "job.assigned"] == [name(W1)]
    assert row(c, "j") == (Status.IN_PROGRESS, "", 1, name(W1))
    assert c.core.jobs["j"].started is False, "the worker has not said a word yet"
    assert c.progress("j").data["status"] == Status.IN_PROGRESS


def test_a_status_row_has_the_worker_as_its_eighth_element() -> None:
    c = Core()
    c.submit("waiting")
    assert c.status_row("nope") == ["nope", Status.INVALID, None, "", 0, "", 0, "", "", [], []]
    assert row(c, "waiting")[3] == "", "no worker holds a queued job"
    register(c, W2, JobRequirements(EDGES, "Mesher"))
    c.flush()
    assert row(c, "waiting")[3] == name(W2, "Mesher")


def test_progress_before_started_marks_the_job_started() -> None:
    c = Core()
    register(c, W1)
    c.submit("j")
    c.flush()
    c.report(W1, progress=[("j", 10, "meshing")])  # a lazy "started" has not arrived yet
    assert c.core.jobs["j"].started is True
    c.goodbye(W1)  # started: no quiet requeue, the retry-or-fail rule
    assert row(c, "j")[0] is Status.FAILED


@pytest.mark.parametrize("how", ["goodbye", "reconnect"])
def test_a_job_its_worker_never_started_goes_back_to_the_queue(how: str) -> None:
    c = Core()
    register(c, W1, credit=2)
    c.submit("started", "waiting")
    c.flush()
    c.report(W1, started=["started"])
    if how == "goodbye":
        c.goodbye(W1)
    else:
        register(c, W1, credit=0, held=["started"])  # the jobs message never got there
    status, reason, attempt, worker = row(c, "waiting")
    assert (status, attempt, worker) == (Status.QUEUED, 1, "")
    if how == "goodbye":
        assert reason == f"no connected worker serves {EDGES}; waiting for one to connect"
    else:
        assert busy(reason, 1), reason
    assert c.core.jobs["waiting"].started is False
    register(c, W2)
    assert ids_sent(c.flush(), W2) == ["waiting"]
    assert row(c, "waiting") == (Status.IN_PROGRESS, "", 1, name(W2))


@pytest.mark.parametrize("max_retries", [0, 1])
def test_a_worker_lost_before_reporting_anything_counts_an_attempt_for_its_oldest_job(
    max_retries: int,
) -> None:
    c = Core(max_retries=max_retries)
    register(c, W1, credit=3)
    c.submit("first", "second", "third")
    c.flush()
    c.advance(3.5)  # W1 never said a word and stops heartbeating: lost
    first = row(c, "first")
    if max_retries:
        assert first[0::2] == (Status.QUEUED, 2)
    else:
        assert first[0] is Status.FAILED, "no retry left: FAILED, never EXPIRED"
        assert "before reporting the job started" in first[1]
    for job_id in ("second", "third"):
        assert row(c, job_id)[0::2] == (Status.QUEUED, 1), "not counted against the others"


# ===================================================================== time limit from dispatch


def test_the_time_limit_counts_from_dispatch_when_started_is_never_reported() -> None:
    c = Core(kill_grace=2.0)
    register(c, W1)
    c.advance(1.0, alive=[W1])
    c.submit("j", opts={"time_limit": 3.0})
    assert ids_sent(c.flush(), W1) == ["j"]  # dispatched at 1 s
    out = c.advance(3.75, alive=[W1])  # W1 heartbeats but never reports the job
    assert row(c, "j")[0] is Status.IN_PROGRESS
    assert to_worker(out, W1, p.Cancel) == []
    out = c.advance(4.0, alive=[W1])
    assert row(c, "j")[:2] == (Status.FAILED, "time limit: ran over 3 s")
    assert [m.ids for m in to_worker(out, W1, p.Cancel)] == [["j"]]
    assert out.kills == []
    out = c.advance(5.75, alive=[W1])
    assert out.kills == []
    out = c.advance(6.0, alive=[W1])
    assert out.kills == [("host-a", PIDS[W1])], "silent past kill_grace"


def test_a_started_report_does_not_restart_the_time_limit() -> None:
    c = Core()
    register(c, W1)
    c.submit("j", opts={"time_limit": 3.0})
    c.flush()  # dispatched at 0 s
    c.advance(2.0, alive=[W1])
    c.report(W1, started=["j"])  # a lazy "started" at 2 s
    c.advance(3.0, alive=[W1])
    assert row(c, "j")[:2] == (Status.FAILED, "time limit: ran over 3 s")


# ============================================================================ lost -> FAILED


def test_a_lost_worker_with_no_retry_left_fails_its_job_on_the_first_attempt() -> None:
    c = Core(max_retries=0, wants=lambda t: t.startswith("job."))
    register(c, W1)
    c.submit("j")
    c.flush()
    c.report(W1, started=["j"])
    out = c.advance(3.5)
    status, reason, attempt, worker = row(c, "j")
    assert (status, attempt, worker) == (Status.FAILED, 1, "")
    assert reason.startswith("its worker was lost on 1 attempt (max_retries=0): ")
    assert "job.failed" in [t for t, _ in out.events]
    assert "job.expired" not in [t for t, _ in out.events]
    assert c.core.counters["expired"] == 0 and c.core.counters["failed"] == 1


def test_reregistering_without_a_started_job_retries_it_while_retries_are_left() -> None:
    c = Core(max_retries=1)
    register(c, W1)
    c.submit("j")
    c.flush()
    c.report(W1, started=["j"])
    register(c, W1, credit=1, held=[])  # it lost the job (restarted, say)
    assert row(c, "j")[0::2] == (Status.QUEUED, 2)
    assert c.core.jobs["j"].evidence == [
        f"attempt 1 on {name(W1)}: it no longer held the job when it reconnected"
    ]
    assert ids_sent(c.flush(), W1) == ["j"], "run again"
    c.report(W1, started=["j"])
    register(c, W1, credit=1, held=[])  # and again: no retry left
    status, reason, attempt, _ = row(c, "j")
    assert (status, attempt) == (Status.FAILED, 2)
    assert reason.count("no longer held the job") == 2


# ============================================================================ no worker: refused


def test_a_submit_nobody_can_serve_is_refused_naming_requirements_and_offers() -> None:
    c = Core()
    register(c, W1, VOLUME, credit=0)
    err = refused(c.submit("j", reqs=EDGES, opts={}), "no-worker")
    assert err.data == {"requirements": "Edges->Mesh2D", "serves": ["Mesh2D->Mesh3D"]}
    assert "Edges->Mesh2D" in err.message and "wait_for_worker" in err.message
    assert c.core.jobs == {} and c.core.counters["submitted"] == 0, "nothing kept"
    named = JobRequirements(EDGES, "Mesher", {"q": 1})
    err = refused(c.submit("n", reqs=named, opts={}), "no-worker")
    assert err.data["requirements"] == "Edges->Mesh2D named 'Mesher' tagged {'q': 1}"


def test_a_submit_is_refused_whole_if_one_of_its_jobs_has_no_worker() -> None:
    c = Core()
    register(c, W1, EDGES)
    jobs = [
        p.SubmittedJob("ok", JobRequirements(EDGES), ("data",), [b"x"]),
        p.SubmittedJob("no", JobRequirements(VOLUME), ("data",), [b"x"]),
    ]
    err = refused(c.ask(p.SubmitRequest(c.rid(), jobs, {})), "no-worker")
    assert err.data["requirements"] == "Mesh2D->Mesh3D"
    assert c.core.jobs == {}


def test_no_worker_refusal_with_no_worker_at_all() -> None:
    err = refused(Core().submit("j", opts={}), "no-worker")
    assert err.data == {"requirements": "Edges->Mesh2D", "serves": []}


@pytest.mark.parametrize(
    "worker_reqs",
    [JobRequirements(EDGES), JobRequirements(EDGES, "Mesher", {"q": 1})],
    ids=["plain", "named-and-tagged"],
)
def test_a_busy_connected_worker_of_that_key_is_enough(worker_reqs: JobRequirements) -> None:
    c = Core()
    register(c, W1, worker_reqs, credit=0)  # connected, no credit: busy
    reply = c.submit("j", reqs=EDGES, opts={})
    assert isinstance(reply, p.Reply) and reply.data == 1
    assert row(c, "j")[0] is Status.QUEUED


def test_a_worker_of_another_name_is_not_enough() -> None:
    c = Core()
    register(c, W1, JobRequirements(EDGES, "A"))
    refused(c.submit("j", reqs=JobRequirements(EDGES, "B"), opts={}), "no-worker")


def test_once_the_last_worker_of_a_key_is_gone_submits_are_refused_again() -> None:
    c = Core()
    register(c, W1)
    register(c, W2)
    assert isinstance(c.submit("a", opts={}), p.Reply)
    c.goodbye(W1)
    assert isinstance(c.submit("b", opts={}), p.Reply), "W2 still serves it"
    c.advance(3.5)  # W2 is lost too
    refused(c.submit("c", opts={}), "no-worker")
    register(c, W1)  # a worker that comes back serves again
    assert isinstance(c.submit("c", opts={}), p.Reply)


def test_a_followed_submit_nobody_can_serve_is_answered_once_with_the_refusal() -> None:
    c = Core()
    job = p.SubmittedJob("j", JobRequirements(EDGES), ("data",), [b"x"])
    rid = c.send(p.SubmitRequest(c.rid(), [job], {"follow": 5.0}))
    (err,) = replies(c.flush())
    assert refused(err, "no-worker").rid == rid
    assert replies(c.advance(6.0)) == [], "nothing is held for it"


def test_a_catalog_that_can_start_a_worker_is_enough() -> None:
    c = with_core(Core(), catalog=Catalog(EDGES))
    assert isinstance(c.submit("j", reqs=EDGES, opts={}), p.Reply)
    err = refused(c.submit("v", reqs=VOLUME, opts={}), "no-worker")
    assert err.data == {"requirements": "Mesh2D->Mesh3D", "serves": ["Edges->Mesh2D"]}


def test_wait_for_worker_queues_a_job_nobody_serves() -> None:
    c = Core()
    reply = c.submit("j", opts={"wait_for_worker": True})
    assert isinstance(reply, p.Reply) and reply.data == 1
    register(c, W1)
    assert ids_sent(c.flush(), W1) == ["j"]


# ============================================================================ why a job is QUEUED


def test_a_queued_job_says_how_many_busy_workers_serve_it() -> None:
    c = Core()
    register(c, W1)
    c.submit("a", "b")
    c.flush()
    status, reason, _, _ = row(c, "b")
    assert status is Status.QUEUED and busy(reason, 1), reason
    register(c, W2, credit=0)
    register(c, W3, VOLUME, credit=0)  # serves something else: not counted
    assert busy(row(c, "b")[1], 2), row(c, "b")[1]


def test_a_queued_job_nobody_serves_says_it_waits_for_a_worker_to_connect() -> None:
    c = Core()
    c.submit("j", reqs=JobRequirements(EDGES, "Mesher"))
    assert row(c, "j")[:2] == (
        Status.QUEUED,
        "no connected worker serves Edges->Mesh2D named 'Mesher'; waiting for one to connect",
    )


def test_a_queued_job_the_factory_would_serve_gives_the_factorys_words() -> None:
    words = "worker file mesher.rw is quarantined: 5 failed starts (exit code 1)"
    c = with_core(Core(), catalog=Catalog(EDGES, words))
    c.submit("j", opts={})
    assert row(c, "j")[:2] == (Status.QUEUED, words)
    register(c, W1, credit=0)
    reason = row(c, "j")[1]
    assert busy(reason, 1) and reason.endswith(f"; {words}"), reason


def test_a_queued_job_the_factory_can_start_a_worker_for_says_so() -> None:
    c = with_core(Core(), catalog=Catalog(EDGES, None))
    c.submit("j", opts={})
    assert row(c, "j")[1] == "waiting for the factory to start a worker for it"


# ============================================================================ retries_on_error


def test_a_failed_job_runs_again_with_retries_on_error_and_finishes_on_attempt_2() -> None:
    c = Core(wants=lambda t: t in ("job.requeued", "job.failed"))
    register(c, W1)
    c.submit("j", opts={"retries_on_error": 1})
    c.flush()
    c.report(W1, started=["j"])
    assert c.core.jobs["j"].blobs == [b"j"], "kept while a retry on error is left"
    c.report(W1, failures=[("j", "ValueError: bad mesh", "tb 1")], credit=1)
    out = c.flush()
    assert [t for t, _ in out.events] == ["job.requeued"]
    assert jobs_sent(out) == {W1: [["j"]]}, "sent again"
    assert row(c, "j") == (Status.IN_PROGRESS, "", 2, name(W1))
    assert c.core.jobs["j"].evidence == [f"attempt 1 on {name(W1)}: ValueError: bad mesh"]
    c.report(W1, started=["j"])
    assert c.core.jobs["j"].blobs is None, "its last attempt: the contents can go"
    finish(c, W1, "j")
    assert row(c, "j")[0::2] == (Status.FINISHED, 2)
    assert c.results("j").data == [["j", Status.FINISHED, "", "", b"result of j"]]


def test_retries_on_error_exhausted_fails_with_every_attempt_in_the_reason() -> None:
    c = Core()
    c.submit("j", opts={"retries_on_error": 2, "wait_for_worker": True})
    for n, wid in enumerate((W1, W2, W3), start=1):
        register(c, wid)
        assert ids_sent(c.flush(), wid) == ["j"]
        c.report(wid, started=["j"], failures=[("j", f"boom {n}", f"tb {n}")])
        c.goodbye(wid)
    status, reason, attempt, _ = row(c, "j")
    assert (status, attempt) == (Status.FAILED, 3)
    assert reason == (
        f"boom 3 (earlier: attempt 1 on {name(W1)}: boom 1; attempt 2 on {name(W2)}: boom 2)"
    )
    assert c.results("j").data == [["j", Status.FAILED, reason, "tb 3", None]]
    assert c.core.jobs["j"].blobs is None, "a failed job's contents are let go"


def test_without_retries_on_error_a_failure_fails_the_job_at_once() -> None:
    c = Core(max_retries=2)  # lost-worker retries are another thing
    register(c, W1)
    c.submit("j")
    c.flush()
    c.report(W1, started=["j"], failures=[("j", "boom", "tb")], credit=1)
    assert jobs_sent(c.flush()) == {}
    assert row(c, "j")[:3] == (Status.FAILED, "boom", 1)
    assert c.core.jobs["j"].blobs is None


@pytest.mark.parametrize("bad", [-1, "3", 1.5, None, True])
def test_a_retries_on_error_that_is_not_a_count_means_none(bad: Any) -> None:
    c = Core()
    register(c, W1)
    c.submit("j", opts={"retries_on_error": bad, "wait_for_worker": True})
    c.flush()
    c.report(W1, failures=[("j", "boom", "")], credit=1)
    assert row(c, "j")[:3] == (Status.FAILED, "boom", 1)


# ============================================================================ drain


@pytest.mark.parametrize(
    ("journal", "code"),
    [(False, "broker-stopping"), (True, "broker-stopping-journaled")],
    ids=["no-journal", "journal"],
)
def test_a_draining_broker_refuses_new_submits(journal: bool, code: str) -> None:
    c = with_core(Core(), journal=journal)
    register(c, W1)
    c.core.drain()
    err = refused(c.submit("j"), code)
    assert "draining" in err.message
    assert c.core.jobs == {}


def test_a_draining_broker_starts_no_queued_job_and_lets_running_ones_finish() -> None:
    c = Core()
    register(c, W1, credit=2)
    c.submit("a", "b", "c", "d")
    assert ids_sent(c.flush(), W1) == ["a", "b"]
    c.report(W1, started=["a", "b"])
    assert c.core.running_count() == 2
    c.core.drain()
    assert row(c, "c")[:2] == (Status.QUEUED, "the broker is draining: no new job starts")

    finish(c, W1, "a")
    c.report(W1, credit=1)  # the worker asks for more: nothing new starts
    assert jobs_sent(c.flush()) == {}
    assert row(c, "a")[0] is Status.FINISHED, "a running job's result is still taken"
    assert c.core.running_count() == 1
    register(c, W2, credit=5)  # a worker that connects while draining gets nothing either
    assert jobs_sent(c.flush()) == {}
    c.report(W1, started=["b"], results={"b": b"r"}, credit=1)
    assert jobs_sent(c.flush()) == {}
    assert c.core.running_count() == 0
    assert [row(c, i)[0] for i in "abcd"] == [Status.FINISHED] * 2 + [Status.QUEUED] * 2


# ============================================================================ shutdown


@pytest.mark.parametrize(
    ("journal", "code", "says"),
    [
        (False, "broker-stopping", "they are lost"),
        (True, "broker-stopping-journaled", "the journal keeps them"),
    ],
    ids=["no-journal", "journal"],
)
def test_shutdown_answers_every_held_request_with_the_stopping_code(
    journal: bool, code: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    c = with_core(Core(), journal=journal)
    register(c, W1)
    c.submit("running", "queued")
    c.flush()
    c.report(W1, started=["running"])
    progress = c.send(p.ProgressRequest(c.rid(), "running", 0, 30.0, False))
    follow = c.follow("followed", 30.0)
    held = collect(c, "w", ["running", "queued"], wait=30.0)
    other = c.send(p.ProgressRequest(c.rid(), "queued", 0, 30.0, False), client=b"client-2")
    assert c.flush().clients == [], "all four are held"

    with caplog.at_level(logging.INFO, logger="remus.server.core"):
        out = c.core.shutdown()
    answers = {m.rid: m for m in replies(out, CLIENT)}
    assert set(answers) == {progress, follow, held}
    (other_answer,) = replies(out, b"client-2")
    assert other_answer.rid == other
    for err in (*answers.values(), other_answer):
        assert isinstance(err, p.Error) and err.code == code, err
    assert [m.reason for m in to_worker(out, W1, p.Shutdown)] == ["broker stopping"]
    assert "stopping with 2 jobs queued and 1 running" in caplog.text
    assert says in caplog.text
    assert replies(c.advance(40.0)) == [], "answered once, not again at their deadlines"


def test_shutdown_with_nothing_held_answers_nothing() -> None:
    c = Core()
    register(c, W1)
    out = c.core.shutdown()
    assert out.clients == []
    assert to_worker(out, W1, p.Shutdown) != []
