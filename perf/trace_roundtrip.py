"""Where a single job's round trip spends its time: CPU per round trip by process and thread,
and the messages each round trip costs, beside the round trip's own p50 and p99.

Not part of ``make perf``: it measures no ratio, it says where the time of the ``round trip``
row goes (perf/README.md, "Issue 15")::

    python -m perf.trace_roundtrip [--count 3000] [--prefetch auto]

The broker is ``remus server`` and the worker ``Worker.run`` with one tiny handler, each in a
process of its own, as in the ``round trip`` row; the client runs ``BasicClient.run`` in a
loop. CPU comes from ``/proc/PID/task/*/stat`` before and after the loop (remus names its
threads in the OS: ``remus-core``, ``remus-client`` and ``remus-worker`` for the broker's two
edges, ``ZMQbg/IO/0`` for libzmq's I/O thread, the worker's connection thread
``remus-worker-XXXX``); the client's is its own process time around the loop. Messages come
from the broker's counters (``stats().messages``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `perf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.procs import Proc, ProcGroup
from perf.remus_bench import session, start_client, start_workers
from perf.remus_roles import prefetch_arg


def _messages(endpoint: str) -> dict[str, int]:
    from remus.client import Client

    with Client(endpoint, timeout=10) as c:
        return dict(c.stats().messages)


def _per_trip(after: dict[str, float], before: dict[str, float], count: int) -> dict[str, float]:
    return {name: (after[name] - before.get(name, 0.0)) / count * 1e6 for name in after}


def trace(count: int, prefetch: int | str) -> dict[str, object]:
    with ProcGroup() as group, session(group) as (server, eps):
        (worker,) = start_workers(group, eps.worker, "tiny", prefetch=prefetch)  # type: ignore[arg-type]
        procs: dict[str, Proc] = {"broker": server, "worker": worker}
        cpu = {who: p.thread_cpu_seconds() for who, p in procs.items()}
        sent = _messages(eps.client)
        client = start_client(group, eps.client, "roundtrip", count=count, warmup=0, repeat=1)
        (sample,) = client.result(timeout=600)["samples"]
        threads = {
            who: _per_trip(p.thread_cpu_seconds(), cpu[who], count) for who, p in procs.items()
        }
        now = _messages(eps.client)
        messages = {k: (now[k] - sent.get(k, 0)) / count for k in now}
        messages["client_in"] -= 1 / count  # (the stats request itself)
        return {"sample": sample, "threads": threads, "messages": messages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.trace_roundtrip", description=__doc__)
    parser.add_argument("--count", type=int, default=3000, help="round trips [3000]")
    parser.add_argument("--prefetch", type=prefetch_arg, default="auto")
    args = parser.parse_args(argv)
    got = trace(args.count, args.prefetch)
    sample = got["sample"]
    assert isinstance(sample, dict)
    print(
        f"{args.count} round trips: p50 {sample['p50']:.0f} us, p99 {sample['p99']:.0f} us\n"
        f"CPU per round trip (us), by process and thread:"
    )
    total = sample["cpu_us"]
    threads = got["threads"]
    assert isinstance(threads, dict)
    for who, by_thread in threads.items():
        shown = {n: us for n, us in by_thread.items() if us >= 1.0}
        total += sum(shown.values())
        print(
            f"  {who:<7} {sum(shown.values()):7.0f}  "
            + ", ".join(f"{n} {us:.0f}" for n, us in sorted(shown.items(), key=lambda kv: -kv[1]))
        )
    print(f"  client  {sample['cpu_us']:7.0f}  (its process, all threads)")
    print(f"  all     {total:7.0f}  against a round trip of {sample['p50']:.0f} us on this machine")
    messages = got["messages"]
    assert isinstance(messages, dict)
    print(
        "messages per round trip at the broker: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(messages.items()) if v)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
