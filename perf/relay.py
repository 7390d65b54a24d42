"""The reference relay: a bare pyzmq job broker, one job per message, one thread.

This is the yardstick issue 6 defines: what a plain ROUTER/ROUTER broker written directly on
pyzmq reaches on this machine, measured in the same run as remus.

Wire layout (every frame a bytes string, no envelope delimiter):

- client DEALER -> broker: ``[req_id, payload]``; broker -> client: ``[req_id, result]``
- worker DEALER -> broker: ``[READY, n]`` (n more jobs welcome) or ``[DONE, client, req_id,
  result]`` (a result, which also frees the slot it used: one credit back);
  broker -> worker: ``[client, req_id, payload]``.

The broker keeps a deque of workers that have credit, in round-robin order, and a deque of jobs
waiting for credit. Each wake-up it drains every ready message on both sockets before polling
again, but it sends exactly one job or one result per message: this is the per-message reference.

Every role runs in its own process::

    python -m perf.relay broker --client-port 0 --worker-port 0
    python -m perf.relay worker --endpoint tcp://127.0.0.1:PORT --credit 64
    python -m perf.relay client --endpoint tcp://127.0.0.1:PORT --mode pipelined --jobs 20000
    python -m perf.relay bench --workers 2 --jobs 20000     # all of the above, stopped by PID
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from typing import Any

import zmq

from perf.harness import percentile, timed_rounds
from perf.procs import ProcGroup, emit, install_sigterm_exit

READY = b"R"
DONE = b"D"
POLL_MS = 250
READY_RE = r"relay ready: client=(\S+) worker=(\S+)"


def _socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0
    return sock


def broker(client_port: int = 0, worker_port: int = 0, host: str = "127.0.0.1") -> None:
    """Serve until SIGTERM. Prints ``relay ready: client=EP worker=EP`` once bound."""
    ctx = zmq.Context()
    front = _socket(ctx, zmq.ROUTER)
    back = _socket(ctx, zmq.ROUTER)
    try:
        front.bind(f"tcp://{host}:{client_port}")
        back.bind(f"tcp://{host}:{worker_port}")
        print(
            f"relay ready: client={front.last_endpoint.decode()} "
            f"worker={back.last_endpoint.decode()}",
            flush=True,
        )
        _serve(front, back)
    finally:
        front.close()
        back.close()
        ctx.term()


def _serve(front: zmq.Socket, back: zmq.Socket) -> None:
    ready: deque[bytes] = deque()  # workers with credit > 0, round robin
    credit: dict[bytes, int] = {}
    waiting: deque[list[bytes]] = deque()  # [client, req_id, payload] with no credit yet
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    noblock = zmq.NOBLOCK

    def give(worker: bytes, n: int) -> None:
        had = credit.get(worker, 0)
        credit[worker] = had + n
        if had <= 0 < had + n:
            ready.append(worker)

    def dispatch(job: list[bytes]) -> None:
        worker = ready.popleft()
        back.send_multipart([worker, *job], copy=True)
        left = credit[worker] - 1
        credit[worker] = left
        if left > 0:
            ready.append(worker)

    while True:
        events = dict(poller.poll(POLL_MS))
        if back in events:
            while True:
                try:
                    frames = back.recv_multipart(noblock)
                except zmq.Again:
                    break
                if len(frames) == 5 and frames[1] == DONE:
                    front.send_multipart(frames[2:])
                    give(frames[0], 1)
                elif len(frames) == 3 and frames[1] == READY and frames[2].isdigit():
                    give(frames[0], int(frames[2]))
            while waiting and ready:
                dispatch(waiting.popleft())
        if front in events:
            while True:
                try:
                    frames = front.recv_multipart(noblock)
                except zmq.Again:
                    break
                if len(frames) != 3:
                    continue
                if ready:
                    dispatch(frames)
                else:
                    waiting.append(frames)


def worker(endpoint: str, credit: int = 64) -> None:
    """Echo every job's payload back as its result, until SIGTERM."""
    ctx = zmq.Context()
    sock = _socket(ctx, zmq.DEALER)
    try:
        sock.connect(endpoint)
        sock.send_multipart([READY, str(credit).encode()])
        while True:
            if not sock.poll(POLL_MS):
                continue
            while True:
                try:
                    client, req_id, payload = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                sock.send_multipart([DONE, client, req_id, payload])
    finally:
        sock.close()
        ctx.term()


def _client_socket(ctx: zmq.Context, endpoint: str, timeout: float) -> zmq.Socket:
    sock = _socket(ctx, zmq.DEALER)
    sock.rcvtimeo = int(timeout * 1000)
    sock.connect(endpoint)
    return sock


def pipelined(sock: zmq.Socket, jobs: int, window: int, payload: bytes) -> float:
    """Submit ``jobs`` jobs keeping ``window`` outstanding, collect every result; jobs/s."""
    ids = [i.to_bytes(4, "little") for i in range(jobs)]
    send, recv = sock.send_multipart, sock.recv_multipart
    received = bad = 0
    t0 = time.perf_counter()
    sent = min(window, jobs)
    for i in range(sent):
        send([ids[i], payload])
    while received < jobs:
        _, result = recv()
        received += 1
        bad += result != payload
        if sent < jobs:
            send([ids[sent], payload])
            sent += 1
    elapsed = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"{bad} results did not match their payload")
    return jobs / elapsed


def round_trips(sock: zmq.Socket, count: int, payload: bytes) -> dict[str, float]:
    """One job at a time, ``count`` times; p50 and p99 latency in microseconds."""
    lat = []
    for i in range(count):
        rid = i.to_bytes(4, "little")
        t0 = time.perf_counter()
        sock.send_multipart([rid, payload])
        got, _ = sock.recv_multipart()
        lat.append(time.perf_counter() - t0)
        if got != rid:
            raise RuntimeError("round trip answered out of order")
    return {"p50": percentile(lat, 50) * 1e6, "p99": percentile(lat, 99) * 1e6}


def client(
    endpoint: str,
    mode: str,
    *,
    jobs: int = 20000,
    window: int = 500,
    count: int = 2000,
    size: int = 100,
    warmup: int = 1,
    repeat: int = 3,
    timeout: float = 30.0,
) -> None:
    """Run a client mode, print ``{"samples": [...]}`` as one JSON line."""
    ctx = zmq.Context()
    sock = _client_socket(ctx, endpoint, timeout)
    payload = b"x" * size
    try:
        if mode == "pipelined":
            samples: list[Any] = timed_rounds(
                lambda: pipelined(sock, jobs, window, payload), warmup=warmup, repeat=repeat
            )
        else:
            samples = timed_rounds(
                lambda: round_trips(sock, count, payload), warmup=warmup, repeat=repeat
            )
        emit({"samples": samples})
    except zmq.Again:
        emit({"error": f"relay client timed out after {timeout}s"})
    finally:
        sock.close()
        ctx.term()


def run(mode: str, *, workers: int = 1, credit: int = 64, **client_opts: Any) -> list[Any]:
    """Start a broker, ``workers`` workers and one client, each a process; return the samples."""
    with ProcGroup() as group:
        broker_proc = group.start("relay-broker", "perf.relay", "broker")
        client_ep, worker_ep = broker_proc.expect(READY_RE).groups()
        for i in range(workers):
            group.start(
                f"relay-worker-{i}",
                "perf.relay",
                "worker",
                "--endpoint",
                worker_ep,
                "--credit",
                credit,
            )
        args = [f"--{k.replace('_', '-')}={v}" for k, v in client_opts.items()]
        cli = group.start(
            "relay-client", "perf.relay", "client", "--endpoint", client_ep, "--mode", mode, *args
        )
        samples: list[Any] = cli.result()["samples"]
        return samples


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m perf.relay", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    b = sub.add_parser("broker", help="serve until SIGTERM")
    b.add_argument("--client-port", type=int, default=0)
    b.add_argument("--worker-port", type=int, default=0)
    w = sub.add_parser("worker", help="echo jobs until SIGTERM")
    w.add_argument("--endpoint", required=True)
    w.add_argument("--credit", type=int, default=64)
    for name in ("client", "bench"):
        c = sub.add_parser(name, help="measure" if name == "client" else "start all and measure")
        if name == "client":
            c.add_argument("--endpoint", required=True)
        else:
            c.add_argument("--workers", type=int, default=1)
            c.add_argument("--credit", type=int, default=64)
        c.add_argument("--mode", choices=("pipelined", "roundtrip"), default="pipelined")
        c.add_argument("--jobs", type=int, default=20000)
        c.add_argument("--window", type=int, default=500)
        c.add_argument("--count", type=int, default=2000)
        c.add_argument("--size", type=int, default=100)
        c.add_argument("--warmup", type=int, default=1)
        c.add_argument("--repeat", type=int, default=3)
    args = vars(p.parse_args(argv))
    role = args.pop("role")
    install_sigterm_exit()
    if role == "broker":
        broker(args["client_port"], args["worker_port"])
    elif role == "worker":
        worker(args["endpoint"], args["credit"])
    elif role == "client":
        client(**args)
    else:
        print(json.dumps(run(**args)))


if __name__ == "__main__":
    main()
