"""What the dashboard shows, as plain JSON: one snapshot built from the broker's answers.

Pure functions (no I/O, no clock): :func:`snapshot` turns one round of ``stats()``,
``workers()`` and ``jobs(...)`` answers into the document the page draws, and
:func:`percentiles` reads p50/p90/p99 off the broker's timing histograms. ``remus.http.feed``
does the asking, once a second, for every page at once.

The histograms count since the broker started (docs/protocol.md, ``stats.timings``), so the
percentiles are over the broker's whole life; a percentile is interpolated linearly inside its
bucket, as Prometheus' ``histogram_quantile`` does, and one that falls in the open last bucket
is reported as the last bound and named in ``capped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from remus.introspect import BrokerStats, JobInfo, WorkerInfo
from remus.types import JobProgress

#: the percentiles shown, as (name, fraction)
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


def percentiles(counts: Sequence[int], bounds: Sequence[float], total: float) -> dict[str, Any]:
    """p50/p90/p99, mean and count of one histogram: ``counts`` per bucket (not cumulative,
    one more than ``bounds``, the last for longer), ``total`` the sum of the observations.
    None for each when nothing was observed."""
    n = sum(counts)
    out: dict[str, Any] = {"count": n, "mean": total / n if n else None, "capped": []}
    for name, q in QUANTILES:
        out[name] = None
        if not n:
            continue
        rank = q * n
        below = 0
        for i, c in enumerate(counts):
            if c and below + c >= rank:
                if i >= len(bounds):  # the open bucket: longer than the last bound
                    out[name] = float(bounds[-1]) if bounds else None
                    out["capped"].append(name)
                else:
                    lo = float(bounds[i - 1]) if i else 0.0
                    out[name] = lo + (float(bounds[i]) - lo) * (rank - below) / c
                break
            below += c
    return out


def latency(stats: BrokerStats) -> list[dict[str, Any]]:
    """Per io type: queue wait and run time percentiles (seconds), by io type name."""
    timings = stats.timings
    bounds = timings.get("bounds") or ()
    rows = []
    for io, t in sorted(timings.items()):
        if io == "bounds" or not isinstance(t, dict):
            continue
        rows.append(
            {
                "io": io,
                "queue_wait": percentiles(
                    t.get("queue_wait", ()), bounds, t.get("queue_wait_sum", 0)
                ),
                "run": percentiles(t.get("run", ()), bounds, t.get("run_sum", 0)),
            }
        )
    return rows


def progress_json(p: JobProgress | None) -> dict[str, Any] | None:
    return None if p is None else {"seq": p.seq, "value": p.value, "message": p.message}


def job_row(j: JobInfo) -> dict[str, Any]:
    """One job as the page lists it."""
    return {
        "id": j.id,
        "io": str(j.io_type),
        "status": j.status.name,
        "attempt": j.attempt,
        "worker": j.worker,
        "queued_for": j.queued_for,
        "running_for": j.running_for,
        "progress": progress_json(j.progress),
        "reason": j.reason,
        "priority": j.priority,
        "group": j.group,
        "resources": j.resources,
    }


def worker_row(w: WorkerInfo, jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One worker, with the jobs it holds (as rows when ``jobs`` knows them, else just ids)."""
    held = [jobs.get(i) or {"id": i, "status": "", "progress": None} for i in w.jobs]
    return {
        "id": w.id,
        "name": w.name,
        "io": str(w.io_type),
        "worker_name": w.worker_name,
        "host": w.host,
        "pid": w.pid,
        "state": w.state,
        "slots": w.slots,
        "jobs_held": w.jobs_held,
        "jobs_finished": w.jobs_finished,
        "last_heard": w.last_heard,
        "resources": w.resources,
        "jobs": held,
    }


def queued(stats: BrokerStats) -> dict[str, int]:
    """Queue depth (QUEUED jobs) per io type; an io type the broker serves with none queued
    counts 0, so its line drops to the floor rather than vanishing."""
    depth = {io: counts.get("QUEUED", 0) for io, counts in stats.jobs_by_io_type.items()}
    for wf in stats.worker_files:
        depth.setdefault(str(wf.get("io_type", "")), 0)
    depth.pop("", None)
    return depth


def snapshot(
    t: float,
    endpoint: str,
    stats: BrokerStats,
    workers: Sequence[WorkerInfo],
    running: Sequence[JobInfo],
    recent: Sequence[JobInfo],
    failures: Sequence[JobInfo],
) -> dict[str, Any]:
    """The document one ``snapshot`` event carries. ``t``: seconds on the feed's own clock
    (the page only uses differences); ``running``: jobs IN_PROGRESS; ``recent``: the newest
    jobs; ``failures``: the newest FAILED ones."""
    rows = {j.id: job_row(j) for j in (*recent, *running)}
    depth = queued(stats)
    for w in workers:
        depth.setdefault(str(w.io_type), 0)
    return {
        "t": t,
        "broker": {
            "endpoint": endpoint,
            "version": stats.version,
            "uptime": stats.uptime,
            "host": stats.host,
            "journal": stats.journal,
            "security": stats.security.get("mode", "plain"),
        },
        "jobs": stats.jobs,
        "totals": stats.totals,
        "rates": stats.rates,
        "worker_counts": stats.workers,
        "queued": depth,
        "latency": latency(stats),
        "workers": [worker_row(w, rows) for w in workers],
        "recent": [job_row(j) for j in recent],
        "failures": [job_row(j) for j in failures],
    }


def failed_snapshot(t: float, endpoint: str, error: str) -> dict[str, Any]:
    """What the page gets when the broker did not answer: the reason, and no numbers (the page
    keeps showing the last ones it had, marked stale)."""
    return {"t": t, "broker": {"endpoint": endpoint}, "error": error}
