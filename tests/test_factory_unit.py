"""The worker factory without a broker: a probe executable stands in for a worker."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from factory_helpers import PROBE, pid_gone, poll_until, read_json, write_worker_file

from remus.errors import ConfigError
from remus.server.factory import (
    EXITED,
    SPAWN_FAILED,
    SPAWNED,
    Backoff,
    FactoryEvent,
    WorkerFactory,
    WorkerFactoryBase,
    WorkerSeen,
    _StderrTail,
    plan_spawns,
    worker_environment,
)
from remus.server.thread_factory import ThreadWorkerFactory
from remus.types import IOType, JobRequirements

EDGES = IOType("Edges", "Mesh2D")
#: what a probe worker file declares (its WorkerName defaults to the executable's name)
PROBE_REQS = JobRequirements(EDGES, "probe")
ENDPOINT = "tcp://127.0.0.1:1"  # only passed on; the probe never connects
POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="process groups and signals")


def probe_file(folder: Path, name: str = "probe.rw", **env: str) -> Path:
    """A probe worker file; ``env`` becomes its Environment (PROBE_MODE, PROBE_OUT, ...)."""
    return write_worker_file(folder, name, Environment=env)


def topics(events: list[FactoryEvent]) -> list[str]:
    return [e.topic for e in events]


def reap_until(factory: WorkerFactory, count: int, now: float = 0.0) -> list[FactoryEvent]:
    """Reap until ``count`` workers have exited; returns their exit events."""
    exited: list[FactoryEvent] = []

    def more() -> bool:
        exited.extend(e for e in factory.reap(now) if e.topic == EXITED)
        return len(exited) >= count

    poll_until(more)
    return exited


# -- what the factory offers -------------------------------------------------------------------


def test_one_worker_file_is_all_it_offers(tmp_path: Path, make_factory: Any) -> None:
    write_worker_file(tmp_path, WorkerName="EdgeMesher", Tag="fast")
    factory = make_factory(tmp_path)
    assert factory.supported_io_types() == {EDGES}
    [reqs] = factory.retrieve_requirements(EDGES)
    assert (reqs.worker_name, reqs.tag) == ("EdgeMesher", "fast")
    assert factory.retrieve_requirements(IOType("Points", "Mesh2D")) == []
    assert factory.can_mesh(JobRequirements(EDGES))
    assert factory.can_mesh(JobRequirements(EDGES, "EdgeMesher", "fast"))
    assert not factory.can_mesh(JobRequirements(EDGES, "Other"))
    assert not factory.can_mesh(JobRequirements(EDGES, tag="slow"))
    assert not factory.can_mesh(JobRequirements(IOType("Edges", "Mesh3D")))


def test_search_paths_and_rescan(tmp_path: Path, make_factory: Any) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    factory = make_factory(a)
    assert factory.supported_io_types() == set()
    write_worker_file(b, InputType="Points")
    factory.add_search_path(b)
    assert factory.supported_io_types() == {IOType("Points", "Mesh2D")}
    write_worker_file(a, "late.rw")
    factory.rescan()
    assert factory.supported_io_types() == {IOType("Points", "Mesh2D"), EDGES}


def test_bad_files_are_skipped_with_a_log_line(
    tmp_path: Path, make_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    write_worker_file(tmp_path, "good.rw")
    (tmp_path / "broken.rw").write_text("{")
    with caplog.at_level(logging.WARNING, logger="remus.server.factory"):
        factory = make_factory(tmp_path)
    assert factory.supported_io_types() == {EDGES}
    assert f"skipping worker file {tmp_path / 'broken.rw'}: not valid JSON" in caplog.text


def test_max_workers_must_be_sensible() -> None:
    with pytest.raises(ConfigError):
        WorkerFactory(max_workers=-1)


# -- starting workers --------------------------------------------------------------------------


@POSIX_ONLY
def test_argv_environment_and_self_reach_the_worker(tmp_path: Path, make_factory: Any) -> None:
    out = tmp_path / "out.json"
    rw = write_worker_file(
        tmp_path,
        Arguments=["--config=@SELF@", "@SELF@+@SELF@", "last"],
        Environment={
            "PROBE_OUT": str(out),
            "PROBE_ENV_KEYS": "REMUS_TEST_COLOR,HOME",
            "REMUS_TEST_COLOR": "blue",
        },
    )
    factory = make_factory(tmp_path, max_workers=1)
    factory.add_argument("--from-factory")
    events = factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, now=0.0)
    assert topics(events) == [SPAWNED]
    record = poll_until(lambda: out.exists() and read_json(out))
    assert record["argv"][1:] == [
        ENDPOINT,
        "--from-factory",
        f"--config={rw}",
        f"{rw}+@SELF@",
        "last",
    ]
    assert record["argv"][0] == PROBE
    assert record["env"] == {"REMUS_TEST_COLOR": "blue", "HOME": os.environ.get("HOME")}
    assert record["path0"] == os.path.dirname(sys.executable)  # the broker's Python comes first
    assert record["pgid"] == record["pid"]  # its own process group
    assert "REMUS_TEST_COLOR" not in os.environ
    assert events[0].payload["pid"] == record["pid"]
    assert events[0].payload["io_type"] == ["Edges", "Mesh2D"]
    [exited] = reap_until(factory, 1)
    assert exited.payload["returncode"] == 0
    assert exited.payload["pid"] == record["pid"]


def test_worker_environment_does_not_touch_ours() -> None:
    before = dict(os.environ)
    env = worker_environment({"REMUS_TEST_ONLY": "1", "PATH": "/nowhere"})
    assert env["REMUS_TEST_ONLY"] == "1"
    assert env["PATH"].split(os.pathsep) == [os.path.dirname(sys.executable), "/nowhere"]
    assert dict(os.environ) == before


def test_max_workers_zero_never_spawns(tmp_path: Path, make_factory: Any) -> None:
    probe_file(tmp_path, PROBE_MODE="sleep")
    factory = make_factory(tmp_path, max_workers=0)
    for now in range(5):
        assert factory.create_workers({JobRequirements(EDGES): 10}, ENDPOINT, now=now) == []
    assert factory.alive_count() == 0
    assert factory.spawned_total == 0


@POSIX_ONLY
def test_max_workers_one_waits_for_the_first_to_exit(tmp_path: Path, make_factory: Any) -> None:
    release = tmp_path / "release"
    probe_file(tmp_path, PROBE_MODE="until-file", PROBE_RELEASE=str(release))
    factory = make_factory(tmp_path, max_workers=1)
    demand = {JobRequirements(EDGES): 3}
    [spawned] = factory.create_workers(demand, ENDPOINT, now=0.0)
    assert spawned.topic == SPAWNED
    # it registered as its file declares (else its exit would be a failed start)
    factory.observe({spawned.payload["pid"]: WorkerSeen(PROBE_REQS)}, now=0.5)
    assert factory.create_workers(demand, ENDPOINT, now=1.0) == []
    assert factory.alive_count() == 1
    release.touch()
    poll_until(lambda: factory.alive_count() == 0)
    events = factory.create_workers(demand, ENDPOINT, now=2.0)
    assert topics(events) == [EXITED, SPAWNED]
    assert factory.alive_count() == 1


@POSIX_ONLY
def test_no_more_workers_than_demand(tmp_path: Path, make_factory: Any) -> None:
    probe_file(tmp_path, PROBE_MODE="sleep")
    factory = make_factory(tmp_path, max_workers=4)
    demand = {JobRequirements(EDGES): 2}
    assert topics(factory.create_workers(demand, ENDPOINT, now=0.0)) == [SPAWNED, SPAWNED]
    assert factory.create_workers(demand, ENDPOINT, now=1.0) == []
    # a job no worker file can serve starts nothing
    other = {JobRequirements(IOType("Points", "Mesh2D")): 5, JobRequirements(EDGES, "Nobody"): 5}
    assert factory.create_workers(other, ENDPOINT, now=2.0) == []
    assert factory.alive_count() == 2


@POSIX_ONLY
def test_stderr_tail_and_exit_code_are_reported(
    tmp_path: Path, make_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    probe_file(tmp_path, PROBE_MODE="stderr", PROBE_CODE="3", PROBE_STDERR_BYTES="20000")
    factory = make_factory(tmp_path, max_workers=1)
    factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, now=0.0)
    with caplog.at_level(logging.WARNING, logger="remus.server.factory"):
        [exited] = reap_until(factory, 1, now=10.0)
    payload = exited.payload
    assert payload["returncode"] == 3
    assert payload["signal"] is None
    assert payload["worker_name"] == "probe"
    assert payload["stderr_tail"].endswith("LAST LINE\n")
    assert payload["stderr_tail"].startswith("filler ")  # cut at a line start
    assert len(payload["stderr_tail"]) <= 4096
    assert "exited with code 3" in caplog.text
    assert "LAST LINE" in caplog.text


def test_stderr_tail_stays_bounded() -> None:
    tail = _StderrTail(limit=64)
    try:
        assert tail.child_fd is not None
        chunk = b"y" * 1023 + b"\n"
        for _ in range(1100):  # past the 1 MiB trim threshold
            os.write(tail.child_fd, chunk)
        tail.trim()
        os.write(tail.child_fd, b"after trim\n")
        text = tail.text()
        assert text.endswith("after trim\n")
        assert len(text) <= 64
    finally:
        tail.close()


@POSIX_ONLY
def test_stop_kills_a_worker_that_ignores_sigterm(tmp_path: Path, make_factory: Any) -> None:
    out = tmp_path / "out.json"
    probe_file(tmp_path, PROBE_MODE="ignore-term", PROBE_OUT=str(out))
    factory = make_factory(tmp_path, max_workers=1)
    factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, now=0.0)
    pid = poll_until(lambda: out.exists() and read_json(out))["pid"]  # SIGTERM now ignored
    started = time.monotonic()
    factory.stop(grace=0.3)
    assert time.monotonic() - started >= 0.3
    assert factory.alive_count() == 0
    assert pid_gone(pid)
    factory.stop(grace=0.3)  # idempotent
    assert factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, now=1.0) == []


@POSIX_ONLY
def test_stop_is_polite_first(tmp_path: Path, make_factory: Any) -> None:
    probe_file(tmp_path, PROBE_MODE="sleep")
    factory = make_factory(tmp_path, max_workers=2)
    factory.create_workers({JobRequirements(EDGES): 2}, ENDPOINT, now=0.0)
    started = time.monotonic()
    factory.stop(grace=30.0)
    assert time.monotonic() - started < 10.0  # SIGTERM was enough, no wait for the grace
    assert factory.alive_count() == 0


@POSIX_ONLY
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_no_worker_survives_a_killed_broker(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    probe_file(tmp_path, PROBE_MODE="ignore-term", PROBE_OUT=str(out))
    broker = textwrap.dedent(
        f"""
        import sys, time
        from remus.server.factory import WorkerFactory
        from remus.types import IOType, JobRequirements
        f = WorkerFactory([{str(tmp_path)!r}], max_workers=1)
        f.create_workers({{JobRequirements(IOType("Edges", "Mesh2D")): 1}}, "tcp://x:1", 0.0)
        print("spawned", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", broker], stdout=subprocess.PIPE, text=True)
    pid = 0
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "spawned"
        pid = poll_until(lambda: out.exists() and read_json(out))["pid"]
        proc.kill()
        proc.wait(timeout=10)
        poll_until(lambda: pid_gone(pid))
    finally:
        if pid and not pid_gone(pid):  # the test failed: do not leave the orphan behind
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# -- back-off ----------------------------------------------------------------------------------


@POSIX_ONLY
def test_back_off_after_quick_crashes(
    tmp_path: Path, make_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    probe_file(tmp_path, PROBE_MODE="exit", PROBE_CODE="1")
    backoff = Backoff(initial=10.0, factor=2.0, cap=25.0, quick_exit=5.0)
    factory = make_factory(tmp_path, max_workers=4, backoff=backoff)
    demand = {JobRequirements(EDGES): 3}

    assert topics(factory.create_workers(demand, ENDPOINT, now=0.0)) == [SPAWNED] * 3
    exits = reap_until(factory, 3, now=1.0)
    assert [e.payload["retry_in"] for e in exits] == [10.0, 20.0, 25.0]  # capped
    assert "next start in 25.0 s" in caplog.text

    assert factory.create_workers(demand, ENDPOINT, now=20.0) == []  # waiting until 26
    events = factory.create_workers(demand, ENDPOINT, now=26.0)
    assert topics(events) == [SPAWNED]  # on probation: one at a time
    assert factory.create_workers(demand, ENDPOINT, now=27.0) == []
    [crash] = reap_until(factory, 1, now=27.0)
    assert crash.payload["retry_in"] == 25.0


@POSIX_ONLY
def test_success_or_a_long_run_ends_the_back_off(tmp_path: Path, make_factory: Any) -> None:
    release = tmp_path / "release"
    probe_file(tmp_path, PROBE_MODE="until-file", PROBE_RELEASE=str(release), PROBE_CODE="1")
    factory = make_factory(tmp_path, max_workers=3, backoff=Backoff(initial=1.0, quick_exit=5.0))
    demand = {JobRequirements(EDGES): 3}
    release.touch()
    factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, now=0.0)
    [crash] = reap_until(factory, 1, now=0.5)
    assert crash.payload["retry_in"] == 1.0
    release.unlink()
    assert topics(factory.create_workers(demand, ENDPOINT, now=2.0)) == [SPAWNED]
    release.touch()
    [late] = reap_until(factory, 1, now=60.0)  # failed, but after a long run: not a crash loop
    assert late.payload["retry_in"] is None
    assert topics(factory.create_workers(demand, ENDPOINT, now=61.0)) == [SPAWNED] * 3


@POSIX_ONLY
def test_spawn_failure_is_an_event_and_backs_off(tmp_path: Path, make_factory: Any) -> None:
    exe = tmp_path / "vanishing.sh"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    write_worker_file(tmp_path, ExecutableName=str(exe))
    factory = make_factory(tmp_path, max_workers=2, backoff=Backoff(initial=3.0))
    exe.unlink()  # gone after the scan
    [event] = factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, now=0.0)
    assert event.topic == SPAWN_FAILED
    assert event.payload["retry_in"] == 3.0
    assert "No such file" in event.payload["error"]
    assert factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, now=1.0) == []
    assert factory.alive_count() == 0


def test_backoff_delays() -> None:
    b = Backoff(initial=1.0, factor=2.0, cap=30.0)
    assert [b.delay(n) for n in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


# -- the spawn plan (pure) ---------------------------------------------------------------------


def test_plan_shares_slots_round_robin() -> None:
    a = JobRequirements(IOType("A", "X"), "a")
    b = JobRequirements(IOType("B", "X"), "b")
    plan = plan_spawns({a: 5, b: 3}, [a, b], alive=[0, 0], limits=[9, 9], capacity=3)
    assert plan == [0, 1, 0]
    assert plan_spawns({a: 5}, [a, b], alive=[4, 0], limits=[9, 9], capacity=3) == [0]
    assert plan_spawns({a: 5}, [a, b], alive=[0, 0], limits=[9, 9], capacity=0) == []
    assert plan_spawns({a: 0, b: -1}, [a, b], alive=[0, 0], limits=[9, 9], capacity=3) == []


def test_plan_prefers_an_offer_that_may_start() -> None:
    first = JobRequirements(EDGES, "first")
    second = JobRequirements(EDGES, "second")
    job = JobRequirements(EDGES)  # either will do
    assert plan_spawns({job: 2}, [first, second], [0, 0], [9, 9], 9) == [0, 0]
    assert plan_spawns({job: 2}, [first, second], [0, 0], [0, 9], 9) == [1, 1]
    assert plan_spawns({job: 2}, [first, second], [0, 0], [0, 0], 9) == []
    assert (
        plan_spawns({JobRequirements(EDGES, "first"): 2}, [first, second], [0, 0], [0, 9], 9) == []
    )


# -- a custom factory --------------------------------------------------------------------------


class CountingFactory(WorkerFactoryBase):
    """The smallest useful subclass: offers one kind of worker, 'starts' it by counting."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.started = 0

    def offers(self) -> list[JobRequirements]:
        return [JobRequirements(EDGES, "Counter")]

    def create_workers(self, demand: Any, worker_endpoint: str, now: float) -> list[FactoryEvent]:
        self.started += 1
        return [FactoryEvent(SPAWNED, {"endpoint": worker_endpoint})]

    def alive_count(self) -> int:
        return self.started


def test_custom_factory_gets_the_catalog_for_free() -> None:
    f = CountingFactory()
    assert f.supported_io_types() == {EDGES}
    assert f.can_mesh(JobRequirements(EDGES, "Counter"))
    assert f.retrieve_requirements(EDGES) == [JobRequirements(EDGES, "Counter")]
    assert f.reap(0.0) == []
    f.add_argument("--verbose")
    assert f.arguments == ["--verbose"]
    with pytest.raises(ConfigError):
        f.add_search_path("/tmp")
    f.rescan()
    f.stop()


def test_signal_name_in_exit_event(tmp_path: Path, make_factory: Any) -> None:
    out = tmp_path / "out.json"
    probe_file(tmp_path, PROBE_MODE="sleep", PROBE_OUT=str(out))
    factory = make_factory(tmp_path, max_workers=1)
    factory.create_workers({JobRequirements(EDGES): 1}, ENDPOINT, now=0.0)
    pid = poll_until(lambda: out.exists() and read_json(out))["pid"]
    os.kill(pid, signal.SIGKILL)
    [exited] = reap_until(factory, 1, now=100.0)
    assert exited.payload["signal"] == "SIGKILL"
    assert exited.payload["returncode"] == -signal.SIGKILL
    assert exited.payload["stopped_by_broker"] is False


# -- the thread factory (with a stand-in Worker) -----------------------------------------------


class FakeWorker:
    """Stands in for remus.worker.Worker: serves until released, fails if told to."""

    made: list[FakeWorker] = []
    release = threading.Event()
    fail = False

    def __init__(self, reqs: JobRequirements, endpoint: str) -> None:
        self.reqs, self.endpoint = reqs, endpoint
        FakeWorker.made.append(self)

    def __enter__(self) -> FakeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, handler: Any, idle_timeout: float) -> int:
        if FakeWorker.fail:
            raise RuntimeError("cannot connect")
        FakeWorker.release.wait(30)
        return 0


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeWorker]]:
    import remus.worker

    monkeypatch.setattr(remus.worker, "Worker", FakeWorker)
    FakeWorker.made, FakeWorker.release, FakeWorker.fail = [], threading.Event(), False
    yield FakeWorker
    FakeWorker.release.set()


def test_thread_factory_starts_named_threads_within_the_cap(fake_worker: Any) -> None:
    reqs = JobRequirements(EDGES, "Upper")
    factory = ThreadWorkerFactory({reqs: lambda job: b""}, max_workers=2, idle_timeout=1.0)
    assert factory.supported_io_types() == {EDGES}
    assert factory.can_mesh(JobRequirements(EDGES))
    events = factory.create_workers({JobRequirements(EDGES): 5}, ENDPOINT, now=0.0)
    assert topics(events) == [SPAWNED, SPAWNED]
    assert [e.payload["thread"] for e in events] == [
        "remus-thread-worker-1",
        "remus-thread-worker-2",
    ]
    poll_until(lambda: len(fake_worker.made) == 2)
    assert {(w.reqs, w.endpoint) for w in fake_worker.made} == {(reqs, ENDPOINT)}
    assert factory.create_workers({JobRequirements(EDGES): 5}, ENDPOINT, now=1.0) == []
    assert factory.alive_count() == 2
    fake_worker.release.set()
    poll_until(lambda: factory.alive_count() == 0)
    exits = factory.reap(now=10.0)
    assert topics(exits) == [EXITED, EXITED]
    assert {e.payload["returncode"] for e in exits} == {0}
    factory.stop()
    assert not any(t.name.startswith("remus-thread-worker") for t in threading.enumerate())


def test_thread_factory_reports_a_failing_worker_and_backs_off(fake_worker: Any) -> None:
    fake_worker.fail = True
    reqs = JobRequirements(EDGES)
    factory = ThreadWorkerFactory(
        {reqs: lambda job: b""}, max_workers=1, backoff=Backoff(initial=5.0)
    )
    factory.create_workers({reqs: 1}, ENDPOINT, now=0.0)
    poll_until(lambda: factory.alive_count() == 0)
    [exited] = factory.reap(now=0.1)
    assert exited.payload["returncode"] == 1
    assert "RuntimeError: cannot connect" in exited.payload["stderr_tail"]
    assert exited.payload["retry_in"] == 5.0
    assert factory.create_workers({reqs: 1}, ENDPOINT, now=1.0) == []
    assert topics(factory.create_workers({reqs: 1}, ENDPOINT, now=6.0)) == [SPAWNED]
    factory.stop(grace=5.0)
    assert factory.alive_count() == 0
