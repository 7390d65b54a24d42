"""CI guard against large throughput regressions (a guard, not a measurement; see perf/).

A very short pipelined benchmark, remus against the bare pyzmq relay from ``perf/relay.py``
in the same run (broker, worker and client each a process on loopback, ports picked by the OS):
remus must reach at least FLOOR of the relay's jobs/s. Since issue 15 the relay reads a fixed
number of frames per message and moves 60-95k jobs/s on the 2-core machine, where remus moved
0.12-0.3x of it; the floor is a few times below that, so only a large regression trips it.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` from elsewhere; `python -m pytest` has it
    sys.path.insert(0, str(ROOT))

from perf import relay, remus_bench  # noqa: E402

JOBS = 2_000
REPEAT = 3
FLOOR = 0.05


@pytest.mark.timeout(120)
def test_remus_pipelined_throughput_is_not_far_below_the_relay() -> None:
    why = remus_bench.available()
    if why is not None:
        pytest.skip(f"remus not available: {why}")

    relay_rates = relay.run(
        "pipelined", workers=1, credit=64, jobs=JOBS, window=500, warmup=1, repeat=REPEAT
    )
    remus_rates = remus_bench.pipelined(workers=1, jobs=JOBS, warmup=1, repeat=REPEAT, prefetch=64)[
        "samples"
    ]

    ratio = statistics.median(remus_rates) / statistics.median(relay_rates)
    assert ratio >= FLOOR, (
        f"remus pipelined throughput fell to {ratio:.2f}x the bare relay (floor {FLOOR}x): "
        f"remus {statistics.median(remus_rates):,.0f} jobs/s {remus_rates}, "
        f"relay {statistics.median(relay_rates):,.0f} jobs/s {relay_rates}"
    )


@pytest.mark.timeout(120)
def test_the_trace_names_the_threads_and_counts_one_message_each_way_per_round_trip() -> None:
    """perf.trace_roundtrip (the profile behind the round trip row) keeps working: the
    broker's threads are told apart by their OS names, and one job at a time costs one
    message each way on each side (the worker's ack rides on its next job)."""
    from perf import trace_roundtrip

    got = trace_roundtrip.trace(pipelined=False, count=300, prefetch="auto")
    threads = got["threads"]
    assert {"remus-core", "remus-client", "remus-worker"} <= set(threads["broker"])
    assert any(name.startswith("remus-worker-") for name in threads["worker"])
    messages = got["messages"]
    # (a probe of a late answer, a heartbeat or an ack that found no job to ride on within
    # 50 ms may add a message now and then on a loaded machine; two per job is the regression)
    for side in ("client_in", "client_out", "worker_in", "worker_out"):
        assert 0.99 <= messages[side] < 1.5, (side, messages)
    assert got["client_us"] > 0
