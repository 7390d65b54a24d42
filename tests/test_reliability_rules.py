"""Issue 5's rules without sockets: requeue with max_retries and evidence, time limits, the
journal's batches, and what a broker restored from its journal does.

Time is whatever the test says it is; the harness is tests/core_helpers.py. Its ``Core``
defaults ``max_retries`` to 0 (a lost worker's started job FAILS at once), so every test here
says how many retries it means. Every submit here opts in to ``wait_for_worker``: these rules
are about queueing, whoever is connected. Workers register with their own pid here so that each
attempt's evidence names a different worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from core_helpers import (
    CLIENT,
    EDGES,
    W1,
    W2,
    W3,
    Core,
    ids_sent,
    jobs_sent,
    replies,
    result_values,
    to_worker,
)

from remus import protocol as p
from remus.server.core import BrokerCore, Outbox
from remus.server.journal import Journal
from remus.types import JobRequirements, Status

HOST = "host-a"
W4 = b"worker-4"
#: pids, so that each worker has its own name in the evidence
PIDS = {W1: 101, W2: 102, W3: 103, W4: 104}


def name(wid: bytes) -> str:
    """The name the broker gives a worker (WorkerRecord.name)."""
    return f"worker@{HOST}:{PIDS[wid]}"


def journaled(**config: Any) -> Core:
    """A Core whose BrokerCore gathers journal batches (as the core thread's does)."""
    c = Core(**config)
    c.core = BrokerCore(c.core.config, now=c.now, journal=True, wall_clock=lambda: 1000.0)
    return c


def register(
    c: Core, wid: bytes, *, credit: int = 1, heartbeat: float = 1.0, held: Iterable[str] = ()
) -> None:
    msg = p.Register(JobRequirements(EDGES), heartbeat, HOST, PIDS[wid], credit, list(held))
    c.core.worker_message(wid, msg, c.now)


def submit(c: Core, *ids: str, **opts: Any) -> p.Message:
    """Submit jobs whose data is their id, with submit options (max_retries, time limits);
    ``wait_for_worker`` unless told otherwise."""
    jobs = [p.SubmittedJob(i, JobRequirements(EDGES), ("data",), [i.encode()]) for i in ids]
    return c.ask(p.SubmitRequest(c.rid(), jobs, {"wait_for_worker": True, **opts}))


def advance(c: Core, to: float, *, alive: Iterable[bytes] = (), step: float = 0.25) -> Outbox:
    return c.advance(to, alive=alive, step=step)


def attempt(c: Core, job_id: str) -> int:
    return c.status_row(job_id)[6]


def reason(c: Core, job_id: str) -> str:
    return c.status_row(job_id)[5]


def lines(evidence: str) -> list[str]:
    """The per-attempt lines of a lost-worker failure reason."""
    return evidence.split(": ", 1)[1].split("; ")


# ============================================================================ requeue


def test_a_lost_started_job_runs_again_ahead_of_newer_jobs_with_attempt_2() -> None:
    c = Core(max_retries=2)
    register(c, W1)
    submit(c, "old")
    assert ids_sent(c.flush(), W1) == ["old"]
    c.report(W1, started=["old"])
    submit(c, "new-1", "new-2")  # W1 has no credit left: these wait
    assert attempt(c, "old") == 1

    advance(c, 3.5)  # W1 silent for three heartbeat intervals: lost
    assert W1 not in c.core.workers
    assert c.status("old") is Status.QUEUED
    assert attempt(c, "old") == 2

    register(c, W2, credit=1)
    assert jobs_sent(c.flush()) == {W2: [["old"]]}, "the requeued job goes before newer ones"
    assert c.core.jobs["old"].blobs == [b"old"], "its contents were kept for the retry"
    c.report(W2, started=["old"], results={"old": b"done"})
    assert c.status("old") is Status.FINISHED
    assert attempt(c, "old") == 2


def test_after_max_retries_the_job_fails_with_evidence_of_every_attempt() -> None:
    c = Core(max_retries=2)
    register(c, W1)
    submit(c, "j")
    c.flush()
    c.report(W1, started=["j"], progress=[("j", 40, "meshing")])
    advance(c, 3.5)  # attempt 1: W1 stops heartbeating
    assert (c.status("j"), attempt(c, "j")) == (Status.QUEUED, 2)

    register(c, W2)
    c.flush()
    c.report(W2, started=["j"], progress=[("j", 70, "refining")])
    c.goodbye(W2)  # attempt 2: W2 says goodbye while it holds the job
    assert (c.status("j"), attempt(c, "j")) == (Status.QUEUED, 3)

    register(c, W3)
    c.flush()
    c.report(W3, started=["j"], progress=[("j", None, "starting over")])
    c.core.process_exited(HOST, PIDS[W3], "was killed by SIGKILL", c.now)  # attempt 3
    assert c.status("j") is Status.FAILED
    assert attempt(c, "j") == 3

    evidence = reason(c, "j")
    assert evidence.startswith("its worker was lost on 3 attempts (max_retries=2): ")
    assert lines(evidence) == [
        f"attempt 1 on {name(W1)}: worker {name(W1)} stopped heartbeating "
        "(last progress: 40% 'meshing')",
        f"attempt 2 on {name(W2)}: worker {name(W2)} exited (last progress: 70% 'refining')",
        f"attempt 3 on {name(W3)}: worker {name(W3)} process was killed by SIGKILL "
        "(last progress: 'starting over')",
    ]
    reply = c.results("j")
    assert reply.data[0][1] == Status.FAILED and reply.data[0][2] == evidence
    assert c.core.jobs["j"].blobs is None, "a failed job's contents are let go"

    register(c, W4, credit=1)
    assert ids_sent(c.flush(), W4) == [], "a failed job is never sent again"


def test_max_retries_per_submission_overrides_the_config() -> None:
    c = Core(max_retries=0)
    register(c, W1, credit=2)
    submit(c, "retried", max_retries=1)
    submit(c, "default")
    c.flush()
    c.report(W1, started=["retried", "default"])
    c.goodbye(W1)
    assert (c.status("retried"), attempt(c, "retried")) == (Status.QUEUED, 2)
    assert c.status("default") is Status.FAILED  # max_retries=0: no retry, FAILED at once

    c = Core(max_retries=3)
    register(c, W1)
    submit(c, "none", max_retries=0)
    c.flush()
    c.report(W1, started=["none"])
    c.goodbye(W1)
    assert c.status("none") is Status.FAILED
    assert "(max_retries=0)" in reason(c, "none")


def test_started_jobs_keep_their_contents_only_while_retries_are_left() -> None:
    c = Core(max_retries=1)
    register(c, W1)
    submit(c, "j")
    c.flush()
    c.report(W1, started=["j"])
    assert c.core.jobs["j"].blobs == [b"j"]
    c.goodbye(W1)
    register(c, W2)
    c.flush()
    c.report(W2, started=["j"])  # the last attempt: it will never be sent again
    assert c.core.jobs["j"].blobs is None


def test_unstarted_jobs_are_requeued_without_counting_an_attempt() -> None:
    c = Core(max_retries=1)
    register(c, W1, credit=3)
    submit(c, "a", "b", "c")
    assert ids_sent(c.flush(), W1) == ["a", "b", "c"]
    c.report(W1, started=["a"])
    c.core.process_exited(HOST, PIDS[W1], "exited with code 1", c.now)
    assert [attempt(c, i) for i in "abc"] == [2, 1, 1]
    assert all(c.status(i) is Status.QUEUED for i in "abc")
    assert c.core.jobs["b"].evidence is None, "nothing to explain: b never ran"

    register(c, W2, credit=3)
    assert ids_sent(c.flush(), W2) == ["a", "b", "c"], "in submission order"
    c.report(W2, started=["b"])
    c.goodbye(W2)
    # b's first real run was lost: it may run once more; a had its one retry and fails
    assert (c.status("b"), attempt(c, "b")) == (Status.QUEUED, 2)
    assert c.status("a") is Status.QUEUED, "a never started on W2 either"
    assert attempt(c, "a") == 2


def test_a_held_reply_does_not_put_off_the_next_tick() -> None:
    c = Core()
    register(c, W1, heartbeat=1.0)
    submit(c, "j")
    c.flush()
    c.report(W1, started=["j"])
    c.send(p.ProgressRequest(c.rid(), "j", 0, 30.0, False))  # held for 30 s
    assert c.flush().clients == []
    assert c.core.next_deadline(c.now) <= c.now + 1.0, "W1's next heartbeat is due in 1 s"


def test_process_exited_loses_only_that_process_with_its_exit_status() -> None:
    c = Core(max_retries=1)
    register(c, W1)
    register(c, W2)
    submit(c, "one", "two")
    c.flush()
    c.report(W1, started=["one"])
    c.report(W2, started=["two"])
    c.core.process_exited("another-host", PIDS[W1], "was killed by SIGKILL", c.now)
    c.core.process_exited(HOST, 999, "was killed by SIGKILL", c.now)
    assert set(c.core.workers) == {W1, W2}, "another host's pid, or a pid no worker has"

    c.core.process_exited(HOST, PIDS[W1], "was killed by SIGKILL", c.now)
    assert set(c.core.workers) == {W2}
    row = c.status_row("one")
    assert (Status(row[1]), row[6]) == (Status.QUEUED, 2)
    register(c, W3)
    c.flush()
    c.report(W3, started=["one"])
    c.core.process_exited(HOST, PIDS[W3], "exited with code 3", c.now)
    assert c.status("one") is Status.FAILED
    assert lines(reason(c, "one")) == [
        f"attempt 1 on {name(W1)}: worker {name(W1)} process was killed by SIGKILL",
        f"attempt 2 on {name(W3)}: worker {name(W3)} process exited with code 3",
    ]
    assert c.status("two") is Status.IN_PROGRESS


def test_a_late_result_from_a_worker_given_up_on_is_dropped() -> None:
    c = Core(max_retries=2)
    register(c, W1)
    submit(c, "j")
    c.flush()
    c.report(W1, started=["j"])
    register(c, W2)
    advance(c, 3.5, alive=[W2])  # W1 is lost; W2 takes the job again
    assert attempt(c, "j") == 2
    c.report(W2, started=["j"])

    # W1 was only slow: its result arrives, then it registers again still holding nothing
    c.report(W1, results={"j": b"from W1"})
    (err,) = to_worker(c.flush(), W1, p.Error)
    assert err.code == "unknown-worker"
    register(c, W1, held=["j"])  # it even claims the job: W2 has it now
    assert c.core.jobs["j"].worker == W2
    c.report(W1, results={"j": b"from W1, again"})
    assert c.status("j") is Status.IN_PROGRESS
    assert c.core.counters["dropped_results"] == 1

    collect = c.send(p.CollectRequest(c.rid(), "w", ["j"], 10.0, 100))
    c.report(W2, results={"j": b"from W2"})
    c.report(W1, results={"j": b"from W1, late"})  # after the job ended: dropped too
    assert c.core.counters["dropped_results"] == 2
    out = c.flush()
    (answer,) = [m for m in replies(out, CLIENT) if m.rid == collect]
    assert [r[0] for r in answer.data["results"]] == ["j"]
    assert result_values(c.results("j")) == {"j": b"from W2"}
    assert c.core.counters["finished"] == 1


def test_a_late_result_after_the_job_failed_is_dropped() -> None:
    c = Core(max_retries=0)
    register(c, W1)
    submit(c, "j")
    c.flush()
    c.report(W1, started=["j"])
    advance(c, 3.5)
    assert c.status("j") is Status.FAILED
    register(c, W1, held=["j"])
    c.report(W1, results={"j": b"too late"})
    assert c.status("j") is Status.FAILED
    assert result_values(c.results("j")) == {"j": None}
    assert c.core.counters["dropped_results"] == 1


# ============================================================================ time limits


def test_queue_time_limit_expires_a_job_nobody_took_naming_its_requirements() -> None:
    c = Core()
    reqs = JobRequirements(EDGES, "Mesher", {"quality": "fine"})
    jobs = [p.SubmittedJob("late", reqs, ("data",), [b"x"])]
    c.ask(p.SubmitRequest(c.rid(), jobs, {"queue_time_limit": 2.0, "wait_for_worker": True}))
    submit(c, "taken", queue_time_limit=2.0)
    register(c, W1)  # a plain worker: takes "taken", cannot take "late"
    c.flush()
    advance(c, 1.75, alive=[W1])
    assert c.status("late") is Status.QUEUED
    advance(c, 2.25, alive=[W1])
    assert c.status("late") is Status.EXPIRED
    what = "Edges->Mesh2D named 'Mesher' tagged {'quality': 'fine'}"
    assert reason(c, "late") == (
        f"no worker for {what} took it within its queue time limit of 2 s "
        f"(no connected worker serves {what}; waiting for one to connect)"
    )
    assert c.status("taken") is Status.IN_PROGRESS, "assigned in time: W1 holds it"
    assert c.core.jobs["taken"].worker == W1
    assert c.core.demand() == {}, "an expired job is no demand"


def test_time_limit_fails_the_job_cancels_it_and_kills_a_silent_worker() -> None:
    c = Core(kill_grace=2.0)
    register(c, W1)
    submit(c, "slow", time_limit=5.0)
    c.flush()
    c.report(W1, started=["slow"])
    out = advance(c, 4.75, alive=[W1])
    assert c.status("slow") is Status.IN_PROGRESS
    assert to_worker(out, W1, p.Cancel) == []
    out = advance(c, 5.0, alive=[W1])
    assert c.status("slow") is Status.FAILED
    assert reason(c, "slow") == "time limit: ran over 5 s"
    assert [m.ids for m in to_worker(out, W1, p.Cancel)] == [["slow"]]
    assert out.kills == []

    out = advance(c, 6.75, alive=[W1])  # W1 heartbeats but never says it stopped the job
    assert out.kills == []
    out = advance(c, 7.0, alive=[W1])
    assert out.kills == [(HOST, PIDS[W1])]
    out = advance(c, 20.0, alive=[W1])
    assert out.kills == [], "killed once"


@pytest.mark.parametrize("answer", ["result", "failure"])
def test_a_worker_that_stops_its_timed_out_job_is_not_killed(answer: str) -> None:
    c = Core(kill_grace=2.0)
    register(c, W1)
    submit(c, "slow", time_limit=5.0)
    c.flush()
    c.report(W1, started=["slow"])
    advance(c, 5.5, alive=[W1])
    assert c.status("slow") is Status.FAILED
    if answer == "result":
        c.report(W1, results={"slow": b"too late"})
    else:
        c.report(W1, failures=[("slow", "cancelled", "")])
    out = advance(c, 10.0, alive=[W1])
    assert out.kills == []
    assert c.status("slow") is Status.FAILED
    assert reason(c, "slow").startswith("time limit")


def test_a_lost_worker_after_its_time_limit_is_not_killed() -> None:
    c = Core(kill_grace=2.0)
    register(c, W1, heartbeat=0.5)
    submit(c, "slow", time_limit=1.0)
    c.flush()
    c.report(W1, started=["slow"])
    out = advance(c, 10.0)  # silent: cancelled at 1 s, lost at 1.5 s, grace ends at 3 s
    assert c.status("slow") is Status.FAILED
    assert out.kills == [], "the broker no longer knows that worker"


def test_time_limit_of_a_retried_job_counts_from_its_new_dispatch() -> None:
    c = Core(max_retries=1)
    register(c, W1)
    submit(c, "j", time_limit=5.0)
    c.flush()
    c.report(W1, started=["j"])
    c.goodbye(W1)  # at 0 s: attempt 2
    advance(c, 3.0)
    register(c, W2)  # assigned at 3 s
    c.flush()
    c.report(W2, started=["j"])
    advance(c, 7.75, alive=[W2])
    assert c.status("j") is Status.IN_PROGRESS, "the first attempt's limit no longer counts"
    advance(c, 8.25, alive=[W2])
    assert c.status("j") is Status.FAILED
    assert reason(c, "j") == "time limit: ran over 5 s"


def test_time_limit_of_a_job_requeued_unstarted_counts_from_its_new_assignment() -> None:
    c = Core()
    register(c, W1)
    submit(c, "j", time_limit=5.0)
    assert ids_sent(c.flush(), W1) == ["j"]  # its run limit is armed: 5 s
    c.goodbye(W1)  # W1 never started it: requeued, still attempt 1
    advance(c, 3.0)
    register(c, W2)  # assigned again at 3 s
    c.flush()
    c.report(W2, started=["j"])
    advance(c, 7.0, alive=[W2])  # 4 s on W2
    assert c.status("j") is Status.IN_PROGRESS, reason(c, "j")


def test_a_prefetched_job_counts_its_time_limit_from_dispatch() -> None:
    """Issue 9 point 2: the limit counts from the moment the broker hands the job over, so a
    job waiting in a prefetching worker's inbox counts too."""
    c = Core()
    register(c, W1, credit=2)  # a worker that prefetches
    submit(c, "long")
    submit(c, "next", time_limit=5.0)
    assert ids_sent(c.flush(), W1) == ["long", "next"]
    c.report(W1, started=["long"])
    out = advance(c, 4.75, alive=[W1])  # "next" still waits in the worker's inbox
    assert c.status("next") is Status.IN_PROGRESS
    assert to_worker(out, W1, p.Cancel) == []
    out = advance(c, 5.0, alive=[W1])
    assert c.status("next") is Status.FAILED
    assert reason(c, "next") == "time limit: ran over 5 s"
    assert [m.ids for m in to_worker(out, W1, p.Cancel)] == [["next"]]
    assert c.status("long") is Status.IN_PROGRESS, "no limit of its own"


# ============================================================================ the journal


def test_journal_batches_record_every_change_of_a_pass() -> None:
    c = journaled(max_retries=1, result_ttl=10.0)
    core = c.core
    assert core.take_journal() is None, "nothing happened yet"

    submit(c, "j", max_retries=1)
    batch = core.take_journal()
    assert batch is not None
    opts = {"wait_for_worker": True, "max_retries": 1}
    assert batch.submitted == [
        ("j", JobRequirements(EDGES).to_wire(), ("data",), [b"j"], 1, 1000.0, opts)
    ]
    assert batch.status == batch.results == batch.progress == batch.forgotten == []
    assert core.take_journal() is None, "a batch is handed over once"

    register(c, W1)
    assert ids_sent(c.flush(), W1) == ["j"]
    batch = core.take_journal()
    assert batch is not None, "an assignment is journaled: the job is IN_PROGRESS on W1"
    assert batch.status == [("j", int(Status.IN_PROGRESS), "", "", 1, name(W1))]

    c.report(W1, started=["j"], progress=[("j", 30, "a"), ("j", 60, "b")])
    batch = core.take_journal()
    assert batch is not None
    assert batch.status == [], "started changes no status"
    assert batch.progress == [("j", 1, 30, "a"), ("j", 2, 60, "b")]

    c.goodbye(W1)
    batch = core.take_journal()
    assert batch is not None
    assert batch.status == [("j", int(Status.QUEUED), "", "", 2, "")]

    register(c, W2)
    c.flush()
    c.report(W2, started=["j"], results={"j": b"done"})
    batch = core.take_journal()
    assert batch is not None
    assert batch.results == [("j", b"done")]
    assert batch.status == [
        ("j", int(Status.IN_PROGRESS), "", "", 2, name(W2)),
        ("j", int(Status.FINISHED), "", "", 2, name(W2)),
    ]

    submit(c, "bad", "stop")
    core.take_journal()
    c.terminate("stop")
    c.flush()
    c.report(W2, credit=1)
    c.flush()
    c.report(W2, started=["bad"], failures=[("bad", "no mesh", "tb")])
    batch = core.take_journal()
    assert batch is not None
    assert ("stop", int(Status.TERMINATED), "terminated by a client", "", 1, "") in batch.status
    assert ("bad", int(Status.FAILED), "no mesh", "tb", 1, name(W2)) in batch.status

    advance(c, 11.0, alive=[W2])
    batch = core.take_journal()
    assert batch is not None
    assert sorted(batch.forgotten) == ["bad", "j", "stop"]


def test_a_journal_free_core_gathers_nothing() -> None:
    c = Core()
    register(c, W1)
    submit(c, "j")
    c.flush()
    c.report(W1, started=["j"], results={"j": b"r"})
    assert c.core.journal is None
    assert c.core.take_journal() is None


def crash_and_restore(c: Core, path: Path, **config: Any) -> Core:
    """Write what ``c`` journaled to ``path``, then build a fresh broker from that file (as a
    broker started again on its journal does). The restore tests here pass ``restart_grace=0``
    (running jobs queue again at once); tests/test_acks.py tests the grace."""
    with Journal(path) as journal:
        batch = c.core.take_journal()
        if batch is not None:
            journal.write(batch)
    restored = journaled(**config)
    with Journal(path) as journal:
        restored.core.restore(journal.load(), restored.now)
    return restored


def before_the_crash(**config: Any) -> Core:
    """A broker with a finished job, a running one with progress and a queued one."""
    c = journaled(**config)
    register(c, W1, credit=2)
    submit(c, "done", "running")
    c.flush()
    c.report(
        W1,
        started=["done", "running"],
        progress=[("running", 30, "a"), ("running", 60, "b")],
        results={"done": b"the result"},
    )
    submit(c, "waiting")
    assert c.status("waiting") is Status.QUEUED
    return c


def test_restore_keeps_results_and_requeues_queued_and_running_jobs(tmp_path: Path) -> None:
    c = crash_and_restore(
        before_the_crash(max_retries=2), tmp_path / "j.db", max_retries=2, restart_grace=0
    )

    assert result_values(c.results("done")) == {"done": b"the result"}
    assert c.status_row("done")[:2] == ["done", Status.FINISHED]
    assert (c.status("waiting"), attempt(c, "waiting")) == (Status.QUEUED, 1)
    assert (c.status("running"), attempt(c, "running")) == (Status.QUEUED, 2)
    assert c.progress("running").data["updates"] == [[1, 30, "a"], [2, 60, "b"]]
    assert c.core.jobs["running"].evidence == ["attempt 1: the broker restarted while it ran"]
    batch = c.core.take_journal()
    assert batch is not None and sorted(batch.status) == [
        ("running", int(Status.QUEUED), "", "", 2, ""),
        ("waiting", int(Status.QUEUED), "", "", 1, ""),
    ]

    register(c, W2, credit=5)
    (msg,) = to_worker(c.flush(), W2, p.Jobs)
    assert [(j.id, list(j.values)) for j in msg.jobs] == [
        ("running", [b"running"]),
        ("waiting", [b"waiting"]),
    ]
    # progress goes on from where the history stopped
    c.report(W2, started=["running"], progress=[("running", 90, "c")])
    assert c.progress("running", since=2).data["updates"] == [[3, 90, "c"]]

    # the restart counted as an attempt: two more losses exhaust max_retries=2
    c.goodbye(W2)
    register(c, W3)
    c.flush()
    c.report(W3, started=["running"])
    c.goodbye(W3)
    assert c.status("running") is Status.FAILED
    assert lines(reason(c, "running")) == [
        "attempt 1: the broker restarted while it ran",
        f"attempt 2 on {name(W2)}: worker {name(W2)} exited (last progress: 90% 'c')",
        f"attempt 3 on {name(W3)}: worker {name(W3)} exited (last progress: 90% 'c')",
    ]


def test_restore_keeps_failure_reasons(tmp_path: Path) -> None:
    c = journaled()
    register(c, W1, credit=2)
    submit(c, "bad", "stop")
    c.flush()
    c.report(W1, started=["bad"], failures=[("bad", "no mesh", "Traceback: ...")])
    c.terminate("stop")
    c = crash_and_restore(c, tmp_path / "j.db")
    assert c.results("bad", "stop").data == [
        ["bad", Status.FAILED, "no mesh", "Traceback: ...", None],
        ["stop", Status.TERMINATED, "terminated by a client", "", None],
    ]


def test_a_worker_that_registers_holding_a_restored_job_gets_it_back(tmp_path: Path) -> None:
    c = crash_and_restore(
        before_the_crash(max_retries=2), tmp_path / "j.db", max_retries=2, restart_grace=0
    )
    c.core.take_journal()

    register(c, W1, credit=0, held=["running"])  # the worker kept working through the restart
    assert c.status("running") is Status.IN_PROGRESS
    assert c.core.jobs["running"].worker == W1
    batch = c.core.take_journal()
    assert batch is not None
    assert batch.status == [("running", int(Status.IN_PROGRESS), "", "", 2, name(W1))]
    register(c, W2, credit=5)
    out = c.flush()
    assert jobs_sent(out) == {W2: [["waiting"]]}, "the held job is not sent again"

    c.report(W1, progress=[("running", 100, "done")], results={"running": b"kept working"})
    assert c.status("running") is Status.FINISHED
    assert result_values(c.results("running")) == {"running": b"kept working"}
    assert c.core.stats()["queued"] == 0


def test_a_worker_holding_a_job_that_ended_does_not_get_it(tmp_path: Path) -> None:
    c = crash_and_restore(
        before_the_crash(max_retries=2), tmp_path / "j.db", max_retries=2, restart_grace=0
    )
    register(c, W2, credit=1)
    assert ids_sent(c.flush(), W2) == ["running"]
    register(c, W1, credit=0, held=["running", "done", "unknown"])
    assert c.core.jobs["running"].worker == W2, "already given to another worker"
    assert c.status("done") is Status.FINISHED
    assert c.core.workers[W1].jobs == set()


def test_restore_fails_a_running_job_that_has_no_retry_left(tmp_path: Path) -> None:
    c = crash_and_restore(
        before_the_crash(max_retries=0), tmp_path / "j.db", max_retries=0, restart_grace=0
    )
    assert c.status("running") is Status.FAILED
    assert "the broker restarted while it ran" in reason(c, "running")


def test_restore_keeps_the_queue_time_limit(tmp_path: Path) -> None:
    c = journaled()
    submit(c, "j", queue_time_limit=2.0)
    c = crash_and_restore(c, tmp_path / "j.db")
    advance(c, 2.5)
    assert c.status("j") is Status.EXPIRED


def test_restore_keeps_a_file_jobs_files_and_args(tmp_path: Path) -> None:
    c = journaled()
    fs = p.FileSet([p.FileEntry("in.txt", "rb", b"input bytes")], ["--fine"])
    job = p.SubmittedJob("f", JobRequirements(EDGES), files=fs)
    c.ask(p.SubmitRequest(c.rid(), [job], {"host": HOST, "wait_for_worker": True}))
    c = crash_and_restore(c, tmp_path / "j.db")
    register(c, W1)
    (msg,) = to_worker(c.flush(), W1, p.Jobs)
    (sent,) = msg.jobs
    assert sent.files is not None
    assert list(sent.files.args) == ["--fine"]
    assert [bytes(e.data) for e in sent.files.files] == [b"input bytes"]
