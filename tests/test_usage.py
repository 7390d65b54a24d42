"""Resource use: what a worker measures (remus.usage), how it travels (``heartbeat`` and
``report`` on the wire), and where it shows (``JobResult.peak_rss``/``cpu``, ``workers()`` and
``jobs()`` resources), against a real broker and a real worker process whose handler allocates
and burns CPU on demand."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from remus import protocol as p
from remus import usage
from remus.client import BasicClient
from remus.errors import JobFailedError, ProtocolError
from remus.server import Server
from remus.types import IOType, JobResult, Status

pytestmark = pytest.mark.timeout(30)

MiB = 1 << 20
USED = IOType("Bytes", "Used")
LINUX = sys.platform.startswith("linux")

#: a worker process: ``big`` writes 64 MiB and burns 50 ms of CPU, ``boom`` writes 16 MiB and
#: raises, anything else returns at once
WORKER = """
import sys, time
from remus.types import IOType, JobRequirements
from remus.worker import Worker

def burn(seconds):
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass

def handle(job):
    data = job["data"]
    if data == b"big":
        block = b"x" * (64 << 20)  # every page written: resident
        burn(0.05)
        return str(len(block)).encode()
    if data == b"boom":
        block = b"y" * (16 << 20)
        raise ValueError(f"the input says boom after {len(block)} bytes")
    return b"small"

with Worker(JobRequirements(IOType("Bytes", "Used"), worker_name="meter"), sys.argv[1],
            heartbeat_interval=0.1) as w:
    w.run(handle)
"""


class Broker:
    def __init__(self, server: Server, worker: subprocess.Popen[str], client: BasicClient):
        self.server = server
        self.worker = worker
        self.c = client


@pytest.fixture
def broker(make_server: Any, make_process: Any, make_client: Any) -> Iterator[Broker]:
    """An in-process broker, one worker process (killed by PID at the end) and a client."""
    server = make_server()
    worker = make_process(["-c", WORKER, server.ports.worker])
    c: BasicClient = make_client(server.ports.client, basic=True, timeout=10.0)
    wait_for(lambda: c.client.workers(), timeout=15.0)  # a Python process starting
    yield Broker(server, worker, c)


def assert_measured(r: JobResult) -> None:
    assert r.peak_rss is not None and r.cpu is not None, f"{r.job_id}: nothing measured"
    assert r.peak_rss > 0 and r.cpu >= 0.0


# ============================================================================ end to end


def test_a_jobs_result_says_what_it_used(broker: Broker) -> None:
    c = broker.c
    big = c.run(USED, b"big", timeout=20)
    assert big.data == str(64 * MiB).encode()
    assert big.peak_rss is not None and big.peak_rss >= 64 * MiB, big
    assert big.cpu is not None and 0.04 <= big.cpu < 10.0, big  # it burned 50 ms of its thread

    # the same numbers through the other ways to get a result
    again = c.client.retrieve_result(big.job_id)
    assert (again.peak_rss, again.cpu) == (big.peak_rss, big.cpu)
    job = c.submit(USED, b"small")
    waited = c.wait(job, timeout=20)
    assert waited.data == b"small"
    assert_measured(waited)
    batch = [c.submit(USED, b"small") for _ in range(3)]
    results = list(c.as_completed(batch, timeout=20))
    assert sorted(r.job_id for r in results) == sorted(j.id for j in batch)
    for r in results:
        assert_measured(r)
        assert r.cpu is not None and r.cpu < big.cpu, "a job that burns nothing used less CPU"


@pytest.mark.skipif(not LINUX, reason="the per-job peak needs /proc/self/clear_refs")
def test_a_small_job_after_a_big_one_does_not_inherit_its_peak(broker: Broker) -> None:
    c = broker.c
    big = c.run(USED, b"big", timeout=20)
    small = c.run(USED, b"small", timeout=20)
    assert big.peak_rss is not None and small.peak_rss is not None
    assert small.peak_rss <= big.peak_rss - 48 * MiB, (
        f"small job peak {small.peak_rss / MiB:.1f} MiB, big job {big.peak_rss / MiB:.1f} MiB: "
        "the high-water mark was not reset when the small job started"
    )
    # the process's own peak still remembers the big job once its memory is given back

    def after_the_big_job() -> Any:
        (w,) = c.client.workers()
        peak, rss = w.resources.get("peak_rss", 0), w.resources.get("rss", 0)
        return peak >= big.peak_rss and rss <= peak - 48 * MiB

    wait_for(after_the_big_job, timeout=10.0)


def test_workers_show_the_latest_resource_use(broker: Broker) -> None:
    c = broker.c
    (w,) = wait_for(lambda: [w for w in c.client.workers() if w.resources], timeout=10.0)
    assert w.pid == broker.worker.pid
    assert set(w.resources) == {"rss", "peak_rss", "cpu"}
    assert 4 * MiB < w.resources["rss"] <= w.resources["peak_rss"] < 64 * 1024 * MiB
    assert w.resources["cpu"] > 0.0  # a Python process that imported zmq has used some
    first_cpu = w.resources["cpu"]

    c.run(USED, b"big", timeout=20)  # burns 50 ms: the next heartbeats say so

    def grown() -> Any:
        (w,) = c.client.workers()
        res = w.resources
        return w if res["cpu"] >= first_cpu + 0.04 and res["peak_rss"] >= 64 * MiB else None

    wait_for(grown, timeout=10.0)


def test_jobs_records_carry_what_finished_and_failed_jobs_used(broker: Broker) -> None:
    c = broker.c
    done = c.run(USED, b"big", timeout=20)
    failing = c.submit(USED, b"boom")
    with pytest.raises(JobFailedError, match="the input says boom"):
        c.wait(failing, timeout=20)

    records = {j.id: j for j in c.client.jobs()}
    finished, failed = records[done.job_id], records[failing.id]
    assert (finished.status, failed.status) == (Status.FINISHED, Status.FAILED)
    assert finished.resources == {"peak_rss": done.peak_rss, "cpu": done.cpu}
    assert set(failed.resources) == {"peak_rss", "cpu"}, failed.resources
    assert failed.resources["peak_rss"] >= 16 * MiB  # what it wrote before raising
    assert failed.resources["cpu"] >= 0.0


# ============================================================================ remus.usage


def burn(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


def test_current_is_this_process_now() -> None:
    now = usage.current()
    assert isinstance(now.rss, int) and isinstance(now.peak_rss, int)
    assert 1 * MiB < now.rss <= now.peak_rss < 1 << 50
    if LINUX:
        lines = Path("/proc/self/status").read_text().splitlines()
        status = dict(line.split(":", 1) for line in lines)
        vm_rss = int(status["VmRSS"].split()[0]) * 1024
        assert abs(now.rss - vm_rss) < 16 * MiB, (now.rss, vm_rss)
    burn(0.02)
    later = usage.current()
    assert later.cpu >= now.cpu + 0.02


def test_a_meter_measures_one_jobs_peak_and_cpu() -> None:
    before = usage.current().rss
    meter = usage.JobMeter()
    meter.start()
    block = b"m" * (32 * MiB)
    burn(0.02)
    peak, cpu = meter.stop()
    assert len(block) == 32 * MiB
    del block
    assert peak >= before + 30 * MiB, (peak / MiB, before / MiB)
    assert 0.02 <= cpu < 5.0


def test_a_meter_counts_the_cpu_of_its_own_thread_only() -> None:
    meter = usage.JobMeter()
    meter.start()
    other = threading.Thread(target=burn, args=(0.1,), name="burner")
    other.start()
    other.join(10)
    _, cpu = meter.stop()
    assert cpu < 0.05, f"{cpu} s: another thread's CPU was counted"


@pytest.mark.skipif(not LINUX, reason="the per-job peak needs /proc/self/clear_refs")
def test_a_meter_resets_the_peak_when_a_job_starts() -> None:
    meter = usage.JobMeter()
    meter.start()
    block = b"b" * (64 * MiB)
    big, _ = meter.stop()
    del block
    meter.start()
    small, _ = meter.stop()
    assert small <= big - 48 * MiB, (small / MiB, big / MiB)
    # the process's peak is not forgotten
    assert usage.current().peak_rss >= big


@pytest.mark.skipif(not LINUX, reason="Linux's ru_maxrss keeps the exec'ing parent's peak")
def test_a_process_started_by_a_big_one_does_not_report_its_parents_peak() -> None:
    """A worker spawned by a broker that holds 1 GiB is not 1 GiB: Linux's ru_maxrss starts
    at the parent's peak after exec, so remus.usage reads the kernel's own mark under it."""
    child = (
        "from remus import usage\n"
        "m = usage.JobMeter()\n"
        "m.start()\n"
        "peak, _ = m.stop()\n"
        "print(usage.current().peak_rss, peak)\n"
    )
    ballast = b"p" * (160 * MiB)  # this process's peak, when it starts the child
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=20, check=True
    ).stdout
    assert len(ballast) == 160 * MiB
    del ballast
    process_peak, job_peak = map(int, out.split())
    assert process_peak < 100 * MiB, f"the child says its peak is {process_peak / MiB:.0f} MiB"
    assert job_peak < 100 * MiB, f"the child's job says its peak is {job_peak / MiB:.0f} MiB"


def test_a_meter_stopped_twice_or_never_started_keeps_the_count_right() -> None:
    meter = usage.JobMeter()
    meter.stop()  # never started: nothing to undo
    meter.start()
    meter.start()  # started again without a stop: still one job running
    meter.stop()
    meter.stop()
    assert usage._running == 0


# ============================================================================ on the wire


def round_trip(msg: p.Message) -> Any:
    return p.decode(p.encode(msg))


def test_heartbeat_carries_usage_or_nothing() -> None:
    assert p.encode(p.Heartbeat())[2] == p.pack({}), "an idle heartbeat stays empty"
    got = round_trip(p.Heartbeat((30 * MiB, 90 * MiB, 1.25)))
    assert got == p.Heartbeat((30 * MiB, 90 * MiB, 1.25))
    assert round_trip(p.Heartbeat()) == p.Heartbeat(None)
    assert round_trip(p.Heartbeat((1, 2, 3))).usage == (1, 2, 3.0)  # int CPU seconds are fine
    assert p.unpack(p.encode(p.Heartbeat((1, 2, 0.5)))[2]) == {"usage": [1, 2, 0.5]}


def test_report_carries_used_and_usage() -> None:
    sent = p.Report(
        started=["a-1"],
        results=[("a-1", b"out")],
        failures=[("a-2", "it broke", "tb")],
        credit=1,
        seq=3,
        used=[("a-1", 70 * MiB, 0.5), ("a-2", 20 * MiB, 0)],
        usage=(40 * MiB, 70 * MiB, 2.5),
    )
    got = round_trip(sent)
    assert list(got.used) == [("a-1", 70 * MiB, 0.5), ("a-2", 20 * MiB, 0.0)]
    assert got.usage == (40 * MiB, 70 * MiB, 2.5)
    assert (got.seq, got.credit, list(got.started)) == (3, 1, ["a-1"])
    # credit and usage only, no numbered report
    bare = round_trip(p.Report(credit=2, usage=(1, 1, 0.0), used=[("a-3", 5, 0.1)]))
    assert (bare.seq, bare.credit, bare.usage, list(bare.used)) == (
        0,
        2,
        (1, 1, 0.0),
        [("a-3", 5, 0.1)],
    )
    plain = p.unpack(p.encode(p.Report(credit=1))[2])
    assert "used" not in plain and "usage" not in plain


def test_collect_request_asks_for_progress_only_when_told() -> None:
    got = round_trip(p.CollectRequest(7, "w", ["a", "b"], 1.5, 9, progress=True))
    assert got == p.CollectRequest(7, "w", ["a", "b"], 1.5, 9, progress=True)
    assert round_trip(p.CollectRequest(8, "w")).progress is False
    assert "progress" not in p.unpack(p.encode(p.CollectRequest(8, "w"))[2])


def decode_body(command: p.Command, body: dict[str, Any]) -> p.Message:
    return p.decode([p.VERSION, command.value, p.pack(body)])


BAD_USAGE = [
    [-1, 2, 0.5],
    [1, -2, 0.5],
    [1, 2, -0.5],
    [1, 2],
    [1, 2, 3, 4],
    [1.5, 2, 0.5],
    [1, 2.5, 0.5],
    [True, 2, 0.5],
    [1, 2, "0.5"],
    [1, 2, None],
    [1, 2, float("nan")],
    [1, 2, float("inf")],
    {"rss": 1, "peak_rss": 2, "cpu": 0.5},
    "1,2,0.5",
    None,
    7,
]


@pytest.mark.parametrize("value", BAD_USAGE, ids=repr)
def test_bad_usage_is_a_protocol_error(value: Any) -> None:
    for command, body in [
        (p.Command.HEARTBEAT, {"usage": value}),
        (p.Command.REPORT, {"credit": 1, "usage": value}),
    ]:
        with pytest.raises(ProtocolError, match="usage"):
            decode_body(command, body)


BAD_USED = [
    {"a": [1, 0.5]},
    "a",
    None,
    [["a", 1]],
    [["a", 1, 0.5, 4]],
    [[1, 1, 0.5]],
    [["a", -1, 0.5]],
    [["a", 1, -0.5]],
    [["a", 1.5, 0.5]],
    [["a", True, 0.5]],
    [["a", 1, "x"]],
    [["a", 1, float("nan")]],
    [["a", 1, float("inf")]],
    [("a", 1, 0.5), "b"],
    [{"id": "a"}],
]


@pytest.mark.parametrize("value", BAD_USED, ids=repr)
def test_bad_used_is_a_protocol_error(value: Any) -> None:
    with pytest.raises(ProtocolError, match="used"):
        decode_body(p.Command.REPORT, {"credit": 1, "used": value})


@pytest.mark.parametrize("value", [1, 0, "yes", None, [True]], ids=repr)
def test_collect_progress_must_be_a_bool(value: Any) -> None:
    with pytest.raises(ProtocolError, match="progress"):
        decode_body(p.Command.COLLECT, {"rid": 1, "watch": "w", "progress": value})
