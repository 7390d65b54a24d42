"""Issue 9 point 1: a finished result is never thrown away.

A worker numbers the reports it must not lose (``seq``) and keeps them until the broker
acknowledges them (``ack``, or ``jobs.ack``); it sends them again after it registers again. A
broker started again on its journal gives a running job back to the worker that ran it when
that worker comes back holding it within ``restart_grace``. Pure-core rules first, then real
processes: a ``remus server --journal`` SIGKILLed while a job runs and started again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from core_helpers import EDGES, W1, W2, Core, ids_sent, result_values, to_worker
from helpers_e2e import launch_cli_server

from remus import IOType, JobRequirements, JobSubmission, Status
from remus import protocol as p
from remus.server import ServerPorts
from remus.server.core import BrokerCore
from remus.server.journal import Journal
from remus.server.recovery import ACK_DELAY, local_process_gone

pytestmark = pytest.mark.timeout(60)

HOST = "host-a"
PIDS = {W1: 101, W2: 102}
RELEASE_WORKER = str(Path(__file__).resolve().parent / "workers" / "release_worker.py")
SLOW = 20.0

MakeProcess = Callable[..., subprocess.Popen[str]]


# ============================================================================ pure core


def name(wid: bytes) -> str:
    return f"worker@{HOST}:{PIDS[wid]}"


def journaled(**config: Any) -> Core:
    c = Core(**config)
    c.core = BrokerCore(c.core.config, now=c.now, journal=True, wall_clock=lambda: 1000.0)
    return c


def register(c: Core, wid: bytes, *, credit: int = 1, held: Iterable[str] = ()) -> None:
    msg = p.Register(JobRequirements(EDGES), 1.0, HOST, PIDS[wid], credit, list(held))
    c.core.worker_message(wid, msg, c.now)


def submit(c: Core, *ids: str, **opts: Any) -> None:
    jobs = [p.SubmittedJob(i, JobRequirements(EDGES), ("data",), [i.encode()]) for i in ids]
    reply = c.ask(p.SubmitRequest(c.rid(), jobs, {"wait_for_worker": True, **opts}))
    assert isinstance(reply, p.Reply), reply


def report(c: Core, wid: bytes, seq: int, **parts: Any) -> None:
    results = list(parts.pop("results", {}).items())
    c.core.worker_message(wid, p.Report(results=results, seq=seq, **parts), c.now)


def acks(out: Any, wid: bytes) -> list[tuple[int, list[tuple[str, str]]]]:
    """Every acknowledgement ``wid`` got: (seq, dropped), from ack and jobs messages alike."""
    got = []
    for w, msg in out.workers:
        if w == wid and isinstance(msg, p.Ack):
            got.append((msg.seq, list(msg.dropped)))
        elif w == wid and isinstance(msg, p.Jobs) and msg.ack:
            got.append((msg.ack, []))
    return got


def acked_in_time(c: Core, wid: bytes) -> list[tuple[int, list[tuple[str, str]]]]:
    """The acks ``wid`` gets by the time the longest wait for a message to ride on is over."""
    got = acks(c.flush(), wid)
    return got + acks(c.tick(c.now + ACK_DELAY), wid)


def crash_and_restore(c: Core, path: Path, **config: Any) -> Core:
    """Journal what ``c`` did, then build a fresh broker from the file, as a restart does."""
    with Journal(path) as journal:
        batch = c.core.take_journal()
        if batch is not None:
            journal.write(batch)
    restored = journaled(**config)
    with Journal(path) as journal:
        restored.core.restore(journal.load(), restored.now, acks=journal.worker_acks())
    return restored


def running_on_w1(**config: Any) -> Core:
    """A broker whose worker W1 runs job "run" (started, with progress); "wait" is queued."""
    c = journaled(**config)
    register(c, W1, credit=1)
    submit(c, "run")
    assert ids_sent(c.flush(), W1) == ["run"]
    report(c, W1, 1, started=["run"], progress=[("run", 40, "meshing")])
    submit(c, "wait")
    c.flush()
    return c


def test_a_report_is_applied_once_and_acknowledged_each_time_it_comes() -> None:
    c = journaled()
    register(c, W1, credit=1)
    submit(c, "j")
    c.flush()
    report(c, W1, 1, started=["j"], progress=[("j", 10, "a")])
    assert acked_in_time(c, W1) == [(1, [])]
    # the ack was lost: the worker sends the same report again after it re-registers
    register(c, W1, credit=0, held=["j"])
    report(c, W1, 1, started=["j"], progress=[("j", 10, "a")])
    assert acked_in_time(c, W1) == [(1, [])], "a copy is acknowledged again"
    assert c.progress("j").data["updates"] == [[1, 10, "a"]], "and not applied twice"
    report(c, W1, 2, results={"j": b"r"})
    assert acked_in_time(c, W1) == [(2, [])]
    assert result_values(c.results("j")) == {"j": b"r"}
    report(c, W1, 2, results={"j": b"r"})
    assert acked_in_time(c, W1) == [(2, [])]
    assert c.core.stats()["finished"] == 1


def test_a_credit_only_report_needs_no_ack() -> None:
    c = journaled()
    register(c, W1, credit=0)
    c.flush()
    report(c, W1, 0, credit=1)
    assert acks(c.flush(), W1) == []


def test_the_ack_rides_on_the_jobs_message_of_the_same_pass() -> None:
    c = journaled()
    register(c, W1, credit=1)
    submit(c, "a", "b")
    c.flush()
    report(c, W1, 1, started=["a"], results={"a": b"r"}, credit=1)
    out = c.flush()
    assert to_worker(out, W1, p.Ack) == [], "no extra message while jobs flow"
    (jobs,) = to_worker(out, W1, p.Jobs)
    assert ([j.id for j in jobs.jobs], jobs.ack) == (["b"], 1)


def test_a_refused_result_is_named_in_the_ack_with_why() -> None:
    c = journaled()
    register(c, W1, credit=2)
    submit(c, "stopped", "timed", time_limit=1.0)
    c.flush()
    c.terminate("stopped")
    c.advance(1.5, alive=[W1])
    report(c, W1, 1, results={"stopped": b"late", "timed": b"late"}, failures=[("x", "no", "")])
    out = c.flush()
    (ack,) = to_worker(out, W1, p.Ack)
    assert ack.seq == 1
    assert dict(ack.dropped) == {
        "stopped": "the job is already TERMINATED: terminated by a client",
        "timed": "the job is already FAILED: time limit: ran over 1 s",
        "x": "the broker does not know the job (forgotten, or never journaled)",
    }


def test_a_result_for_a_job_given_to_another_worker_is_refused() -> None:
    c = journaled(max_retries=1)
    register(c, W1, credit=1)
    submit(c, "j")
    c.flush()
    report(c, W1, 1, started=["j"])
    c.advance(4.0, alive=[])  # W1 is lost; the job goes to W2
    register(c, W2, credit=1)
    c.flush()
    register(c, W1, credit=0)
    report(c, W1, 2, results={"j": b"late"})
    (ack,) = to_worker(c.flush(), W1, p.Ack)
    assert list(ack.dropped) == [("j", "the job was given to another worker")]


def test_acks_go_before_the_shutdown_of_the_same_pass() -> None:
    c = journaled()
    register(c, W1, credit=1)
    submit(c, "j")
    c.flush()
    report(c, W1, 1, results={"j": b"r"})
    out = c.core.shutdown()
    kinds = [type(m) for w, m in out.workers if w == W1]
    assert kinds.index(p.Ack) < kinds.index(p.Shutdown)


def test_a_restored_running_job_waits_for_its_worker_and_goes_back_to_it(tmp_path: Path) -> None:
    c = crash_and_restore(running_on_w1(max_retries=2), tmp_path / "j.db", max_retries=2)
    row = c.status_row("run")
    assert (Status(row[1]), row[6]) == (Status.QUEUED, 1)
    assert row[5] == (
        f"waiting up to 10 s for worker {name(W1)}, which ran it before the broker restarted"
    )
    register(c, W2, credit=5)  # another worker does not get it meanwhile
    assert ids_sent(c.flush(), W2) == ["wait"]

    c.advance(5.0, alive=[W2])
    register(c, W1, credit=0, held=["run"])
    assert c.core.jobs["run"].worker == W1
    assert (c.status("run"), c.status_row("run")[6]) == (Status.IN_PROGRESS, 1)
    report(c, W1, 7, results={"run": b"the first result"})
    assert acks(c.flush(), W1) == [(7, [])]
    assert result_values(c.results("run")) == {"run": b"the first result"}
    assert c.status_row("run")[6] == 1, "the restart cost no attempt"
    c.advance(12.0, alive=[W1, W2])  # the grace's end finds nothing to do
    assert c.status("run") is Status.FINISHED
    assert c.core.stats()["queued"] == 0


def test_after_the_grace_a_restored_running_job_is_requeued_counting_an_attempt(
    tmp_path: Path,
) -> None:
    c = crash_and_restore(running_on_w1(max_retries=2), tmp_path / "j.db", max_retries=2)
    c.advance(9.75)
    assert c.status("run") is Status.QUEUED and c.core.stats()["queued"] == 1  # "wait" only
    c.advance(10.25)
    row = c.status_row("run")
    assert (Status(row[1]), row[6]) == (Status.QUEUED, 2)
    assert "waiting up to" not in row[5]
    assert c.core.jobs["run"].evidence == [
        f"attempt 1 on {name(W1)}: the broker restarted while it ran, and the worker did not "
        "come back for it within 10 s"
    ]
    register(c, W2, credit=5)
    assert ids_sent(c.flush(), W2) == ["run", "wait"]
    # W1 comes back too late: the job is no longer its own
    register(c, W1, credit=0, held=["run"])
    report(c, W1, 2, results={"run": b"too late"})  # (its report 1 was applied before)
    (ack,) = to_worker(c.flush(), W1, p.Ack)
    assert list(ack.dropped) == [("run", "the job was given to another worker")]


def test_after_the_grace_a_job_with_no_retry_left_fails(tmp_path: Path) -> None:
    c = crash_and_restore(running_on_w1(max_retries=0), tmp_path / "j.db", max_retries=0)
    c.advance(10.25)
    assert c.status("run") is Status.FAILED
    assert c.status_row("run")[5].startswith("no retry left (max_retries=0): attempt 1 on ")
    assert c.core.stats()["queued"] == 1  # "wait": the queue's counts are intact


def test_its_worker_back_without_the_job_requeues_it_at_once_without_an_attempt(
    tmp_path: Path,
) -> None:
    c = crash_and_restore(running_on_w1(max_retries=2), tmp_path / "j.db", max_retries=2)
    register(c, W1, credit=0, held=[])  # it never got it (lost in flight with the broker)
    row = c.status_row("run")
    assert (Status(row[1]), row[6]) == (Status.QUEUED, 1)
    assert "waiting" not in row[5]
    register(c, W2, credit=5)
    assert ids_sent(c.flush(), W2) == ["run", "wait"]


def test_a_job_waiting_for_its_worker_can_be_terminated(tmp_path: Path) -> None:
    c = crash_and_restore(running_on_w1(), tmp_path / "j.db")
    c.terminate("run")
    assert c.status("run") is Status.TERMINATED
    assert c.core.stats()["queued"] == 1
    c.advance(11.0)
    assert c.status("run") is Status.TERMINATED
    register(c, W1, credit=0, held=["run"])
    assert c.core.workers[W1].jobs == set()


def test_a_second_restart_during_the_grace_waits_again(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    c = crash_and_restore(running_on_w1(), path)
    c.advance(5.0)
    c = crash_and_restore(c, path)
    assert c.status_row("run")[6] == 1
    register(c, W1, credit=0, held=["run"])
    assert c.status("run") is Status.IN_PROGRESS


def test_a_worker_known_to_be_gone_is_not_waited_for(tmp_path: Path) -> None:
    c = running_on_w1(max_retries=2)
    with Journal(tmp_path / "j.db") as journal:
        batch = c.core.take_journal()
        assert batch is not None
        journal.write(batch)
    c = journaled(max_retries=2)
    with Journal(tmp_path / "j.db") as journal:
        c.core.restore(journal.load(), c.now, gone=lambda worker: worker == name(W1))
    assert (c.status("run"), c.status_row("run")[6]) == (Status.QUEUED, 2)
    assert c.core.jobs["run"].evidence == ["attempt 1: the broker restarted while it ran"]


def test_local_process_gone_knows_only_processes_of_this_host(
    make_process: MakeProcess,
) -> None:
    gone = local_process_gone("this-host")
    dead = make_process(["-c", "pass"])
    assert dead.wait(10) == 0
    assert gone(f"worker@this-host:{dead.pid}")
    assert not gone(f"worker@this-host:{os.getpid()}")
    assert not gone(f"a:b@other-host:{dead.pid}"), "another host's process: not ours to test"
    assert not gone("worker@this-host:not-a-pid")


# ============================================================================ real processes


def launch(make_process: MakeProcess, journal: Path, ports: ServerPorts) -> Any:
    """``remus server --journal`` on ``ports``: (process, real endpoints), or None if a port
    was taken meanwhile (the process has exited)."""
    proc, got = launch_cli_server(make_process, "--journal", str(journal), ports=ports)
    return None if got is None else (proc, got)


def start(
    make_process: MakeProcess, journal: Path, ports: ServerPorts | None = None
) -> tuple[subprocess.Popen[str], ServerPorts]:
    """Start on free ports, or start again on exactly ``ports`` (retrying while a port freed
    by the kill is taken by someone else)."""
    deadline = time.monotonic() + 15
    while True:
        got = launch(make_process, journal, ports or ServerPorts.ephemeral())
        if got is not None:
            assert ports is None or got[1] == ports
            return got
        assert time.monotonic() < deadline, f"the broker did not start on {ports}"
        time.sleep(0.1)  # pacing between attempts, not a wait for a condition


def release_worker(make_process: MakeProcess, endpoint: str, folder: Path, *args: str) -> Any:
    return make_process(
        [RELEASE_WORKER, endpoint, str(folder), *args],
        stderr=subprocess.PIPE,
    )


DATA = IOType("Text", "Released")


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_a_result_made_while_the_broker_is_down_is_handed_in_after_it_restarts(
    tmp_path: Path, make_process: MakeProcess, make_client: Any
) -> None:
    journal = tmp_path / "remus.db"
    broker, ports = start(make_process, journal)
    worker = release_worker(make_process, ports.worker, tmp_path)
    c = make_client(ports.client, timeout=5.0)
    job = c.submit_job(JobSubmission.of(DATA, b"payload"), wait_for_worker=True)
    runs = tmp_path / "runs"
    wait_for(lambda: runs.exists() and runs.read_text(), timeout=SLOW)

    broker.send_signal(signal.SIGKILL)
    broker.wait(10)
    (tmp_path / "release").touch()  # the handler returns while no broker is there
    wait_for(lambda: (tmp_path / "returned").exists(), timeout=SLOW)
    broker, _ = start(make_process, journal, ports)

    status = wait_for(
        lambda: (lambda s: s if s.status.done else None)(c.job_status(job)), timeout=SLOW
    )
    assert (status.status, status.attempt) == (Status.FINISHED, 1), status
    assert c.retrieve_result(job).data == b"first run of payload"
    assert runs.read_text().splitlines() == [job.id], "the handler ran once"

    broker.terminate()
    assert broker.wait(10) == 0
    assert worker.wait(10) == 0
    assert worker.stderr is not None
    err = worker.stderr.read()
    assert "no broker took" not in err and "dropped its result" not in err, err


def test_a_result_for_a_job_terminated_while_it_ran_is_named_in_a_warning(
    make_server: Any, make_client: Any, make_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    c = make_client(server.ports.client)
    w = make_worker(JobRequirements(DATA), server.ports.worker)
    job = c.submit_job(JobSubmission.of(DATA, b"x"), wait_for_worker=True)
    got = w.get_job(timeout=SLOW)
    assert got.id == job.id
    c.terminate(job)
    wait_for(lambda: w.job_should_be_terminated(got), timeout=SLOW)
    with caplog.at_level(logging.WARNING, logger="remus.worker.connection"):
        w.return_result(got, b"made anyway")  # step by step: nothing stops it being sent
        wait_for(lambda: "dropped its result" in caplog.text, timeout=SLOW)
    assert f"job {job.id}: the broker dropped its result: the job is already TERMINATED" in (
        caplog.text
    )
    assert c.job_status(job).status is Status.TERMINATED


def test_a_cancelled_handler_result_is_named_in_a_warning(
    tmp_path: Path, make_server: Any, make_client: Any, make_process: MakeProcess
) -> None:
    server = make_server()
    c = make_client(server.ports.client)
    worker = release_worker(make_process, server.ports.worker, tmp_path)
    job = c.submit_job(JobSubmission.of(DATA, b"x"), wait_for_worker=True)
    wait_for(lambda: (tmp_path / "runs").exists(), timeout=SLOW)
    c.terminate(job)
    wait_for(lambda: (tmp_path / "cancelled").exists(), timeout=SLOW)
    (tmp_path / "release").touch()
    wait_for(lambda: (tmp_path / "returned").exists(), timeout=SLOW)
    server.stop()
    assert worker.wait(10) == 0
    assert worker.stderr is not None
    err = worker.stderr.read()
    assert f"job {job.id} was cancelled while it ran" in err, err


def test_a_worker_that_closes_with_a_result_no_broker_took_names_the_job(
    tmp_path: Path, make_process: MakeProcess, make_client: Any
) -> None:
    journal = tmp_path / "remus.db"
    broker, ports = start(make_process, journal)
    worker = release_worker(make_process, ports.worker, tmp_path, "--exit-after-one")
    c = make_client(ports.client, timeout=5.0)
    job = c.submit_job(JobSubmission.of(DATA, b"payload"), wait_for_worker=True)
    wait_for(lambda: (tmp_path / "runs").exists(), timeout=SLOW)
    broker.send_signal(signal.SIGKILL)  # gone for good
    broker.wait(10)
    (tmp_path / "release").touch()
    assert worker.wait(SLOW) == 0
    assert worker.stderr is not None
    err = worker.stderr.read()
    assert f"no broker took the result of job {job.id}" in err, err
    assert os.path.exists(tmp_path / "returned")


def test_an_ack_waits_for_the_next_job_then_goes_alone_on_time() -> None:
    """One job at a time, the next job's message carries the ack of the last result (the
    worker is woken once per job, not twice); with no next job the ack goes alone
    ACK_DELAY after the report, and the core's next tick is due by then."""
    c = Core()
    register(c, W1, credit=1)
    submit(c, "a")
    c.flush()
    report(c, W1, 1, started=["a"], results={"a": b"r"}, credit=1)
    assert acks(c.flush(), W1) == [], "no message of its own yet"
    submit(c, "b")
    (jobs,) = to_worker(c.flush(), W1, p.Jobs)
    assert ([j.id for j in jobs.jobs], jobs.ack) == (["b"], 1)
    report(c, W1, 2, started=["b"], results={"b": b"r"}, credit=1)
    assert acks(c.flush(), W1) == []
    assert c.core.next_deadline(c.now) <= c.now + ACK_DELAY
    assert acks(c.tick(c.now + ACK_DELAY / 2), W1) == []
    assert acks(c.tick(c.now + ACK_DELAY / 2 + 0.001), W1) == [(2, [])]
    assert acks(c.tick(c.now + ACK_DELAY), W1) == [], "once"
    assert c.core.next_deadline(c.now) > c.now + ACK_DELAY, "nothing owed: no early tick"


def test_a_refusal_is_acked_at_once() -> None:
    c = Core()
    register(c, W1, credit=1)
    submit(c, "a")
    c.flush()
    c.core.client_message(b"c", p.TerminateRequest(c.rid(), ["a"]), c.now)
    c.flush()
    report(c, W1, 1, results={"a": b"late"}, credit=1)
    ((seq, dropped),) = acks(c.flush(), W1)
    assert seq == 1 and [job for job, _ in dropped] == ["a"]


def test_a_report_applied_before_a_crash_is_not_applied_again_after_the_restart(
    tmp_path: Path,
) -> None:
    """The broker applied and journaled a report, then died before its ack went out: the
    worker sends the report again to the restarted broker, which knows the copy by the seq
    the journal kept for that worker (its progress used to appear twice)."""
    c = running_on_w1()  # W1's report 1 (started, progress 40) applied and journaled
    report(c, W1, 2, progress=[("run", 60, "refining")])
    c.flush()  # (its ack, if any, never reaches the worker)
    c = crash_and_restore(c, tmp_path / "j.db")
    register(c, W1, credit=0, held=["run"])
    report(c, W1, 1, started=["run"], progress=[("run", 40, "meshing")])
    report(c, W1, 2, progress=[("run", 60, "refining")])
    assert acked_in_time(c, W1) == [(2, [])], "copies are acknowledged"
    updates = c.progress("run").data["updates"]
    assert updates == [[1, 40, "meshing"], [2, 60, "refining"]], "and not applied twice"
    report(c, W1, 3, results={"run": b"r"})
    assert acked_in_time(c, W1) == [(3, [])]
    assert result_values(c.results("run")) == {"run": b"r"}


def test_a_lost_workers_journaled_seq_goes_with_it(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    c = running_on_w1()
    c.core.lose_worker(c.core.workers[W1], c.now, "lost")
    c = crash_and_restore(c, path)
    assert c.core.recovery.acked_before == {}
    with Journal(path) as journal:
        journal.load()
        assert journal.worker_acks() == {}
