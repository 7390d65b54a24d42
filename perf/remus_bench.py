"""The remus side of every benchmark: a broker process, worker processes, a client process.

The broker is ``python -m remus.server`` bound to port 0 on loopback; it prints
``remus server ready: client=EP worker=EP status=EP`` and is stopped with SIGTERM to its PID,
after which its workers are given a moment to leave on their own before they are stopped too.
Memory and CPU of the broker and workers come from ``/proc/PID`` while they live.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from perf.procs import Proc, ProcGroup
from perf.remus_roles import READY_RE as WORKER_READY_RE

SERVER_RE = r"remus server ready: client=(\S+) worker=(\S+) status=(\S+)"
ROLES = "perf.remus_roles"
SERVER_MODULE = "remus.server"
KIB = 1024


class Endpoints(NamedTuple):
    client: str
    worker: str
    status: str
    #: the Prometheus URL, with ``--metrics``
    metrics: str = ""


def available() -> str | None:
    """None if the public API imports, else why not (the harness then skips remus rows)."""
    try:
        from remus.client import BasicClient  # noqa: F401
        from remus.server import Server  # noqa: F401
        from remus.worker import Worker  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


@contextmanager
def session(
    group: ProcGroup, *options: str, inprocess: bool = False
) -> Iterator[tuple[Proc, Endpoints]]:
    """A broker for one benchmark (``options`` go on its command line; ``inprocess``: a
    script's ``Server()`` with every default instead of ``remus server``); on exit SIGTERM
    it, then let its workers leave (3 s)."""
    any_ep = "tcp://127.0.0.1:0"
    if inprocess:
        server = group.start("remus-server", ROLES, "server")
    else:
        server = group.start(
            "remus-server",
            SERVER_MODULE,
            "--client",
            any_ep,
            "--worker",
            any_ep,
            "--status",
            any_ep,
            *options,
        )
    ready = server.expect(SERVER_RE, timeout=30)
    metrics = re.search(r" metrics=(\S+)", ready.string)
    eps = Endpoints(*ready.groups(), metrics=metrics.group(1) if metrics else "")
    try:
        yield server, eps
    finally:
        server.stop(timeout=10)
        deadline = time.monotonic() + 3.0
        for proc in group.procs:
            proc.wait(max(deadline - time.monotonic(), 0.0))


def start_workers(
    group: ProcGroup,
    endpoint: str,
    kind: str,
    *,
    processes: int = 1,
    threads: int = 1,
    prefetch: int = 64,
    gate: bool = False,
    slots: int = 1,
) -> list[Proc]:
    """Start worker processes of ``threads`` workers each; unless gated, wait until all are up."""
    procs = [
        group.start(
            f"remus-worker-{i}",
            ROLES,
            "worker",
            "--endpoint",
            endpoint,
            "--kind",
            kind,
            "--threads",
            threads,
            "--prefetch",
            prefetch,
            "--slots",
            slots,
            *(["--gate"] if gate else []),
            stdin=gate,
        )
        for i in range(processes)
    ]
    if not gate:
        for proc in procs:
            proc.expect(WORKER_READY_RE, timeout=60)
    return procs


def start_client(
    group: ProcGroup, endpoint: str, mode: str, stdin: bool = False, **opts: Any
) -> Proc:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    return group.start(
        "remus-client", ROLES, "client", "--endpoint", endpoint, "--mode", mode, *args, stdin=stdin
    )


def pipelined(
    *,
    workers: int,
    jobs: int,
    warmup: int,
    repeat: int,
    threads: int = 1,
    idle: float = 0.0,
    prefetch: int | str = 64,
    journal: str | None = None,
    sync: str | None = None,
    observed: bool = False,
    curve: bool = False,
    inprocess: bool = False,
) -> dict[str, Any]:
    """Jobs/s of one pipelined client; with ``idle``, the broker's CPU % afterwards, idle;
    with ``journal``, the broker journals to that SQLite file (``sync``: its --journal-sync);
    ``observed``: the broker
    serves ``--metrics``, scraped every second, and ``remus top`` polls it every second;
    ``curve``: the broker runs in secure mode, and the client and workers use keys;
    ``inprocess``: the broker is a script's ``Server()`` with every default."""
    options: tuple[str, ...] = ("--journal", journal) if journal else ()
    if journal and sync:
        options += ("--journal-sync", sync)
    if observed:
        options += ("--metrics", "0")
    with ProcGroup() as group, secure_mode(curve) as keys:
        return _pipelined(group, options + keys, workers, jobs, warmup, repeat, threads, idle,
                          prefetch, observed, inprocess)  # fmt: skip


@contextmanager
def secure_mode(on: bool) -> Iterator[tuple[str, ...]]:
    """With ``on``: keys in a temporary folder, the broker's options that use them, and the
    environment that gives them to the client and worker processes started meanwhile (one
    key pair, allowed as a client and as a worker). Without: nothing."""
    if not on:
        yield ()
        return
    from remus.security import new_keys

    saved = {k: os.environ.get(k) for k in ("REMUS_SERVER_KEY", "REMUS_SECRET_KEY")}
    with tempfile.TemporaryDirectory(prefix="remus-perf-keys-") as tmp:
        folder = Path(tmp)
        broker_public, broker_secret = new_keys("broker", folder / "broker")
        public, secret = new_keys("perf", folder / "own")
        for allowed in ("clients", "workers"):
            (folder / allowed).mkdir()
            shutil.copy(public, folder / allowed / public.name)
        os.environ["REMUS_SERVER_KEY"] = str(broker_public)
        os.environ["REMUS_SECRET_KEY"] = str(secret)
        try:
            yield (
                "--secret-key",
                str(broker_secret),
                "--allow-clients",
                str(folder / "clients"),
                "--allow-workers",
                str(folder / "workers"),
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _pipelined(
    group: ProcGroup,
    options: tuple[str, ...],
    workers: int,
    jobs: int,
    warmup: int,
    repeat: int,
    threads: int,
    idle: float,
    prefetch: int | str,
    observed: bool,
    inprocess: bool = False,
) -> dict[str, Any]:
    with session(group, *options, inprocess=inprocess) as (server, eps):
        start_workers(
            group, eps.worker, "tiny", processes=workers, threads=threads, prefetch=prefetch
        )
        if observed:
            group.start("remus-top", "remus", "top", "--client", eps.client, "--interval", "1")
            scraper = Scraper(eps.metrics)
        client = start_client(
            group, eps.client, "pipelined", jobs=jobs, warmup=warmup, repeat=repeat
        )
        try:
            out: dict[str, Any] = {"samples": client.result(timeout=300)["samples"]}
        finally:
            if observed:
                scrapes = scraper.stop()
        if observed:
            if scrapes < 1:
                raise RuntimeError(f"no scrape of {eps.metrics} succeeded during the run")
            out["scrapes"] = scrapes
        client.wait(10)
        if idle:
            out["idle_cpu_percent"] = idle_cpu_percent(server, idle)
        return out


class Scraper(threading.Thread):
    """Reads a Prometheus URL every second, as a monitoring system would, until stopped."""

    def __init__(self, url: str, every: float = 1.0) -> None:
        super().__init__(name="perf-scraper", daemon=True)
        self.url = url
        self.every = every
        self.scrapes = 0
        self._stop_now = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_now.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    if b"remus_up 1.0" in reply.read():
                        self.scrapes += 1
            except OSError:
                pass  # counted as a scrape that did not succeed
            self._stop_now.wait(self.every)

    def stop(self) -> int:
        """Stop; the number of scrapes that found the broker up."""
        self._stop_now.set()
        self.join(10)
        return self.scrapes


def idle_cpu_percent(proc: Proc, seconds: float, settle: float = 1.0) -> float:
    """Percent of one core ``proc`` used over a ``seconds`` window (utime + stime), starting
    ``settle`` seconds after the last client left so that no clean-up is counted as idle."""
    time.sleep(settle)  # measurement windows, not waits for a condition
    c0, t0 = proc.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = proc.cpu_seconds(), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0)


def round_trip(
    *, count: int, warmup: int, repeat: int, prefetch: int = 64, curve: bool = False
) -> list[dict[str, float]]:
    """Latency percentiles of one job at a time; ``curve``: in secure mode (see secure_mode)."""
    with ProcGroup() as group, secure_mode(curve) as keys, session(group, *keys) as (_, eps):
        start_workers(group, eps.worker, "tiny", prefetch=prefetch)
        client = start_client(
            group, eps.client, "roundtrip", count=count, warmup=warmup, repeat=repeat
        )
        samples: list[dict[str, float]] = client.result(timeout=300)["samples"]
        return samples


def progress(*, updates: int, warmup: int, repeat: int) -> list[dict[str, float]]:
    with ProcGroup() as group, session(group) as (_, eps):
        start_workers(group, eps.worker, "progress", prefetch=1)
        client = start_client(
            group, eps.client, "progress", updates=updates, warmup=warmup, repeat=repeat
        )
        samples: list[dict[str, float]] = client.result(timeout=300)["samples"]
        return samples


def bulk(*, size: int, warmup: int, repeat: int) -> dict[str, Any]:
    """MiB/s to the worker and back (per leg, from shared monotonic stamps) and peak RSS (KiB)."""
    # The bulk rows measure one payload's cost: results are kept 2 s, not an hour, so repeated
    # samples do not pile up, and jobs are not retried, so the broker may let a job's input go
    # once its worker starts it (with retries on it keeps the input to run the job again: then
    # its peak is the input plus the result, 2x the payload).
    options = ("--result-ttl", "2", "--max-retries", "0")
    with ProcGroup() as group, session(group, *options) as (server, eps):
        (worker,) = start_workers(group, eps.worker, "bulk", prefetch=1)
        idle_kib = server.status_kib("VmRSS")
        client = start_client(
            group, eps.client, "bulk", size=size, warmup=warmup, repeat=repeat, timeout=300
        )
        report = client.result(timeout=600)
        stamps = [
            json.loads(worker.expect(r'^\{"got"', timeout=30).string)
            for _ in range(warmup + repeat)
        ][warmup:]
        mib = size / (1 << 20)
        legs = list(zip(report["samples"], stamps, strict=True))
        return {
            "to_worker": [mib / (w["got"] - c["t0"]) for c, w in legs],
            "from_worker": [mib / (c["t1"] - w["ret"]) for c, w in legs],
            "both": [2 * mib / (c["t1"] - c["t0"]) for c, w in legs],
            "broker_idle_kib": idle_kib,
            "broker_peak_kib": server.status_kib("VmHWM"),
            "worker_peak_kib": worker.status_kib("VmHWM"),
            "client_peak_kib": report["peak_rss_kib"],
        }


def _settled_rss(proc: Proc, timeout: float = 5.0) -> int:
    """VmRSS once two readings 100 ms apart agree (the broker has taken in every submission)."""
    deadline = time.monotonic() + timeout
    last = proc.status_kib("VmRSS")
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = proc.status_kib("VmRSS")
        if now == last:
            break
        last = now
    return last


def queue_depth(*, depth: int, workers: int = 2) -> dict[str, float]:
    """Queue ``depth`` jobs with no worker: submissions/s, broker bytes per queued job; then
    connect workers: dispatch (drain) rate, first result to last."""
    with ProcGroup() as group, session(group) as (server, eps):
        gated = start_workers(group, eps.worker, "tiny", processes=workers, gate=True)
        before = server.status_kib("VmRSS")
        client = start_client(
            group, eps.client, "fill", stdin=True, jobs=depth, timeout=max(120, depth / 500)
        )
        submitted = client.result(timeout=max(120, depth / 500))
        after = _settled_rss(server)
        client.send("go")
        for proc in gated:
            proc.send("go")
        drained = client.result(timeout=max(120, depth / 500))["samples"][0]
        return {
            "submit_rate": submitted["submit_rate"],
            "drain_rate": drained["drain_rate"],
            "bytes_per_job": (after - before) * KIB / depth,
            "broker_rss_kib": after,
        }


def slots(*, slots: int, jobs: int, warmup: int, repeat: int) -> dict[str, Any]:
    """Jobs/s of 2 ms "sleep" jobs (waiting on I/O) through one worker with ``slots`` slots
    (``slots`` = 1: that many one-slot worker processes instead)."""
    with ProcGroup() as group, session(group) as (_, eps):
        if slots > 1:
            start_workers(group, eps.worker, "sleep", slots=slots, prefetch=slots)
        else:
            start_workers(group, eps.worker, "sleep", processes=4, prefetch=1)
        client = start_client(group, eps.client, "sleep", jobs=jobs, warmup=warmup, repeat=repeat)
        out: dict[str, Any] = {"samples": client.result(timeout=300)["samples"]}
        client.wait(10)
        return out


def preemption(*, repeat: int, grace: float) -> dict[str, Any]:
    """Seconds from a protected submit to its start when an unprotected job holds the only
    slot (a worker that stops a cancelled job within a millisecond)."""
    with ProcGroup() as group, session(group, "--preempt-grace", str(grace)) as (_, eps):
        start_workers(group, eps.worker, "preempt", prefetch=1)
        client = start_client(group, eps.client, "preempt", warmup=1, repeat=repeat)
        out: dict[str, Any] = {"samples": client.result(timeout=120)["samples"]}
        client.wait(10)
        return out


def workflow(
    *, mode: str, jobs: int, warmup: int, repeat: int, package_size: int = 0
) -> dict[str, Any]:
    """Jobs/s of one client mode through 2 worker processes with ``Worker.run``'s defaults
    (prefetch "auto"): ``graph`` (a fan-out/fan-in of ``jobs`` middle jobs in one
    ``submit_graph``), ``staged`` (the same, one stage after the other), or ``pipelined``
    (``jobs`` tiny jobs; in work packages of ``package_size`` if given)."""
    kind = "flow" if mode in ("graph", "staged") else "tiny"
    packed = {"package_size": package_size} if package_size else {}
    with ProcGroup() as group, session(group) as (_, eps):
        start_workers(group, eps.worker, kind, processes=2, prefetch="auto")
        client = start_client(
            group, eps.client, mode, jobs=jobs, warmup=warmup, repeat=repeat, timeout=300, **packed
        )
        out: dict[str, Any] = {"samples": client.result(timeout=900)["samples"]}
        client.wait(10)
        return out
