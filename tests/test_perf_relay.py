"""The reference relay of perf/ (issues 6 and 15) is a real relay: every job goes to a worker
with a free slot, every result comes back to the client that sent the job, and its benchmark
modes run end to end.

The broker runs as its own process (``python -m perf.relay broker``, ports picked by the OS).
The first test plays two workers and two clients on plain sockets, so it sees where each job
went and how many jobs a worker held at once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` from elsewhere; `python -m pytest` has it
    sys.path.insert(0, str(ROOT))

from perf import relay  # noqa: E402
from perf.procs import ProcGroup  # noqa: E402

pytestmark = pytest.mark.timeout(60)

CREDIT = 2  # slots per worker
JOBS = 40  # per client
WAIT_MS = 5_000


@pytest.fixture
def endpoints() -> Iterator[tuple[str, str]]:
    """A relay broker process; yields its (client, worker) endpoints, stops it by PID."""
    with ProcGroup() as group:
        broker = group.start("relay-broker", "perf.relay", "broker")
        client_ep, worker_ep = broker.expect(relay.READY_RE).groups()
        yield client_ep, worker_ep


@pytest.fixture
def dealer() -> Iterator[Callable[[str], zmq.Socket]]:
    """Makes DEALER sockets connected to an endpoint; closes them all at the end."""
    context = zmq.Context()
    made: list[zmq.Socket] = []

    def make(endpoint: str) -> zmq.Socket:
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        made.append(sock)
        sock.connect(endpoint)
        return sock

    yield make
    for sock in made:
        sock.close()
    context.term()


def test_each_job_goes_to_a_worker_with_a_free_slot_and_back_to_its_client(
    endpoints: tuple[str, str], dealer: Callable[[str], zmq.Socket]
) -> None:
    client_ep, worker_ep = endpoints
    workers = [dealer(worker_ep) for _ in range(2)]
    for w in workers:
        w.send_multipart([relay.CREDIT, str(CREDIT).encode()])
    clients = [dealer(client_ep) for _ in range(2)]
    sent: list[set[bytes]] = [set(), set()]
    for i in range(JOBS):
        for c, client in enumerate(clients):
            job = i.to_bytes(4, "little") + f"job of client {c}".encode()
            client.send(job)
            sent[c].add(job)

    poller = zmq.Poller()
    for w in workers:
        poller.register(w, zmq.POLLIN)
    held: list[list[list[bytes]]] = [[], []]  # jobs each worker has and has not answered
    done = [0, 0]

    def take() -> None:
        """Read every job that has reached a worker; none may hold more than its slots."""
        ready = dict(poller.poll(WAIT_MS))
        assert ready, f"no job reached a worker within {WAIT_MS} ms; answered {done}"
        for k, w in enumerate(workers):
            while w in ready:
                try:
                    held[k].append(w.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            assert len(held[k]) <= CREDIT, f"worker {k} got {len(held[k])} jobs for {CREDIT} slots"

    # Both workers fill their slots before either answers: the jobs are spread over both.
    while any(len(h) < CREDIT for h in held):
        take()
    # Then each answers what it holds, and gets a new job for each slot it frees.
    while sum(done) < 2 * JOBS:
        for k, w in enumerate(workers):
            for client_id, job in held[k]:
                w.send_multipart([client_id, job])
            done[k] += len(held[k])
            held[k].clear()
        if sum(done) < 2 * JOBS:
            take()

    for c, client in enumerate(clients):
        got = set()
        while len(got) < JOBS:
            assert client.poll(WAIT_MS), f"client {c} got {len(got)} of {JOBS} results"
            got.add(client.recv())
        assert got == sent[c], f"client {c} got results that are not its own jobs echoed"
    assert min(done) >= CREDIT, f"answered per worker: {done}"


@pytest.mark.parametrize("window", [0, 500], ids=["all-at-once", "window-500"])
def test_the_pipelined_benchmark_runs_with_and_without_a_window(window: int) -> None:
    rates = relay.run(
        "pipelined", workers=2, credit=16, jobs=2_000, window=window, warmup=0, repeat=2
    )
    assert len(rates) == 2 and all(rate > 0 for rate in rates), rates


def test_the_round_trip_benchmark_reports_its_percentiles() -> None:
    (sample,) = relay.run("roundtrip", workers=1, count=200, warmup=0, repeat=1)
    assert 0 < sample["p50"] <= sample["p99"], sample
