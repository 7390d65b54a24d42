"""The worker factory inside a running broker: real sockets, real worker processes.

The broker reports what its factory spawns and reaps on the status channel (``worker.spawned``,
``worker.reaped``); the tests read that feed to know which processes exist and in what order.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from conftest import start_server_process, wait_for
from factory_helpers import pid_gone, write_executable, write_worker_file

from remus.client import Client
from remus.server import Server
from remus.server.factory import EXITED, SPAWNED, Backoff, WorkerFactory
from remus.server.thread_factory import ThreadWorkerFactory
from remus.types import IOType, JobRequirements, JobSubmission, Status

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(sys.platform == "win32", reason="process groups and signals"),
]

EDGES = IOType("Edges", "Mesh2D")
POINTS = IOType("Points", "Mesh2D")
WORKER = str(Path(__file__).resolve().parent / "workers" / "factory_worker.py")
#: long enough for a Python worker to start, connect and finish a job on a loaded machine
SLOW = 20.0

Event = tuple[str, dict[str, Any]]


class Feed:
    """A SUB socket on the broker's status channel that keeps every event it read, in order."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.subscribe(b"")  # every topic
        self.sock.connect(endpoint)
        self.events: list[Event] = []

    def read(self, timeout: float = 0.0) -> list[Event]:
        """What arrives within ``timeout`` s (returns early once something came)."""
        new: list[Event] = []
        if self.sock.poll(int(timeout * 1000)):
            while True:
                try:
                    topic, body = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                new.append((topic.decode(), msgpack.unpackb(body, raw=False)))
        self.events.extend(new)
        return new

    def prime(self, client: Client, timeout: float = 5.0) -> None:
        """Submit throwaway jobs nobody serves until one's ``job.queued`` event arrives."""
        primers = []
        deadline = time.monotonic() + timeout
        while not any(t == "job.queued" for t, _ in self.events):
            if time.monotonic() > deadline:
                raise AssertionError("the status subscription never became live")
            primer = JobSubmission.of(IOType("Prime", "Nothing"))
            primers.append(client.submit_job(primer, wait_for_worker=True))
            self.read(0.05)
        for job in primers:
            client.terminate(job)

    def wait(self, pred: Callable[[str, dict[str, Any]], bool], timeout: float = SLOW) -> Event:
        """The first event (read so far or arriving within ``timeout`` s) matching ``pred``."""
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            for topic, payload in self.events[seen:]:
                if pred(topic, payload):
                    return topic, payload
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no such event within {timeout} s; saw {self.topics()}")
            self.read(remaining)

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [payload for t, payload in self.events if t == topic]

    def lifecycle(self) -> list[Event]:
        """The factory's spawned and exited events, in order (see the xfail test at the end:
        a worker's goodbye is published under the same topic as its process's exit)."""
        return [(t, p) for t, p in self.events if t == SPAWNED or (t == EXITED and is_reap(p))]

    def reaped(self) -> list[dict[str, Any]]:
        return [p for t, p in self.lifecycle() if t == EXITED]

    def topics(self) -> list[str]:
        return [t for t, _ in self.events]

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def make_feed() -> Iterator[Callable[[Server, Client], Feed]]:
    """A primed status feed on a server; closed at the end of the test."""
    made: list[Feed] = []

    def make(server: Server, client: Client) -> Feed:
        feed = Feed(server.ports.status)
        made.append(feed)
        feed.prime(client)
        return feed

    yield make
    for feed in made:
        feed.close()


def worker_file(folder: Path, name: str, *args: str, **keys: Any) -> Path:
    """A worker file that starts factory_worker.py; ``args`` follow ``--rw @SELF@``."""
    keys.setdefault("ExecutableName", WORKER)
    return write_worker_file(folder, name, Arguments=["--rw", "@SELF@", *args], **keys)


def status_of(client: Client, job: Any) -> Status:
    return client.job_status(job).status


def wait_done(client: Client, jobs: list[Any], timeout: float = SLOW) -> list[Status]:
    wait_for(lambda: all(s.done for s in client.job_statuses(jobs)), timeout=timeout)
    return [s.status for s in client.job_statuses(jobs)]


def is_reap(payload: dict[str, Any]) -> bool:
    """A factory's exit event (a process was reaped), as opposed to a worker's goodbye."""
    return "returncode" in payload


def peak_alive(events: list[Event]) -> int:
    """The most spawned workers alive at once, replaying spawned/exited events in order."""
    alive: set[int] = set()
    peak = 0
    for topic, payload in events:
        if topic == SPAWNED:
            alive.add(payload["pid"])
        elif topic == EXITED:
            alive.discard(payload["pid"])
        peak = max(peak, len(alive))
    return peak


# -- what the broker says it can run, before any worker exists --------------------------------


def test_one_worker_file_is_exactly_what_the_server_offers(
    tmp_path: Path, make_server: Any, make_client: Any
) -> None:
    (tmp_path / "reqs.json").write_text('{"order": 2}')
    worker_file(
        tmp_path,
        "edges.rw",
        InputType="Edges",
        OutputType="Mesh2D",
        WorkerName="EdgeMesher",
        Tag={"quality": "fine"},
        File="reqs.json",
        FileFormat="JSON",
    )
    factory = WorkerFactory([tmp_path], max_workers=0)
    server = make_server(factory=factory)
    c = make_client(server.ports.client)

    assert c.supported_io_types() == {EDGES}
    assert c.can_mesh(EDGES)
    assert not c.can_mesh(IOType("Edges", "Mesh3D"))
    assert not c.can_mesh(POINTS)
    assert c.can_mesh(JobRequirements(EDGES, worker_name="EdgeMesher", tag={"quality": "fine"}))
    assert not c.can_mesh(JobRequirements(EDGES, worker_name="Other"))
    assert not c.can_mesh(JobRequirements(EDGES, tag={"quality": "draft"}))
    assert c.retrieve_requirements(EDGES) == [
        JobRequirements(
            EDGES,
            worker_name="EdgeMesher",
            tag={"quality": "fine"},
            content=b'{"order": 2}',
            content_format="JSON",
        )
    ]
    assert c.retrieve_requirements(POINTS) == []
    assert factory.spawned_total == 0  # asking spawns nothing


def test_command_line_wires_the_worker_folder(
    tmp_path: Path, make_process: Any, make_client: Any
) -> None:
    """``remus server --workers DIR --max-workers N`` offers the folder and spawns from it."""
    records = tmp_path / "records"
    records.mkdir()
    folder = tmp_path / "workers"
    folder.mkdir()
    worker_file(folder, "edges.rw", "--record", str(records), WorkerName="EdgeMesher")
    (folder / "broken.rw").write_text("{not json")
    proc, ports = start_server_process(make_process, "--workers", str(folder), "--max-workers", "1")
    c = make_client(ports.client)

    assert c.supported_io_types() == {EDGES}
    job = c.submit_job(JobSubmission.of(EDGES, b"cli"))
    assert wait_done(c, [job]) == [Status.FINISHED]
    assert c.retrieve_result(job).data == b"echo:cli"

    # the broker dies without stopping anything: its worker must not outlive it
    (record,) = records.iterdir()
    pid = json.loads(record.read_text())["pid"]
    assert not pid_gone(pid)  # idle, waiting for its next job
    proc.kill()
    proc.wait(10)
    wait_for(lambda: pid_gone(pid), timeout=10)


# -- what reaches the spawned process ---------------------------------------------------------


@pytest.mark.parametrize(
    ("wrong", "expected_status"),
    [
        (None, Status.FINISHED),
        ("env", Status.FAILED),
        ("argv", Status.FAILED),
        ("tag", Status.FAILED),
    ],
)
def test_tag_arguments_and_environment_reach_the_worker(
    tmp_path: Path,
    make_server: Any,
    make_client: Any,
    wrong: str | None,
    expected_status: Status,
) -> None:
    """The worker checks its own argv, environment and job tag; it fails the job on a mismatch.

    The wrong-expectation variants prove the check can fail, so a pass means something.
    """
    tag = {"quality": "fine", "passes": [1, 2]}
    rw = worker_file(
        tmp_path,
        "checker.rw",
        "--mode",
        "check",
        "self=@SELF@;again=@SELF@",  # only the first @SELF@ of an argument is replaced
        WorkerName="Checker",
        Tag=tag,
        Environment={"REMUS_TEST_COLOUR": "blue", "REMUS_TEST_EMPTY": ""},
    )
    factory = WorkerFactory([tmp_path], max_workers=1)
    factory.add_argument("--from-factory")
    server = make_server(factory=factory)
    c = make_client(server.ports.client)
    self_path = os.path.abspath(rw)
    expect: dict[str, Any] = {
        "argv": [
            server.ports.worker,
            "--from-factory",  # factory arguments come before the file's
            "--rw",
            self_path,
            "--mode",
            "check",
            f"self={self_path};again=@SELF@",
        ],
        "env": {
            "REMUS_TEST_COLOUR": "blue",
            "REMUS_TEST_EMPTY": "",
            "HOME": os.environ.get("HOME"),  # the broker's environment is inherited
        },
        "tag": tag,
    }
    if wrong == "env":
        expect["env"]["REMUS_TEST_COLOUR"] = "red"
    elif wrong == "argv":
        expect["argv"] = expect["argv"][:1] + expect["argv"][2:]
    elif wrong == "tag":
        expect["tag"] = {"quality": "draft"}

    (reqs,) = c.retrieve_requirements(EDGES)
    assert reqs.tag == tag and reqs.worker_name == "Checker"
    job = c.submit_job(JobSubmission.of(reqs, json.dumps(expect).encode()))

    (status,) = wait_done(c, [job])
    if status is Status.FINISHED:
        seen = json.loads(c.retrieve_result(job).data)
        assert seen["argv"][1:] == expect["argv"]
    else:
        with pytest.raises(Exception) as failure:
            c.retrieve_result(job)
        says = {"env": "$REMUS_TEST_COLOUR is 'blue'", "argv": "argv is", "tag": "tag is"}
        assert wrong is not None and says[wrong] in str(failure.value)
    assert status is expected_status
    # the file's Environment is for the child only
    assert "REMUS_TEST_COLOUR" not in os.environ


# -- how many workers are spawned, and when ---------------------------------------------------


def test_max_workers_zero_never_spawns(
    tmp_path: Path, make_server: Any, make_client: Any, make_feed: Any, make_worker: Any
) -> None:
    worker_file(tmp_path, "edges.rw")
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=0))
    c = make_client(server.ports.client)
    feed = make_feed(server, c)

    job = c.submit_job(JobSubmission.of(EDGES, b"x"))
    feed.wait(lambda t, p: t == "job.queued" and p["job"] == job.id)
    deadline = time.monotonic() + 1.0  # a bounded look: the factory runs every 50 ms
    while time.monotonic() < deadline:
        feed.read(deadline - time.monotonic())
    assert SPAWNED not in feed.topics()
    assert status_of(c, job) is Status.QUEUED

    # the job was only waiting: a worker that connects by itself takes it
    make_worker(EDGES, server.ports.worker, run=lambda job: b"by hand")
    assert wait_done(c, [job]) == [Status.FINISHED]


def test_max_workers_one_next_spawn_waits_for_the_exit(
    tmp_path: Path, make_server: Any, make_client: Any, make_feed: Any
) -> None:
    release = tmp_path / "release"
    env = {"FW_RELEASE": str(release)}
    for name, io_type in (("a.rw", EDGES), ("b.rw", POINTS)):
        worker_file(
            tmp_path,
            name,
            "--mode",
            "hold",
            "--max-jobs",
            "1",
            InputType=io_type.input,
            OutputType=io_type.output,
            Environment=env,
        )
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=1))
    c = make_client(server.ports.client)
    feed = make_feed(server, c)

    jobs = c.submit_jobs([JobSubmission.of(EDGES, b"a"), JobSubmission.of(POINTS, b"b")])
    _, first = feed.wait(lambda t, p: t == SPAWNED)
    held = wait_for(
        lambda: [
            j
            for j, s in zip(jobs, c.job_statuses(jobs), strict=True)
            if s.status is Status.IN_PROGRESS
        ],
        timeout=SLOW,
    )
    (running,) = held
    (other,) = [j for j in jobs if j is not running]
    assert running.requirements.io_type.to_wire() == first["io_type"]
    # the one slot is taken by a live worker: the other job waits, nothing else was started
    assert status_of(c, other) is Status.QUEUED
    feed.read()
    assert len(feed.of(SPAWNED)) == 1

    release.touch()
    assert wait_done(c, jobs) == [Status.FINISHED, Status.FINISHED]
    feed.wait(lambda t, p: t == EXITED and is_reap(p) and p["pid"] != first["pid"])
    lifecycle = [(t, p["pid"]) for t, p in feed.lifecycle()]
    (second,) = [p for p in feed.of(SPAWNED) if p["pid"] != first["pid"]]
    assert lifecycle == [
        (SPAWNED, first["pid"]),
        (EXITED, first["pid"]),
        (SPAWNED, second["pid"]),
        (EXITED, second["pid"]),
    ]
    assert second["io_type"] == other.requirements.io_type.to_wire()
    assert [p["returncode"] for p in feed.reaped()] == [0, 0]


def test_stopping_the_server_kills_a_worker_that_loops_forever(
    tmp_path: Path, make_server: Any, make_client: Any, make_feed: Any
) -> None:
    worker_file(tmp_path, "stubborn.rw", "--mode", "stubborn")
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=1))
    c = make_client(server.ports.client)
    feed = make_feed(server, c)

    job = c.submit_job(JobSubmission.of(EDGES, b"forever"))
    _, spawned = feed.wait(lambda t, p: t == SPAWNED)
    pid = spawned["pid"]
    wait_for(lambda: status_of(c, job) is Status.IN_PROGRESS, timeout=SLOW)
    status = Path(f"/proc/{pid}/status")
    if status.exists():  # it really is deaf to SIGTERM
        sig_ign = next(ln for ln in status.read_text().splitlines() if ln.startswith("SigIgn:"))
        assert int(sig_ign.split()[1], 16) & (1 << (signal.SIGTERM - 1))

    started = time.monotonic()
    server.stop()
    assert pid_gone(pid), "the stubborn worker outlived server.stop()"
    assert time.monotonic() - started < 10


def test_twenty_jobs_four_workers_at_most(
    tmp_path: Path, make_server: Any, make_client: Any, make_feed: Any
) -> None:
    """Each worker serves at most 3 jobs, so slots are freed and reused while jobs wait."""
    worker_file(tmp_path, "edges.rw", "--max-jobs", "3", "--delay", "0.02", "--idle", "0.5")
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=4))
    c = make_client(server.ports.client)
    feed = make_feed(server, c)

    jobs = c.submit_jobs([JobSubmission.of(EDGES, b"%d" % i) for i in range(20)])
    assert wait_done(c, jobs, timeout=25) == [Status.FINISHED] * 20
    assert [c.retrieve_result(j).data for j in jobs] == [b"echo:%d" % i for i in range(20)]

    # every worker exits once idle; then the whole history is on the feed
    def all_exited() -> bool:
        feed.read(0.05)
        return {p["pid"] for p in feed.reaped()} == {p["pid"] for p in feed.of(SPAWNED)}

    wait_for(all_exited, timeout=10)
    assert len(feed.of(SPAWNED)) >= 7  # 20 jobs, 3 per worker
    assert peak_alive(feed.lifecycle()) == 4  # all 20 were queued at once: every slot was used
    assert all(p["returncode"] == 0 for p in feed.reaped())


# -- a broken worker executable ---------------------------------------------------------------


def good_echo(job: Any) -> bytes:
    return b"good:" + job["data"]


def test_worker_that_crashes_at_start_loses_no_job_and_the_log_says_why(
    tmp_path: Path,
    make_server: Any,
    make_client: Any,
    make_feed: Any,
    make_worker: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="remus.server.factory")
    crasher = write_executable(
        tmp_path / "crasher.sh", "#!/bin/sh\necho 'crasher: cannot load libmesh.so' >&2\nexit 3\n"
    )
    rw = write_worker_file(tmp_path, "mesher.rw", ExecutableName=str(crasher), WorkerName="Mesher")
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=1))
    c = make_client(server.ports.client)
    feed = make_feed(server, c)

    job = c.submit_job(JobSubmission.of(EDGES, b"precious"))
    _, exited = feed.wait(lambda t, p: t == EXITED and is_reap(p))
    assert exited["returncode"] == 3
    assert "cannot load libmesh.so" in exited["stderr_tail"]
    assert exited["worker_file"] == str(rw)
    assert status_of(c, job) is Status.QUEUED

    # the warning is logged before the event is published
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "cannot load libmesh.so" in r.getMessage()
    ]
    assert warnings, caplog.text
    assert "code 3" in warnings[0] and str(rw) in warnings[0]

    # the job was never lost: a good worker that connects finishes it
    make_worker(JobRequirements(EDGES, worker_name="Mesher"), server.ports.worker, run=good_echo)
    assert wait_done(c, [job]) == [Status.FINISHED]
    assert c.retrieve_result(job).data == b"good:precious"


def test_crashing_worker_is_retried_with_growing_back_off(
    tmp_path: Path, make_server: Any, make_client: Any, make_feed: Any
) -> None:
    crasher = write_executable(tmp_path / "crasher.sh", "#!/bin/sh\nexit 1\n")
    write_worker_file(tmp_path, "mesher.rw", ExecutableName=str(crasher))
    backoff = Backoff(initial=0.1, factor=2.0, cap=30.0, quick_exit=5.0)
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=4, backoff=backoff))
    c = make_client(server.ports.client)
    feed = make_feed(server, c)

    c.submit_job(JobSubmission.of(EDGES, b"x"))
    feed.wait(lambda t, p: len(feed.reaped()) >= 4)
    lifecycle = feed.lifecycle()
    # each retry only after the delay announced with the exit, and that delay doubles
    assert [t for t, _ in lifecycle[:8]] == [SPAWNED, EXITED] * 4
    exits = [p for t, p in lifecycle[:8] if t == EXITED]
    spawns = [p for t, p in lifecycle[:8] if t == SPAWNED]
    assert [e["retry_in"] for e in exits] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    for exit_event, next_spawn in zip(exits[:3], spawns[1:], strict=True):
        assert next_spawn["time"] - exit_event["time"] >= exit_event["retry_in"] - 0.02


# -- workers on threads inside the broker -----------------------------------------------------


def test_thread_worker_factory_runs_the_job_inside_the_broker_process(
    make_server: Any, make_client: Any
) -> None:
    upper = JobRequirements(IOType("Text", "Upper"), worker_name="upper")
    threads: list[str] = []

    def handler(job: Any) -> bytes:
        threads.append(threading.current_thread().name)
        return json.dumps({"pid": os.getpid(), "text": job["data"].decode().upper()}).encode()

    factory = ThreadWorkerFactory({upper: handler}, max_workers=1, idle_timeout=5.0)
    server = make_server(factory=factory)
    c = make_client(server.ports.client)

    assert c.supported_io_types() == {upper.io_type}
    job = c.submit_job(JobSubmission.of(upper, b"hello"))
    assert wait_done(c, [job]) == [Status.FINISHED]
    assert json.loads(c.retrieve_result(job).data) == {"pid": os.getpid(), "text": "HELLO"}
    assert len(threads) == 1 and threads[0].startswith("remus-thread-worker")
    assert factory.started_total == 1


# -- bugs found ------------------------------------------------------------------------------


def test_one_exit_event_per_spawned_process(
    tmp_path: Path, make_server: Any, make_client: Any, make_feed: Any
) -> None:
    worker_file(tmp_path, "edges.rw", "--max-jobs", "1")
    server = make_server(factory=WorkerFactory([tmp_path], max_workers=1))
    c = make_client(server.ports.client)
    feed = make_feed(server, c)

    job = c.submit_job(JobSubmission.of(EDGES, b"once"))
    assert wait_done(c, [job]) == [Status.FINISHED]
    _, spawned = feed.wait(lambda t, p: t == SPAWNED)
    pid = spawned["pid"]
    feed.wait(lambda t, p: t == EXITED and is_reap(p) and p["pid"] == pid)
    feed.wait(lambda t, p: "reason" in p and p.get("pid") == pid)  # its goodbye, any topic
    exits = [p for t, p in feed.events if t == EXITED and p.get("pid") == pid]
    assert len(exits) == 1, exits


def test_a_process_factory_with_an_inproc_worker_endpoint_is_refused(tmp_path: Path) -> None:
    """Spawned processes could never reach an inproc:// endpoint: say so instead of
    respawning workers that cannot connect, for ever."""
    from remus.errors import ConfigError
    from remus.server import Server, ServerPorts

    ports = ServerPorts("tcp://127.0.0.1:0", "inproc://no-processes-here", "tcp://127.0.0.1:0")
    with pytest.raises(ConfigError, match="ThreadWorkerFactory"):
        Server(ports, factory=WorkerFactory([tmp_path], max_workers=1))
