"""Helpers shared by the end-to-end and robustness tests (real sockets, real processes)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import zmq

from remus.server import ServerPorts

WORKERS = Path(__file__).resolve().parent / "workers"
ECHO_WORKER = str(WORKERS / "echo_worker.py")
FLOOD = str(WORKERS / "flood.py")
#: the ``remus`` console script installed next to the interpreter running the tests
REMUS_SCRIPT = str(Path(sys.executable).parent / "remus")


def free_tcp_endpoint() -> str:
    """A loopback endpoint with nothing listening: bind port 0, note it, close it again."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.linger = 0
    try:
        sock.bind("tcp://127.0.0.1:0")
        return sock.last_endpoint.decode()
    finally:
        sock.close(0)


def read_ready_line(proc: subprocess.Popen[str]) -> ServerPorts:
    """Parse ``remus server ready: client=.. worker=.. status=..`` from the process's stdout."""
    ports = _ready_ports(proc)
    if ports is None:
        raise AssertionError(f"server did not start (exit code {proc.poll()})")
    return ports


def _ready_ports(proc: subprocess.Popen[str]) -> ServerPorts | None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("remus server ready:"):
        return None
    fields = dict(part.split("=", 1) for part in line.split(":", 1)[1].split())
    proc.ready = fields  # type: ignore[attr-defined]  # every field, e.g. metrics=URL
    return ServerPorts(fields["client"], fields["worker"], fields["status"])


def launch_cli_server(
    make_process: Callable[..., subprocess.Popen[str]],
    *extra: str,
    ports: ServerPorts | None = None,
    **popen: Any,
) -> tuple[subprocess.Popen[str], ServerPorts | None]:
    """``remus server`` (the console script) with ``extra`` options on ``ports`` (default: free
    ports): the process and its real endpoints, or None for them if it did not start (a port
    was taken meanwhile, say): then it has exited. ``popen``: more for ``make_process``."""
    ports = ports or ServerPorts.ephemeral()
    proc = make_process(
        [
            REMUS_SCRIPT,
            "server",
            "--client",
            ports.client,
            "--worker",
            ports.worker,
            "--status",
            ports.status,
            *extra,
        ],
        stdout=subprocess.PIPE,
        **popen,
    )
    got = _ready_ports(proc)
    if got is None:
        proc.wait(10)
    return proc, got


def restart_cli_server(
    make_process: Callable[..., subprocess.Popen[str]],
    ports: ServerPorts,
    *extra: str,
    timeout: float = 15.0,
) -> subprocess.Popen[str]:
    """``remus server EXTRA`` again on exactly ``ports``. A port freed by a kill can be taken
    in between (by some outgoing connection): try again until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        proc, got = launch_cli_server(make_process, *extra, ports=ports)
        if got is not None:
            assert got == ports
            return proc
        if time.monotonic() > deadline:
            raise AssertionError(f"the broker did not start again on {ports} within {timeout} s")
        time.sleep(0.1)  # pacing between attempts, not a wait for a condition


def start_cli_server(
    make_process: Callable[..., subprocess.Popen[str]],
    *extra: str,
    ports: ServerPorts | None = None,
    **popen: Any,
) -> tuple[subprocess.Popen[str], ServerPorts]:
    """``remus server`` on free ports (or ``ports``); fails the test if it does not start."""
    proc, got = launch_cli_server(make_process, *extra, ports=ports, **popen)
    if got is None:
        raise AssertionError(f"remus server did not start (exit code {proc.poll()})")
    return proc, got


def sigkill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process we started and reap it."""
    proc.kill()
    proc.wait(10)


def wait_exit(proc: subprocess.Popen[str], timeout: float) -> int:
    """The process's exit code; fails the test if it is still running after ``timeout`` s."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"process {proc.pid} did not exit within {timeout} s") from None


class StatusFeed:
    """A SUB socket on a broker's status endpoint that keeps every event it has read.

    An XPUB only publishes what someone subscribed to, and a subscription takes a moment to
    reach the broker: :meth:`prime` proves it arrived before a test relies on it.
    """

    def __init__(self, endpoint: str, *prefixes: bytes) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.linger = 0
        for prefix in prefixes:
            self.sock.subscribe(prefix)
        self.sock.connect(endpoint)
        self.events: list[tuple[str, dict[str, Any]]] = []

    def read(self, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """Read what arrives within ``timeout`` s (at least one poll); return the new events."""
        new: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if not self.sock.poll(remaining * 1000):
                break
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                assert len(frames) == 2, f"an event is [topic, payload], got {len(frames)} frames"
                payload = msgpack.unpackb(frames[1], raw=False)
                assert isinstance(payload, dict), f"event payload is not a map: {payload!r}"
                new.append((frames[0].decode(), payload))
            if new or time.monotonic() >= deadline:
                break
        self.events.extend(new)
        return new

    def prime(self, probe: Callable[[], Any], topic: str, timeout: float = 5.0) -> None:
        """Call ``probe()`` until an event with ``topic`` arrives: the subscription is live.

        Subscriptions reach the broker in the order they were made, so prime with the prefix
        subscribed last and every earlier one is live too.
        """
        deadline = time.monotonic() + timeout
        while True:
            probe()
            if any(t == topic for t, _ in self.read(0.05)):
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {topic} event within {timeout} s: not subscribed?")

    def until(
        self, pred: Callable[[str, dict[str, Any]], bool], timeout: float = 5.0
    ) -> tuple[str, dict[str, Any]]:
        """Read until an event satisfying ``pred(topic, payload)`` arrives; return it."""
        for topic, payload in self.events:
            if pred(topic, payload):
                return topic, payload
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for topic, payload in self.read(deadline - time.monotonic()):
                if pred(topic, payload):
                    return topic, payload
        raise AssertionError(f"no matching event within {timeout} s; saw {self.topics()}")

    def for_job(self, job_id: str) -> list[str]:
        return [t for t, payload in self.events if payload.get("job") == job_id]

    def topics(self) -> list[str]:
        return [t for t, _ in self.events]

    def close(self) -> None:
        self.sock.close(0)

    def __enter__(self) -> StatusFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drain_replies(
    sockets: list[zmq.Socket[Any]], expected: dict[zmq.Socket[Any], int], timeout: float
) -> dict[zmq.Socket[Any], list[list[bytes]]]:
    """Collect replies on each socket until it has ``expected[sock]`` of them or time runs out."""
    got: dict[zmq.Socket[Any], list[list[bytes]]] = {s: [] for s in sockets}
    poller = zmq.Poller()
    for s in sockets:
        poller.register(s, zmq.POLLIN)
    deadline = time.monotonic() + timeout

    def missing() -> Iterator[zmq.Socket[Any]]:
        return (s for s in sockets if len(got[s]) < expected[s])

    while any(True for _ in missing()) and time.monotonic() < deadline:
        for sock, _ in poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            while True:
                try:
                    got[sock].append(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
    return got


def assert_same_bytes(got: bytes, want: bytes, what: str) -> None:
    """Byte-for-byte equality with a short message (pytest's diff of megabytes is useless)."""
    if got == want:
        return
    if len(got) != len(want):
        raise AssertionError(f"{what}: {len(got)} bytes arrived, {len(want)} were sent")
    first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    raise AssertionError(f"{what}: {len(got)} bytes, first difference at offset {first}")


def is_stopped(pid: int) -> bool:
    """True once every thread of process ``pid`` is stopped (SIGSTOP takes effect asynchronously).

    Linux only: reads the state letter of each task in /proc.
    """
    tasks = Path(f"/proc/{pid}/task")
    states = []
    for task in tasks.iterdir():
        stat = (task / "stat").read_text()
        states.append(stat[stat.rindex(")") + 2])  # the field after "(comm)"
    return bool(states) and all(s in "Tt" for s in states)
