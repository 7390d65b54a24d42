"""Secure mode across hosts: a worker in its own network namespace (a veth pair away, as on
another machine) serves jobs with its key, and one with a key the broker does not list never
registers there and is counted as refused."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import start_server_process, wait_for
from test_files import FILE_WORKER, FILES, binary_file, netns, report_of

from remus.client import BasicClient
from remus.files import sha256_file
from remus.security import new_keys

__all__ = ["netns"]  # the fixture, made for the files tests

pytestmark = pytest.mark.timeout(60)


def test_worker_across_a_namespace_uses_its_key(
    netns: tuple[str, str, str],
    make_process: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, host_ip, _ = netns
    keys = tmp_path / "keys"
    broker_public, broker_secret = new_keys("broker", keys / "broker")
    _, alice = new_keys("alice", keys / "clients")
    _, worker_secret = new_keys("mover", keys / "workers")
    _, stranger_secret = new_keys("stranger", keys / "others")
    monkeypatch.setenv("REMUS_HOST_ID", "host-client")
    _, ports = start_server_process(
        make_process,
        "--worker",
        f"tcp://{host_ip}:0",
        "--secret-key",
        str(broker_secret),
        "--allow-clients",
        str(keys / "clients"),
        "--allow-workers",
        str(keys / "workers"),
        env={"REMUS_HOST_ID": "host-broker"},
    )
    in_namespace = {"REMUS_HOST_ID": "host-netns", "REMUS_SERVER_KEY": str(broker_public)}
    stranger = make_process(
        [FILE_WORKER, ports.worker, "--netns", name],
        env={**in_namespace, "REMUS_SECRET_KEY": str(stranger_secret)},
    )
    with BasicClient(ports.client, timeout=20, server_key=broker_public, secret_key=alice) as c:
        wait_for(lambda: c.client.stats().security.get("refused_workers", 0) >= 1, timeout=20)
        assert not c.client.can_mesh(FILES) and stranger.poll() is None
        good = make_process(
            [FILE_WORKER, ports.worker, "--netns", name],
            env={**in_namespace, "REMUS_SECRET_KEY": str(worker_secret)},
        )
        wait_for(lambda: c.client.can_mesh(FILES), timeout=20)
        src = binary_file(tmp_path / "in.bin", 1_000_000)
        updates: list[Any] = []
        c.run(FILES, files=[src], timeout=30, on_progress=updates.append)
        seen = report_of(updates)
        assert seen["host"] == "host-netns" and seen["files"][0]["sha256"] == sha256_file(src)
        (worker,) = c.client.workers()
        assert worker.pid == good.pid, "only the worker with a listed key registered"
