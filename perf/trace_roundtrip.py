"""Where a job's time goes: CPU per job by process and thread, and the messages each job
costs, for the ``round trip`` row (one job at a time) or the ``pipelined`` row (many at once).

Not part of ``make perf``: it measures no ratio, it says where the time of those rows goes
(perf/README.md, "Issue 15")::

    python -m perf.trace_roundtrip [--count 3000]                   # the round trip row
    python -m perf.trace_roundtrip --pipelined [--jobs 20000]       # the pipelined row

The broker is ``remus server`` and the worker ``Worker.run`` with one tiny handler, each in a
process of its own, as in those rows; the client runs ``BasicClient.run`` in a loop, or
``submit_many`` and ``as_completed`` (warm-up round, then 3 timed). CPU comes from
``/proc/PID/task/*/stat`` before and after (remus names its threads in the OS: ``remus-core``,
``remus-client`` and ``remus-worker`` for the broker's two edges, ``ZMQbg/IO/0`` for libzmq's
I/O thread, ``remus-worker-XXXX`` for the worker's connection thread, ``python`` for its
handler's); the client's is its own process time around its rounds. Messages come from the
broker's counters (``stats().messages``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `perf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.procs import Proc, ProcGroup
from perf.remus_bench import session, start_client, start_workers
from perf.remus_roles import prefetch_arg

#: the pipelined mode's rounds: one warm-up, then these
ROUNDS = 3


def _messages(endpoint: str) -> dict[str, int]:
    from remus.client import Client

    with Client(endpoint, timeout=10) as c:
        return dict(c.stats().messages)


def _per_job(after: dict[str, float], before: dict[str, float], jobs: int) -> dict[str, float]:
    return {name: (after[name] - before.get(name, 0.0)) / jobs * 1e6 for name in after}


def trace(pipelined: bool, count: int, prefetch: int | str) -> dict[str, Any]:
    with ProcGroup() as group, session(group) as (server, eps):
        (worker,) = start_workers(group, eps.worker, "tiny", prefetch=prefetch)  # type: ignore[arg-type]
        procs: dict[str, Proc] = {"broker": server, "worker": worker}
        cpu = {who: p.thread_cpu_seconds() for who, p in procs.items()}
        sent = _messages(eps.client)
        if pipelined:
            opts: dict[str, Any] = {"jobs": count, "warmup": 1, "repeat": ROUNDS}
            jobs = count * (ROUNDS + 1)
        else:
            opts = {"count": count, "warmup": 0, "repeat": 1}
            jobs = count
        mode = "pipelined" if pipelined else "roundtrip"
        got = start_client(group, eps.client, mode, **opts).result(timeout=600)
        threads = {
            who: _per_job(p.thread_cpu_seconds(), cpu[who], jobs) for who, p in procs.items()
        }
        now = _messages(eps.client)
        messages = {k: (now[k] - sent.get(k, 0)) / jobs for k in now}
        messages["client_in"] -= 1 / jobs  # (the stats request itself)
        return {
            "samples": got["samples"],
            "client_us": got["cpu_s"] / jobs * 1e6,
            "threads": threads,
            "messages": messages,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.trace_roundtrip", description=__doc__)
    parser.add_argument("--pipelined", action="store_true", help="many jobs at once")
    parser.add_argument("--count", type=int, default=3000, help="round trips [3000]")
    parser.add_argument("--jobs", type=int, default=20000, help="jobs per pipelined round")
    parser.add_argument("--prefetch", type=prefetch_arg, default=None, help="[auto; 64 piped]")
    args = parser.parse_args(argv)
    prefetch = args.prefetch or (64 if args.pipelined else "auto")
    count = args.jobs if args.pipelined else args.count
    got = trace(args.pipelined, count, prefetch)
    samples = got["samples"]
    if args.pipelined:
        rates = sorted(samples)
        print(f"pipelined, {count} jobs a round: {rates[len(rates) // 2]:,.0f} jobs/s (median)")
        per = "job"
    else:
        (sample,) = samples
        print(f"{count} round trips: p50 {sample['p50']:.0f} us, p99 {sample['p99']:.0f} us")
        per = "round trip"
    print(f"CPU per {per} (us), by process and thread:")
    total = got["client_us"]
    for who, by_thread in got["threads"].items():
        shown = {n: us for n, us in by_thread.items() if us >= 0.5}
        total += sum(shown.values())
        ranked = sorted(shown.items(), key=lambda kv: -kv[1])
        line = ", ".join(f"{n} {us:.1f}" if us < 10 else f"{n} {us:.0f}" for n, us in ranked)
        print(f"  {who:<7} {sum(shown.values()):7.1f}  {line}")
    print(f"  client  {got['client_us']:7.1f}  (its process, all threads)")
    print(f"  all     {total:7.1f}")
    moved = ", ".join(f"{k} {v:.3f}" for k, v in sorted(got["messages"].items()) if v)
    print(f"messages per {per} at the broker: {moved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
