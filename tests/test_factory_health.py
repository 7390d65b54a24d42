"""Crash loops, quarantine, eviction and explanations of the worker factory, without a broker.

The pure rules (:class:`Health`) first, then a :class:`WorkerFactory` driving probe
executables, with what the broker would have seen of them passed in by hand (``observe``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from core_helpers import W1, Core, finish, to_worker
from factory_helpers import pid_gone, poll_until, read_json, write_worker_file

from remus import protocol as p
from remus.server.factory import (
    ASKED_TO_LEAVE,
    EXITED,
    QUARANTINED,
    SPAWNED,
    Backoff,
    FactoryEvent,
    WorkerFactory,
    WorkerSeen,
)
from remus.server.health import Health, StartFailure
from remus.server.thread_factory import ThreadWorkerFactory
from remus.types import IOType, JobRequirements, Status

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(sys.platform == "win32", reason="process groups and signals"),
]

EDGES = IOType("Edges", "Mesh2D")
POINTS = IOType("Points", "Mesh2D")
ENDPOINT = "tcp://127.0.0.1:1"  # only passed on; the probe never connects
FAST = Backoff(initial=0.01, factor=1.0, cap=0.01, quarantine_after=3)


def topics(events: list[FactoryEvent]) -> list[str]:
    return [e.topic for e in events]


def reap_all(factory: WorkerFactory, now: float) -> list[FactoryEvent]:
    """Reap until no worker of the factory is left; returns every event."""
    events: list[FactoryEvent] = []

    def done() -> bool:
        events.extend(factory.reap(now))
        return factory.alive_count() == 0 and not factory._children

    poll_until(done)
    return events


# -- the pure rules ----------------------------------------------------------------------------


def failure(n: int) -> StartFailure:
    return StartFailure(pid=n, runtime=0.1, returncode=3, stderr_tail=f"boom {n}\n")


def test_failed_starts_in_a_row_quarantine_and_registering_breaks_the_row() -> None:
    health = Health(Backoff(initial=1.0, quarantine_after=3))
    health.failed("a", 0.0, failure(1))
    health.failed("a", 1.0, failure(2))
    assert health.due_quarantine("a") is None
    health.registered("a")  # a start that worked: the next failures start a new row
    health.failed("a", 2.0, failure(3))
    health.failed("a", 3.0, failure(4))
    assert health.due_quarantine("a") is None
    assert health.backing_off("a", 3.0) == (4, 8.0, failure(4))  # the back-off kept counting
    health.failed("a", 20.0, failure(5))
    starts = health.due_quarantine("a")
    assert starts == [failure(3), failure(4), failure(5)]
    health.quarantine("a", "why", 20.0, starts)
    assert health.limit("a", 0, 1e9) == 0
    assert health.lift() == ["a"]
    assert health.limit("a", 0, 20.0) > 1  # a clean record


def test_healthy_resets_and_crashes_after_registering_never_quarantine() -> None:
    health = Health(Backoff(initial=1.0, quarantine_after=2, healthy_after=60.0))
    for t in range(5):
        health.failed("a", float(t))  # registered, then crashed: back-off only
    assert health.due_quarantine("a") is None
    assert health.limit("a", 0, 5.0) == 0
    health.healthy("a")
    assert health.backing_off("a", 5.0) is None
    assert health.limit("a", 3, 5.0) > 1
    never = Health(Backoff(quarantine_after=0))
    for t in range(10):
        never.failed("a", float(t), failure(t))
    assert never.due_quarantine("a") is None


def test_start_failure_in_words() -> None:
    f = StartFailure(7, 0.25, 3, None, 12 << 20, "a\n\nb\nlast one\n")
    assert f.describe() == "exit code 3 after 0.25 s, peak RSS 12.0 MiB, stderr: 'a\\nb\\nlast one'"
    assert f.describe(lines=1).endswith("stderr: 'last one'")
    assert "killed by SIGSEGV" in StartFailure(7, 0.1, -11, "SIGSEGV").describe()
    assert StartFailure(0, 0.0, error="No such file").describe() == (
        "could not be started: No such file"
    )


def test_quick_exit_is_the_old_name_of_healthy_after() -> None:
    assert Backoff(quick_exit=0.0).healthy_after == 0.0
    assert Backoff().healthy_after == 60.0 and Backoff().quarantine_after == 5
    with pytest.raises(ValueError):
        Backoff(quarantine_after=-1)


def test_max_workers_defaults_to_the_cpu_count(tmp_path: Path) -> None:
    assert WorkerFactory([tmp_path]).max_workers == (os.cpu_count() or 1)


# -- a crash loop, with probes -----------------------------------------------------------------


def test_a_crash_loop_is_quarantined_with_the_evidence_of_each_start(
    tmp_path: Path, make_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    write_worker_file(
        tmp_path,
        Environment={"PROBE_MODE": "stderr", "PROBE_CODE": "3", "PROBE_STDERR_BYTES": "300"},
    )
    factory = make_factory(tmp_path, max_workers=2, backoff=FAST)
    demand = {JobRequirements(EDGES): 1}
    events: list[FactoryEvent] = []
    now = 0.0
    with caplog.at_level(logging.ERROR, logger="remus.server.factory"):
        while QUARANTINED not in topics(events):
            now += 1.0
            assert now < 10, topics(events)
            events += factory.create_workers(demand, ENDPOINT, now)
            events += reap_all(factory, now)
    assert topics(events).count(SPAWNED) == 3
    [q] = [e for e in events if e.topic == QUARANTINED]
    assert q.requirements == JobRequirements(EDGES, "probe")
    assert q.payload["worker_file"] == str(tmp_path / "probe.rw")
    assert [s["returncode"] for s in q.payload["starts"]] == [3, 3, 3]
    assert all(s["peak_rss"] > 0 and s["runtime"] >= 0 for s in q.payload["starts"])
    reason = q.payload["reason"]
    assert "quarantined" in reason and "3 failed starts in a row" in reason
    assert reason.count("exit code 3 after") == 3 and "peak RSS" in reason
    assert "LAST LINE" in reason
    assert "LAST LINE" in caplog.text and "quarantined" in caplog.text

    # quarantined: nothing starts, nothing is offered, and it says why
    assert factory.create_workers(demand, ENDPOINT, now + 100) == []
    assert not factory.can_mesh(JobRequirements(EDGES))
    assert factory.offers() == []
    assert "is quarantined" in (factory.explain(JobRequirements(EDGES)) or "")
    assert factory.explain(JobRequirements(POINTS)) is None

    assert factory.lift_quarantine() == [str(tmp_path / "probe.rw")]
    assert factory.can_mesh(JobRequirements(EDGES))
    assert topics(factory.create_workers(demand, ENDPOINT, now + 101)) == [SPAWNED]


def test_a_worker_that_never_registers_is_killed_on_time_and_that_is_a_failed_start(
    tmp_path: Path, make_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """It would hold its max_workers slot for ever, and the jobs waiting for it would wait for
    ever: past register_timeout it is killed, and it counts against its file like a crash (so
    a file whose program hangs at start is quarantined, with the reason)."""
    write_worker_file(tmp_path, Environment={"PROBE_MODE": "sleep"})  # (never connects)
    slow = Backoff(initial=0.01, factor=1.0, cap=0.01, quarantine_after=2, healthy_after=1.0)
    factory = make_factory(tmp_path, max_workers=1, backoff=slow, register_timeout=5.0)
    demand = {JobRequirements(EDGES): 1}
    [first] = factory.create_workers(demand, ENDPOINT, 0.0)
    assert factory.reap(4.9) == [], "not yet"
    with caplog.at_level(logging.WARNING, logger="remus.server.factory"):
        [exited] = reap_all(factory, 5.0)
    assert exited.payload["pid"] == first.payload["pid"] and exited.payload["signal"] == "SIGKILL"
    assert not exited.payload["stopped_by_broker"]
    assert exited.payload["retry_in"] is not None, "a failed start: backed off"
    assert "has not registered 5 s after it started" in caplog.text
    assert "not registered within 5 s" in caplog.text
    # the second start hangs too: the file is quarantined, and the reason says why
    events = factory.create_workers(demand, ENDPOINT, 6.0)
    assert topics(events) == [SPAWNED]
    events = reap_all(factory, 11.0)
    [q] = [e for e in events if e.topic == QUARANTINED]
    assert q.payload["reason"].count("it did not register within 5 s") == 2, q.payload["reason"]
    assert factory.create_workers(demand, ENDPOINT, 20.0) == []


def test_register_timeout_must_be_positive(tmp_path: Path, make_factory: Any) -> None:
    with pytest.raises(ValueError, match="register_timeout"):
        make_factory(tmp_path, register_timeout=0)


def test_a_killed_or_stopped_worker_is_never_a_crash(tmp_path: Path, make_factory: Any) -> None:
    out = tmp_path / "out.json"
    write_worker_file(tmp_path, Environment={"PROBE_MODE": "sleep", "PROBE_OUT": str(out)})
    factory = make_factory(tmp_path, max_workers=1, backoff=Backoff(initial=100.0))
    demand = {JobRequirements(EDGES): 1}
    for round_ in range(6):  # more than quarantine_after
        now = float(round_)
        [spawned] = factory.create_workers(demand, ENDPOINT, now)  # no back-off: never waits
        assert spawned.topic == SPAWNED
        assert factory.kill(spawned.payload["pid"])
        [exited] = reap_all(factory, now + 0.5)
        assert exited.payload["stopped_by_broker"] is True
        assert exited.payload["retry_in"] is None
    assert factory.quarantined() == {}


def test_an_unregistered_exit_after_healthy_after_is_no_failed_start(
    tmp_path: Path, make_factory: Any
) -> None:
    write_worker_file(tmp_path, Environment={"PROBE_MODE": "exit", "PROBE_CODE": "1"})
    factory = make_factory(tmp_path, max_workers=1, backoff=Backoff(healthy_after=5.0))
    factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, 0.0)
    [exited] = reap_all(factory, 6.0)
    assert exited.payload["retry_in"] is None
    assert factory.explain(JobRequirements(EDGES), now=6.0) == (
        f"a worker from {tmp_path / 'probe.rw'} will be started"
    )


def test_backing_off_in_words(tmp_path: Path, make_factory: Any) -> None:
    write_worker_file(
        tmp_path, Environment={"PROBE_MODE": "stderr", "PROBE_CODE": "1", "PROBE_STDERR_BYTES": "0"}
    )
    factory = make_factory(tmp_path, max_workers=1, backoff=Backoff(initial=4.0))
    factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, 0.0)
    assert factory.explain(JobRequirements(EDGES), now=0.0) == (
        f"starting a worker from {tmp_path / 'probe.rw'} (pid {next(iter(factory._children))})"
    )
    reap_all(factory, 1.0)
    text = factory.explain(JobRequirements(EDGES), now=2.0) or ""
    assert text.startswith(
        f"worker file {tmp_path / 'probe.rw'} is backing off after 1 failed start "
        "(next start in 3.0 s): last: exit code 1 after 1.00 s"
    ), text
    assert text.endswith("stderr: 'LAST LINE'")


# -- what the broker saw: registrations ----------------------------------------------------------


def test_registering_other_requirements_stops_the_worker_and_quarantines_its_file(
    tmp_path: Path, make_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out.json"
    write_worker_file(
        tmp_path,
        WorkerName="Mesher",
        Environment={"PROBE_MODE": "ignore-term", "PROBE_OUT": str(out)},
    )
    factory = make_factory(tmp_path, max_workers=1, leave_grace=0.5)
    [spawned] = factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, 0.0)
    pid = spawned.payload["pid"]
    poll_until(out.exists)
    other = JobRequirements(POINTS, "Mesher", tag="x")
    with caplog.at_level(logging.ERROR, logger="remus.server.factory"):
        events = factory.observe({pid: WorkerSeen(other)}, now=1.0)
    assert topics(events) == [ASKED_TO_LEAVE, QUARANTINED]
    assert events[0].payload["pid"] == pid
    reason = events[1].payload["reason"]
    assert "registered Points->Mesh2D named 'Mesher' tagged 'x'" in reason
    assert "declares Edges->Mesh2D named 'Mesher'" in reason
    assert "registered Points->Mesh2D" in caplog.text and "declares Edges->Mesh2D" in caplog.text
    assert factory.observe({pid: WorkerSeen(other)}, now=1.1) == []  # said once
    # it was told to leave; deaf to it, it is killed after the grace, and that is no crash
    assert factory.reap(1.2) == []
    poll_until(lambda: [e for e in factory.reap(2.0) if e.topic == EXITED])
    assert pid_gone(read_json(out)["pid"])
    assert factory.quarantined() == {str(tmp_path / "probe.rw"): reason}


def test_a_worker_that_finished_a_job_resets_the_back_off(
    tmp_path: Path, make_factory: Any
) -> None:
    release = tmp_path / "release"
    env = {"PROBE_MODE": "until-file", "PROBE_RELEASE": str(release), "PROBE_CODE": "1"}
    write_worker_file(tmp_path, Environment=env)
    factory = make_factory(tmp_path, max_workers=1, backoff=Backoff(initial=50.0))
    demand = {JobRequirements(EDGES): 1}
    [first] = factory.create_workers(demand, ENDPOINT, 0.0)
    release.touch()
    reap_all(factory, 0.5)  # exited before registering: backing off for 50 s
    assert factory.create_workers(demand, ENDPOINT, 1.0) == []
    release.unlink()
    [second] = factory.create_workers(demand, ENDPOINT, 51.0)
    reqs = JobRequirements(EDGES, "probe")
    factory.observe({second.payload["pid"]: WorkerSeen(reqs, idle=True, finished=1)}, now=52.0)
    assert factory.explain(JobRequirements(EDGES), now=52.0) == (
        f"max_workers=1 reached, held by: probe (pid {second.payload['pid']}, idle)"
    )
    release.touch()
    [crash] = reap_all(factory, 53.0)  # exit code 1 after a finished job: not a crash loop
    assert crash.payload["retry_in"] is None
    assert topics(factory.create_workers(demand, ENDPOINT, 53.0)) == [SPAWNED]
    assert first.payload["pid"] != second.payload["pid"]


# -- one file's idle workers never starve another's jobs ----------------------------------------


def two_sleeping_files(folder: Path) -> None:
    """Worker files a.rw (Edges, worker "a") and b.rw (Points, worker "b") whose programs
    start and sleep, never registering (the tests say what the broker saw)."""
    for name, io_type in (("a.rw", EDGES), ("b.rw", POINTS)):
        write_worker_file(
            folder,
            name,
            InputType=io_type.input,
            WorkerName=name[0],
            Environment={"PROBE_MODE": "sleep"},
        )


def test_an_idle_worker_of_another_file_is_asked_to_leave_for_a_waiting_job(
    tmp_path: Path, make_factory: Any
) -> None:
    two_sleeping_files(tmp_path)
    factory = make_factory(tmp_path, max_workers=1, leave_grace=0.3)
    [a] = factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, 0.0)
    a_pid = a.payload["pid"]
    want_b = {JobRequirements(POINTS): 1}

    # busy: it keeps its slot
    factory.observe({a_pid: WorkerSeen(JobRequirements(EDGES, "a"), idle=False)}, 1.0)
    assert factory.create_workers(want_b, ENDPOINT, 1.0) == []
    assert f"held by: a (pid {a_pid}, busy)" in (factory.explain(JobRequirements(POINTS)) or "")

    # idle: asked to leave, once
    factory.observe({a_pid: WorkerSeen(JobRequirements(EDGES, "a"), idle=True)}, 2.0)
    [leave] = factory.create_workers(want_b, ENDPOINT, 2.0)
    assert leave.topic == ASKED_TO_LEAVE and leave.payload["pid"] == a_pid
    assert "max_workers=1 reached" in leave.payload["reason"]
    assert str(tmp_path / "b.rw") in leave.payload["reason"]
    assert factory.create_workers(want_b, ENDPOINT, 2.1) == []

    # (the probe does not hear the broker: the grace runs out and it is killed)
    events: list[FactoryEvent] = []

    def b_started() -> bool:
        events.extend(factory.create_workers(want_b, ENDPOINT, 3.0))
        return SPAWNED in topics(events)

    poll_until(b_started)
    [exited] = [e for e in events if e.topic == EXITED]
    assert exited.payload["pid"] == a_pid and exited.payload["stopped_by_broker"]
    [b] = [e for e in events if e.topic == SPAWNED]
    assert b.payload["worker_file"] == str(tmp_path / "b.rw")


def test_a_worker_whose_own_jobs_wait_is_not_asked_to_leave_before_its_credit_comes(
    tmp_path: Path, make_factory: Any
) -> None:
    """A worker registers, then asks for jobs: in between it holds none, but jobs of its own
    file wait for it. Evicting it then for another file's job (a race test_factory_server
    hit under load) would stop the worker about to run them and start another."""
    two_sleeping_files(tmp_path)
    factory = make_factory(tmp_path, max_workers=1)
    both = {JobRequirements(EDGES): 1, JobRequirements(POINTS): 1}
    [a] = factory.create_workers(both, ENDPOINT, 0.0)
    assert a.payload["worker_file"] == str(tmp_path / "a.rw")
    factory.observe({a.payload["pid"]: WorkerSeen(JobRequirements(EDGES, "a"), idle=True)}, 1.0)
    assert factory.create_workers(both, ENDPOINT, 1.0) == [], "its own job waits for it"
    # once nothing waits for a.rw, its idle worker does make room for b.rw
    [leave] = factory.create_workers({JobRequirements(POINTS): 1}, ENDPOINT, 2.0)
    assert leave.topic == ASKED_TO_LEAVE and leave.payload["pid"] == a.payload["pid"]


# -- the thread factory ------------------------------------------------------------------------


def test_thread_factory_explains() -> None:
    reqs = JobRequirements(EDGES, "upper")
    factory = ThreadWorkerFactory({reqs: lambda job: b""}, max_workers=0)
    assert factory.explain(JobRequirements(POINTS)) is None
    assert factory.explain(JobRequirements(EDGES)) == "max_workers=0: the broker starts no worker"
    factory.max_workers = 1
    assert factory.explain(reqs) == "a thread worker for Edges->Mesh2D will be started"


# -- the core's side (pure BrokerCore) -----------------------------------------------------------


def test_the_core_tells_the_factory_what_its_workers_did_and_asks_them_to_leave() -> None:
    c = Core(host_id="host-a")
    core = c.core
    core.spawns.started(100)
    core.spawns.started(200)
    c.register(W1, EDGES, pid=100, credit=1)
    assert core.spawns.view() == {100: (JobRequirements(EDGES), True, 0), 200: (None, False, 0)}
    c.submit("j1")
    assert core.spawns.view()[100] == (JobRequirements(EDGES), False, 0)
    finish(c, W1, "j1")
    assert core.spawns.view()[100] == (JobRequirements(EDGES), True, 1)

    assert core.spawns.ask_to_leave(100, "its slot is needed", c.now)
    assert not core.spawns.ask_to_leave(200, "never registered", c.now)
    [bye] = to_worker(c.flush(), W1, p.Shutdown)
    assert bye.reason == "its slot is needed"
    assert W1 not in core.workers  # nothing more goes to it
    c.submit("j2")
    assert c.status("j2") is Status.QUEUED


def test_a_quarantine_fails_only_the_queued_jobs_nobody_else_serves() -> None:
    c = Core(host_id="host-a")
    c.register(W1, POINTS, credit=0)
    c.submit("only", reqs=EDGES)
    c.submit("named", reqs=JobRequirements(EDGES, "Other"))  # the file would not serve it
    c.submit("served", reqs=POINTS)  # a connected worker serves it (busy for now)
    offer = JobRequirements(POINTS)
    assert c.core.spawns.quarantined(offer, "worker file x.rw is quarantined: why", c.now) == 0
    offer = JobRequirements(EDGES, "Mesher")
    assert c.core.spawns.quarantined(offer, "worker file x.rw is quarantined: why", c.now) == 1
    assert c.status("only") is Status.FAILED
    assert c.status_row("only")[5] == "worker file x.rw is quarantined: why"
    assert c.status("named") is Status.QUEUED and c.status("served") is Status.QUEUED
