"""A job's owner is kept in the journal: after a restart only its key (and admins) see it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from remus import IOType
from remus.client import BasicClient
from remus.errors import UnknownJobError
from remus.security import new_keys
from remus.server import Server, ServerPorts
from remus.worker import Worker

pytestmark = pytest.mark.timeout(60)

UPPER = IOType("Text", "Upper")


def test_owner_survives_a_restart_with_the_journal(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    _, broker = new_keys("broker", keys / "broker")
    _, alice = new_keys("alice", keys / "clients")
    _, bob = new_keys("bob", keys / "clients")
    _, admin = new_keys("ops", keys / "admins")
    _, worker_key = new_keys("w", keys / "workers")
    secure = {
        "secret_key": broker,
        "allow_clients": keys / "clients",
        "allow_workers": keys / "workers",
        "admin_clients": keys / "admins",
        "journal": tmp_path / "journal.db",
    }
    with Server(ServerPorts.ephemeral(), **secure) as first:
        key = first.public_key
        with Worker(UPPER, first.ports.worker, server_key=key, secret_key=worker_key) as w:
            runner = threading.Thread(target=w.run, args=(lambda job: job["data"].upper(),))
            runner.start()
            with BasicClient(first.ports.client, server_key=key, secret_key=alice) as c:
                # (the worker registers after its CURVE handshake: the job may come first)
                done = c.submit(UPPER, b"done before", wait_for_worker=True)
                assert c.wait(done, timeout=20).data == b"DONE BEFORE"
        runner.join(10)
        with BasicClient(first.ports.client, server_key=key, secret_key=alice) as c:
            queued = c.submit(UPPER, b"queued across", wait_for_worker=True)

    with Server(ServerPorts.ephemeral(), **secure) as second:
        key = second.public_key
        with BasicClient(second.ports.client, server_key=key, secret_key=bob, timeout=5) as b:
            for job in (done, queued):
                with pytest.raises(UnknownJobError):
                    b.client.retrieve_result(job)
                assert b.client.job_status(job).status.name == "INVALID"
            assert b.client.jobs() == []
        with BasicClient(second.ports.client, server_key=key, secret_key=admin) as ops:
            assert {j.id for j in ops.client.jobs()} == {done.id, queued.id}
        with BasicClient(second.ports.client, server_key=key, secret_key=alice) as c:
            assert c.client.retrieve_result(done).data == b"DONE BEFORE"
            assert c.client.job_status(queued).status.name == "QUEUED"
            with Worker(UPPER, second.ports.worker, server_key=key, secret_key=worker_key) as w:
                runner = threading.Thread(target=w.run, args=(lambda job: job["data"].upper(),))
                runner.start()
                assert c.wait(queued, timeout=20).data == b"QUEUED ACROSS"
            runner.join(10)
