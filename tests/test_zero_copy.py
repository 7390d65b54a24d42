"""A large result reaches the client without a copy into bytes: ``JobResult.data`` is then a
read-only memoryview over the ZeroMQ frame it came in; small results stay bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from remus import IOType, JobSubmission
from remus.client.client import ZERO_COPY_FROM
from remus.server import Server

pytestmark = pytest.mark.timeout(60)

ECHO = IOType("Bytes", "Echo")
BIG = bytes(range(256)) * (2 * ZERO_COPY_FROM // 256)  # 2 MiB, every byte value


def test_big_results_come_as_a_view_and_small_ones_as_bytes(
    make_server: Callable[..., Server], make_worker: Any, make_client: Any
) -> None:
    server = make_server()
    make_worker(ECHO, server.ports.worker, run=lambda job: job["data"])
    c = make_client(server.ports.client, basic=True, timeout=20)

    small = c.run(ECHO, b"small", timeout=20)
    assert type(small.data) is bytes and small.data == b"small"

    big = c.run(ECHO, BIG, timeout=20)  # submit-and-wait: the answer to a held progress request
    assert isinstance(big.data, memoryview) and big.data.readonly
    assert big.data.nbytes == len(BIG) and big.data == BIG and bytes(big.data) == BIG

    jobs = c.submit_many(
        [JobSubmission.of(ECHO, BIG), JobSubmission.of(ECHO, b"x")]
    )  # as_completed: the collect path
    got = {r.job_id: r for r in c.as_completed(jobs, timeout=20)}
    assert isinstance(got[jobs[0].id].data, memoryview) and got[jobs[0].id].data == BIG
    assert type(got[jobs[1].id].data) is bytes

    again = c.client.retrieve_result(jobs[0])  # retrieve_result: the result request
    assert isinstance(again.data, memoryview) and again.data == BIG
