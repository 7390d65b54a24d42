"""Issue 9 point 8: a peer at the wrong broker socket is told, in words, where to connect.

A client at the worker endpoint gets WrongEndpointError (not "unknown command io_types"); a
worker at the client endpoint logs the error once and stops (a worker program exits non-zero)
instead of logging "unknown command heartbeat" every second forever. The broker logs it once
per peer, however often that peer tries.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest
import zmq
from conftest import wait_for
from helpers_e2e import ECHO_WORKER, wait_exit

import remus
from remus import IOType, JobRequirements
from remus import protocol as p
from remus.worker import Worker

pytestmark = pytest.mark.timeout(60)

MESH = IOType("Edges", "Mesh2D")


def test_a_client_at_the_worker_endpoint_is_told_where_to_connect(
    server: Any, make_client: Any
) -> None:
    c = make_client(server.ports.worker, timeout=5.0)
    bc = make_client(server.ports.worker, basic=True, timeout=5.0)
    for call in (
        c.supported_io_types,
        lambda: c.job_status("some-job"),
        lambda: bc.run(MESH, data=b"x", timeout=5.0),
        lambda: list(bc.as_completed([remus.Job("j", JobRequirements(MESH))])),
    ):
        with pytest.raises(remus.WrongEndpointError) as info:
            call()
        text = str(info.value)
        assert f"this is the broker's worker endpoint {server.ports.worker}" in text, text
        assert f"clients connect to its client endpoint {server.ports.client}" in text, text
        assert info.value.code == "wrong-endpoint"
        assert isinstance(info.value, remus.ServerError)


def test_a_worker_at_the_client_endpoint_stops_with_the_reason(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(JobRequirements(MESH), server.ports.client, heartbeat_interval=0.1)
    try:
        returned: list[int] = []
        runner = threading.Thread(
            target=lambda: returned.append(worker.run(lambda job: b"never")),
            name="test-runner",
            daemon=True,
        )
        runner.start()
        runner.join(10)
        assert not runner.is_alive(), "Worker.run returns once the broker said wrong endpoint"
        assert returned == [0]
        assert isinstance(worker.error, remus.WrongEndpointError)
        assert f"workers connect to its worker endpoint {server.ports.worker}" in str(worker.error)
        assert worker.should_terminate
        assert not worker.get_job(timeout=1.0), "get_job gives an invalid job"
        said = [r for r in caplog.records if r.name == "remus.worker.connection"]
        assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in said]
        assert "client endpoint" in said[0].getMessage()
    finally:
        worker.close()


def test_a_worker_process_at_the_client_endpoint_exits_non_zero(
    server: Any, make_process: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = make_process(
        [ECHO_WORKER, server.ports.client, "--heartbeat", "0.1"], stderr=subprocess.PIPE
    )
    assert wait_exit(proc, 20) == 1
    assert proc.stderr is not None
    err = proc.stderr.read()
    errors = [line for line in err.splitlines() if "worker stops" in line]
    assert len(errors) == 1, err
    assert server.ports.worker in errors[0], err
    assert "unknown command" not in err


def test_the_broker_logs_a_misdirected_peer_once(
    server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw peer that keeps sending heartbeats to the client endpoint gets an answer to each,
    and the broker's log has one line about it."""
    caplog.set_level(logging.INFO, logger="remus.server.core_thread")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(server.ports.client)
        answers: list[p.Message] = []
        for _ in range(5):
            sock.send_multipart(p.encode(p.Heartbeat()))
            assert sock.poll(5000), "the broker answers every message"
            answers.append(p.decode(sock.recv_multipart()))
    finally:
        sock.close(0)
    assert all(isinstance(a, p.Error) and a.code == "wrong-endpoint" for a in answers), answers
    wait_for(lambda: any("wrong endpoint" in r.getMessage() for r in caplog.records))
    lines = [r for r in caplog.records if "wrong endpoint" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert server.ports.worker in lines[0].getMessage()
