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
