"""The reference relay: a bare pyzmq job broker, one job per message, one thread.

This is the yardstick of issues 6 and 15: the fastest plain ROUTER/ROUTER broker we can write
directly on pyzmq, measured in the same run as remus.

Wire layout (every frame a bytes string, no envelope delimiter):

- client DEALER -> broker: ``[job]``, a 4-byte request id followed by the payload;
  broker -> client: ``[result]`` (the worker echoes the job, request id included).
- worker DEALER -> broker: ``[client, result]`` (a result, which also frees the slot it used)
  or ``[CREDIT, n]`` (n slots, sent once on connecting; a ROUTER never gives a client an
  empty identity);
  broker -> worker: ``[client, job]``.

The broker keeps a deque with one entry per free slot (the identity of the worker that has it,
in the order the slots came free) and a deque of jobs that arrived while no slot was free. Each
wake-up it drains every ready message on both sockets, workers first (their results free
slots), then polls again; each job goes to the worker of the oldest free slot and each result
straight back to its client, one message each: this is the per-message reference.

Why it is written this way (issue 15, measured on the 2-core machine):

- A fixed number of ``recv`` calls per message, not ``recv_multipart``: pyzmq's
  ``getsockopt(RCVMORE)`` costs more than a ``recv``, so a broker hop through the multipart
  helpers takes about 3.5x the CPU of the same hop frame by frame. Its peers are the client and
  worker below, whose framing is fixed; it still checks once per message that nothing follows
  the last frame it expects and drops a message that has more (a relay that passed on whatever
  came would not be a broker; not checking at all was another 35 % faster).
- No high-water marks (``sndhwm = rcvhwm = 0``): a client may send every job at once
  (``--window 0``) without blocking against its own results, and a ROUTER never drops.
- Workers block in ``recv`` (no poll); the request id travels inside the job frame.

Every role runs in its own process::

    python -m perf.relay broker --client-port 0 --worker-port 0
    python -m perf.relay worker --endpoint tcp://127.0.0.1:PORT --credit 64
    python -m perf.relay client --endpoint tcp://127.0.0.1:PORT --mode pipelined --window 0
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

CREDIT = b""  # the client frame of a worker's credit message
POLL_MS = 250
READY_RE = r"relay ready: client=(\S+) worker=(\S+)"


def _socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.linger = 0
    sock.sndhwm = sock.rcvhwm = 0
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
    slots: deque[bytes] = deque()  # one worker identity per free slot, oldest first
    waiting: deque[tuple[bytes, bytes]] = deque()  # (client, job) that found no free slot
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    noblock, more = zmq.NOBLOCK, zmq.SNDMORE
    from_client, to_client = front.recv, front.send
    from_worker, to_worker = back.recv, back.send
    front_more, back_more, RCVMORE = front.getsockopt, back.getsockopt, zmq.RCVMORE

    def dispatch(worker: bytes, client: bytes, job: bytes) -> None:
        to_worker(worker, more)
        to_worker(client, more)
        to_worker(job)

    while True:
        events = dict(poller.poll(POLL_MS))
        if back in events:
            while True:
                try:
                    worker = from_worker(noblock)
                except zmq.Again:
                    break
                client, body = from_worker(), from_worker()  # the rest of a message is there
                if back_more(RCVMORE):
                    _drop_rest(back)  # not the layout: a broker does not pass it on
                    continue
                if client != CREDIT:
                    to_client(client, more)
                    to_client(body)
                    if waiting:
                        dispatch(worker, *waiting.popleft())
                    else:
                        slots.append(worker)
                elif body.isdigit():
                    slots.extend([worker] * int(body))
                    while waiting and slots:
                        dispatch(slots.popleft(), *waiting.popleft())
        if front in events:
            while True:
                try:
                    client = from_client(noblock)
                except zmq.Again:
                    break
                job = from_client()
                if front_more(RCVMORE):
                    _drop_rest(front)
                    continue
                if slots:
                    dispatch(slots.popleft(), client, job)
                else:
                    waiting.append((client, job))


def _drop_rest(sock: zmq.Socket) -> None:
    """Read and drop what is left of a message with more frames than the layout has."""
    while sock.getsockopt(zmq.RCVMORE):
        sock.recv()


def worker(endpoint: str, credit: int = 64) -> None:
    """Echo every job back as its result (request id included), until SIGTERM."""
    ctx = zmq.Context()
    sock = _socket(ctx, zmq.DEALER)
    try:
        sock.connect(endpoint)
        sock.send_multipart([CREDIT, str(credit).encode()])
        recv, send, more = sock.recv, sock.send, zmq.SNDMORE
        while True:  # SIGTERM interrupts the blocking recv
            client, job = recv(), recv()
            send(client, more)
            send(job)
    finally:
        sock.close()
        ctx.term()


def _client_socket(ctx: zmq.Context, endpoint: str, timeout: float) -> zmq.Socket:
    sock = _socket(ctx, zmq.DEALER)
    sock.rcvtimeo = int(timeout * 1000)
    sock.connect(endpoint)
    return sock


def pipelined(sock: zmq.Socket, jobs: int, window: int, payload: bytes) -> float:
    """Submit ``jobs`` jobs keeping ``window`` outstanding (0: every job at once), collect every
    result; jobs/s."""
    work = [i.to_bytes(4, "little") + payload for i in range(jobs)]
    send, recv = sock.send, sock.recv
    received = bad = 0
    t0 = time.perf_counter()
    sent = min(window or jobs, jobs)
    for job in work[:sent]:
        send(job)
    while received < jobs:
        result = recv()
        received += 1
        bad += result[4:] != payload
        if sent < jobs:
            send(work[sent])
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
        sock.send(rid + payload)
        got = sock.recv()
        lat.append(time.perf_counter() - t0)
        if got[:4] != rid:
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
        c.add_argument("--window", type=int, default=500, help="0: every job at once")
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
