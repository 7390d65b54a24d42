"""Secure mode with workers the broker starts from worker files: they get a key of their own in
their environment, never on their command line, and serve jobs with no change to the file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import ROOT
from factory_helpers import write_executable, write_worker_file

from remus import IOType
from remus.client import BasicClient
from remus.security import SECRET_KEY_Z85_ENV, new_keys
from remus.server import Server, ServerPorts
from remus.server.factory import WorkerFactory

pytestmark = pytest.mark.timeout(60)

ECHO = IOType("Text", "Echo")
ECHO_WORKER = str(ROOT / "tests" / "workers" / "echo_worker.py")


def test_spawned_workers_get_their_key_by_environment_only(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _, broker = new_keys("broker", keys / "broker")
    _, alice = new_keys("alice", keys / "clients")
    (keys / "workers").mkdir()  # no worker key at all: the spawned ones bring the broker's
    files = tmp_path / "workers"
    files.mkdir()
    program = write_executable(
        tmp_path / "echo", f'#!/bin/sh\nexec "{sys.executable}" "{ECHO_WORKER}" "$@"\n'
    )
    write_worker_file(
        files,
        "echo.rw",
        ExecutableName=str(program),
        Arguments=["--input", "Text", "--output", "Echo"],
        InputType="Text",
        OutputType="Echo",
    )
    factory = WorkerFactory([files], max_workers=1)
    with (
        Server(
            ServerPorts.ephemeral(),
            factory,
            secret_key=broker,
            allow_clients=keys / "clients",
            allow_workers=keys / "workers",
        ) as server,
        BasicClient(
            server.ports.client, server_key=server.public_key, secret_key=alice, timeout=20
        ) as c,
    ):
        assert c.run(ECHO, b"hi", timeout=30).data == b"echo:hi"
        (worker,) = c.client.workers()
        cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
        secret = next(v for v in environ if v.startswith(SECRET_KEY_Z85_ENV.encode() + b"="))
        secret = secret.split(b"=", 1)[1]
        assert len(secret) == 40 and not any(secret in arg for arg in cmdline)
        assert secret not in Path(alice).read_bytes() and secret not in Path(broker).read_bytes()
