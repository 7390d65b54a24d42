"""remus clients and workers for the benchmarks, each run as its own process.

Only the public API is used: ``remus.worker.Worker`` with ``run(handler, prefetch=...)`` and
``send_progress``, ``remus.client.BasicClient`` with ``submit_many`` (``package_size`` too),
``submit_graph``, ``as_completed``, ``run`` and ``wait(job, on_progress=...)``. The broker is
``python -m remus.server`` (see :mod:`perf.remus_bench`)::

    python -m perf.remus_roles worker --endpoint EP --kind tiny --threads 1 --prefetch 64
    python -m perf.remus_roles client --endpoint EP --mode pipelined --jobs 20000

A worker process prints ``remus worker ready: threads=N`` once every thread holds a connected
``Worker`` (the broker has answered its register); with ``--gate`` it first waits for a line
on stdin (to connect on cue). Bulk workers print one JSON line per job with the monotonic
times it arrived in and left the handler. A client prints one JSON line:
``{"samples": [...], "peak_rss_kib": n}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from perf.harness import percentile, timed_rounds
from perf.procs import emit, peak_rss_kib

IO = {
    "tiny": ("Tiny", "Tiny"),
    "progress": ("Progress", "Progress"),
    "bulk": ("Bulk", "Bulk"),
    "sleep": ("Sleep", "Sleep"),
    "preempt": ("Preempt", "Preempt"),
    "flow": ("Flow", "Stage"),
}
#: what a "sleep" job waits (seconds): a job that waits on I/O, where slots pay off
SLEEP = 0.002
READY_RE = r"remus worker ready: threads=(\d+)"
START_TIMEOUT = 30.0


def _handler(kind: str, w: Any) -> Callable[[Any], Any]:
    if kind == "tiny":
        return lambda job: job["data"]
    if kind == "sleep":

        def sleep(job: Any) -> bytes:
            time.sleep(SLEEP)  # the job's own work: waiting on I/O
            return job["data"]

        return sleep
    if kind == "preempt":

        def preemptible(job: Any) -> bytes:
            """An unprotected job ("hold") runs until it is cancelled; a protected one answers
            with the monotonic time it started."""
            started = time.monotonic()
            if job["data"] == b"hold":
                while not w.job_should_be_terminated(job):
                    time.sleep(0.001)  # the job's own work, checking for a cancel as it goes
                return b""
            return repr(started).encode()

        return preemptible
    if kind == "flow":

        def stage(job: Any) -> bytes:
            """Echo; a job whose data starts with ``+`` (a reduce) returns the bytes of what it
            reduces: the results of the jobs it ran after, or else the rest of its data."""
            data = job["data"]
            if data[:1] != b"+":
                return data
            inputs = [job.inputs_from(j).data for j in job.after] or [data[1:]]
            return str(sum(len(d) for d in inputs)).encode()

        return stage
    if kind == "progress":

        def progress(job: Any) -> bytes:
            for i in range(int(job["data"])):
                w.send_progress(job, i % 101, "m")
            return b"done"

        return progress
    lock = threading.Lock()

    def bulk(job: Any) -> Any:
        got = time.monotonic()
        data = job.buffer("data")  # the zero-copy view a worker streaming big data would use
        with lock:
            emit({"got": got, "ret": time.monotonic(), "size": len(data)})
        return data

    return bulk


def _until_connected(w: Any) -> None:
    """Return once the broker has answered ``w``'s register (it refuses a submit that no
    connected worker serves); raise if that takes longer than START_TIMEOUT."""
    deadline = time.monotonic() + START_TIMEOUT
    while not w.connected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer from the broker within {START_TIMEOUT} s")
        time.sleep(0.005)  # polling a flag under a deadline


def server() -> None:
    """An in-process ``Server()`` with every default (as a script author starts one), on free
    loopback ports; prints the ready line ``remus server`` prints, runs until SIGTERM."""
    import signal

    from remus.server import Server, ServerPorts

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Server(ServerPorts.ephemeral()) as s:
        print(
            f"remus server ready: client={s.ports.client} worker={s.ports.worker} "
            f"status={s.ports.status}",
            flush=True,
        )
        stop.wait()


def prefetch_arg(text: str) -> int | str:
    """``--prefetch``: a number, or ``auto`` (Worker.run's default)."""
    return text if text == "auto" else int(text)


def worker(
    endpoint: str, kind: str, threads: int, prefetch: int | str, gate: bool, slots: int
) -> None:
    """Run ``threads`` workers (one ``Worker`` each) until the broker tells them to exit."""
    from remus import IOType
    from remus.worker import Worker

    if gate:
        sys.stdin.readline()
    ready = threading.Barrier(threads + 1)
    errors: list[str] = []

    def serve() -> None:
        try:
            with Worker(IOType(*IO[kind]), endpoint=endpoint) as w:
                _until_connected(w)  # "ready" means the broker has it: a submit then finds it
                ready.wait(START_TIMEOUT)
                if slots > 1:
                    w.run(_handler(kind, w), prefetch=prefetch, slots=slots)
                else:
                    w.run(_handler(kind, w), prefetch=prefetch)
        except threading.BrokenBarrierError:
            pass
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
            ready.abort()

    pool = [
        threading.Thread(target=serve, name=f"perf-worker-{i}", daemon=True) for i in range(threads)
    ]
    for t in pool:
        t.start()
    try:
        ready.wait(START_TIMEOUT)
    except threading.BrokenBarrierError:
        emit({"error": "; ".join(errors) or "workers did not start"})
        return
    print(f"remus worker ready: threads={threads}", flush=True)
    for t in pool:
        t.join()


# -- client modes: each returns one sample per call ----------------------------------------------


def _pipelined(c: Any, sub: Any, jobs: int, timeout: float, package_size: int = 0) -> float:
    subs = [sub] * jobs  # one frozen submission, submitted ``jobs`` times: ``jobs`` distinct jobs
    expected = sub.contents["data"]
    packed = {"package_size": package_size} if package_size else {}
    t0 = time.perf_counter()
    handles = c.submit_many(subs, **packed)
    good = sum(r.data == expected for r in c.as_completed(handles, timeout=timeout))
    elapsed = time.perf_counter() - t0
    if good != jobs:
        raise RuntimeError(f"{jobs - good} of {jobs} results missing or wrong")
    return jobs / elapsed


def _graph(c: Any, sub: Any, middle: int, timeout: float) -> float:
    """Jobs/s of a fan-out/fan-in graph in one ``submit_graph``: a root, ``middle`` jobs after
    it, a reduce after all of them that reads their results; first submit to the reduce's
    result."""
    from remus import JobSubmission
    from remus.client import Step

    names = [f"m{i}" for i in range(middle)]
    steps: dict[str, Any] = {"root": sub}
    steps.update((name, Step(sub, after=["root"])) for name in names)
    steps["reduce"] = Step(JobSubmission.of(sub.requirements, b"+"), after=names)
    t0 = time.perf_counter()
    jobs = c.submit_graph(steps)
    total = c.wait(jobs["reduce"], timeout=timeout).data
    elapsed = time.perf_counter() - t0
    _check_reduce(total, middle * len(sub.contents["data"]))
    return (middle + 2) / elapsed


def _staged(c: Any, sub: Any, middle: int, timeout: float) -> float:
    """The same jobs the way a client without workflows runs them: the root, then the middle
    jobs with its result (``submit_many`` + ``as_completed``), then the reduce with theirs."""
    from remus import JobSubmission

    io = sub.requirements
    t0 = time.perf_counter()
    root = c.run(io, sub.contents["data"], timeout=timeout).data
    handles = c.submit_many([JobSubmission.of(io, root)] * middle)
    results = [r.data for r in c.as_completed(handles, timeout=timeout)]
    total = c.run(io, b"+" + b"".join(results), timeout=timeout).data
    elapsed = time.perf_counter() - t0
    _check_reduce(total, middle * len(sub.contents["data"]))
    return (middle + 2) / elapsed


def _check_reduce(total: bytes, expected: int) -> None:
    if int(total) != expected:
        raise RuntimeError(f"the reduce saw {int(total)} bytes of results, expected {expected}")


def _round_trips(c: Any, io: Any, payload: bytes, count: int) -> dict[str, float]:
    lat = []
    cpu = time.process_time()
    for _ in range(count):
        t0 = time.perf_counter()
        c.run(io, payload)
        lat.append(time.perf_counter() - t0)
    return {
        "p50": percentile(lat, 50) * 1e6,
        "p99": percentile(lat, 99) * 1e6,
        "cpu_us": (time.process_time() - cpu) / count * 1e6,  # this process's, per round trip
    }


def _progress(c: Any, sub: Any, updates: int) -> dict[str, float]:
    """Updates/s as the client sees them: updates received / (last one seen - submit)."""
    seen: list[tuple[float, int, Any]] = []
    t0 = time.monotonic()
    job = c.submit_many([sub])[0]
    c.wait(job, on_progress=lambda p: seen.append((time.monotonic(), p.seq, p.value)))
    disorder = sum(1 for i, (_, _, v) in enumerate(seen) if v != i % 101)
    disorder += sum(1 for a, b in itertools.pairwise(seen) if b[1] != a[1] + 1)
    span = seen[-1][0] - t0 if seen else 0.0
    return {
        "rate": len(seen) / span if span > 0 else 0.0,
        "lost": updates - len(seen),
        "disorder": disorder,
    }


def _bulk(c: Any, sub: Any, size: int, timeout: float) -> dict[str, float]:
    t0 = time.monotonic()
    # one big one-shot job: run() with release, so the broker drops the result once sent
    result = c.run(sub.requirements, sub.contents["data"], timeout=timeout, release=True)
    t1 = time.monotonic()
    if len(result.data) != size:
        raise RuntimeError(f"bulk result has {len(result.data)} bytes, expected {size}")
    return {"t0": t0, "t1": t1}


def _fill(c: Any, sub: Any, jobs: int, timeout: float) -> None:
    """Queue ``jobs`` jobs (no worker yet: they wait for one), report; on a stdin line, time
    the drain."""
    chunk = [sub] * min(jobs, 10_000)
    handles: list[Any] = []
    t0 = time.perf_counter()
    while len(handles) < jobs:
        handles.extend(c.submit_many(chunk[: jobs - len(handles)], wait_for_worker=True))
    submit_rate = jobs / (time.perf_counter() - t0)
    emit({"submitted": jobs, "submit_rate": submit_rate})
    sys.stdin.readline()
    times = [time.perf_counter() for _ in c.as_completed(handles, timeout=timeout)]
    if len(times) != jobs:
        raise RuntimeError(f"{jobs - len(times)} of {jobs} queued jobs never finished")
    emit(
        {
            "samples": [
                {"submit_rate": submit_rate, "drain_rate": (jobs - 1) / (times[-1] - times[0])}
            ],
            "peak_rss_kib": peak_rss_kib(),
        }
    )


def _preemption(c: Any, io: Any) -> float:
    """Seconds from a protected submit to its start, while an unprotected job holds the one
    slot of the only worker."""
    from remus import Status

    hold = c.submit(io, b"hold", protected=False)
    deadline = time.monotonic() + 30
    while c.client.job_status(hold).status is not Status.IN_PROGRESS:
        if time.monotonic() > deadline:
            raise RuntimeError("the unprotected job did not start within 30 s")
        time.sleep(0.002)  # polling a status under a deadline
    t0 = time.monotonic()
    started = float(c.run(io, b"go").data)
    c.client.terminate(hold)  # it runs again once the slot is free: stop it for the next round
    return started - t0


def client(
    endpoint: str,
    mode: str,
    *,
    jobs: int,
    count: int,
    updates: int,
    size: int,
    warmup: int,
    repeat: int,
    timeout: float,
    package_size: int,
) -> None:
    from remus import IOType, JobSubmission
    from remus.client import BasicClient

    kind = {"progress": "progress", "bulk": "bulk", "sleep": "sleep"}.get(mode, "tiny")
    kind = {"graph": "flow", "staged": "flow"}.get(mode, kind)
    io = IOType(*IO[kind])
    payload = {"progress": str(updates).encode(), "bulk": b"x" * size}.get(kind, b"x" * 100)
    sub = JobSubmission.of(io, payload)
    modes: dict[str, Callable[[Any], Any]] = {
        "pipelined": lambda c: _pipelined(c, sub, jobs, timeout, package_size),
        "graph": lambda c: _graph(c, sub, jobs, timeout),
        "staged": lambda c: _staged(c, sub, jobs, timeout),
        "sleep": lambda c: _pipelined(c, sub, jobs, timeout),
        "roundtrip": lambda c: _round_trips(c, io, payload, count),
        "progress": lambda c: _progress(c, sub, updates),
        "bulk": lambda c: _bulk(c, sub, size, timeout),
        "preempt": lambda c: _preemption(c, IOType(*IO["preempt"])),
    }
    try:
        with BasicClient(endpoint, timeout=30) as c:
            if mode == "fill":
                _fill(c, sub, jobs, timeout)
                return
            cpu = time.process_time()
            samples = timed_rounds(lambda: modes[mode](c), warmup=warmup, repeat=repeat)
            cpu = time.process_time() - cpu  # (this process's, warm-up rounds included)
        emit({"samples": samples, "peak_rss_kib": peak_rss_kib(), "cpu_s": cpu})
    except Exception as e:
        emit({"error": f"remus client ({mode}): {type(e).__name__}: {e}"})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m perf.remus_roles")
    sub = p.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--endpoint", required=True)
    w.add_argument("--kind", choices=sorted(IO), default="tiny")
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--prefetch", type=prefetch_arg, default=64)
    w.add_argument("--gate", action="store_true", help="wait for a stdin line before connecting")
    w.add_argument("--slots", type=int, default=1, help="jobs each worker runs at once")
    c = sub.add_parser("client")
    c.add_argument("--endpoint", required=True)
    c.add_argument(
        "--mode",
        choices=(
            "pipelined",
            "roundtrip",
            "progress",
            "bulk",
            "fill",
            "sleep",
            "preempt",
            "graph",
            "staged",
        ),
        required=True,
    )
    c.add_argument("--jobs", type=int, default=20000)
    c.add_argument("--count", type=int, default=2000)
    c.add_argument("--updates", type=int, default=20000)
    c.add_argument("--size", type=int, default=256 << 20)
    c.add_argument("--warmup", type=int, default=1)
    c.add_argument("--repeat", type=int, default=3)
    c.add_argument("--timeout", type=float, default=120.0)
    c.add_argument(
        "--package-size", type=int, default=0, help="pipelined: submit in work packages of N"
    )
    sub.add_parser("server", help="an in-process Server() with its defaults")
    args = vars(p.parse_args(argv))
    role = args.pop("role")
    if role == "server":
        server()
    elif role == "worker":
        worker(**args)
    else:
        client(**args)


if __name__ == "__main__":
    main()
