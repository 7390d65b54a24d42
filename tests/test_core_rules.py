"""The broker's rules without sockets: BrokerCore fed messages and times, its Outbox read back.

Time is whatever the test says it is. ``Core.advance`` ticks in steps shorter than the stall
threshold, so only the freebie test ever looks like a stalled broker loop. The harness lives in
tests/core_helpers.py.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Callable

import pytest
from core_helpers import (
    ALL_TOPICS,
    CLIENT,
    EDGES,
    FRAMED,
    VOLUME,
    W1,
    W2,
    W3,
    Core,
    as_received,
    collect,
    collected,
    finish,
    ids_sent,
    jobs_sent,
    progress_result,
    replies,
    result_values,
    run_a_little_of_everything,
    to_worker,
    topics,
)
from hypothesis import given
from hypothesis import strategies as st

from remus import protocol as p
from remus.server.records import JobRecord
from remus.types import IOType, JobRequirements, Status


@pytest.fixture
def make_core() -> Callable[..., Core]:
    return Core  # Core(wants=None, **ServerConfig options)


@pytest.fixture
def c() -> Core:
    return Core()


# ============================================================================ matching


def test_bare_io_type_job_goes_to_any_worker_of_that_io_type(c: Core) -> None:
    c.register(W1, VOLUME, credit=5)
    c.register(W2, JobRequirements(EDGES, "EdgeMesher", {"quality": "fine"}), credit=5)
    c.submit("j1", reqs=EDGES)
    out = c.flush()
    assert jobs_sent(out) == {W2: [["j1"]]}
    row = c.status_row("j1")  # in the worker's hands from dispatch on, whatever it reports
    assert (Status(row[1]), row[7]) == (Status.IN_PROGRESS, "EdgeMesher@host-a:100")


@pytest.mark.parametrize(
    "job_reqs",
    [
        JobRequirements(EDGES, "B"),
        JobRequirements(EDGES, "", {"site": "b"}),
        JobRequirements(EDGES, "B", {"site": "b"}),
    ],
    ids=["name", "tag", "name+tag"],
)
def test_job_naming_a_worker_or_tag_goes_only_to_a_matching_worker(
    c: Core, job_reqs: JobRequirements
) -> None:
    c.register(W1, JobRequirements(EDGES, "A", {"site": "a"}), credit=10)
    c.register(W2, JobRequirements(EDGES, "B", {"site": "b"}), credit=10)
    c.register(W3, JobRequirements(VOLUME, "B", {"site": "b"}), credit=10)
    for i in range(4):
        c.submit(f"j{i}", reqs=job_reqs)
    out = c.flush()
    assert jobs_sent(out) == {W2: [["j0", "j1", "j2", "j3"]]}


def test_job_for_a_name_no_worker_has_waits_for_one(c: Core) -> None:
    c.register(W1, JobRequirements(EDGES, "A"), credit=5)
    c.submit("j1", reqs=JobRequirements(EDGES, "B"))
    assert jobs_sent(c.flush()) == {}
    assert c.status("j1") is Status.QUEUED
    c.register(W2, JobRequirements(EDGES, "B"), credit=1)
    assert jobs_sent(c.flush()) == {W2: [["j1"]]}


def test_tags_compare_as_canonical_json(c: Core) -> None:
    c.register(W1, JobRequirements(EDGES, "", {"b": [1, 2], "a": "x"}), credit=1)
    c.register(W2, JobRequirements(EDGES, "", {"a": "x"}), credit=1)
    c.submit("j1", reqs=JobRequirements(EDGES, "", {"a": "x", "b": [1, 2]}))
    assert jobs_sent(c.flush()) == {W1: [["j1"]]}
    c.submit("j2", reqs=JobRequirements(EDGES, "", {"a": "x", "b": [2, 1]}))
    assert jobs_sent(c.flush()) == {}


def test_jobs_carry_their_requirements_and_contents(c: Core) -> None:
    reqs = JobRequirements(EDGES, "A", {"t": 1}, b"<file/>", "XML")
    c.register(W1, JobRequirements(EDGES, "A", {"t": 1}), credit=3)
    c.submit("j1", reqs=reqs, data=b"payload-1")
    c.submit("j2", reqs=EDGES, contents={"mesh": b"m", "params": b"p", "empty": b""})
    c.submit("j3", reqs=EDGES, contents={})
    (msg,) = to_worker(c.flush(), W1, p.Jobs)
    assert [(j.id, j.requirements, j.keys, list(j.values)) for j in msg.jobs] == [
        ("j1", reqs, ("data",), [b"payload-1"]),
        ("j2", JobRequirements(EDGES), ("mesh", "params", "empty"), [b"m", b"p", b""]),
        ("j3", JobRequirements(EDGES), (), []),
    ]


# ============================================================================ credit and order


def test_credit_bounds_the_jobs_and_they_go_in_one_message(c: Core) -> None:
    c.register(W1, credit=3)
    for i in range(1, 6):
        c.submit(f"j{i}")  # five separate requests in one pass
    out = c.flush()
    assert jobs_sent(out) == {W1: [["j1", "j2", "j3"]]}
    assert jobs_sent(c.flush()) == {}, "nothing more without more credit"
    statuses = [c.status(f"j{i}") for i in range(1, 6)]
    assert statuses == [Status.IN_PROGRESS] * 3 + [Status.QUEUED] * 2, "dispatched or not"
    c.report(W1, credit=1)
    assert jobs_sent(c.flush()) == {W1: [["j4"]]}
    c.report(W1, credit=5)
    assert jobs_sent(c.flush()) == {W1: [["j5"]]}
    c.submit("j6")
    c.submit("j7")
    assert jobs_sent(c.flush()) == {W1: [["j6", "j7"]]}, "left-over credit takes new jobs"


def test_credit_given_with_registration_pulls_queued_jobs(c: Core) -> None:
    c.submit("j1", "j2", "j3")
    assert jobs_sent(c.flush()) == {}
    c.register(W1, credit=2)
    assert jobs_sent(c.flush()) == {W1: [["j1", "j2"]]}


def test_worker_with_no_credit_gets_nothing(c: Core) -> None:
    c.register(W1, credit=0)
    c.submit("j1")
    assert jobs_sent(c.flush()) == {}
    assert c.core.demand() == {JobRequirements(EDGES): 1}


def test_oldest_job_first_across_requirements(c: Core) -> None:
    c.submit("old-named", reqs=JobRequirements(EDGES, "A"))
    c.submit("mid-plain", reqs=EDGES)
    c.submit("new-tagged", reqs=JobRequirements(EDGES, "", "t"))
    c.submit("newest-named", reqs=JobRequirements(EDGES, "A"))
    c.register(W1, JobRequirements(EDGES, "A", "t"), credit=1)
    got = ids_sent(c.flush(), W1)
    for _ in range(3):
        c.report(W1, credit=1)
        got += ids_sent(c.flush(), W1)
    assert got == ["old-named", "mid-plain", "new-tagged", "newest-named"]


def test_round_robin_between_two_ready_workers(c: Core) -> None:
    c.register(W1, credit=3)
    c.register(W2, credit=3)
    for i in range(6):
        c.submit(f"j{i}")
    sent = jobs_sent(c.flush())
    assert sent == {W1: [["j0", "j2", "j4"]], W2: [["j1", "j3", "j5"]]}


# ============================================================================ lifecycle


def test_started_is_recorded_on_a_job_in_progress_since_dispatch(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    assert c.status("j1") is Status.IN_PROGRESS
    assert c.core.jobs["j1"].started is False
    c.report(W1, started=["j1"])
    assert c.status("j1") is Status.IN_PROGRESS
    assert c.core.jobs["j1"].started is True


def test_progress_gets_sequence_numbers_and_since_filters(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    c.report(W1, started=["j1"], progress=[("j1", 10, "a"), ("j1", None, "b")])
    c.report(W1, progress=[("j1", 30, "c")])
    c.report(W1, progress=[("j1", 40, "d"), ("j1", 100, "e")])
    reply = c.progress("j1")
    assert reply.data["status"] == Status.IN_PROGRESS
    assert reply.data["updates"] == [
        [1, 10, "a"],
        [2, None, "b"],
        [3, 30, "c"],
        [4, 40, "d"],
        [5, 100, "e"],
    ]
    assert "dropped" not in reply.data and "reason" not in reply.data
    assert c.progress("j1", since=3).data["updates"] == [[4, 40, "d"], [5, 100, "e"]]
    assert c.progress("j1", since=5).data["updates"] == []
    assert c.progress("j1", since=99).data["updates"] == []
    row = c.status_row("j1")
    assert row[:5] == ["j1", Status.IN_PROGRESS, 100, "e", 5]


def test_progress_for_an_unknown_job_is_invalid(c: Core) -> None:
    assert c.progress("nope").data == {"status": Status.INVALID, "updates": []}
    assert c.status("nope") is Status.INVALID


def test_progress_request_with_wait_is_held_until_an_update(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    c.report(W1, started=["j1"], progress=[("j1", 10, "a")])
    rid = c.send(p.ProgressRequest(c.rid(), "j1", since=1, wait=5.0))
    assert replies(c.flush()) == []
    assert replies(c.advance(2.0, alive=[W1])) == [], "held: nothing new yet"
    c.report(W1, progress=[("j1", 20, "b"), ("j1", 30, "c")])
    (reply,) = replies(c.flush())
    assert reply.rid == rid
    assert reply.data["updates"] == [[2, 20, "b"], [3, 30, "c"]]
    assert replies(c.advance(6.0, alive=[W1])) == [], "answered once, not again at its deadline"


def test_progress_request_with_wait_is_answered_when_the_job_ends(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    c.report(W1, started=["j1"])
    rid = c.send(p.ProgressRequest(c.rid(), "j1", since=0, wait=5.0, with_result=True))
    assert replies(c.flush()) == []
    c.report(W1, results={"j1": b"the result"})
    (reply,) = replies(c.flush())
    assert reply.rid == rid
    assert reply.data["status"] == Status.FINISHED
    assert reply.data["result"] == b"the result", "a small result travels inline"
    assert list(reply.frames) == []


def test_progress_request_with_wait_is_answered_at_its_deadline(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    rid = c.send(p.ProgressRequest(c.rid(), "j1", since=0, wait=2.0))
    assert replies(c.advance(1.75, alive=[W1])) == []
    (reply,) = replies(c.advance(2.25, alive=[W1]))
    assert reply.rid == rid
    assert reply.data == {"status": Status.IN_PROGRESS, "updates": []}, "dispatched to W1"


def test_progress_wait_is_capped_by_max_wait(make_core: Callable[..., Core]) -> None:
    c = make_core(max_wait=1.0)
    c.submit("j1")
    c.send(p.ProgressRequest(c.rid(), "j1", wait=1000.0))
    assert replies(c.advance(0.75)) == []
    assert len(replies(c.advance(1.25))) == 1


def test_progress_request_without_news_but_no_wait_is_answered_at_once(c: Core) -> None:
    c.submit("j1")
    assert c.progress("j1").data == {"status": Status.QUEUED, "updates": []}


def test_a_nan_wait_does_not_block_other_deadlines(c: Core) -> None:
    c.submit("j1")
    c.send(p.ProgressRequest(c.rid(), "j1", wait=math.nan))
    rid = c.send(p.ProgressRequest(c.rid(), "j1", wait=1.0))
    answered = [m.rid for m in replies(c.advance(2.0))]
    assert rid in answered


def test_result_makes_a_job_finished(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    c.report(W1, started=["j1"], progress=[("j1", 50, "half")], results={"j1": b"mesh"})
    assert c.status("j1") is Status.FINISHED
    reply = c.results("j1", "unknown")
    assert reply.data == [
        ["j1", Status.FINISHED, "", "", b"mesh"],
        ["unknown", Status.INVALID, "", "", None],
    ]
    assert list(reply.frames) == []
    prog = c.progress("j1", with_result=True)
    assert prog.data["updates"] == [[1, 50, "half"]]
    assert prog.data["result"] == b"mesh" and prog.data["reason"] == ""
    assert list(prog.frames) == []
    assert "result" not in c.progress("j1").data, "only with_result asks for it"
    assert c.core.counters["finished"] == 1


def test_failure_makes_a_job_failed_with_reason_and_traceback(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    c.report(W1, started=["j1"], failures=[("j1", "job failed", "Traceback: ...")])
    assert c.status("j1") is Status.FAILED
    assert c.status_row("j1")[5] == "job failed"
    reply = c.results("j1")
    assert reply.data == [["j1", Status.FAILED, "job failed", "Traceback: ...", None]]
    assert list(reply.frames) == []
    prog = c.progress("j1", with_result=True)
    assert prog.data["reason"] == "job failed" and prog.data["traceback"] == "Traceback: ..."
    assert "result" not in prog.data


def test_a_result_or_failure_from_another_worker_is_ignored(c: Core) -> None:
    c.register(W1)
    c.register(W2)
    c.submit("j1")
    c.flush()
    c.report(W2, started=["j1"], progress=[("j1", 5, "x")], failures=[("j1", "no", "")])
    assert c.status("j1") is Status.IN_PROGRESS, "still W1's"
    assert c.core.jobs["j1"].started is False, "only its holder's word counts"
    assert c.progress("j1").data["updates"] == []
    c.report(W2, results={"j1": b"not mine"})
    assert c.status("j1") is Status.IN_PROGRESS
    assert c.core.jobs["j1"].worker == W1
    assert c.core.counters["dropped_results"] == 1


# ======================================================================== inline and framed bulk


def test_large_contents_cross_the_broker_as_the_very_frames_that_came_in(c: Core) -> None:
    big, bigger = b"b" * FRAMED, b"B" * (3 * p.INLINE_MAX)
    contents = {"small": b"s", "big": big, "edge": b"e" * p.INLINE_MAX, "bigger": bigger}
    job = p.SubmittedJob("j1", JobRequirements(EDGES), tuple(contents), list(contents.values()))
    frames = as_received(p.encode(p.SubmitRequest(c.rid(), [job], {"wait_for_worker": True})))
    assert len(frames) == 5, "two contents over INLINE_MAX: two frames"
    c.receive(frames)
    c.register(W1)
    (jobs,) = to_worker(c.flush(), W1, p.Jobs)
    (job,) = jobs.jobs
    assert job.keys == ("small", "big", "edge", "bigger")
    assert job.values[1] is frames[3] and job.values[3] is frames[4], "no copy in the broker"
    wire = p.encode(jobs)
    assert len(wire) == 5 and wire[3] is frames[3] and wire[4] is frames[4], "no copy going out"
    body = p.unpack(wire[2])
    assert body["jobs"] == [
        ["j1", 0, [["small", b"s"], ["big", None], ["edge", b"e" * p.INLINE_MAX], ["bigger", None]]]
    ]
    back = p.decode(wire, p.BROKER_TO_WORKER)
    assert [bytes(v) for v in back.jobs[0].values] == [b"s", big, b"e" * p.INLINE_MAX, bigger]


def test_a_large_result_is_answered_as_the_very_frame_the_worker_sent(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    frames = as_received(p.encode(p.Report(started=["j1"], results=[("j1", b"r" * FRAMED)])))
    assert len(frames) == 4
    c.deliver(W1, frames)
    assert c.status("j1") is Status.FINISHED
    reply = c.results("j1")
    assert reply.data == [["j1", Status.FINISHED, "", "", None]]
    assert len(reply.frames) == 1 and reply.frames[0] is frames[3]
    assert result_values(reply)["j1"] is frames[3]
    prog = c.progress("j1", with_result=True)
    assert prog.data["result"] is None and progress_result(prog) is frames[3]
    collect(c, "w", ["j1"])
    (reply,) = replies(c.flush())
    assert reply.data["results"] == [["j1", Status.FINISHED, "", "", None]]
    assert len(reply.frames) == 1 and reply.frames[0] is frames[3]


@pytest.mark.parametrize("size", [0, 1, p.INLINE_MAX - 1, p.INLINE_MAX, FRAMED, 4 * p.INLINE_MAX])
def test_results_travel_inline_up_to_inline_max(c: Core, size: int) -> None:
    result, framed = bytes(range(256)) * (size // 256) + b"x" * (size % 256), size > p.INLINE_MAX
    c.register(W1)
    c.submit("j1")
    c.flush()
    c.report(W1, results={"j1": result})
    reply = c.results("j1")
    slot = reply.data[0][4]
    prog = c.progress("j1", with_result=True)
    if framed:
        assert slot is None and list(reply.frames) == [result]
        assert prog.data["result"] is None and list(prog.frames) == [result]
    else:
        assert slot == result and list(reply.frames) == []
        assert prog.data["result"] == result and list(prog.frames) == []
    assert bytes(result_values(reply)["j1"]) == result
    assert bytes(progress_result(prog)) == result


def test_result_rows_take_frames_in_row_order_and_only_for_large_results(c: Core) -> None:
    big1, big2 = b"1" * FRAMED, b"2" * (FRAMED + 7)
    c.register(W1, credit=6)
    c.submit("big1", "small", "failed", "big2", "running", "empty")
    c.flush()
    c.report(
        W1,
        started=["running"],
        results={"big2": big2, "small": b"s", "big1": big1, "empty": b""},
        failures=[("failed", "no", "tb")],
    )
    ids = ["big2", "unknown", "running", "small", "failed", "big1", "empty", "big2"]
    reply = c.results(*ids)
    assert [r[0] for r in reply.data] == ids
    # FINISHED, INVALID, IN_PROGRESS, FINISHED, FAILED, FINISHED, FINISHED, FINISHED
    assert [r[1] for r in reply.data] == [3, 0, 2, 3, 4, 3, 3, 3]
    assert [r[4] for r in reply.data] == [None, None, None, b"s", None, None, b"", None]
    assert list(reply.frames) == [big2, big1, big2]
    values = [big2, None, None, b"s", None, big1, b"", big2]
    assert result_values(reply) == dict(zip(ids, values, strict=True))


def test_max_queued_bytes_counts_inline_and_framed_contents_alike(
    make_core: Callable[..., Core],
) -> None:
    c = make_core(max_queued_bytes=FRAMED + 10)
    err = c.submit("big", data=b"x" * (FRAMED + 11))
    assert isinstance(err, p.Error) and err.code == "busy"
    assert isinstance(c.submit("big", data=b"x" * FRAMED), p.Reply)
    assert isinstance(c.submit("small", contents={"a": b"y" * 4, "b": b"z" * 6}), p.Reply)
    err = c.submit("one-more", data=b"!")
    assert isinstance(err, p.Error) and err.code == "busy"
    c.register(W1, credit=1)  # "big" leaves the queue, and its bytes with it
    assert isinstance(c.submit("one-more", data=b"x" * FRAMED), p.Reply)


# ============================================================================ submit and follow


@pytest.mark.parametrize("size", [5, FRAMED], ids=["inline", "framed"])
def test_submit_with_follow_is_answered_with_the_result(c: Core, size: int) -> None:
    c.register(W1)
    rid = c.follow("j1", 10.0)
    out = c.flush()
    assert jobs_sent(out) == {W1: [["j1"]]}
    assert replies(out) == [], "held until there is news"
    c.report(W1, started=["j1"], progress=[("j1", 50, "half")])
    (reply,) = replies(c.flush())
    assert reply.rid == rid and reply.data["updates"] == [[1, 50, "half"]]
    assert "result" not in reply.data
    result = b"r" * size
    c.report(W1, results={"j1": result})
    assert replies(c.flush()) == [], "a followed submit is answered once"
    reply = c.progress("j1", since=1, with_result=True)
    assert reply.data["status"] == Status.FINISHED and bytes(progress_result(reply)) == result


def test_submit_with_follow_of_a_job_that_finishes_first_carries_its_result(c: Core) -> None:
    c.register(W1)
    rid = c.follow("j1", 10.0)
    c.flush()
    c.report(W1, started=["j1"], results={"j1": b"r" * FRAMED})
    (reply,) = replies(c.flush())
    assert reply.rid == rid
    assert reply.data["status"] == Status.FINISHED and reply.data["reason"] == ""
    assert reply.data["result"] is None and list(reply.frames) == [b"r" * FRAMED]


@pytest.mark.parametrize("wait", [0, 2.0], ids=["at-once", "at-its-deadline"])
def test_submit_with_follow_of_a_job_with_no_news_is_answered(c: Core, wait: float) -> None:
    rid = c.follow("j1", wait)
    if wait:
        assert replies(c.advance(wait - 0.25)) == []
    (reply,) = replies(c.advance(wait + 0.25))
    assert reply.rid == rid and reply.data == {"status": Status.QUEUED, "updates": []}
    assert c.status_row("j1")[5].startswith("no connected worker serves Edges->Mesh2D")


def test_a_refused_submit_with_follow_is_answered_once_with_the_error(c: Core) -> None:
    c.submit("j1")
    rid = c.follow("j1", 5.0)
    (err,) = replies(c.flush())
    assert isinstance(err, p.Error) and err.rid == rid and err.code == "duplicate-id"
    assert replies(c.advance(6.0)) == []


# ============================================================================ terminate


def test_terminate_a_queued_job(c: Core) -> None:
    c.submit("j1", "j2")
    rows = c.terminate("j1")
    assert rows[0][:2] == ["j1", Status.TERMINATED]
    assert c.terminate("j1")[0][:2] == ["j1", Status.TERMINATED], "a second terminate is harmless"
    assert c.core.demand() == {JobRequirements(EDGES): 1}
    c.register(W1, credit=5)
    out = c.flush()
    assert jobs_sent(out) == {W1: [["j2"]]}, "a terminated job is never assigned"
    assert to_worker(out, W1, p.Cancel) == []
    assert c.status("j1") is Status.TERMINATED
    assert c.core.matcher.queued == 0


def test_terminate_a_running_job_cancels_it_and_drops_its_late_result(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    c.report(W1, started=["j1"], progress=[("j1", 10, "a")])
    rows = c.terminate("j1")
    assert rows[0][:2] == ["j1", Status.TERMINATED]
    out = c.flush()
    assert [m.ids for m in to_worker(out, W1, p.Cancel)] == [["j1"]]
    c.report(W1, progress=[("j1", 90, "late")], results={"j1": b"too late"}, credit=1)
    assert c.status("j1") is Status.TERMINATED
    assert c.core.counters["dropped_results"] == 1
    assert c.progress("j1").data["updates"] == [[1, 10, "a"]]
    assert c.results("j1").data == [["j1", Status.TERMINATED, "terminated by a client", "", None]]


def test_terminate_an_unknown_or_finished_job_changes_nothing(c: Core) -> None:
    c.register(W1)
    c.submit("j1")
    c.flush()
    c.report(W1, results={"j1": b"r"})
    rows = c.terminate("j1", "nope")
    assert [r[:2] for r in rows] == [["j1", Status.FINISHED], ["nope", Status.INVALID]]
    assert to_worker(c.flush(), W1, p.Cancel) == []


def test_terminate_of_a_job_assigned_in_the_same_pass_returns_the_credit(c: Core) -> None:
    c.register(W1, credit=1)
    c.submit("j1")  # assigned to W1 now, sent at flush
    c.terminate("j1")
    c.submit("j2")  # the returned credit takes the next job
    out = c.flush()
    assert jobs_sent(out) == {W1: [["j2"]]}
    assert to_worker(out, W1, p.Cancel) == [], "the worker never saw j1: nothing to cancel"
    assert c.status("j1") is Status.TERMINATED


def test_terminate_in_the_same_pass_pulls_a_queued_job(c: Core) -> None:
    c.register(W1, credit=1)
    c.submit("j1", "j2")
    c.terminate("j1")
    assert jobs_sent(c.flush()) == {W1: [["j2"]]}


# ============================================================================ lost workers


def test_a_silent_worker_is_lost_started_jobs_fail_unstarted_ones_move(
    make_core: Callable[..., Core],
) -> None:
    c = make_core(wants=lambda t: t.startswith("worker."))
    c.register(W1, credit=2, heartbeat=1.0)
    c.submit("started", "unstarted")
    assert jobs_sent(c.flush()) == {W1: [["started", "unstarted"]]}
    c.report(W1, started=["started"])
    c.register(W2, credit=1, heartbeat=1.0, pid=200)
    out = c.advance(2.75, alive=[W2])
    assert "worker.lost" not in topics(out), "three intervals have not passed yet"
    out = c.advance(3.5, alive=[W2])
    assert topics(out).count("worker.lost") == 1
    assert c.status("started") is Status.FAILED, "no retry left: FAILED, never EXPIRED"
    assert "stopped heartbeating" in c.status_row("started")[5]
    assert c.status_row("started")[7] == "", "no worker holds it any more"
    assert jobs_sent(out) == {W2: [["unstarted"]]}, "requeued, and W2 took it in that pass"
    row = c.status_row("unstarted")
    assert (Status(row[1]), row[6], row[7]) == (Status.IN_PROGRESS, 1, "worker@host-a:200")
    assert W1 not in c.core.workers
    c.report(W2, started=["unstarted"], results={"unstarted": b"ok"})
    assert c.status("unstarted") is Status.FINISHED


def test_any_message_keeps_a_worker_alive(c: Core) -> None:
    c.register(W1, heartbeat=1.0, credit=0)
    for t in range(1, 20):
        c.advance(t * 0.5)
        if t % 4 == 0:
            c.report(W1)  # an empty report is a sign of life too
    assert W1 in c.core.workers


def test_the_broker_heartbeats_its_workers(c: Core) -> None:
    c.register(W1, heartbeat=1.0, credit=0)
    c.flush()  # the answer to the registration itself is another rule
    out = c.advance(3.0, alive=[W1])
    assert 2 <= len(to_worker(out, W1, p.Heartbeat)) <= 3


def test_freebie_a_stalled_broker_blames_no_worker(make_core: Callable[..., Core]) -> None:
    c = make_core(wants=lambda t: t.startswith("worker."), stall_threshold=1.0)
    c.register(W1, credit=1, heartbeat=1.0)
    c.submit("j1")
    c.flush()
    c.report(W1, started=["j1"])
    c.advance(0.5)
    out = c.tick(30.0)  # the loop itself was away for 29.5 s (SIGSTOP, laptop lid, ...)
    assert "worker.lost" not in topics(out)
    assert W1 in c.core.workers
    assert c.status("j1") is Status.IN_PROGRESS
    # the silence is forgiven, not ignored: the worker's clock restarted at the stall
    out = c.advance(32.75)
    assert "worker.lost" not in topics(out)
    out = c.advance(33.5)
    assert topics(out) == ["worker.lost"]
    assert c.status("j1") is Status.FAILED


def test_a_late_tick_below_the_stall_threshold_still_loses_silent_workers(
    make_core: Callable[..., Core],
) -> None:
    c = make_core(stall_threshold=5.0)
    c.register(W1, heartbeat=0.5, credit=0)
    c.tick(1.0)
    c.tick(2.0)
    assert W1 not in c.core.workers


def test_goodbye_requeues_unstarted_jobs_and_fails_started_ones(
    make_core: Callable[..., Core],
) -> None:
    c = make_core(wants=lambda t: t == "worker.exited")
    c.register(W1, credit=2)
    c.submit("started", "unstarted")
    c.flush()
    c.report(W1, started=["started"])
    c.goodbye(W1)
    out = c.flush()
    assert topics(out) == ["worker.exited"]
    assert c.status("started") is Status.FAILED
    assert c.status("unstarted") is Status.QUEUED, "dispatched, never started: back in the queue"
    assert c.core.jobs["unstarted"].attempt == 1
    assert c.core.demand() == {JobRequirements(EDGES): 1}
    c.register(W2, credit=1)
    assert jobs_sent(c.flush()) == {W2: [["unstarted"]]}


def test_goodbye_from_an_unknown_worker_is_ignored(c: Core) -> None:
    c.goodbye(W1)
    out = c.flush()
    assert out.workers == [] and out.clients == []


@pytest.mark.parametrize("kind", ["report", "heartbeat"])
def test_unknown_worker_is_told_to_register(c: Core, kind: str) -> None:
    if kind == "report":
        c.report(W1, results={"j1": b"x"})
    else:
        c.heartbeat(W1)
    out = c.flush()
    ((wid, err),) = out.workers
    assert wid == W1 and isinstance(err, p.Error)
    assert err.code == "unknown-worker" and "register" in err.message
    assert c.core.workers == {}


def test_a_lost_worker_that_comes_back_is_told_to_register(c: Core) -> None:
    c.register(W1, heartbeat=1.0, credit=0)
    c.advance(4.0)
    assert W1 not in c.core.workers
    c.heartbeat(W1)
    assert [m.code for m in to_worker(c.flush(), W1, p.Error)] == ["unknown-worker"]


def test_requeued_jobs_keep_their_age_order(c: Core) -> None:
    ids = [f"job-{i:02d}" for i in range(12)]  # 1 in 12! chance the bug goes unseen
    c.register(W1, credit=len(ids))
    c.submit(*ids)
    c.flush()
    c.goodbye(W1)
    c.register(W2, credit=len(ids))
    assert ids_sent(c.flush(), W2) == ids


# ============================================================================ re-register


def test_reregister_keeps_held_jobs_and_requeues_the_rest(c: Core) -> None:
    c.register(W1, credit=3)
    c.submit("held-started", "held-waiting", "lost-in-transit")
    c.flush()
    c.report(W1, started=["held-started"])
    c.register(W2, credit=1)
    c.register(W1, credit=0, held=["held-started", "held-waiting"])  # same identity: a reconnect
    out = c.flush()
    assert jobs_sent(out) == {W2: [["lost-in-transit"]]}
    assert c.status("held-started") is Status.IN_PROGRESS
    assert c.status("held-waiting") is Status.IN_PROGRESS, "W1 holds it: still in its hands"
    c.report(W1, started=["held-waiting"], results={"held-started": b"r"})
    assert c.status("held-waiting") is Status.IN_PROGRESS, "still W1's job"
    assert c.status("held-started") is Status.FINISHED


def test_reregister_with_credit_takes_its_requeued_job_back(c: Core) -> None:
    c.register(W1, credit=1)
    c.submit("j1")
    c.flush()
    c.register(W1, credit=1, held=[])  # the jobs message was lost; the worker still wants one
    assert jobs_sent(c.flush()) == {W1: [["j1"]]}


def test_reregister_with_other_requirements_is_a_new_worker(c: Core) -> None:
    c.register(W1, credit=1)
    c.submit("j1")
    c.flush()
    c.report(W1, started=["j1"])
    c.register(W1, VOLUME, credit=1)
    assert c.status("j1") is Status.FAILED
    assert c.core.workers[W1].reqs == JobRequirements(VOLUME)


def test_reregister_never_exceeds_the_declared_credit(c: Core) -> None:
    c.register(W1, credit=4)
    c.submit("j1", "j2")  # W1 keeps 2 credit and stays ready
    assert jobs_sent(c.flush()) == {W1: [["j1", "j2"]]}
    # that Jobs message was lost; the worker reconnects still wanting 4 (credit sent - received)
    c.register(W1, credit=4, held=[])
    c.submit("j3", "j4", "j5", "j6")
    assert len(ids_sent(c.flush(), W1)) <= 4


def test_reregister_in_the_same_pass_does_not_send_a_job_twice(c: Core) -> None:
    c.register(W1, credit=2)
    c.submit("j1")
    c.register(W1, credit=2, held=[])
    sent = ids_sent(c.flush(), W1)
    assert sorted(sent) == sorted(set(sent))


def test_reregister_without_a_started_job_fails_it_with_no_retry_left(c: Core) -> None:
    c.register(W1, credit=1)
    c.submit("j1")
    c.flush()
    c.report(W1, started=["j1"])
    c.register(W1, credit=1, held=[])
    assert c.status("j1") is Status.FAILED, "max_retries=0: FAILED, never EXPIRED"
    assert "no longer held the job when it reconnected" in c.status_row("j1")[5]
    assert jobs_sent(c.flush()) == {}, "a failed job is not sent again"


# ============================================================================ memory bounds


def test_finished_jobs_are_forgotten_after_result_ttl(make_core: Callable[..., Core]) -> None:
    c = make_core(result_ttl=10.0)
    c.register(W1, credit=3, heartbeat=100.0)
    c.submit("done", "failed", "running")
    c.flush()
    c.advance(1.0)
    c.report(W1, started=["running"], results={"done": b"r"}, failures=[("failed", "x", "")])
    c.advance(10.75)
    assert c.status("done") is Status.FINISHED
    assert c.status("failed") is Status.FAILED
    c.advance(11.25)
    assert c.status("done") is Status.INVALID
    assert c.status("failed") is Status.INVALID
    assert c.status("running") is Status.IN_PROGRESS, "only finished jobs are forgotten"
    assert c.results("done").data == [["done", Status.INVALID, "", "", None]]
    assert set(c.core.jobs) == {"running"}
    c.submit("done")  # a forgotten id may be used again
    assert c.status("done") is Status.QUEUED


def test_progress_history_is_bounded_and_says_what_it_dropped(
    make_core: Callable[..., Core],
) -> None:
    c = make_core(max_progress_history=3)
    c.register(W1)
    c.submit("j1")
    c.flush()
    c.report(W1, progress=[("j1", v, f"m{v}") for v in range(1, 6)])
    reply = c.progress("j1")
    assert reply.data["updates"] == [[3, 3, "m3"], [4, 4, "m4"], [5, 5, "m5"]]
    assert reply.data["dropped"] == 2
    reply = c.progress("j1", since=1)
    assert reply.data["dropped"] == 1
    reply = c.progress("j1", since=3)
    assert reply.data["updates"] == [[4, 4, "m4"], [5, 5, "m5"]]
    assert "dropped" not in reply.data
    assert c.status_row("j1")[4] == 5, "the sequence keeps counting"


# ============================================================================ collect


def test_collect_hands_each_result_over_once_in_finish_order(c: Core) -> None:
    c.register(W1, credit=4)
    c.submit("j1", "j2", "j3", "j4")
    c.flush()
    rid = collect(c, "w", ["j1", "j2", "j3", "j4"])
    (reply,) = replies(c.flush())
    assert reply.rid == rid and collected(reply) == ([], 4)
    finish(c, W1, "j3")
    rid = collect(c, "w")
    (reply,) = replies(c.flush())
    assert collected(reply) == (["j3"], 3)
    rid = collect(c, "w", wait=10.0)
    assert replies(c.flush()) == [], "held until one is ready"
    finish(c, W1, "j4", "j1")
    (reply,) = replies(c.flush())
    assert reply.rid == rid and collected(reply) == (["j4", "j1"], 1)
    collect(c, "w", wait=10.0)
    c.report(W1, failures=[("j2", "broke", "tb")])
    (reply,) = replies(c.flush())
    assert reply.data == {"results": [["j2", Status.FAILED, "broke", "tb", None]], "remaining": 0}
    rid = collect(c, "w", wait=10.0)
    (reply,) = replies(c.flush())
    assert reply.rid == rid and collected(reply) == ([], 0), "nothing left to wait for"


def test_collect_of_jobs_already_over_and_unknown_ids(c: Core) -> None:
    c.register(W1, credit=2)
    c.submit("j1", "j2")
    c.flush()
    finish(c, W1, "j1")
    collect(c, "w", ["j1", "nope", "j2"], wait=5.0)
    (reply,) = replies(c.flush())
    ids, remaining = collected(reply)
    assert ids == ["j1", "nope"] and remaining == 1
    assert reply.data["results"][1] == ["nope", Status.INVALID, "", "", None]


def test_collect_respects_max(c: Core) -> None:
    c.register(W1, credit=3)
    c.submit("j1", "j2", "j3")
    c.flush()
    finish(c, W1, "j1", "j2", "j3")
    collect(c, "w", ["j1", "j2", "j3"], limit=2)
    assert collected(replies(c.flush())[0]) == (["j1", "j2"], 1)
    collect(c, "w", limit=2)
    assert collected(replies(c.flush())[0]) == (["j3"], 0)


def test_collect_held_reply_is_answered_at_its_deadline(c: Core) -> None:
    c.submit("j1")
    rid = collect(c, "w", ["j1"], wait=2.0)
    assert replies(c.flush()) == []
    assert replies(c.advance(1.75)) == []
    (reply,) = replies(c.advance(2.25))
    assert reply.rid == rid and collected(reply) == ([], 1)


def test_collect_watch_lists_are_per_client_and_name(c: Core) -> None:
    c.register(W1, credit=2)
    c.submit("j1", "j2")
    c.flush()
    collect(c, "a", ["j1"], wait=5.0)
    collect(c, "b", ["j1", "j2"], wait=5.0)
    c.send(p.CollectRequest(c.rid(), "a", ["j2"], 5.0), client=b"client-2")
    assert c.flush().clients == []
    finish(c, W1, "j2")
    out = c.flush()
    got = {(cl, tuple(collected(m)[0])) for cl, m in out.clients}
    assert got == {(CLIENT, ("j2",)), (b"client-2", ("j2",))}


def test_collect_adding_a_pending_job_twice_delivers_it_once(c: Core) -> None:
    c.register(W1, credit=1)
    c.submit("j1")
    c.flush()
    collect(c, "w", ["j1", "j1"])
    collect(c, "w", ["j1"])
    c.flush()
    finish(c, W1, "j1")
    collect(c, "w", wait=1.0)
    assert collected(replies(c.flush())[0]) == (["j1"], 0)


def test_emptied_watch_lists_cost_no_memory(c: Core) -> None:
    """A watch list is dropped as soon as nothing remains on it: a client that uses a new
    watch name for every batch must not grow the broker (seen from outside: its memory)."""
    c.register(W1)
    c.submit("j1")
    c.flush()
    finish(c, W1, "j1")

    def churn(names: range) -> None:
        for i in names:
            collect(c, f"watch-{i}", ["j1"])
            (reply,) = replies(c.flush())
            assert collected(reply) == (["j1"], 0)

    churn(range(200))  # warm up: caches, free lists, dict sizes
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        churn(range(200, 3200))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # a kept watch list costs well over 500 bytes (its record, set, deque, key and name)
    assert grown < 3000 * 50, f"3000 emptied watch lists left {grown} bytes behind"


def test_an_unused_watch_list_is_forgotten_after_result_ttl(
    make_core: Callable[..., Core],
) -> None:
    c = make_core(result_ttl=10.0)
    c.register(W1, credit=1, heartbeat=100.0)
    c.submit("j1")
    c.flush()
    collect(c, "idle", ["j1"])
    collect(c, "busy", ["j1"])
    assert [collected(m) for m in replies(c.flush())] == [([], 1), ([], 1)]
    c.advance(5.0)
    collect(c, "busy")  # a request keeps a watch list alive
    assert [collected(m) for m in replies(c.flush())] == [([], 1)]
    c.advance(12.0)
    finish(c, W1, "j1")
    c.flush()
    collect(c, "idle")
    collect(c, "busy")
    idle, busy = replies(c.flush())
    assert collected(idle) == ([], 0), "forgotten: j1 is no longer on it"
    assert collected(busy) == (["j1"], 0)


# ============================================================================ refusals


def test_duplicate_job_ids_are_refused_whole(c: Core) -> None:
    assert isinstance(c.submit("j1"), p.Reply)
    for ids in (("j1",), ("j2", "j1"), ("j3", "j3")):
        err = c.submit(*ids)
        assert isinstance(err, p.Error) and err.code == "duplicate-id", ids
        assert ids[-1] in err.message
    assert set(c.core.jobs) == {"j1"}, "nothing of a refused batch is kept"
    assert c.core.counters["submitted"] == 1


def test_submit_reply_counts_the_jobs(c: Core) -> None:
    reply = c.submit("a", "b", "c")
    assert isinstance(reply, p.Reply) and reply.data == 3


def test_max_queued_jobs_makes_the_broker_busy(make_core: Callable[..., Core]) -> None:
    c = make_core(max_queued_jobs=2)
    err = c.submit("a", "b", "c")
    assert isinstance(err, p.Error) and err.code == "busy"
    assert "max_queued_jobs" in err.message
    assert c.core.jobs == {}
    assert isinstance(c.submit("a", "b"), p.Reply)
    err = c.submit("c")
    assert isinstance(err, p.Error) and err.code == "busy"
    c.register(W1, credit=1)  # one leaves the queue: room for one more
    assert isinstance(c.submit("c"), p.Reply)


def test_a_worker_message_on_the_client_side_is_refused(c: Core) -> None:
    c.core.client_message(CLIENT, p.Heartbeat(), 0.0)
    c.core.worker_message(W1, p.StatusRequest(1, []), 0.0)
    out = c.flush()
    assert [m.code for m in replies(out)] == ["unknown-command"]
    assert [m.code for _, m in out.workers] == ["unknown-command"]


# ============================================================================ events and demand


def test_every_lifecycle_event_when_everything_is_wanted(make_core: Callable[..., Core]) -> None:
    c = make_core(wants=lambda topic: True)
    events = run_a_little_of_everything(c).events
    assert {t for t, _ in events} == ALL_TOPICS
    progress = next(payload for t, payload in events if t == "job.progress")
    assert progress["job"] == "ok" and progress["value"] == 50 and progress["seq"] == 1
    assert progress["io_type"] == ["Edges", "Mesh2D"]
    lost = next(payload for t, payload in events if t == "worker.lost")
    assert lost["pid"] == 100 and "reason" in lost


@pytest.mark.parametrize("prefix", ["", "job.", "worker.", "job.finished", "nothing"])
def test_events_only_for_wanted_topics(make_core: Callable[..., Core], prefix: str) -> None:
    asked: set[str] = set()

    def wants(topic: str) -> bool:
        asked.add(topic)
        return topic.startswith(prefix)

    c = make_core(wants=wants)
    got = {t for t, _ in run_a_little_of_everything(c).events}
    assert got == {t for t in ALL_TOPICS if t.startswith(prefix)}
    assert asked <= ALL_TOPICS


def test_no_events_by_default(c: Core) -> None:
    assert run_a_little_of_everything(c).events == []


def test_demand_reports_queued_jobs_no_ready_worker_can_take(c: Core) -> None:
    named = JobRequirements(EDGES, "A")
    assert c.core.demand() == {}
    c.register(W1, VOLUME, credit=5)
    c.submit("e1", "e2")
    c.submit("n1", reqs=named)
    c.submit("v1", reqs=VOLUME)  # W1 takes it at once
    assert c.core.demand() == {JobRequirements(EDGES): 2, named: 1}
    c.register(W2, EDGES, credit=5)
    assert c.core.demand() == {named: 1}
    c.terminate("n1")
    assert c.core.demand() == {}


def test_can_mesh_io_types_and_requirements_reflect_connected_workers(c: Core) -> None:
    named = JobRequirements(EDGES, "A", "t")
    assert c.ask(p.CanMeshRequest(c.rid(), JobRequirements(EDGES))).data is False
    c.register(W1, named, credit=0)
    c.register(W2, VOLUME, credit=0)
    assert c.ask(p.CanMeshRequest(c.rid(), JobRequirements(EDGES))).data is True
    assert c.ask(p.CanMeshRequest(c.rid(), JobRequirements(EDGES, "B"))).data is False
    assert c.ask(p.IoTypesRequest(c.rid())).data == [["Edges", "Mesh2D"], ["Mesh2D", "Mesh3D"]]
    reqs = c.ask(p.RequirementsRequest(c.rid(), EDGES)).data
    assert [JobRequirements.from_wire(r) for r in reqs] == [named]


@given(
    limit=st.integers(1, 40),
    sent=st.integers(0, 120),
    since=st.integers(0, 130),
    count=st.integers(1, 50),
)
def test_the_progress_window_is_the_list_slice_whichever_end_it_reads_from(
    limit: int, sent: int, since: int, count: int
) -> None:
    """JobRecord.progress_since reads a deque from its nearer end: it must give exactly what
    slicing the kept updates as a list gives, and count the dropped ones the same way."""
    job = JobRecord("j", JobRequirements(IOType("A", "B")), "k", (), [], 0, 0, 0.0)
    for v in range(sent):
        job.add_progress(v % 101, f"m{v}", limit)
    kept = [
        (seq, (seq - 1) % 101, f"m{seq - 1}") for seq in range(max(1, sent - limit + 1), sent + 1)
    ]
    first = kept[0][0] if kept else since + 1
    start = max(0, since + 1 - first)
    expected = kept[start : start + count]
    assert job.progress_since(since, count) == (expected, max(0, first - since - 1) if kept else 0)


def test_a_full_progress_history_takes_each_update_in_constant_time(
    make_core: Callable[..., Core],
) -> None:
    """Past the bound the oldest update drops off: no copy of the history per update (a
    200,000-update job used to fall to 56k updates/s trimming a 100,000-entry list)."""
    c = make_core(max_progress_history=100_000)
    c.register(W1)
    c.submit("j1")
    c.flush()
    batch = [("j1", 1, "m")] * 10_000

    def cost(reports: int) -> float:
        t = time.process_time()
        for _ in range(reports):
            c.report(W1, progress=batch)
        return time.process_time() - t

    filling = cost(10)  # the first 100,000: the history fills
    full = cost(10)  # the next 100,000: each drops the oldest
    assert full < 3 * filling, (filling, full)
    assert c.status_row("j1")[4] == 200_000
