"""Bare PUSH/PULL references: how fast ZeroMQ alone moves small messages and bulk bytes here.

- ``rate``: a PUSH sends ~50 B messages as fast as it can; the PULL counts messages/s (the
  reference for the progress stream). Measured on the receiving side, over consecutive chunks
  of ``--count`` messages of one continuous stream, after ``--warmup`` chunks.
- ``bulk``: a PUSH sends ``--size`` bytes (256 MiB by default) as one message of two frames
  (an 8-byte send time, then the payload, zero-copy), the PULL receives it (zero-copy) and
  answers on a second PUSH/PULL pair so the next round starts only after this one landed.
  MiB/s = payload / (receive done - send start), both from the shared monotonic clock.
  Each side reports its peak RSS (``ru_maxrss``).

Both roles are processes::

    python -m perf.pushpull pull --mode rate --count 100000   # prints "pull ready: data=EP ack=EP"
    python -m perf.pushpull push --mode rate --data EP --ack EP --total 400000
    python -m perf.pushpull bench --mode bulk --size 268435456  # both, stopped by PID
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from typing import Any

import zmq

from perf.harness import timed_rounds
from perf.procs import ProcGroup, emit, install_sigterm_exit, peak_rss_kib

READY_RE = r"pull ready: data=(\S+) ack=(\S+)"
MIB = 1 << 20
LINGER_MS = 30_000


def puller(mode: str, *, count: int, warmup: int, repeat: int, timeout: float) -> None:
    """Bind, print the ready line, measure, print ``{"samples": [...], "peak_rss_kib": n}``."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    ack = ctx.socket(zmq.PUSH)
    pull.linger = ack.linger = 0
    pull.rcvtimeo = int(timeout * 1000)
    try:
        pull.bind("tcp://127.0.0.1:0")
        ack.bind("tcp://127.0.0.1:0")
        print(
            f"pull ready: data={pull.last_endpoint.decode()} ack={ack.last_endpoint.decode()}",
            flush=True,
        )
        recv = pull.recv

        def chunk() -> float:
            recv()
            t_first = time.monotonic()
            for _ in range(count - 1):
                recv()
            return (count - 1) / (time.monotonic() - t_first)

        def bulk() -> float:
            header, data = pull.recv_multipart(copy=False)
            t_done = time.monotonic()
            (t_sent,) = struct.unpack("d", header.bytes)
            size = len(data.buffer)
            del data
            ack.send(b"k")
            return size / MIB / (t_done - t_sent)

        samples = timed_rounds(chunk if mode == "rate" else bulk, warmup=warmup, repeat=repeat)
        emit({"samples": samples, "peak_rss_kib": peak_rss_kib()})
    except zmq.Again:
        emit({"error": f"puller received nothing for {timeout}s"})
    finally:
        pull.close()
        ack.close()
        ctx.term()


def pusher(mode: str, *, data: str, ack: str, total: int, size: int, timeout: float) -> None:
    """Connect and send; ``total`` messages (rate) or ``total`` bulk rounds; report peak RSS."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    acks = ctx.socket(zmq.PULL)
    push.linger = LINGER_MS  # let the last messages of the stream out before closing
    acks.linger = 0
    acks.rcvtimeo = int(timeout * 1000)
    try:
        push.connect(data)
        acks.connect(ack)
        if mode == "rate":
            payload = b"p" * size
            send = push.send
            for _ in range(total):
                send(payload)
        else:
            payload = b"x" * size  # touched, so resident before timing
            for _ in range(total):
                push.send_multipart([struct.pack("d", time.monotonic()), payload], copy=False)
                acks.recv()
        emit({"peak_rss_kib": peak_rss_kib()})
    except zmq.Again:
        emit({"error": f"pusher got no acknowledgment for {timeout}s"})
    finally:
        push.close()
        acks.close()
        ctx.term()


def run(
    mode: str,
    *,
    count: int = 100_000,
    size: int | None = None,
    warmup: int = 1,
    repeat: int = 3,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Start a puller and a pusher process; return samples and both peak RSS (KiB)."""
    if size is None:
        size = 50 if mode == "rate" else 256 * MIB
    rounds = warmup + repeat
    with ProcGroup() as group:
        pull = group.start(
            "pull",
            "perf.pushpull",
            "pull",
            "--mode",
            mode,
            "--count",
            count,
            "--warmup",
            warmup,
            "--repeat",
            repeat,
            "--timeout",
            timeout,
        )
        data, ack = pull.expect(READY_RE).groups()
        push = group.start(
            "push",
            "perf.pushpull",
            "push",
            "--mode",
            mode,
            "--data",
            data,
            "--ack",
            ack,
            "--size",
            size,
            "--timeout",
            timeout,
            "--total",
            rounds * count if mode == "rate" else rounds,
        )
        got = pull.result(timeout=timeout + 30)
        sent = push.result(timeout=timeout + 30)
        return {
            "samples": got["samples"],
            "puller_peak_rss_kib": got["peak_rss_kib"],
            "pusher_peak_rss_kib": sent["peak_rss_kib"],
            "size": size,
        }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m perf.pushpull", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    roles = {name: sub.add_parser(name) for name in ("pull", "push", "bench")}
    for name, r in roles.items():
        r.add_argument("--mode", choices=("rate", "bulk"), default="rate")
        r.add_argument("--timeout", type=float, default=60.0)
        if name != "push":
            r.add_argument("--count", type=int, default=100_000, help="messages per sample (rate)")
            r.add_argument("--warmup", type=int, default=1)
            r.add_argument("--repeat", type=int, default=3)
        if name != "pull":
            r.add_argument("--size", type=int, default=None, help="bytes per message")
    roles["push"].add_argument("--data", required=True)
    roles["push"].add_argument("--ack", required=True)
    roles["push"].add_argument("--total", type=int, required=True)
    args = vars(p.parse_args(argv))
    role = args.pop("role")
    install_sigterm_exit()
    if role == "pull":
        puller(**args)
    elif role == "push":
        size = args.pop("size") or (50 if args["mode"] == "rate" else 256 * MIB)
        pusher(size=size, **args)
    else:
        print(json.dumps(run(**args)))


if __name__ == "__main__":
    main()
