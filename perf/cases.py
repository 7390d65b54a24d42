"""The benchmarks of issue 6, each measuring remus and its reference in the same run.

A case is a function ``(Options, remus_error) -> list[Row]``. Each side is measured in its own
set of processes; a side that fails leaves ``n/a`` in its cell and says why in the row's note,
and the other rows still run. When remus does not import, the reference sides still run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from perf import pushpull, relay, remus_bench
from perf.harness import Goal, Row, Stat

log = logging.getLogger(__name__)
MIB = 1 << 20
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Options:
    """Sizes and durations of one run; ``Options.quick()`` is the under-a-minute form."""

    jobs: int = 20_000  # pipelined jobs per sample
    window: int = 500  # the windowed relay client's outstanding requests (also run: no window)
    prefetch: int = 64  # jobs a worker asks for at once (relay credit, remus prefetch)
    warmup: int = 1
    repeat: int = 5
    rt_count: int = 2_000  # round trips per sample
    updates: int = 20_000  # progress updates per sample
    rate_count: int = 200_000  # PUSH/PULL messages per sample
    bulk_size: int = 256 * MIB
    bulk_repeat: int = 3
    depths: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    worker_counts: tuple[int, ...] = (2, 16, 64, 256)
    idle_seconds: float = 5.0
    graph_jobs: int = 10_000  # the fan-out/fan-in graph's middle jobs
    package_jobs: int = 20_000  # jobs per sample of the work packages row

    @classmethod
    def quick(cls, **overrides: Any) -> Options:
        small = dict(
            jobs=10_000,
            repeat=3,
            rt_count=500,
            updates=5_000,
            rate_count=50_000,
            bulk_repeat=2,
            depths=(1_000, 10_000),
            worker_counts=(2, 16, 256),
            idle_seconds=2.0,
            graph_jobs=2_000,
            package_jobs=5_000,
        )
        return cls(**{**small, **overrides})


def _measure(row: Row, label: str, fn: Callable[[], T]) -> T | None:
    """Run one side; on failure note it on the row (first and last line of why) and carry on."""
    try:
        return fn()
    except Exception as e:
        log.debug("%s failed", label, exc_info=True)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""
        row.note = "; ".join(filter(None, [row.note, f"{label} failed: {type(e).__name__}: {why}"]))
        return None


def pipelined(opts: Options, why: str | None) -> list[Row]:
    rows = []
    for n in (1, 2):
        row = Row(
            f"pipelined, {n} worker{'s' * (n > 1)}",
            "jobs/s",
            goal=Goal(">=", 0.6) if n == 2 else None,
        )
        _relay_pipelined(row, opts, n)
        if why is None:
            got = _measure(
                row,
                "remus",
                lambda n=n: remus_bench.pipelined(
                    workers=n,
                    jobs=opts.jobs,
                    warmup=opts.warmup,
                    repeat=opts.repeat,
                    prefetch=opts.prefetch,
                ),
            )
            row.remus = Stat.of(got["samples"]) if got else None
        rows.append(row)
    return rows


#: the credit per worker of the "default settings" row's relay (what issue 15 compares with)
DEFAULT_CREDIT = 16


def defaults(opts: Options, why: str | None) -> list[Row]:
    """What a user gets without tuning: a script's ``Server()`` and ``Worker.run(handler)``
    with its default prefetch ("auto"), 2 workers, against the relay at credit 16."""
    row = Row("pipelined, 2 workers, default settings", "jobs/s", goal=Goal(">=", 1.0))
    _relay_pipelined(row, opts, 2, credit=DEFAULT_CREDIT)
    if why is None:
        got = _measure(
            row,
            "remus",
            lambda: remus_bench.pipelined(
                workers=2,
                jobs=opts.jobs,
                warmup=opts.warmup,
                repeat=opts.repeat,
                prefetch="auto",
                inprocess=True,
            ),
        )
        row.remus = Stat.of(got["samples"]) if got else None
    row.ref_label = f"{row.ref_label}, credit {DEFAULT_CREDIT}"
    return [row]


def _relay_pipelined(row: Row, opts: Options, workers: int, credit: int | None = None) -> None:
    """The reference of a pipelined row: the relay whose client sends every job at once, and
    the relay whose client keeps ``opts.window`` requests outstanding (issue 15). The faster
    (by median) is the reference; the other is given in the row's note and both in its JSON."""
    runs: dict[str, Stat] = {}
    for window in dict.fromkeys((0, opts.window)):  # 0: every job at once
        label = "relay, all at once" if window == 0 else f"relay, window {window}"
        got = _measure(
            row,
            label,
            lambda w=window: relay.run(
                "pipelined",
                workers=workers,
                credit=credit or opts.prefetch,
                jobs=opts.jobs,
                window=w,
                warmup=opts.warmup,
                repeat=opts.repeat,
            ),
        )
        if got:
            runs[label] = Stat.of(got)
    row.meta["relay"] = {label: list(stat.samples) for label, stat in runs.items()}
    if not runs:
        return
    best = max(runs, key=lambda label: runs[label].median)
    row.reference, row.ref_label = runs[best], best
    for label, stat in runs.items():
        if label != best:
            note = f"{label}: {stat.median:,.0f} jobs/s [{stat.lo:,.0f}-{stat.hi:,.0f}]"
            row.note = "; ".join(filter(None, [row.note, note]))


def round_trip(opts: Options, why: str | None) -> list[Row]:
    p50 = Row("round trip p50", "µs", goal=Goal("<=", 1.5), ref_label="relay")
    p99 = Row("round trip p99", "µs", goal=Goal("<=", 3.0), ref_label="relay")
    ref = _measure(
        p50,
        "relay",
        lambda: relay.run(
            "roundtrip",
            workers=1,
            credit=opts.prefetch,
            count=opts.rt_count,
            warmup=opts.warmup,
            repeat=opts.repeat,
        ),
    )
    if ref:
        p50.reference = Stat.of([s["p50"] for s in ref])
        p99.reference = Stat.of([s["p99"] for s in ref])
    if why is None:
        got = _measure(
            p50,
            "remus",
            lambda: remus_bench.round_trip(
                count=opts.rt_count, warmup=opts.warmup, repeat=opts.repeat, prefetch=opts.prefetch
            ),
        )
        if got:
            p50.remus = Stat.of([s["p50"] for s in got])
            p99.remus = Stat.of([s["p99"] for s in got])
    return [p50, p99]


def progress(opts: Options, why: str | None) -> list[Row]:
    rate = Row("progress stream", "msg/s", goal=Goal(">=", 0.5), ref_label="PUSH/PULL")
    lost = Row("progress lost or out of order", "", goal=Goal("<=", 0, on="value"))
    ref = _measure(
        rate,
        "PUSH/PULL",
        lambda: pushpull.run("rate", count=opts.rate_count, warmup=opts.warmup, repeat=opts.repeat),
    )
    rate.reference = Stat.of(ref["samples"]) if ref else None
    if why is None:
        got = _measure(
            rate,
            "remus",
            lambda: remus_bench.progress(
                updates=opts.updates, warmup=opts.warmup, repeat=opts.repeat
            ),
        )
        if got:
            rate.remus = Stat.of([s["rate"] for s in got])
            lost.remus = Stat.of(sum(s["lost"] + s["disorder"] for s in got))
            lost.note = f"total over {len(got)} samples of {opts.updates:,} updates"
    return [rate, lost]


def bulk(opts: Options, why: str | None) -> list[Row]:
    size = opts.bulk_size
    mib = size / MIB
    to_w = Row(
        f"bulk {mib:.0f} MiB to worker", "MiB/s", goal=Goal(">=", 0.5), ref_label="PUSH/PULL"
    )
    from_w = Row(
        f"bulk {mib:.0f} MiB back to client", "MiB/s", goal=Goal(">=", 0.5), ref_label="PUSH/PULL"
    )
    broker = Row("bulk broker peak RSS", "MiB", goal=Goal("<=", 1.5), ref_label="payload")
    worker = Row("bulk worker peak RSS", "MiB", ref_label="PULL/PUSH peak")
    client = Row("bulk client peak RSS", "MiB", ref_label="PULL/PUSH peak")
    rows = [to_w, from_w, broker, worker, client]
    ref = _measure(
        to_w,
        "PUSH/PULL",
        lambda: pushpull.run(
            "bulk", size=size, warmup=opts.warmup, repeat=opts.bulk_repeat, timeout=120
        ),
    )
    if ref:
        to_w.reference = from_w.reference = Stat.of(ref["samples"])
        peak = max(ref["puller_peak_rss_kib"], ref["pusher_peak_rss_kib"]) / 1024
        worker.reference = client.reference = Stat.of(peak)
    broker.reference = Stat.of(mib)
    if why is None:
        got = _measure(
            to_w,
            "remus",
            lambda: remus_bench.bulk(size=size, warmup=opts.warmup, repeat=opts.bulk_repeat),
        )
        if got:
            to_w.remus = Stat.of(got["to_worker"])
            from_w.remus = Stat.of(got["from_worker"])
            broker.remus = Stat.of(got["broker_peak_kib"] / 1024)
            broker.note = (
                f"VmHWM; the idle broker held {got['broker_idle_kib'] / 1024:.0f} MiB"
                " before the first job"
            )
            worker.remus = Stat.of(got["worker_peak_kib"] / 1024)
            client.remus = Stat.of(got["client_peak_kib"] / 1024)
            to_w.meta["both_ways_mib_s"] = got["both"]
    return rows


def _stat(samples: list[dict[str, Any]] | None, key: str) -> Stat | None:
    return Stat.of([x[key] for x in samples]) if samples else None


def queue_depth(opts: Options, why: str | None) -> list[Row]:
    """Each depth on a fresh broker; depths up to 10k repeated, larger ones measured once."""
    base_depth = opts.depths[0]
    if why is not None:
        note = "skipped: remus not available (the reference is remus at the smallest depth)"
        return [Row("queue depth", "", note=note)]
    anchor = Row("queue depth", "")
    results: dict[int, list[dict[str, Any]]] = {}
    for depth in opts.depths:
        runs = (
            _measure(anchor, f"depth {depth:,}", lambda d=depth: remus_bench.queue_depth(depth=d))
            for _ in range(opts.repeat if depth <= 10_000 else 1)
        )
        results[depth] = [r for r in runs if r is not None]
    base = results[base_depth]
    rows = [anchor] if anchor.note else []
    label = f"at {base_depth:,}"
    for depth in opts.depths[1:]:
        got = results[depth]
        name = f"queue {depth:,}"
        for key, title in (("submit_rate", "submit"), ("drain_rate", "dispatch")):
            rows.append(
                Row(
                    f"{name}: {title}",
                    "jobs/s",
                    goal=Goal(">=", 0.8),
                    ref_label=label,
                    remus=_stat(got, key),
                    reference=_stat(base, key),
                )
            )
        rows.append(
            Row(
                f"{name}: broker memory/job",
                "B",
                goal=Goal("<=", 1024, on="value"),
                remus=_stat(got, "bytes_per_job"),
            )
        )
    return rows


def many_workers(opts: Options, why: str | None) -> list[Row]:
    if why is not None:
        return [
            Row(
                "many workers",
                "",
                note="skipped: remus not available (its reference is remus itself with 2 workers)",
            )
        ]
    counts = opts.worker_counts
    got: dict[int, dict[str, Any] | None] = {}
    anchor = Row("many workers", "")
    for n in counts:
        procs = min(n, 4)
        got[n] = _measure(
            anchor,
            f"{n} workers",
            lambda n=n, p=procs: remus_bench.pipelined(
                workers=p,
                threads=n // p,
                jobs=opts.jobs,
                warmup=opts.warmup,
                repeat=opts.repeat,
                idle=opts.idle_seconds,
                prefetch=opts.prefetch,
            ),
        )
    base = got[counts[0]]
    rows = [anchor] if anchor.note else []
    for n in counts:
        g = got[n]
        if n != counts[0]:
            rows.append(
                Row(
                    f"{n} workers: throughput",
                    "jobs/s",
                    ref_label=f"{counts[0]} workers",
                    remus=Stat.of(g["samples"]) if g else None,
                    reference=Stat.of(base["samples"]) if base else None,
                )
            )
        rows.append(
            Row(
                f"{n} workers: idle broker CPU",
                "%",
                goal=Goal("<=", 5, on="value"),
                ref_label=f"{counts[0]} workers",
                remus=Stat.of(g["idle_cpu_percent"]) if g else None,
                reference=Stat.of(base["idle_cpu_percent"]) if base else None,
            )
        )
    return rows


def journal(opts: Options, why: str | None) -> list[Row]:
    """What the durable journal costs: pipelined jobs/s with ``--journal`` (``--journal-sync
    normal``, then ``full``) against the same broker without, measured between the two."""
    rows = [
        Row(
            f"pipelined, 2 workers, journal {sync}",
            "jobs/s",
            goal=Goal(">=", 0.8),
            ref_label="no journal",
        )
        for sync in ("normal", "full")
    ]
    if why is not None:
        return rows

    def run(**extra: Any) -> Any:
        return remus_bench.pipelined(
            workers=2,
            jobs=opts.jobs,
            warmup=opts.warmup,
            repeat=opts.repeat,
            prefetch=opts.prefetch,
            **extra,
        )

    got: dict[str, Any] = {}
    ref: Any = None
    with tempfile.TemporaryDirectory(prefix="remus-perf-") as tmp:
        for row, sync in zip(rows, ("normal", "full"), strict=True):
            path = os.path.join(tmp, f"remus-{sync}.db")
            got[sync] = _measure(
                row, f"remus --journal-sync {sync}", lambda p=path, s=sync: run(journal=p, sync=s)
            )
            if sync == "normal":
                ref = _measure(row, "remus", run)
    for row, sync in zip(rows, ("normal", "full"), strict=True):
        row.remus = Stat.of(got[sync]["samples"]) if got[sync] else None
        row.reference = Stat.of(ref["samples"]) if ref else None
    return rows


def _with_and_without(row: Row, opts: Options, label: str, **option: Any) -> Any:
    """Pipelined jobs/s with 2 workers, with ``option`` (remus's side of ``row``) and without
    (its reference), one after the other; returns the run with it (None if it failed)."""

    def run(**extra: Any) -> Any:
        return remus_bench.pipelined(
            workers=2,
            jobs=opts.jobs,
            warmup=opts.warmup,
            repeat=opts.repeat,
            prefetch=opts.prefetch,
            **extra,
        )

    got = _measure(row, label, lambda: run(**option))
    ref = _measure(row, "remus", run)
    row.remus = Stat.of(got["samples"]) if got else None
    row.reference = Stat.of(ref["samples"]) if ref else None
    return got


def observed(opts: Options, why: str | None) -> list[Row]:
    """What watching the broker costs: pipelined jobs/s while ``remus top`` polls it and its
    ``--metrics`` are scraped every second, against the same broker unwatched."""
    row = Row(
        "pipelined, 2 workers, top + metrics",
        "jobs/s",
        goal=Goal(">=", 0.9),
        ref_label="unwatched",
    )
    if why is not None:
        return [row]

    got = _with_and_without(row, opts, "remus watched", observed=True)
    if got:
        row.note = "; ".join(filter(None, [row.note, f"{got['scrapes']} scrapes during the run"]))
    return [row]


def curve(opts: Options, why: str | None) -> list[Row]:
    """What encryption costs: pipelined jobs/s and the round trip's p50 of a broker in secure
    mode (CURVE on every socket, a key on every peer) against the same broker in plain mode."""
    row = Row("pipelined, 2 workers, CURVE", "jobs/s", ref_label="plain")
    p50 = Row("round trip p50, CURVE", "µs", ref_label="plain")
    if why is not None:
        return [row, p50]
    _with_and_without(row, opts, "remus CURVE", curve=True)

    def latency(secure: bool) -> Any:
        return remus_bench.round_trip(
            count=opts.rt_count,
            warmup=opts.warmup,
            repeat=opts.repeat,
            prefetch=opts.prefetch,
            curve=secure,
        )

    got = _measure(p50, "remus CURVE", lambda: latency(True))
    ref = _measure(p50, "remus", lambda: latency(False))
    p50.remus = Stat.of([s["p50"] for s in got]) if got else None
    p50.reference = Stat.of([s["p50"] for s in ref]) if ref else None
    return [row, p50]


def slots(opts: Options, why: str | None) -> list[Row]:
    """A 4-slot worker against 4 one-slot worker processes, 2 ms jobs that wait on I/O."""
    row = Row("4-slot worker, 2 ms jobs", "jobs/s", goal=Goal(">=", 0.6), ref_label="4 workers")
    if why is not None:
        return [row]
    n = max(400, opts.jobs // 20)
    got = _measure(
        row,
        "remus 4 slots",
        lambda: remus_bench.slots(slots=4, jobs=n, warmup=1, repeat=opts.repeat),
    )
    ref = _measure(
        row,
        "remus 4 workers",
        lambda: remus_bench.slots(slots=1, jobs=n, warmup=1, repeat=opts.repeat),
    )
    row.remus = Stat.of(got["samples"]) if got else None
    row.reference = Stat.of(ref["samples"]) if ref else None
    return [row]


#: the preempt_grace the preemption row runs with (its reference)
PREEMPT_GRACE = 5.0


def preemption(opts: Options, why: str | None) -> list[Row]:
    """Time from a protected submit to its start when an unprotected job holds the only slot,
    against ``preempt_grace``."""
    row = Row(
        "preemption latency",
        "s",
        goal=Goal("<=", 0.05),
        ref_label=f"preempt_grace {PREEMPT_GRACE:g} s",
        reference=Stat.of([PREEMPT_GRACE]),
    )
    if why is not None:
        return [row]
    got = _measure(
        row, "remus", lambda: remus_bench.preemption(repeat=opts.repeat, grace=PREEMPT_GRACE)
    )
    row.remus = Stat.of(got["samples"]) if got else None
    return [row]


def workflow(opts: Options, why: str | None) -> list[Row]:
    """A fan-out/fan-in graph (a root, N middle jobs after it, a reduce after them all that
    reads their results) in one ``submit_graph``, end to end, against the same jobs run one
    stage after the other by a client that waits for each (issue 14)."""
    n = opts.graph_jobs
    row = Row(f"fan-out/fan-in graph, {n:,} jobs", "jobs/s", ref_label="staged client")
    if why is None:
        for label, mode in (("remus graph", "graph"), ("remus staged", "staged")):
            got = _measure(
                row,
                label,
                lambda m=mode: remus_bench.workflow(
                    mode=m, jobs=n, warmup=opts.warmup, repeat=opts.repeat
                ),
            )
            stat = Stat.of(got["samples"]) if got else None
            if mode == "graph":
                row.remus = stat
            else:
                row.reference = stat
    return [row]


#: the work packages row's package size
PACKAGE = 64


def packages(opts: Options, why: str | None) -> list[Row]:
    """100-byte jobs through 2 default workers in work packages of 64 (``submit_many(...,
    package_size=64)`` + ``as_completed``), against the same jobs dispatched one by one."""
    n = opts.package_jobs
    row = Row(f"packages of {PACKAGE}, 100 B jobs", "jobs/s", ref_label="per-job dispatch")
    if why is None:
        for size in (PACKAGE, 0):
            got = _measure(
                row,
                "remus packages" if size else "remus per job",
                lambda s=size: remus_bench.workflow(
                    mode="pipelined",
                    jobs=n,
                    warmup=opts.warmup,
                    repeat=opts.repeat,
                    package_size=s,
                ),
            )
            stat = Stat.of(got["samples"]) if got else None
            if size:
                row.remus = stat
            else:
                row.reference = stat
    return [row]


CASES: dict[str, Callable[[Options, str | None], list[Row]]] = {
    "pipelined": pipelined,
    "defaults": defaults,
    "roundtrip": round_trip,
    "progress": progress,
    "bulk": bulk,
    "queue": queue_depth,
    "workers": many_workers,
    "journal": journal,
    "observed": observed,
    "curve": curve,
    "slots": slots,
    "preemption": preemption,
    "workflow": workflow,
    "packages": packages,
}
