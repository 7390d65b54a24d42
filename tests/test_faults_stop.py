"""Issue 9 point 7, stopping is announced: a ``remus server`` process that gets SIGTERM with
jobs queued and running logs how many and whether its journal keeps them, answers the clients
that wait on a job that it is stopping, and with ``--drain S`` lets running jobs finish first.

The broker's log (stderr) goes to a file: a pipe nobody reads could fill and stall it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from helpers_e2e import ECHO_WORKER, WORKERS, start_cli_server, wait_exit

import remus
from remus import IOType, Status
from remus.client import BasicClient, Client

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="signals"),
]

FAULT_WORKER = str(WORKERS / "fault_worker.py")
ECHO = IOType("Text", "Echo")  # tests/workers/echo_worker.py
FAULT = IOType("Text", "Fault")  # tests/workers/fault_worker.py
NOBODY = IOType("Nothing", "Nowhere")  # no worker ever serves this
#: long enough for a Python process to start and connect on a loaded machine
SLOW = 20.0

MakeProcess = Callable[..., subprocess.Popen[str]]


class Broker:
    """``remus server`` on free ports, its stderr in a file."""

    def __init__(self, make_process: MakeProcess, log: Path, *extra: str) -> None:
        self.log = log
        with log.open("w") as stderr:  # the child has its own copy of the descriptor
            self.proc, self.ports = start_cli_server(make_process, *extra, stderr=stderr)
        self._mark = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> float:
        """Send SIGTERM; return when (monotonic). Later log lines are :meth:`since_stop`."""
        self._mark = len(self.text())
        self.proc.send_signal(signal.SIGTERM)
        return time.monotonic()

    def since_stop(self) -> str:
        return self.text()[self._mark :]


def mentions(text: str, n: int, word: str) -> bool:
    """True if ``text`` says ``n`` of ``word``: "3 jobs queued", "queued: 3", "queued=3"..."""
    return bool(
        re.search(rf"\b{n}\b\D{{0,30}}\b{word}", text)
        or re.search(rf"\b{word}\b\W{{0,3}}{n}\b", text)
    )


class Waiter:
    """``BasicClient.wait`` on a job from a thread, with its outcome and when it came."""

    def __init__(self, client: BasicClient, job: Any, timeout: float) -> None:
        self.client = client
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(
            target=self._wait, args=(job, timeout), name="test-waiter", daemon=True
        )
        self.thread.start()
        # its first request is held by the broker (the job sends no progress); another
        # client's round trip makes it all but sure the broker has it by then
        wait_for(lambda: client.client.calls >= 1, timeout=5)

    def _wait(self, job: Any, timeout: float) -> None:
        try:
            self.outcome["result"] = self.client.wait(job, timeout=timeout)
        except Exception as e:
            self.outcome["error"] = e
        self.outcome["at"] = time.monotonic()

    def join(self, timeout: float) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the wait did not end within {timeout} s"
        return self.outcome


def submit_refused(bc: BasicClient) -> remus.ServerError | None:
    """Submit a job; the broker's refusal, or None if it took the job."""
    try:
        bc.submit(FAULT, b"too late")
    except remus.ServerError as e:
        return e
    return None


def start_worker(make_process: MakeProcess, c: Client, program: str, io: IOType, *args: str) -> Any:
    proc = make_process([program, *args, "--heartbeat", "0.1"])
    wait_for(lambda: c.can_mesh(io), timeout=SLOW)
    return proc


@pytest.mark.parametrize("journal", [False, True], ids=["memory", "journal"])
def test_sigterm_logs_the_jobs_it_stops_with_and_answers_waiting_clients(
    tmp_path: Path, make_process: MakeProcess, make_client: Any, journal: bool
) -> None:
    extra = ("--journal", str(tmp_path / "remus.db")) if journal else ()
    broker = Broker(make_process, tmp_path / "broker.log", *extra)
    bc = make_client(broker.ports.client, basic=True, timeout=2.0)
    worker = start_worker(
        make_process, bc.client, ECHO_WORKER, ECHO, broker.ports.worker, "--mode", "hold"
    )

    running = bc.submit(ECHO, b"held")
    wait_for(lambda: bc.client.job_status(running).status is Status.IN_PROGRESS, timeout=SLOW)
    queued = [bc.submit(NOBODY, b"%d" % i, wait_for_worker=True) for i in range(3)]
    assert {s.status for s in bc.client.job_statuses(queued)} == {Status.QUEUED}
    waiter = None
    if not journal:  # with a journal a waiting client rides out the restart: not tested here
        waiter = Waiter(make_client(broker.ports.client, basic=True, timeout=2.0), running, 8.0)
        assert bc.client.job_status(running).status is Status.IN_PROGRESS

    sent = broker.terminate()
    if waiter is not None:
        outcome = waiter.join(10.0)
        assert isinstance(outcome.get("error"), remus.BrokerStoppedError), outcome
        assert outcome["at"] - sent < 2.0, f"told after {outcome['at'] - sent:.2f} s"
    assert wait_exit(broker.proc, 10) == 0
    assert wait_exit(worker, 10) == 0, "the broker told its worker to exit"

    said = broker.since_stop()
    assert mentions(said, 3, "queued"), said
    assert mentions(said, 1, "running"), said
    if journal:
        assert re.search(r"\b(kept|keeps)\b", said), said
    else:
        assert re.search(r"\blost\b", said), said


def test_drain_refuses_new_jobs_and_lets_the_running_one_finish(
    tmp_path: Path, make_process: MakeProcess, make_client: Any
) -> None:
    drain = 5.0
    broker = Broker(make_process, tmp_path / "broker.log", "--drain", str(drain))
    bc = make_client(broker.ports.client, basic=True, timeout=2.0)
    start_worker(make_process, bc.client, FAULT_WORKER, FAULT, broker.ports.worker)

    job = bc.submit(FAULT, b"sleep:1.5")
    wait_for(lambda: bc.client.job_status(job).status is Status.IN_PROGRESS, timeout=SLOW)
    waiter = Waiter(make_client(broker.ports.client, basic=True, timeout=2.0), job, SLOW)
    assert bc.client.job_status(job).status is Status.IN_PROGRESS

    sent = broker.terminate()
    # a signal takes a moment to reach the core: a submit may still be taken meanwhile, but
    # soon one is refused, at once and in words (a TimeoutError is no ServerError: it fails)
    refused = wait_for(lambda: submit_refused(bc), timeout=2.0, interval=0.05)
    assert time.monotonic() - sent < 2.0, "refused at once, not after a timeout"
    assert re.search(r"stop|drain", str(refused), re.I), str(refused)

    outcome = waiter.join(SLOW)
    assert "error" not in outcome, outcome
    assert outcome["result"].data == b"slept"
    assert wait_exit(broker.proc, drain + 3.0) == 0
    assert time.monotonic() - sent < drain + 3.0


def test_drain_time_up_stops_the_broker_as_a_plain_stop_would(
    tmp_path: Path, make_process: MakeProcess, make_client: Any
) -> None:
    drain = 1.0
    broker = Broker(make_process, tmp_path / "broker.log", "--drain", str(drain))
    bc = make_client(broker.ports.client, basic=True, timeout=2.0)
    start_worker(make_process, bc.client, ECHO_WORKER, ECHO, broker.ports.worker, "--mode", "hold")

    job = bc.submit(ECHO, b"never done in time")
    wait_for(lambda: bc.client.job_status(job).status is Status.IN_PROGRESS, timeout=SLOW)
    waiter = Waiter(make_client(broker.ports.client, basic=True, timeout=2.0), job, 10.0)
    assert bc.client.job_status(job).status is Status.IN_PROGRESS

    sent = broker.terminate()
    outcome = waiter.join(12.0)
    assert isinstance(outcome.get("error"), remus.BrokerStoppedError), outcome
    assert outcome["at"] - sent >= drain * 0.9, "the broker did not drain first"
    assert outcome["at"] - sent < drain + 2.0, f"told after {outcome['at'] - sent:.2f} s"
    assert wait_exit(broker.proc, drain + 5.0) == 0
    said = broker.since_stop()
    assert mentions(said, 1, "running"), said
    assert re.search(r"\blost\b", said), said
