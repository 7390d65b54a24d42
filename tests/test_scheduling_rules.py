"""Issue 11's broker rules without sockets: priorities, slots, preemption, control messages,
assistants and checkpoints (docs/protocol.md, "Scheduling: slots, protection, priorities,
control messages, assistants").

Time is whatever the test says it is; the harness is tests/core_helpers.py (its ``Core``
defaults ``max_retries`` to 0, so a test that loses a worker says how many retries it means).
Every submit here opts in to ``wait_for_worker``: these rules are about queueing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from core_helpers import EDGES, VOLUME, W1, W2, W3, Core, ids_sent, jobs_sent, to_worker

from remus import protocol as p
from remus.server.core import BrokerCore, Outbox
from remus.server.journal import Journal
from remus.types import JobRequirements, Status

HOST = "host-a"
#: pids, so that each worker has its own name (``worker@host-a:PID``)
PIDS = {W1: 101, W2: 102, W3: 103}
QUEUED, RUNNING = Status.QUEUED, Status.IN_PROGRESS
TAG = {"site": "a"}


def name(wid: bytes) -> str:
    return f"worker@{HOST}:{PIDS[wid]}"


def opts(**options: Any) -> dict[str, Any]:
    """Submit options, queueing whoever is connected."""
    return {"wait_for_worker": True, **options}


#: an unprotected (spare-capacity) submission
SPARE = opts(protected=False)


def register(
    c: Core,
    wid: bytes,
    reqs: JobRequirements | None = None,
    *,
    credit: int = 1,
    slots: int = 1,
    **kw: Any,
) -> None:
    c.register(wid, reqs or JobRequirements(EDGES), credit=credit, slots=slots, pid=PIDS[wid], **kw)


def run(c: Core, wid: bytes, *ids: str) -> None:
    """The jobs go to ``wid`` in the next flush, and it says they started."""
    assert ids_sent(c.flush(), wid) == list(ids)
    c.report(wid, started=ids)


def cancels(out: Outbox, wid: bytes) -> list[tuple[list[str], str]]:
    return [(list(m.ids), m.reason) for m in to_worker(out, wid, p.Cancel)]


def all_cancels(out: Outbox) -> list[tuple[bytes, list[str], str]]:
    return [(w, list(m.ids), m.reason) for w, m in out.workers if isinstance(m, p.Cancel)]


def assigned(out: Outbox, wid: bytes) -> dict[str, p.AssignedJob]:
    return {j.id: j for msg in to_worker(out, wid, p.Jobs) for j in msg.jobs}


def controls(out: Outbox, wid: bytes) -> list[list[tuple[str, int, Any]]]:
    """For each Controls message to ``wid``: its [(job id, seq, bytes)]."""
    return [
        [(jid, seq, bytes(data)) for jid, seq, data in m.messages]
        for m in to_worker(out, wid, p.Controls)
    ]


def error_code(msg: p.Message) -> str:
    assert isinstance(msg, p.Error), msg
    return msg.code


def row(c: Core, job_id: str) -> dict[str, Any]:
    r = c.status_row(job_id)
    assert len(r) == 11, r
    return {
        "status": Status(r[1]),
        "reason": r[5],
        "attempt": r[6],
        "worker": r[7],
        "parent": r[8],
        "assistants": r[9],
        "history": r[10],
    }


def totals(c: Core) -> dict[str, int]:
    reply = c.ask(p.StatsRequest(c.rid()))
    assert isinstance(reply, p.Reply)
    return dict(reply.data["totals"])


# ============================================================================ priorities


def test_credit_takes_the_highest_priority_first_then_submission_order() -> None:
    c = Core()
    for job_id, priority in [
        ("p0-a", 0),
        ("p5-a", 5),
        ("p1", 1),
        ("neg", -3),
        ("p5-b", 5),
        ("p0-b", 0),
    ]:
        c.submit(job_id, opts=opts(priority=priority))
    register(c, W1, credit=2)
    assert ids_sent(c.flush(), W1) == ["p5-a", "p5-b"]
    c.submit("p2", opts=opts(priority=2))  # a newcomer ranks among those still waiting
    taken = []
    for _ in range(6):
        c.report(W1, credit=1)
        taken += ids_sent(c.flush(), W1)
    assert taken == ["p2", "p1", "p0-a", "p0-b", "neg"]


def test_a_requeued_job_goes_ahead_of_its_equals_but_not_ahead_of_a_higher_priority() -> None:
    c = Core(max_retries=1)
    register(c, W1)
    c.submit("lost", opts=opts(priority=1))
    run(c, W1, "lost")
    c.submit("equal", opts=opts(priority=1))
    c.submit("higher", opts=opts(priority=2))
    c.submit("lower")
    c.goodbye(W1)
    assert (row(c, "lost")["status"], row(c, "lost")["attempt"]) == (QUEUED, 2)
    register(c, W2, credit=4)
    assert ids_sent(c.flush(), W2) == ["higher", "lost", "equal", "lower"]


def test_a_requeued_job_goes_ahead_of_an_older_equal_of_another_queue_key() -> None:
    """Among the jobs a worker could take, a requeued job goes ahead of its equals: also when
    the equal waits under another of the keys the worker accepts (here: a job naming
    worker B, older than the bare job that ran on A)."""
    c = Core(max_retries=1)
    c.submit("names-b", reqs=JobRequirements(EDGES, "B"))
    register(c, W1, JobRequirements(EDGES, "A"))
    c.submit("bare")
    run(c, W1, "bare")
    c.goodbye(W1)
    assert row(c, "bare")["status"] is QUEUED
    register(c, W2, JobRequirements(EDGES, "B"), credit=1)
    assert ids_sent(c.flush(), W2) == ["bare"]
    c.report(W2, credit=1)
    assert ids_sent(c.flush(), W2) == ["names-b"]


def test_priorities_order_the_jobs_of_every_queue_key_one_worker_accepts() -> None:
    c = Core()
    c.submit("bare-0")
    c.submit("name-3", reqs=JobRequirements(EDGES, "A"), opts=opts(priority=3))
    c.submit("tag-1", reqs=JobRequirements(EDGES, "", TAG), opts=opts(priority=1))
    c.submit("both-3", reqs=JobRequirements(EDGES, "A", TAG), opts=opts(priority=3))
    c.submit("bare-2", opts=opts(priority=2))
    c.submit("both-4", reqs=JobRequirements(EDGES, "A", TAG), opts=opts(priority=4))
    c.submit("other-9", reqs=JobRequirements(EDGES, "B"), opts=opts(priority=9))
    register(c, W1, JobRequirements(EDGES, "A", TAG), credit=1)
    taken = ids_sent(c.flush(), W1)
    for _ in range(6):
        c.report(W1, credit=1)
        taken += ids_sent(c.flush(), W1)
    assert taken == ["both-4", "name-3", "both-3", "bare-2", "tag-1", "bare-0"]
    assert row(c, "other-9")["status"] is QUEUED, "not a job this worker accepts"


def test_protected_jobs_go_before_unprotected_ones_whatever_their_priority() -> None:
    c = Core()
    c.submit("spare-high", opts=opts(priority=1000, protected=False))
    c.submit("prot-low", reqs=JobRequirements(EDGES, "A"), opts=opts(priority=-1000))
    c.submit("spare-low", opts=opts(protected=False))
    c.submit("prot-0")
    c.submit("prot-high", opts=opts(priority=3, protected=True))
    register(c, W1, JobRequirements(EDGES, "A"), credit=5)
    assert ids_sent(c.flush(), W1) == ["prot-high", "prot-0", "prot-low", "spare-high", "spare-low"]


# ============================================================================ slots


def test_a_job_goes_to_a_worker_with_a_free_slot_before_one_with_only_prefetch() -> None:
    c = Core()
    register(c, W1, credit=2)  # one slot, one job of prefetch
    c.submit("first")
    run(c, W1, "first")  # its slot is taken: its credit left is prefetch
    register(c, W2, credit=1)  # idle
    c.submit("second")
    assert jobs_sent(c.flush()) == {W2: [["second"]]}
    c.submit("third")  # nobody has a free slot now: the prefetch takes it
    assert jobs_sent(c.flush()) == {W1: [["third"]]}


def test_a_worker_with_several_slots_is_a_free_slot_until_they_are_all_taken() -> None:
    c = Core()
    register(c, W1, credit=3, slots=2)
    c.submit("a", "b")
    assert ids_sent(c.flush(), W1) == ["a", "b"]
    register(c, W2, credit=1)
    c.submit("c")
    assert jobs_sent(c.flush()) == {W2: [["c"]]}, "W1's third credit is prefetch"


def test_a_worker_whose_job_ends_goes_back_among_the_free_slots() -> None:
    c = Core()
    register(c, W2, credit=2)
    c.submit("on-w2")
    run(c, W2, "on-w2")
    register(c, W1, credit=2)
    c.submit("on-w1")
    run(c, W1, "on-w1")  # both hold a job and have prefetch left; W2 was first
    c.report(W1, results={"on-w1": b"r"})  # no credit with it: W1's credit left is a slot
    c.submit("next")
    assert jobs_sent(c.flush()) == {W1: [["next"]]}


# ============================================================================ preemption


def one_spare_running(**config: Any) -> Core:
    """W1 (one slot) runs the unprotected job "spare"; every event is wanted."""
    config.setdefault("preempt_grace", 2.0)
    c = Core(wants=lambda topic: True, **config)
    register(c, W1)
    c.submit("spare", opts=SPARE)
    run(c, W1, "spare")
    return c


def test_a_protected_job_preempts_the_unprotected_job_in_the_only_slot() -> None:
    c = one_spare_running()
    c.submit("prot")
    out = c.flush()
    assert cancels(out, W1) == [(["spare"], "preempted")]
    assert jobs_sent(out) == {}, "the slot is not free until W1 says so"
    spare = row(c, "spare")
    assert (spare["status"], spare["attempt"], spare["worker"]) == (QUEUED, 1, "")
    assert spare["history"] == [f"attempt 1 on {name(W1)}: preempted for a protected job"]
    assert row(c, "prot")["status"] is QUEUED
    events = [e for t, e in out.events if t == "job.preempted"]
    assert len(events) == 1
    assert (events[0]["job"], events[0]["status"], events[0]["worker"]) == (
        "spare",
        "QUEUED",
        name(W1),
    )
    assert totals(c)["preempted"] == 1


def test_no_preempted_event_is_built_when_nobody_subscribed() -> None:
    c = Core(wants=lambda topic: topic != "job.preempted")
    register(c, W1)
    c.submit("spare", opts=SPARE)
    run(c, W1, "spare")
    c.submit("prot")
    out = c.flush()
    assert cancels(out, W1) == [(["spare"], "preempted")]
    assert "job.preempted" not in [t for t, _ in out.events]


def test_after_the_worker_stops_the_preempted_job_the_protected_one_takes_its_slot() -> None:
    c = one_spare_running(preempt_grace=2.0)
    c.submit("prot")
    c.flush()
    c.advance(0.5, alive=[W1])
    c.report(W1, stopped=["spare"], credit=1)
    out = c.flush()
    assert ids_sent(out, W1) == ["prot"]
    assert row(c, "prot")["worker"] == name(W1)
    out = c.advance(10.0, alive=[W1])
    assert out.kills == [], "it said it stopped: nothing to kill"
    assert row(c, "spare")["status"] is QUEUED, "it waits for a slot"
    c.report(W1, started=["prot"], results={"prot": b"r"}, credit=1)
    out = c.flush()
    (again,) = to_worker(out, W1, p.Jobs)
    assert [(j.id, list(j.values), j.protected) for j in again.jobs] == [
        ("spare", [b"spare"], False)
    ]
    assert row(c, "spare")["attempt"] == 1, "a preemption counts no attempt"
    assert totals(c)["preempted"] == 1


def test_a_preempted_run_may_save_a_checkpoint_as_it_stops() -> None:
    c = one_spare_running()
    c.submit("prot")
    c.flush()
    c.report(W1, checkpoints={"spare": b"stopped at 40%"}, stopped=["spare"], credit=1)
    c.flush()  # W1 takes "prot"
    assert c.core.jobs["spare"].checkpoint == b"stopped at 40%"
    c.report(W1, started=["prot"], results={"prot": b"r"}, credit=1)
    (again,) = to_worker(c.flush(), W1, p.Jobs)
    assert [(j.id, j.checkpoint) for j in again.jobs] == [("spare", b"stopped at 40%")]


def test_a_preempted_runs_checkpoint_is_refused_once_the_job_runs_elsewhere() -> None:
    c = one_spare_running()
    register(c, W2, credit=0)
    c.submit("prot")
    c.flush()  # "spare" is preempted on W1 and queued again
    c.report(W2, credit=2)
    assert ids_sent(c.flush(), W2) == ["prot", "spare"], "an idle worker takes both at once"
    c.report(W2, checkpoints={"spare": b"new run"})
    c.report(W1, checkpoints={"spare": b"old run"}, stopped=["spare"])
    c.flush()
    assert c.core.jobs["spare"].checkpoint == b"new run"


def test_a_worker_silent_about_a_preempted_job_past_the_grace_is_killed_once() -> None:
    c = one_spare_running(preempt_grace=2.0)
    c.submit("prot")
    c.flush()
    assert c.advance(1.75, alive=[W1]).kills == []
    assert c.advance(2.0, alive=[W1]).kills == [(HOST, PIDS[W1])]
    assert c.advance(10.0, alive=[W1]).kills == []
    c.report(W1, results={"spare": b"from the abandoned run"})
    assert row(c, "spare")["status"] is QUEUED, "what the abandoned run reports is dropped"


def test_unprotected_jobs_keep_their_contents_after_starting() -> None:
    c = Core()  # max_retries=0: a started protected job will never be sent again
    register(c, W1, credit=2, slots=2)
    c.submit("prot")
    c.submit("spare", opts=SPARE)
    run(c, W1, "prot", "spare")
    assert c.core.jobs["prot"].blobs is None
    assert c.core.jobs["spare"].blobs == [b"spare"], "it may be preempted and run again"


def test_the_youngest_unprotected_job_running_is_preempted() -> None:
    c = Core()
    c.submit("old", "middle", "young", opts=SPARE)
    register(c, W3)
    assert ids_sent(c.flush(), W3) == ["old"]
    c.now = 1.0
    register(c, W1)
    assert ids_sent(c.flush(), W1) == ["middle"]
    c.now = 2.0
    register(c, W2)
    assert ids_sent(c.flush(), W2) == ["young"]
    c.report(W1, started=["middle"])
    c.report(W2, started=["young"])
    c.report(W3, started=["old"])
    c.submit("prot")
    assert all_cancels(c.flush()) == [(W2, ["young"], "preempted")]


def test_only_a_worker_that_matches_the_protected_job_is_preempted() -> None:
    c = Core()
    register(c, W2, JobRequirements(EDGES, "B"))
    c.submit("old-on-b", opts=SPARE)
    run(c, W2, "old-on-b")
    c.now = 1.0
    register(c, W1, JobRequirements(EDGES, "A"))
    c.submit("young-on-a", opts=SPARE)
    run(c, W1, "young-on-a")
    c.submit("prot", reqs=JobRequirements(EDGES, "B"))
    assert all_cancels(c.flush()) == [(W2, ["old-on-b"], "preempted")]


def test_one_waiting_protected_job_preempts_once() -> None:
    c = Core()
    for t, (wid, job_id) in enumerate([(W1, "u1"), (W2, "u2"), (W3, "u3")]):
        c.now = float(t)
        register(c, wid)
        c.submit(job_id, opts=SPARE)
        run(c, wid, job_id)
    c.submit("p1")
    assert all_cancels(c.flush()) == [(W3, ["u3"], "preempted")]
    c.submit("p2")  # one more protected job waits: one more slot, not two
    assert all_cancels(c.flush()) == [(W2, ["u2"], "preempted")]
    assert row(c, "u1")["status"] is RUNNING
    c.report(W3, stopped=["u3"], credit=1)
    c.report(W2, stopped=["u2"], credit=1)
    out = c.flush()
    assert jobs_sent(out) == {W3: [["p1"]], W2: [["p2"]]}
    assert all_cancels(out) == []
    assert totals(c)["preempted"] == 2


@pytest.mark.parametrize("leaves", ["terminated", "expired"])
def test_a_protected_job_that_leaves_before_its_slot_frees_does_not_hold_back_the_next(
    leaves: str,
) -> None:
    c = one_spare_running()
    c.submit("prot", opts=opts(queue_time_limit=1.0))
    assert cancels(c.flush(), W1) == [(["spare"], "preempted")]
    if leaves == "terminated":  # gone before W1 stopped "spare"
        c.terminate("prot")
    else:
        c.advance(1.5, alive=[W1])
    assert row(c, "prot")["status"].name == leaves.upper()
    c.report(W1, stopped=["spare"], credit=1)
    run(c, W1, "spare")  # nothing protected waits: "spare" runs again
    c.advance(5.0, alive=[W1])
    c.submit("prot-2")
    assert cancels(c.flush(), W1) == [(["spare"], "preempted")]


def test_no_preemption_while_a_free_slot_can_take_the_protected_job() -> None:
    c = Core()
    register(c, W1, credit=2, slots=2)
    c.submit("spare", opts=SPARE)
    run(c, W1, "spare")
    c.submit("prot")
    out = c.flush()
    assert (ids_sent(out, W1), all_cancels(out)) == (["prot"], [])


def test_no_preemption_when_a_worker_takes_the_protected_job_in_the_same_pass() -> None:
    c = one_spare_running()
    c.submit("prot")  # queued for now: W1 has no credit
    register(c, W2)  # ... but W2 takes it before the pass ends
    out = c.flush()
    assert (jobs_sent(out), all_cancels(out)) == ({W2: [["prot"]]}, [])
    assert totals(c)["preempted"] == 0


def test_no_preemption_when_only_protected_jobs_run() -> None:
    c = Core()
    register(c, W1)
    c.submit("prot-1")
    run(c, W1, "prot-1")
    c.submit("prot-2", opts=opts(priority=100))
    out = c.advance(10.0, alive=[W1])
    assert (all_cancels(out), out.kills) == ([], [])
    assert row(c, "prot-2")["status"] is QUEUED


def test_a_protected_job_does_not_wait_in_a_prefetch_behind_an_unprotected_job() -> None:
    c = Core()
    register(c, W1, credit=2)  # one slot and one job of prefetch
    c.submit("spare", opts=SPARE)
    run(c, W1, "spare")
    c.submit("prot")
    out = c.flush()
    assert cancels(out, W1) == [(["spare"], "preempted")], "the slot a protected job wants"


# ============================================================================ time limit


@pytest.mark.parametrize("says_stopped", [True, False])
def test_a_worker_that_reports_its_timed_out_job_stopped_is_not_killed(says_stopped: bool) -> None:
    c = Core(kill_grace=2.0)
    register(c, W1)
    c.submit("slow", opts=opts(time_limit=5.0))
    run(c, W1, "slow")
    out = c.advance(5.0, alive=[W1])
    assert row(c, "slow")["status"] is Status.FAILED
    assert cancels(out, W1) == [(["slow"], "time limit")]
    if says_stopped:
        c.report(W1, stopped=["slow"], credit=1)
    kills = c.advance(10.0, alive=[W1]).kills
    assert kills == ([] if says_stopped else [(HOST, PIDS[W1])])


# ============================================================================ control messages


def test_a_control_message_for_an_unknown_job_is_an_unknown_job_error() -> None:
    c = Core()
    assert error_code(c.control("nope", b"m")) == "unknown-job"


@pytest.mark.parametrize("how", ["finished", "failed", "terminated"])
def test_a_control_message_for_a_job_that_is_over_is_a_job_not_running_error(how: str) -> None:
    c = Core()
    register(c, W1)
    c.submit("j")
    run(c, W1, "j")
    assert isinstance(c.control("j", b"before"), p.Reply)
    if how == "finished":
        c.report(W1, results={"j": b"r"})
    elif how == "failed":
        c.report(W1, failures=[("j", "no", "")])
    else:
        c.terminate("j")
    c.flush()
    assert error_code(c.control("j", b"after")) == "job-not-running"
    assert controls(c.flush(), W1) == [], "nothing goes to the worker"


def test_messages_for_a_queued_job_follow_the_jobs_message_that_hands_it_over() -> None:
    c = Core()
    c.submit("a", "b", "c")
    replies = [c.control("b", b"b1"), c.control("a", b"a1"), c.control("b", b"b2")]
    assert [r.data for r in replies if isinstance(r, p.Reply)] == [1, 1, 2], "each job's seq"
    assert c.flush().workers == [], "nobody holds them yet"
    register(c, W1, credit=2)
    out = c.flush()
    kinds = [type(m) for w, m in out.workers if w == W1]
    assert kinds[-2:] == [p.Jobs, p.Controls], "right after the jobs"
    assert ids_sent(out, W1) == ["a", "b"]
    assert controls(out, W1) == [[("a", 1, b"a1"), ("b", 1, b"b1"), ("b", 2, b"b2")]]
    c.report(W1, credit=1)
    out = c.flush()
    assert ids_sent(out, W1) == ["c"]
    assert controls(out, W1) == [], "c has no message"


def test_a_message_for_a_job_assigned_in_the_same_pass_goes_once_after_the_job() -> None:
    c = Core()
    register(c, W1)
    c.submit("j")  # assigned, not sent yet
    assert isinstance(c.control("j", b"m"), p.Reply)
    out = c.flush()
    assert [type(m) for w, m in out.workers if w == W1][-2:] == [p.Jobs, p.Controls]
    assert controls(out, W1) == [[("j", 1, b"m")]]


def test_a_message_for_a_running_job_goes_to_its_worker_at_once() -> None:
    c = Core()
    c.submit("j")
    c.control("j", b"queued")
    register(c, W1)
    c.flush()
    c.report(W1, started=["j"])
    reply = c.control("j", b"running")
    assert isinstance(reply, p.Reply) and reply.data == 2
    assert controls(c.flush(), W1) == [[("j", 2, b"running")]]
    c.control("j", b"third")
    assert controls(c.flush(), W1) == [[("j", 3, b"third")]]


def test_a_job_that_runs_again_gets_every_message_again() -> None:
    c = Core(max_retries=1)
    c.submit("j")
    c.control("j", b"one")
    register(c, W1)
    c.flush()
    c.report(W1, started=["j"])
    c.control("j", b"two")
    c.flush()
    c.goodbye(W1)
    assert row(c, "j")["status"] is QUEUED
    c.control("j", b"three")
    assert c.flush().workers == []
    register(c, W2)
    out = c.flush()
    assert ids_sent(out, W2) == ["j"]
    assert controls(out, W2) == [[("j", 1, b"one"), ("j", 2, b"two"), ("j", 3, b"three")]]


def test_a_preempted_job_gets_every_message_again_when_it_runs_again() -> None:
    c = one_spare_running()
    c.control("spare", b"hello")
    c.submit("prot")
    c.flush()
    c.report(W1, stopped=["spare"], credit=1)
    c.flush()
    c.control("spare", b"while queued")
    c.report(W1, results={"prot": b"r"}, credit=1)
    out = c.flush()
    assert ids_sent(out, W1) == ["spare"]
    assert controls(out, W1) == [[("spare", 1, b"hello"), ("spare", 2, b"while queued")]]


def test_no_control_message_goes_for_a_job_whose_files_cannot_go_to_the_worker(
    tmp_path: Path,
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("x")
    c = Core(host_id="broker-host")  # W1 is on host-a, and the broker may read no file
    files = p.FileSet([p.FileEntry(str(src), "r")], [])
    job = p.SubmittedJob("files", JobRequirements(EDGES), files=files)
    assert isinstance(c.ask(p.SubmitRequest(c.rid(), [job], opts(host="broker-host"))), p.Reply)
    c.submit("plain")
    c.control("files", b"f")
    c.control("plain", b"p")
    register(c, W1, credit=2)
    out = c.flush()
    assert row(c, "files")["status"] is Status.FAILED
    assert ids_sent(out, W1) == ["plain"]
    assert controls(out, W1) == [[("plain", 1, b"p")]]


# ============================================================================ assistants


def master_running(**config: Any) -> Core:
    """W1 runs the protected job "master"."""
    c = Core(**config)
    register(c, W1)
    c.submit("master")
    run(c, W1, "master")
    return c


def assist(
    c: Core, *ids: str, parent: str = "master", reqs: Any = EDGES, **options: Any
) -> p.Message:
    return c.submit(*ids, reqs=reqs, opts=opts(parent=parent, protected=False, **options))


@pytest.mark.parametrize(
    ("state", "code"), [("unknown", "unknown-job"), ("over", "job-not-running")]
)
def test_assistants_of_an_unknown_or_ended_parent_are_refused_whole(state: str, code: str) -> None:
    c = master_running()
    if state == "over":
        c.report(W1, results={"master": b"r"})
    parent = "nobody" if state == "unknown" else "master"
    assert error_code(assist(c, "a1", "a2", parent=parent)) == code
    assert "a1" not in c.core.jobs and "a2" not in c.core.jobs
    assert totals(c)["submitted"] == 1
    assert row(c, "master")["assistants"] == []


def test_status_rows_show_a_jobs_parent_and_assistants() -> None:
    c = master_running()
    assert isinstance(assist(c, "a1", "a2"), p.Reply)
    assert isinstance(assist(c, "a3"), p.Reply)
    assert (row(c, "master")["parent"], row(c, "master")["assistants"]) == (
        "",
        ["a1", "a2", "a3"],
    )
    assert (row(c, "a2")["parent"], row(c, "a2")["assistants"]) == ("master", [])
    register(c, W2, credit=3)
    jobs = assigned(c.flush(), W2)
    assert [(j.parent, j.protected) for j in jobs.values()] == [("master", False)] * 3


def how_the_master_ends(c: Core, how: str) -> None:
    if how == "finished":
        c.report(W1, results={"master": b"r"})
    elif how == "failed":
        c.report(W1, failures=[("master", "no", "")])
    elif how == "terminated":
        c.terminate("master")
    else:  # its worker is lost with no retry left
        c.goodbye(W1)


@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("finished", "FINISHED"),
        ("failed", "FAILED"),
        ("terminated", "TERMINATED"),
        ("lost", "FAILED"),
    ],
)
def test_every_unfinished_assistant_ends_with_its_parent(how: str, status: str) -> None:
    c = master_running()
    assist(c, "done", "run-1", "run-2", "waiting")
    register(c, W2, credit=3, slots=3)
    run(c, W2, "done", "run-1", "run-2")
    c.report(W2, results={"done": b"r"})
    how_the_master_ends(c, how)
    out = c.flush()
    assert row(c, "master")["status"].name == status
    why = f"its parent job master ended ({status})"
    for job_id in ("run-1", "run-2", "waiting"):
        assert (row(c, job_id)["status"], row(c, job_id)["reason"]) == (Status.TERMINATED, why)
    assert row(c, "done")["status"] is Status.FINISHED
    assert sorted(cancels(out, W2)) == [(["run-1"], "parent ended"), (["run-2"], "parent ended")]
    assert jobs_sent(out) == {}, "the one that waited is not sent anywhere"


def test_an_assistant_on_the_masters_own_worker_ends_with_it() -> None:
    c = Core()
    register(c, W1, credit=2, slots=2)
    c.submit("master")
    run(c, W1, "master")
    assist(c, "helper")
    run(c, W1, "helper")  # the master's worker had a free slot
    c.report(W1, results={"master": b"r"})
    assert cancels(c.flush(), W1) == [(["helper"], "parent ended")]
    assert row(c, "helper")["status"] is Status.TERMINATED


def test_an_assistant_assigned_in_the_same_pass_is_taken_back_with_its_credit() -> None:
    c = master_running()
    register(c, W2)
    c.flush()
    assist(c, "helper")  # assigned to W2, not sent yet
    c.report(W1, results={"master": b"r"})
    out = c.flush()
    assert (jobs_sent(out), all_cancels(out)) == ({}, [])
    assert row(c, "helper")["status"] is Status.TERMINATED
    assert c.core.workers[W2].credit == 1
    c.submit("next")
    assert ids_sent(c.flush(), W2) == ["next"]


def test_the_assistants_of_assistants_end_too() -> None:
    c = master_running()
    assist(c, "helper")
    register(c, W2)
    run(c, W2, "helper")
    assist(c, "sub-1", "sub-2", parent="helper")
    register(c, W3)
    run(c, W3, "sub-1")
    c.terminate("master")
    out = c.flush()
    assert row(c, "helper")["reason"] == "its parent job master ended (TERMINATED)"
    for job_id in ("sub-1", "sub-2"):
        assert (row(c, job_id)["status"], row(c, job_id)["reason"]) == (
            Status.TERMINATED,
            "its parent job helper ended (TERMINATED)",
        )
    assert sorted(all_cancels(out)) == [
        (W1, ["master"], "terminated"),
        (W2, ["helper"], "parent ended"),
        (W3, ["sub-1"], "parent ended"),
    ]


def test_assistants_keep_running_when_their_parent_is_lost_with_a_retry_left() -> None:
    c = master_running(max_retries=1)
    assist(c, "helper", reqs=VOLUME)  # (on a worker the requeued master cannot preempt)
    register(c, W2, JobRequirements(VOLUME))
    run(c, W2, "helper")
    c.goodbye(W1)
    out = c.flush()
    assert (row(c, "master")["status"], row(c, "master")["attempt"]) == (QUEUED, 2)
    assert row(c, "helper")["status"] is RUNNING
    assert all_cancels(out) == []
    register(c, W3)
    run(c, W3, "master")
    c.report(W3, results={"master": b"r"})
    assert cancels(c.flush(), W2) == [(["helper"], "parent ended")]


# ============================================================================ checkpoints


def test_the_latest_checkpoint_goes_with_the_job_when_it_runs_again() -> None:
    c = Core(max_retries=1)
    register(c, W1)
    c.submit("j")
    out = c.flush()
    assert assigned(out, W1)["j"].checkpoint is None, "a first run has none"
    c.report(W1, started=["j"], checkpoints={"j": b"c1"})
    c.report(W1, checkpoints={"j": b"c2"}, progress=[("j", 50, "half")])
    c.goodbye(W1)
    register(c, W2)
    sent = assigned(c.flush(), W2)["j"]
    assert (bytes(sent.checkpoint or b""), list(sent.values)) == (b"c2", [b"j"])


def test_a_preempted_job_runs_again_from_its_latest_checkpoint() -> None:
    c = one_spare_running()
    c.report(W1, checkpoints={"spare": b"halfway"})
    c.submit("prot")
    c.flush()
    c.report(W1, stopped=["spare"], checkpoints={"spare": b"from the stopped run"}, credit=1)
    c.flush()
    c.report(W1, results={"prot": b"r"}, credit=1)
    sent = assigned(c.flush(), W1)["spare"]
    assert sent.checkpoint == b"from the stopped run", "saved as it stopped, before a new run"


def journaled(**config: Any) -> Core:
    c = Core(**config)
    c.core = BrokerCore(c.core.config, now=c.now, journal=True, wall_clock=lambda: 1000.0)
    return c


def crash_and_restore(c: Core, path: Path, **config: Any) -> Core:
    with Journal(path) as journal:
        batch = c.core.take_journal()
        if batch is not None:
            journal.write(batch)
    again = journaled(**config)
    with Journal(path) as journal:
        again.core.restore(journal.load(), again.now)
    return again


def test_the_journal_keeps_priority_protection_parent_and_checkpoint(tmp_path: Path) -> None:
    c = journaled(max_retries=1)
    register(c, W1)
    c.submit("master")
    run(c, W1, "master")
    c.report(W1, checkpoints={"master": b"cp-1"})
    c.report(W1, checkpoints={"master": b"cp-2"})
    assist(c, "helper", priority=7)
    c.submit("spare", opts=SPARE)
    c.submit("low", opts=opts(priority=-1))
    c.submit("high", opts=opts(priority=1))

    c = crash_and_restore(c, tmp_path / "j.db", max_retries=1, restart_grace=0)
    assert row(c, "master")["assistants"] == ["helper"]
    assert row(c, "helper")["parent"] == "master"
    register(c, W2, credit=5, slots=5)
    out = c.flush()
    assert ids_sent(out, W2) == ["high", "master", "low", "helper", "spare"]
    jobs = assigned(out, W2)
    assert bytes(jobs["master"].checkpoint or b"") == b"cp-2"
    assert (jobs["helper"].parent, jobs["helper"].protected, jobs["helper"].checkpoint) == (
        "master",
        False,
        None,
    )
    assert jobs["spare"].protected is False and jobs["low"].protected is True
    c.report(W2, started=["master", "helper"], results={"master": b"r"})
    assert row(c, "helper")["status"] is Status.TERMINATED, "the parent link survived"
