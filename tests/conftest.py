"""Shared fixtures: factories that remember what they made and close it, and a leak check."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remus.client import BasicClient, Client
from remus.server import Server, ServerConfig, ServerPorts
from remus.server.factory import WorkerFactory
from remus.worker import Worker

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """A test that leaves a remus thread running fails."""
    before = set(threading.enumerate())
    yield

    def leaked() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and t.name.startswith("remus")
        ]

    deadline = time.monotonic() + 5
    while leaked() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not leaked(), f"threads left running: {[t.name for t in leaked()]}"


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(ports: ServerPorts | None = None, **kwargs: Any) -> Server:
        if "config" not in kwargs:
            kwargs["config"] = ServerConfig(stop_timeout=1.0)
        server = Server(ports or ServerPorts.ephemeral(), **kwargs).start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture
def make_client() -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def make(endpoint: str, *, basic: bool = False, timeout: float = 5.0, **keys: Any) -> Any:
        """``keys``: ``server_key=`` and ``secret_key=``, for a broker in secure mode."""
        client = (BasicClient if basic else Client)(endpoint, timeout=timeout, **keys)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def make_worker() -> Iterator[Callable[..., Worker]]:
    """Workers in this process; ``run=handler`` also runs ``w.run(handler)`` on a thread."""
    made: list[tuple[Worker, threading.Thread | None]] = []

    def make(
        requirements: Any,
        endpoint: str,
        *,
        run: Any = None,
        heartbeat: float = 0.2,
        connected: bool = True,
        **run_kwargs: Any,
    ) -> Worker:
        """``connected``: return once the broker has answered its register (so a submit
        right after finds it: the broker refuses jobs nobody serves)."""
        worker = Worker(requirements, endpoint, heartbeat_interval=heartbeat)
        thread = None
        if run is not None:
            thread = threading.Thread(
                target=worker.run,
                args=(run,),
                kwargs=run_kwargs,
                name="remus-test-runner",
                daemon=True,
            )
            thread.start()
        made.append((worker, thread))
        if connected:
            wait_for(lambda: worker.connected, timeout=10.0)
        return worker

    yield make
    for worker, _ in made:
        worker._conn.shutdown.set()
        worker._conn.inbox.put(None)
    for worker, thread in made:
        if thread is not None:
            thread.join(5)
        worker.close()


@pytest.fixture
def make_process() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Child processes (python scripts), killed by PID at the end if still alive."""
    made: list[subprocess.Popen[str]] = []

    def make(
        args: list[str], *, env: dict[str, str] | None = None, **kwargs: Any
    ) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env={**os.environ, **(env or {})},
            text=True,
            cwd=ROOT,
            **kwargs,
        )
        made.append(proc)
        return proc

    yield make
    for proc in made:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()


def start_server_process(
    make_process: Callable[..., subprocess.Popen[str]],
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], ServerPorts]:
    """``python -m remus.server`` on free ports; returns the process and its real endpoints."""
    proc = make_process(
        [
            "-m",
            "remus.server",
            "--client",
            "tcp://127.0.0.1:0",
            "--worker",
            "tcp://127.0.0.1:0",
            "--status",
            "tcp://127.0.0.1:0",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("remus server ready:"):
        raise AssertionError(f"server did not start: {line!r}")
    fields = dict(part.split("=", 1) for part in line.split(":", 1)[1].split())
    return proc, ServerPorts(fields["client"], fields["worker"], fields["status"])


@pytest.fixture
def make_factory() -> Iterator[Callable[..., WorkerFactory]]:
    """Worker factories, stopped at the end of the test whatever happened (none left alive)."""
    made: list[WorkerFactory] = []

    def make(*paths: Path, **options: Any) -> WorkerFactory:
        factory = WorkerFactory(paths, **options)
        made.append(factory)
        return factory

    yield make
    for factory in made:
        factory.stop(grace=0.1)
        assert factory.alive_count() == 0
