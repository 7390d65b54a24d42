"""The HTTP gateway (issue 13): ``POST /run`` requests/s against the same jobs through
``BasicClient``, and the gateway's memory with 10,000 requests waiting.

Not part of ``make perf`` (it needs the ``http`` extra, aiohttp, and opens 10,000 sockets)::

    python -m perf.http_gateway [--callers 64] [--seconds 5] [--repeat 3] [--waiting 10000]
    python perf/http_gateway.py ...                                  # the same

Processes, each its own, all on loopback: a broker (``python -m remus.server``), one worker
process (``perf.remus_roles worker --kind tiny --prefetch 64``: echoes 100 B), the gateway
(``python -m remus http``), and the callers:

- **HTTP**: one asyncio process with aiohttp's client, ``--callers`` coroutines each on a
  keep-alive connection of its own, each posting ``POST /run/Tiny/Tiny`` (100 B) and reading
  the answer, again and again for ``--seconds``; requests/s answered 200 with the right body.
- **threads** (the reference the goal is on): ``--callers`` threads in one process, each with a
  ``BasicClient`` of its own calling ``run(io, data)`` again and again: as many synchronous
  callers, each waiting for its result before the next, as the HTTP side has.
- **pipelined** (for context): one ``BasicClient`` that submits 20,000 jobs with
  ``submit_many`` and collects them with ``as_completed`` (``perf.remus_roles client --mode
  pipelined``): the most a client gets through this broker and worker.

Memory: before any worker connects, one caller process opens ``--waiting`` connections and
posts ``POST /run/Tiny/Tiny?wait_for_worker=1`` on each at once. Once the broker holds that
many queued jobs (every request is in the gateway, waiting), the gateway's ``VmRSS`` is read.
Then the worker starts and every request must be answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `perf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.harness import Goal, Row, Stat, machine, render
from perf.procs import ProcGroup, emit

MODULE = "perf.http_gateway"
SERVER_RE = r"remus server ready: client=(\S+) worker=(\S+) status=(\S+)"
GATEWAY_RE = r"remus http ready: url=(\S+)"
WORKER_RE = r"remus worker ready"
PATH = "/run/Tiny/Tiny"
BODY = b"x" * 100


def _more_files() -> None:
    """Raise this process's open-file limit to its hard limit (10,000 sockets and more)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------- roles (processes)


def role_rate(url: str, callers: int, seconds: float, warmup: int, repeat: int) -> int:
    import aiohttp

    async def main() -> list[float]:
        connector = aiohttp.TCPConnector(limit=callers)
        async with aiohttp.ClientSession(url, connector=connector) as session:
            bad: list[str] = []

            async def caller(until: float, ok: list[int]) -> None:
                while time.monotonic() < until:
                    async with session.post(PATH, data=BODY) as r:
                        got = await r.read()
                    if r.status == 200 and got == BODY:
                        ok[0] += 1
                    elif len(bad) < 5:
                        bad.append(f"{r.status} {got[:200]!r}")

            samples = []
            for i in range(warmup + repeat):
                ok = [0]
                t0 = time.monotonic()
                await asyncio.gather(*(caller(t0 + seconds, ok) for _ in range(callers)))
                if i >= warmup:
                    samples.append(ok[0] / (time.monotonic() - t0))
                if bad:
                    raise RuntimeError(f"bad answers: {bad}")
            return samples

    emit({"samples": asyncio.run(main())})
    return 0


def role_threads(endpoint: str, callers: int, seconds: float, warmup: int, repeat: int) -> int:
    from remus import IOType
    from remus.client import BasicClient

    io = IOType("Tiny", "Tiny")
    clients = [BasicClient(endpoint, timeout=30) for _ in range(callers)]

    def call(c: BasicClient, start: threading.Barrier, until: list[float], done: list[int]) -> None:
        start.wait()
        while time.monotonic() < until[0]:
            if c.run(io, BODY).data == BODY:
                done.append(1)

    try:
        samples = []
        for i in range(warmup + repeat):
            done: list[int] = []
            start = threading.Barrier(callers + 1)
            until = [0.0]
            threads = [threading.Thread(target=call, args=(c, start, until, done)) for c in clients]
            for t in threads:
                t.start()
            t0 = time.monotonic()
            until[0] = t0 + seconds
            start.wait()
            for t in threads:
                t.join()
            if i >= warmup:
                samples.append(len(done) / (time.monotonic() - t0))
    finally:
        for c in clients:
            c.close()
    emit({"samples": samples})
    return 0


def role_hold(url: str, waiting: int) -> int:
    """``waiting`` requests at once, each on its own connection; reports when all are sent,
    then when all are answered."""
    import aiohttp

    _more_files()

    async def main() -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=900)
        async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
            answers: dict[str, int] = {}

            async def one() -> None:
                try:
                    async with session.post(
                        PATH + "?wait_for_worker=1&timeout=600", data=BODY
                    ) as r:
                        got = await r.read()
                    key = "ok" if r.status == 200 and got == BODY else str(r.status)
                except aiohttp.ClientError as e:
                    key = type(e).__name__
                answers[key] = answers.get(key, 0) + 1

            tasks = []
            for _ in range(waiting):  # a few at a time: the listen backlog is not unbounded
                tasks.append(asyncio.ensure_future(one()))
                if len(tasks) % 200 == 0:
                    await asyncio.sleep(0.01)
            emit({"sent": waiting})
            t0 = time.monotonic()
            await asyncio.gather(*tasks)
            return {"answers": answers, "seconds": time.monotonic() - t0}

    emit(asyncio.run(main()))
    return 0


# ---------------------------------------------------------------------------- the parent


def _queued(endpoint: str) -> int:
    from remus.client import Client

    with Client(endpoint, timeout=10) as c:
        return int(c.stats().jobs_by_io_type.get("Tiny->Tiny", {}).get("QUEUED", 0))


def measure(args: argparse.Namespace) -> dict[str, Any]:
    got: dict[str, Any] = {}
    common = ["--callers", args.callers, "--seconds", args.seconds]
    common += ["--warmup", args.warmup, "--repeat", args.repeat]
    with ProcGroup() as group:
        ep = "tcp://127.0.0.1:0"
        broker = group.start(
            "broker",
            "remus.server",
            "--client",
            ep,
            "--worker",
            ep,
            "--status",
            ep,
            "--log-level",
            "WARNING",
        )
        client_ep, worker_ep, _ = broker.expect(SERVER_RE, timeout=30).groups()
        gateway = group.start(
            "gateway",
            "remus",
            "http",
            "--broker",
            client_ep,
            "--listen",
            "127.0.0.1:0",
            "--max-pending",
            max(args.waiting, 1000),
            "--log-level",
            "WARNING",
        )
        url = gateway.expect(GATEWAY_RE, timeout=30).group(1)
        got["gateway_idle_rss_kib"] = gateway.status_kib("VmRSS")

        # memory: every request waiting (no worker yet, so their jobs queue at the broker)
        hold = group.start("hold", MODULE, "hold", url, args.waiting)
        hold.result(timeout=120)
        t0 = time.monotonic()
        while (queued := _queued(client_ep)) < args.waiting:
            if time.monotonic() - t0 > 300:
                raise RuntimeError(f"only {queued} of {args.waiting} requests reached the broker")
            time.sleep(0.2)  # polling the broker's count under a deadline
        got["fill_seconds"] = time.monotonic() - t0
        got["gateway_waiting_rss_kib"] = gateway.status_kib("VmRSS")
        worker = group.start(
            "worker",
            "perf.remus_roles",
            "worker",
            "--endpoint",
            worker_ep,
            "--kind",
            "tiny",
            "--prefetch",
            64,
        )
        worker.expect(WORKER_RE, timeout=30)
        drained = hold.result(timeout=600)
        got["drain"] = drained
        got["gateway_peak_rss_kib"] = gateway.status_kib("VmHWM")

        # throughput: the same jobs through HTTP, through 64 threads, pipelined
        rate = group.start("http", MODULE, "rate", url, *common)
        got["http"] = rate.result(timeout=600)["samples"]
        threads = group.start("threads", MODULE, "threads", client_ep, *common)
        got["threads"] = threads.result(timeout=600)["samples"]
        pipelined = group.start(
            "pipelined",
            "perf.remus_roles",
            "client",
            "--endpoint",
            client_ep,
            "--mode",
            "pipelined",
            "--jobs",
            20000,
            "--warmup",
            args.warmup,
            "--repeat",
            args.repeat,
        )
        got["pipelined"] = pipelined.result(timeout=600)["samples"]
        got["gateway_final_rss_kib"] = gateway.status_kib("VmRSS")
    return got


def table(got: dict[str, Any], args: argparse.Namespace) -> str:
    http = Stat.of(got["http"])
    vs_threads = Row(f"POST /run, {args.callers} keep-alive callers", "req/s", goal=Goal(">=", 0.3))
    vs_threads.remus, vs_threads.reference = http, Stat.of(got["threads"])
    vs_threads.ref_label = f"BasicClient.run, {args.callers} threads"
    vs_pipe = Row(f"POST /run, {args.callers} keep-alive callers", "req/s")
    vs_pipe.remus, vs_pipe.reference = http, Stat.of(got["pipelined"])
    vs_pipe.ref_label = "BasicClient submit_many + as_completed"
    memory = Row(
        f"gateway RSS, {args.waiting:,} requests waiting",
        "MiB",
        goal=Goal("<", 200, on="value"),
    )
    memory.remus = Stat.of(got["gateway_waiting_rss_kib"] / 1024)
    memory.reference = Stat.of(got["gateway_idle_rss_kib"] / 1024)
    memory.ref_label = "idle"
    answers = got["drain"]["answers"]
    notes = [
        f"{args.waiting:,} waiting requests reached the broker in {got['fill_seconds']:.1f} s "
        f"after the last was sent; answered once a worker came, in "
        f"{got['drain']['seconds']:.1f} s: {answers}",
        f"gateway peak RSS {got['gateway_peak_rss_kib'] / 1024:.0f} MiB; "
        f"{got['gateway_final_rss_kib'] / 1024:.0f} MiB after the throughput runs",
    ]
    return render([vs_threads, vs_pipe, memory], notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.http_gateway", description=__doc__)
    sub = parser.add_subparsers(dest="role")
    for name in ("rate", "threads"):
        r = sub.add_parser(name)
        r.add_argument("target")
        for option in ("--callers", "--warmup", "--repeat"):
            r.add_argument(option, type=int, required=True)
        r.add_argument("--seconds", type=float, required=True)
    h = sub.add_parser("hold")
    h.add_argument("url")
    h.add_argument("waiting", type=int)
    parser.add_argument("--callers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.role == "rate":
        return role_rate(args.target, args.callers, args.seconds, args.warmup, args.repeat)
    if args.role == "threads":
        return role_threads(args.target, args.callers, args.seconds, args.warmup, args.repeat)
    if args.role == "hold":
        return role_hold(args.url, args.waiting)
    _more_files()
    got = measure(args)
    print(render_header() + table(got, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), **got}, f, indent=2)
    return 0


def render_header() -> str:
    m = machine()
    return (
        f"remus http gateway perf {m['date']} on {m['host']}: {m['cpus']} cpus, "
        f"python {m['python']}\n\n"
    )


if __name__ == "__main__":
    sys.exit(main())
