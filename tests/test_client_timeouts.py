"""Issue 9 point 4: a timeout means what it says, and a stopping broker says so.

Every call given a timeout (the client's, or its own) raises within it plus one second, against
a dead endpoint and against a broker that is suspended (SIGSTOP), and the message says how long
it waited and what it last knew of the job. A broker that stops while a client waits answers at
once: BrokerStoppedError, or, when its journal keeps the job, the wait rides out the restart.
Also point 9's client bits: ``files="a/path"`` is a TypeError, str contents are UTF-8.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers_e2e import free_tcp_endpoint, start_cli_server

import remus
from remus import IOType, Job, JobRequirements, JobSubmission
from remus.client import Client
from remus.server import ServerPorts
from remus.worker import Job as WorkerJob

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(sys.platform == "win32", reason="signals"),
]

MESH = IOType("Edges", "Mesh2D")
#: the slack the issue allows past a timeout
SLACK = 1.0
#: long enough for a Python process to start on a loaded machine
SLOW = 20.0

MakeProcess = Callable[..., subprocess.Popen[str]]


def timed(call: Callable[[], Any], error: type[BaseException]) -> tuple[float, BaseException]:
    """Run ``call``, which must raise ``error``; returns the seconds it took and the error."""
    started = time.monotonic()
    with pytest.raises(error) as info:
        call()
    return time.monotonic() - started, info.value


def cli_server(
    make_process: MakeProcess, *extra: str, ports: ServerPorts | None = None
) -> tuple[subprocess.Popen[str], ServerPorts]:
    """``remus server`` as a process, on free ports or on ``ports``."""
    return start_cli_server(make_process, *extra, ports=ports)


@pytest.fixture
def holding_broker(
    make_process: MakeProcess, make_worker: Any
) -> Iterator[tuple[subprocess.Popen[str], ServerPorts, Job]]:
    """A ``remus server`` process with one job IN_PROGRESS at 40% "meshing", held by a worker
    in this process until the test ends."""
    proc, ports = cli_server(make_process)
    release = threading.Event()
    holder: list[Any] = []

    def hold(job: WorkerJob) -> bytes:
        holder[0].send_progress(job, 40, "meshing")
        release.wait(SLOW * 3)
        return b"done"

    holder.append(make_worker(JobRequirements(MESH), ports.worker, run=hold))
    c = Client(ports.client, timeout=SLOW)
    try:
        wait_for(lambda: c.can_mesh(MESH), timeout=SLOW)
        job = c.submit_job(JobSubmission.of(MESH, b"edges"))
        wait_for(lambda: c.job_progress(job), timeout=SLOW)
    finally:
        c.close()
    try:
        yield proc, ports, job
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        release.set()


# ============================================================================ a dead endpoint


def test_basic_calls_with_the_clients_timeout_raise_in_time_at_a_dead_endpoint(
    make_client: Any,
) -> None:
    """The issue's case: BasicClient(timeout=0.3).run(...) took 21 s, saying "within 5.3 s"."""
    endpoint = free_tcp_endpoint()
    bc = make_client(endpoint, basic=True, timeout=0.3)
    job = Job("nobody-knows", JobRequirements(MESH))
    calls: dict[str, Callable[[], Any]] = {
        "run": lambda: bc.run(MESH, data=b"x"),
        "wait": lambda: bc.wait(job),
        "as_completed": lambda: list(bc.as_completed([job])),
        "submit": lambda: bc.submit(MESH, data=b"x"),
        "job_status": lambda: bc.client.job_status(job),
    }
    for name, call in calls.items():
        elapsed, error = timed(call, remus.TimeoutError)
        assert elapsed < 0.3 + SLACK, f"{name} took {elapsed:.2f} s with timeout=0.3"
        assert endpoint in str(error), (name, str(error))
        if name in ("run", "wait", "as_completed"):
            assert "did not answer for" in str(error), (name, str(error))
            assert "last known" in str(error), (name, str(error))
        else:
            assert "within 0.3 s" in str(error), (name, str(error))


def test_per_call_timeouts_are_hard_deadlines_at_a_dead_endpoint(make_client: Any) -> None:
    """The issue's case: wait(timeout=2) took 28 s. The client's own timeout is long here."""
    endpoint = free_tcp_endpoint()
    bc = make_client(endpoint, basic=True, timeout=30.0)
    job = Job("nobody-knows", JobRequirements(MESH))
    calls: dict[str, tuple[float, Callable[[float], Any]]] = {
        "wait": (2.0, lambda t: bc.wait(job, timeout=t)),
        "run": (0.5, lambda t: bc.run(MESH, data=b"x", timeout=t)),
        "as_completed": (0.5, lambda t: list(bc.as_completed([job], timeout=t))),
        "submit": (0.5, lambda t: bc.submit(MESH, data=b"x", timeout=t)),
        "submit_many": (0.5, lambda t: bc.submit_many([JobSubmission.of(MESH, b"x")], timeout=t)),
    }
    for name, (timeout, call) in calls.items():
        elapsed, error = timed(lambda: call(timeout), remus.TimeoutError)  # noqa: B023
        assert elapsed < timeout + SLACK, f"{name} took {elapsed:.2f} s with timeout={timeout}"
        assert f"within {timeout:.3g} s" in str(error), (name, str(error))
        assert endpoint in str(error), (name, str(error))
        if name in ("run", "wait", "as_completed"):
            assert "last known" in str(error) and "waited" in str(error), (name, str(error))


def test_every_client_method_takes_a_timeout(make_client: Any) -> None:
    c = make_client(free_tcp_endpoint(), timeout=30.0)
    calls: dict[str, Callable[[], Any]] = {
        "submit_job": lambda: c.submit_job(JobSubmission.of(MESH, b"x"), timeout=0.3),
        "submit_jobs": lambda: c.submit_jobs([JobSubmission.of(MESH, b"x")], timeout=0.3),
        "job_status": lambda: c.job_status("j", timeout=0.3),
        "job_statuses": lambda: c.job_statuses(["j"], timeout=0.3),
        "job_progress": lambda: c.job_progress("j", wait=5.0, timeout=0.3),
        "retrieve_result": lambda: c.retrieve_result("j", timeout=0.3),
        "terminate": lambda: c.terminate("j", timeout=0.3),
        "supported_io_types": lambda: c.supported_io_types(timeout=0.3),
        "can_mesh": lambda: c.can_mesh(MESH, timeout=0.3),
        "retrieve_requirements": lambda: c.retrieve_requirements(MESH, timeout=0.3),
        "broker_info": lambda: c.broker_info(timeout=0.3),
    }
    for name, call in calls.items():
        elapsed, error = timed(call, remus.TimeoutError)
        assert elapsed < 0.3 + SLACK, f"{name} took {elapsed:.2f} s with timeout=0.3"
        assert "0.3 s" in str(error), (name, str(error))


# ============================================================================ a suspended broker


class Waiting:
    """A call on a thread: its outcome, and when it ended."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.outcome: Any = None
        self.ended = 0.0
        self.thread = threading.Thread(target=self._run, args=(call,), name="test-waiter")
        self.thread.daemon = True
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.outcome = call()
        except Exception as e:
            self.outcome = e
        self.ended = time.monotonic()

    def join(self) -> Any:
        self.thread.join(SLOW)
        assert not self.thread.is_alive()
        return self.outcome


def test_waits_on_a_broker_suspended_under_them_raise_in_time_with_the_last_status(
    holding_broker: tuple[subprocess.Popen[str], ServerPorts, Job], make_client: Any
) -> None:
    proc, ports, job = holding_broker
    short = make_client(ports.client, basic=True, timeout=1.0)
    patient = make_client(ports.client, basic=True, timeout=30.0)
    seen: list[Any] = []
    # a live broker first: a wait sees the job's progress and times out on its own deadline
    elapsed, error = timed(
        lambda: patient.wait(job, timeout=1.0, on_progress=seen.append), Exception
    )
    assert isinstance(error, remus.TimeoutError), error
    assert elapsed < 1.0 + SLACK
    assert [(u.value, u.message) for u in seen] == [(40, "meshing")]
    assert "IN_PROGRESS, 40% 'meshing'" in str(error) and "within 1 s" in str(error), str(error)

    # then waits under way (each has heard of the job: its first answer brought the 40%
    # update, not only a request sent) when the broker is suspended
    started = time.monotonic()
    heard: tuple[list[Any], list[Any]] = ([], [])
    on_silence = Waiting(lambda: short.wait(job, on_progress=heard[0].append))
    on_deadline = Waiting(lambda: patient.wait(job, timeout=3.0, on_progress=heard[1].append))
    wait_for(lambda: heard[0] and heard[1], timeout=SLOW)
    proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    for waiting, limit, words in (
        (on_silence, stopped + 1.0 + SLACK, "did not answer for"),
        (on_deadline, started + 3.0 + SLACK, "did not finish within 3 s"),
    ):
        error = waiting.join()
        assert isinstance(error, remus.TimeoutError), repr(error)
        assert waiting.ended < limit, f"{waiting.ended - limit:.2f} s late: {error}"
        assert words in str(error), str(error)
        # what the wait last heard from the broker: the job runs, at 40%
        assert "IN_PROGRESS, 40% 'meshing'" in str(error), str(error)
        assert "waited" in str(error) and ports.client in str(error), str(error)

    # and calls made while it is suspended
    calls: dict[str, tuple[float, Callable[[], Any]]] = {
        "wait (client's timeout)": (1.0, lambda: short.wait(job)),
        "as_completed (client's timeout)": (1.0, lambda: list(short.as_completed([job]))),
        "as_completed (its own)": (1.0, lambda: list(patient.as_completed([job], timeout=1.0))),
        "job_status (client's timeout)": (1.0, lambda: short.client.job_status(job)),
        "job_status (its own)": (0.5, lambda: patient.client.job_status(job, timeout=0.5)),
        "run (its own)": (1.0, lambda: patient.run(MESH, data=b"x", timeout=1.0)),
    }
    for name, (timeout, call) in calls.items():
        elapsed, error = timed(call, remus.TimeoutError)
        assert elapsed < timeout + SLACK, f"{name} took {elapsed:.2f} s with timeout {timeout}"
        assert ports.client in str(error), (name, str(error))
    proc.send_signal(signal.SIGCONT)


# ============================================================================ a broker that stops


def test_a_broker_stopping_without_a_journal_ends_the_wait_at_once(
    holding_broker: tuple[subprocess.Popen[str], ServerPorts, Job], make_client: Any
) -> None:
    proc, ports, job = holding_broker
    bc = make_client(ports.client, basic=True, timeout=30.0)
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            bc.wait(job)
        except Exception as e:
            outcome["error"] = e
            outcome["at"] = time.monotonic()

    thread = threading.Thread(target=wait, name="test-waiter", daemon=True)
    thread.start()
    wait_for(lambda: bc.client.calls >= 2, timeout=SLOW)  # past the first answer: held now
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    thread.join(SLOW)
    assert not thread.is_alive()
    error = outcome["error"]
    assert isinstance(error, remus.BrokerStoppedError), repr(error)
    assert outcome["at"] - stopped < 5.0, "the client heard it from the broker, not a timeout"
    assert "stopped" in str(error) and "lost" in str(error), str(error)
    assert job.id in str(error)
    assert proc.wait(SLOW) == 0


def test_a_wait_rides_out_a_journaled_restart_longer_than_its_timeout(
    tmp_path: Path, make_process: MakeProcess, make_client: Any, make_worker: Any
) -> None:
    """After "broker-stopping-journaled" the wait keeps asking past the client's timeout (0.5 s
    here: silence alone would end it) until the broker is back, and gets the result."""
    journal = str(tmp_path / "remus.db")
    proc, ports = cli_server(make_process, "--journal", journal)
    c = make_client(ports.client, timeout=SLOW)
    job = c.submit_job(JobSubmission.of(MESH, b"edges"), wait_for_worker=True)
    bc = make_client(ports.client, basic=True, timeout=0.5)
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            outcome["result"] = bc.wait(job)
        except Exception as e:
            outcome["error"] = e

    thread = threading.Thread(target=wait, name="test-waiter", daemon=True)
    thread.start()
    wait_for(lambda: bc.client.calls >= 1, timeout=SLOW)
    c.job_status(job)  # a round trip behind the wait's request: that one is held by now
    asked = bc.client.calls
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(SLOW) == 0
    # the wait asks again and again (about 1, 1.5 and 2.5 s after the broker said it stops):
    # longer than its 0.5 s timeout plus the grace would allow a silent broker
    wait_for(lambda: bc.client.calls >= asked + 3, timeout=SLOW)
    assert thread.is_alive(), outcome
    proc, _ = cli_server(make_process, "--journal", journal, ports=ports)
    make_worker(JobRequirements(MESH), ports.worker, run=lambda j: b"mesh of " + j["data"])
    thread.join(SLOW)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    assert outcome["result"].data == b"mesh of edges"


def test_a_journaled_broker_that_does_not_come_back_ends_the_wait_at_its_deadline(
    tmp_path: Path, make_process: MakeProcess, make_client: Any
) -> None:
    proc, ports = cli_server(make_process, "--journal", str(tmp_path / "remus.db"))
    c = make_client(ports.client, timeout=SLOW)
    job = c.submit_job(JobSubmission.of(MESH, b"edges"), wait_for_worker=True)
    bc = make_client(ports.client, basic=True, timeout=30.0)
    outcome: dict[str, Any] = {}

    def wait() -> None:
        started = time.monotonic()
        try:
            bc.wait(job, timeout=3.0)
        except Exception as e:
            outcome["error"] = e
        outcome["took"] = time.monotonic() - started

    thread = threading.Thread(target=wait, name="test-waiter", daemon=True)
    thread.start()
    wait_for(lambda: bc.client.calls >= 1, timeout=SLOW)
    c.job_status(job)  # a round trip behind the wait's request: that one is held by now
    proc.send_signal(signal.SIGTERM)
    thread.join(SLOW)
    assert not thread.is_alive()
    assert isinstance(outcome["error"], remus.BrokerStoppedError), repr(outcome["error"])
    assert "did not come back" in str(outcome["error"]), str(outcome["error"])
    assert outcome["took"] < 3.0 + SLACK


# ============================================================================ point 9: inputs


def test_files_given_as_one_string_is_a_type_error(make_client: Any) -> None:
    bc = make_client(free_tcp_endpoint(), basic=True, timeout=0.3)
    for call in (
        lambda: bc.submit(MESH, files="a/path"),
        lambda: bc.run(MESH, files="a/path"),
        lambda: bc.submit(MESH, files=Path("a/path")),
    ):
        with pytest.raises(TypeError, match=r"files must be a list"):
            call()


def test_str_contents_travel_as_utf8(server: Any, make_client: Any, make_worker: Any) -> None:
    assert JobSubmission.of(MESH, "snow ☃", note="é").contents == {
        "data": "snow ☃".encode(),
        "note": "é".encode(),
    }
    got: list[tuple[bytes, bytes]] = []

    def take(job: WorkerJob) -> str:
        got.append((bytes(job["data"]), bytes(job["note"])))
        return "done ☃"

    make_worker(JobRequirements(MESH), server.ports.worker, run=take)
    bc = make_client(server.ports.client, basic=True)
    wait_for(lambda: bc.client.can_mesh(MESH))
    assert bc.run(MESH, "snow ☃", note="é", timeout=SLOW).data == "done ☃".encode()
    job = bc.submit(MESH, data="ünïcode", note="x")
    assert bc.wait(job, timeout=SLOW).data == "done ☃".encode()
    assert got == [("snow ☃".encode(), "é".encode()), ("ünïcode".encode(), b"x")]
