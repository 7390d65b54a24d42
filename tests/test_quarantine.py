"""Issue 9 points 6 and 5c, end to end: crash loops quarantined with forensics, workers that
register the wrong requirements stopped, broker kills that are no crash, idle workers that make
room, and ``--check-workers DIR --start``. Real broker, real worker-file executables."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from factory_helpers import write_executable, write_worker_file
from helpers_e2e import REMUS_SCRIPT, StatusFeed, start_cli_server, wait_exit

from remus.client import Client
from remus.errors import NoWorkerError
from remus.server import Server, ServerConfig
from remus.server.factory import (
    ASKED_TO_LEAVE,
    EXITED,
    QUARANTINED,
    SPAWNED,
    Backoff,
    WorkerFactory,
)
from remus.types import IOType, JobSubmission, Status

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="process groups and signals"),
]

EDGES = IOType("Edges", "Mesh2D")
POINTS = IOType("Points", "Mesh2D")
WORKER = str(Path(__file__).resolve().parent / "workers" / "factory_worker.py")
SLOW = 20.0  # a Python worker starting on a loaded machine
FAST = Backoff(initial=0.05, factor=1.0, cap=0.05)
CRASHER = (
    "#!/bin/sh\necho 'loading the mesher' >&2\necho 'fatal: libmesh.so: not found' >&2\nexit 3\n"
)
LIAR = """#!/usr/bin/env python3
import sys
from remus.types import IOType, JobRequirements
from remus.worker import Worker

reqs = JobRequirements(IOType("Points", "Mesh3D"), worker_name="Liar")
with Worker(reqs, sys.argv[1], heartbeat_interval=0.2) as w:
    w.run(lambda job: b"never", idle_timeout=30)
"""


@pytest.fixture
def feeds() -> Iterator[list[StatusFeed]]:
    made: list[StatusFeed] = []
    yield made
    for feed in made:
        feed.close()


def live_feed(server: Any, client: Client, feeds: list[StatusFeed]) -> StatusFeed:
    """A status feed of every topic, proven live (a primer job's ``job.queued`` arrived)."""
    feed = StatusFeed(server.ports.status, b"")
    feeds.append(feed)
    primer = JobSubmission.of(IOType("Prime", "Nothing"))
    feed.prime(lambda: client.submit_job(primer, wait_for_worker=True), "job.queued")
    return feed


def factory_file(folder: Path, name: str, io_type: IOType, *args: str) -> Path:
    """A worker file that starts factory_worker.py (which registers what its file says)."""
    return write_worker_file(
        folder,
        name,
        ExecutableName=WORKER,
        InputType=io_type.input,
        OutputType=io_type.output,
        WorkerName=name.split(".")[0],
        Arguments=["--rw", "@SELF@", *args],
    )


def ended(client: Client, job: Any, timeout: float = SLOW) -> Any:
    return wait_for(lambda: (s := client.job_status(job)).status.done and s, timeout=timeout)


# -- a crash loop -----------------------------------------------------------------------------


def test_a_crash_loop_is_quarantined_and_its_job_fails_with_the_evidence(
    tmp_path: Path,
    make_server: Any,
    make_client: Any,
    feeds: list[StatusFeed],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="remus.server")
    crasher = write_executable(tmp_path / "crasher.sh", CRASHER)
    rw = write_worker_file(tmp_path, "mesher.rw", ExecutableName=str(crasher), WorkerName="Mesher")
    factory = WorkerFactory([tmp_path], max_workers=2, backoff=FAST)
    server = make_server(factory=factory)
    c = make_client(server.ports.client)
    feed = live_feed(server, c, feeds)

    job = c.submit_job(JobSubmission.of(EDGES, b"precious"))
    status = ended(c, job)
    assert status.status is Status.FAILED
    reason = status.reason
    assert f"worker file {rw} is quarantined" in reason, reason
    assert "5 failed starts in a row" in reason
    for n in range(1, 6):  # the evidence of each start
        assert f"[{n}] pid " in reason
    assert reason.count("exit code 3 after ") == 5
    assert reason.count("peak RSS ") == 5
    assert reason.count("fatal: libmesh.so: not found") == 5
    assert "loading the mesher" in reason  # the tail, not only its last line

    _, event = feed.until(lambda t, p: t == QUARANTINED, timeout=5)
    assert event["worker_file"] == str(rw)
    assert event["io_type"] == ["Edges", "Mesh2D"] and event["worker_name"] == "Mesher"
    assert event["reason"] == reason
    assert [s["returncode"] for s in event["starts"]] == [3] * 5
    assert all(s["peak_rss"] > 0 for s in event["starts"])
    assert feed.topics().count(SPAWNED) == 5
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("quarantined" in e and "libmesh.so" in e for e in errors), errors

    # nothing more starts, and a new job for it is refused, naming the quarantine
    assert not c.can_mesh(EDGES)
    with pytest.raises(NoWorkerError, match="quarantined"):
        c.submit_job(JobSubmission.of(EDGES, b"again"))
    waiting = c.submit_job(JobSubmission.of(EDGES, b"patient"), wait_for_worker=True)
    assert "is quarantined" in c.job_status(waiting).reason
    assert factory.spawned_total == 5

    # an operator lifts it (what SIGHUP does to remus server): it starts again
    server.lift_quarantine()
    wait_for(lambda: factory.spawned_total > 5, timeout=5)
    assert c.can_mesh(EDGES)


def test_a_worker_that_registers_other_requirements_is_stopped_and_its_file_quarantined(
    tmp_path: Path,
    make_server: Any,
    make_client: Any,
    feeds: list[StatusFeed],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="remus.server")
    liar = write_executable(tmp_path / "liar.py", LIAR)
    rw = write_worker_file(tmp_path, "mesher.rw", ExecutableName=str(liar), WorkerName="Mesher")
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=1))
    c = make_client(server.ports.client)
    feed = live_feed(server, c, feeds)

    job = c.submit_job(JobSubmission.of(EDGES, b"x"))
    status = ended(c, job)
    assert status.status is Status.FAILED
    assert f"worker file {rw} is quarantined" in status.reason
    assert "registered Points->Mesh3D named 'Liar'" in status.reason
    assert "declares Edges->Mesh2D named 'Mesher'" in status.reason

    _, spawned = feed.until(lambda t, p: t == SPAWNED, timeout=5)
    _, leave = feed.until(lambda t, p: t == ASKED_TO_LEAVE, timeout=5)
    assert leave["pid"] == spawned["pid"]
    # told to exit, it did (it is not killed: it heard the broker)
    _, exited = feed.until(lambda t, p: t == EXITED and "returncode" in p, timeout=SLOW)
    assert exited["pid"] == spawned["pid"] and exited["stopped_by_broker"] is True
    assert exited["returncode"] == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    shown = [e for e in errors if "Points->Mesh3D" in e and "Edges->Mesh2D" in e]
    assert shown, errors
    assert feed.topics().count(SPAWNED) == 1
    assert not c.can_mesh(EDGES)
    assert not c.can_mesh(IOType("Points", "Mesh3D"))  # the liar is gone


def test_sighup_lifts_the_quarantine_of_remus_server(
    tmp_path: Path, make_process: Any, make_client: Any
) -> None:
    folder = tmp_path / "workers"
    folder.mkdir()
    crasher = write_executable(tmp_path / "crasher.sh", CRASHER)
    write_worker_file(folder, "mesher.rw", ExecutableName=str(crasher))
    proc, ports = start_cli_server(
        make_process, "--workers", str(folder), "--quarantine-after", "2"
    )
    c = make_client(ports.client)

    job = c.submit_job(JobSubmission.of(EDGES, b"x"))
    status = ended(c, job)  # 2 failed starts, 1 s apart (the default back-off)
    assert status.status is Status.FAILED and "2 failed starts in a row" in status.reason
    assert not c.can_mesh(EDGES)

    os.kill(proc.pid, signal.SIGHUP)
    wait_for(lambda: c.can_mesh(EDGES), timeout=5)
    assert proc.poll() is None  # SIGHUP does not stop it
    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 15) == 0


# -- what the broker does is never a crash ----------------------------------------------------


def test_a_time_limit_kill_is_no_crash(
    tmp_path: Path, make_server: Any, make_client: Any, feeds: list[StatusFeed]
) -> None:
    factory_file(tmp_path, "stubborn.rw", EDGES, "--mode", "stubborn")
    # one crash would hold the next start for 30 s, and one failed start would quarantine it
    backoff = Backoff(initial=30.0, quarantine_after=1)
    server = make_server(
        factory=WorkerFactory([tmp_path], max_workers=1, backoff=backoff),
        config=ServerConfig(kill_grace=0.3, stop_timeout=1.0),
    )
    c = make_client(server.ports.client)
    feed = live_feed(server, c, feeds)

    first = c.submit_job(JobSubmission.of(EDGES, b"1"), time_limit=0.5)
    assert ended(c, first).status is Status.FAILED
    _, killed = feed.until(lambda t, p: t == EXITED and "returncode" in p, timeout=SLOW)
    assert killed["signal"] == "SIGKILL" and killed["stopped_by_broker"] is True
    assert killed["retry_in"] is None

    second = c.submit_job(JobSubmission.of(EDGES, b"2"), time_limit=30)
    feed.until(lambda t, p: t == SPAWNED and p["pid"] != killed["pid"], timeout=SLOW)
    wait_for(lambda: c.job_status(second).status is Status.IN_PROGRESS, timeout=SLOW)
    assert factory_quarantined(server) == {}


def factory_quarantined(server: Server) -> dict[str, str]:
    factory = server.factory
    assert isinstance(factory, WorkerFactory)
    return factory.quarantined()


# -- one file's idle workers never starve another's jobs -------------------------------------


def test_an_idle_worker_of_another_file_makes_room(
    tmp_path: Path, make_server: Any, make_client: Any, feeds: list[StatusFeed]
) -> None:
    factory_file(tmp_path, "a.rw", EDGES, "--idle", "40")
    factory_file(tmp_path, "b.rw", POINTS, "--idle", "40")
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=1))
    c = make_client(server.ports.client)
    feed = live_feed(server, c, feeds)

    a = c.submit_job(JobSubmission.of(EDGES, b"a"))
    assert ended(c, a).status is Status.FINISHED  # its worker now idles for 40 s
    _, a_spawned = feed.until(lambda t, p: t == SPAWNED, timeout=5)

    b = c.submit_job(JobSubmission.of(POINTS, b"b"))
    assert ended(c, b).status is Status.FINISHED, c.job_status(b)
    assert c.retrieve_result(b).data == b"echo:b"
    _, leave = feed.until(lambda t, p: t == ASKED_TO_LEAVE, timeout=5)
    assert leave["pid"] == a_spawned["pid"] and "max_workers=1 reached" in leave["reason"]
    _, a_exit = feed.until(lambda t, p: t == EXITED and p.get("pid") == a_spawned["pid"], timeout=5)
    assert a_exit["stopped_by_broker"] is True and a_exit["returncode"] == 0
    spawned = [p["worker_file"] for t, p in feed.events if t == SPAWNED]
    assert spawned == [str(tmp_path / "a.rw"), str(tmp_path / "b.rw")]


# -- remus server --check-workers DIR --start --------------------------------------------------


def test_check_workers_start_reports_what_each_worker_registers(
    tmp_path: Path, make_process: Any
) -> None:
    factory_file(tmp_path, "good.rw", EDGES)
    crasher = write_executable(tmp_path / "crasher.sh", CRASHER)
    write_worker_file(tmp_path, "crash.rw", ExecutableName=str(crasher))
    liar = write_executable(tmp_path / "liar.py", LIAR)
    write_worker_file(tmp_path, "liar.rw", ExecutableName=str(liar), WorkerName="Mesher")
    proc = make_process(
        [
            REMUS_SCRIPT,
            "server",
            "--check-workers",
            str(tmp_path),
            "--start",
            "--start-timeout",
            "15",
        ],
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=50)
    lines = {line.split()[1].rstrip(":"): line for line in out.splitlines()[:-1]}
    assert proc.returncode == 1, out
    good = lines[str(tmp_path / "good.rw")]
    assert good.startswith("ok ") and "registered Edges->Mesh2D named 'good'" in good
    assert "as the file declares" in good
    crash = lines[str(tmp_path / "crash.rw")]
    assert crash.startswith("FAIL") and "exit code 3 after" in crash
    assert "libmesh.so: not found" in crash and "before registering" in crash
    lie = lines[str(tmp_path / "liar.rw")]
    assert lie.startswith("FAIL")
    assert "registered Points->Mesh3D named 'Liar', but the file declares Edges->Mesh2D" in lie
    assert out.splitlines()[-1] == "1 started and registered, 2 with problems"
