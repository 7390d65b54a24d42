"""``remus info``, ``remus workers``, ``remus jobs``: what the broker is doing, as tables for
people or, with ``--json``, one JSON document for scripts (the field names of
:mod:`remus.introspect`; io types as ``"In->Out"``, statuses by name, times in seconds)."""

from __future__ import annotations

import argparse
from typing import Any

from remus.cli import common as c
from remus.introspect import BrokerStats, JobInfo, WorkerInfo
from remus.types import Status

#: the job statuses in the order the tables show them
_STATUSES = [s.name for s in Status if s is not Status.INVALID]
_STATUS_HEADS = {"IN_PROGRESS": "RUNNING"}


def add_parsers(sub: Any, reach: argparse.ArgumentParser) -> None:
    info = sub.add_parser(
        "info",
        parents=[reach],
        help="the broker's version, uptime, endpoints and counters",
        description="What the broker holds: jobs by status and io type, workers by state, "
        "worker files, rates over the last minute, queued bytes against the limits.",
    )
    info.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    info.set_defaults(run=run_info)

    workers = sub.add_parser(
        "workers",
        parents=[reach],
        help="the connected workers and what each is doing",
        description="One row per connected worker: its name, io type, state, jobs held and "
        "running, credit, when it was last heard from, jobs finished, its worker file.",
    )
    workers.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    workers.set_defaults(run=run_workers)

    jobs = sub.add_parser(
        "jobs",
        parents=[reach],
        help="the broker's jobs, newest first, and why each waits or ended",
        description="One row per job the broker holds, newest first: status, attempt, worker, "
        "time queued and running, latest progress, and the reason it waits or ended.",
    )
    jobs.add_argument(
        "--status",
        type=c.status,
        metavar="S",
        help="only jobs with this status: queued, in_progress (or running), finished, failed, "
        "expired, terminated",
    )
    jobs.add_argument(
        "--io", type=c.io_type, metavar="IN:OUT", help="only jobs of this io type, e.g. Text:Upper"
    )
    jobs.add_argument(
        "--limit", type=c.positive_int, default=100, metavar="N", help="at most N jobs [100]"
    )
    jobs.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    jobs.set_defaults(run=run_jobs)


# ------------------------------------------------------------------------------ info


def run_info(args: argparse.Namespace) -> int:
    with c.client(args) as cl:
        stats = cl.stats(timeout=args.timeout)
    if args.json:
        c.print_json(stats_json(stats, args.client))
    else:
        show_stats(stats, args.client)
    return c.OK


def stats_json(s: BrokerStats, endpoint: str) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "version": s.version,
        "uptime": s.uptime,
        "endpoints": s.endpoints,
        "host": s.host,
        "journal": s.journal,
        "jobs": s.jobs,
        "jobs_by_io_type": s.jobs_by_io_type,
        "totals": s.totals,
        "workers": s.workers,
        "worker_files": [{**wf, "io_type": c.io_text(wf.get("io_type"))} for wf in s.worker_files],
        "rates": s.rates,
        "queued_bytes": s.queued_bytes,
        "max_queued_bytes": s.max_queued_bytes,
        "max_queued_jobs": s.max_queued_jobs,
        "security": s.security,
    }


def _counts(d: dict[str, Any], keys: list[str] | None = None) -> str:
    keys = keys if keys is not None else list(d)
    return ", ".join(f"{d.get(k, 0):,} {k.lower()}" for k in keys) or "-"


def show_stats(s: BrokerStats, endpoint: str) -> None:
    from rich.table import Table

    out = c.console()
    journal = "on" if s.journal else "off (memory only)"
    out.print(
        f"remus broker {s.version} at {endpoint}, host {s.host}",
        markup=False,
    )
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("up", c.cell(f"{c.duration(s.uptime)} (since {c.local_time_ago(s.uptime)})"))
    grid.add_row("journal", journal)
    if s.security:
        grid.add_row("security", c.cell(security_text(s.security)))
    for role in ("client", "worker", "status"):
        if role in s.endpoints:
            grid.add_row(f"{role} endpoint", c.cell(s.endpoints[role]))
    queued = s.jobs.get("QUEUED", 0)
    grid.add_row(
        "queue",
        c.cell(
            f"{queued:,} jobs of {s.max_queued_jobs:,} allowed, "
            f"{c.size(s.queued_bytes)} of {c.size(s.max_queued_bytes)}"
        ),
    )
    grid.add_row("jobs now", c.cell(_counts(s.jobs, [k for k in _STATUSES if k in s.jobs])))
    grid.add_row("workers", c.cell(_counts(s.workers)))
    rates = ", ".join(f"{v:.3g}/s {k}" for k, v in s.rates.items()) or "-"
    grid.add_row("last minute", c.cell(rates))
    grid.add_row("since start", c.cell(_counts(s.totals)))
    out.print(grid)

    if s.jobs_by_io_type:
        table = Table(title="jobs by io type", title_justify="left")
        table.add_column("IO TYPE", no_wrap=True)
        for name in _STATUSES:
            table.add_column(_STATUS_HEADS.get(name, name), justify="right")
        for io, counts in sorted(s.jobs_by_io_type.items()):
            table.add_row(c.cell(io), *(f"{counts.get(n, 0):,}" for n in _STATUSES))
        out.print(table)
    if s.worker_files:
        table = Table(title="worker files", title_justify="left")
        for head in ("FILE", "IO TYPE", "NAME", "SPAWNED", "ALIVE", "QUARANTINED"):
            table.add_column(head, no_wrap=head in ("FILE", "IO TYPE"))
        for wf in s.worker_files:
            table.add_row(
                c.cell(wf.get("path", "")),
                c.cell(c.io_text(wf.get("io_type"))),
                c.cell(wf.get("worker_name", "")),
                c.cell(wf.get("spawned", 0)),
                c.cell(wf.get("alive", 0)),
                c.cell(c.first_line(str(wf.get("quarantined") or "")) or "no"),
            )
        out.print(table)


def security_text(security: dict[str, Any]) -> str:
    """The broker's mode, and in secure mode the keys it allows and the peers it refused."""
    if security.get("mode") != "curve":
        return "plain mode (no encryption, no keys: anyone who reaches the ports may use them)"
    allowed = ", ".join(
        c.plural(int(security.get(f"{kind}_keys", 0)), f"{kind} key")
        for kind in ("client", "admin", "worker")
    )
    refused = ", ".join(
        c.plural(int(security.get(f"refused_{kind}s", 0)), kind) for kind in ("client", "worker")
    )
    return f"secure mode (CURVE): {allowed} allowed; refused since the start: {refused}"


# ------------------------------------------------------------------------------ workers


def run_workers(args: argparse.Namespace) -> int:
    with c.client(args) as cl:
        workers = cl.workers(timeout=args.timeout)
    if args.json:
        c.print_json([worker_json(w) for w in workers])
        return c.OK
    out = c.console()
    if not workers:
        out.print(
            f"no worker is connected to the broker at {args.client} "
            "(`remus info` lists its worker files)",
            markup=False,
        )
        return c.OK
    from rich.table import Table

    table = Table(
        title=f"{c.plural(len(workers), 'worker')} at {args.client}", title_justify="left"
    )
    heads = ("WORKER", "IO TYPE", "STATE", "SLOTS", "HELD", "RUNNING", "CREDIT", "HEARD", "DONE")
    for head in (*heads, "RSS", "CPU"):
        table.add_column(head, no_wrap=head in ("WORKER", "IO TYPE"))
    table.add_column("JOBS")
    table.add_column("FILE")
    for w in workers:
        jobs = ", ".join(w.jobs[:3]) + (", …" if len(w.jobs) > 3 else "")
        rss, cpu = w.resources.get("rss"), w.resources.get("cpu")
        table.add_row(
            c.cell(w.name),
            c.cell(w.io_type),
            c.cell(w.state),
            str(w.slots),
            str(w.jobs_held),
            str(w.jobs_running),
            str(w.credit),
            f"{c.duration(w.last_heard)} ago",
            f"{w.jobs_finished:,}",
            c.size(rss) if rss is not None else "-",
            f"{cpu:.1f} s" if cpu is not None else "-",
            c.cell(jobs or "-"),
            c.cell(w.worker_file or "-"),
        )
    out.print(table)
    return c.OK


def worker_json(w: WorkerInfo) -> dict[str, Any]:
    return {
        "id": w.id,
        "name": w.name,
        "io_type": str(w.io_type),
        "worker_name": w.worker_name,
        "tag": w.tag,
        "host": w.host,
        "pid": w.pid,
        "state": w.state,
        "jobs_held": w.jobs_held,
        "jobs_running": w.jobs_running,
        "credit": w.credit,
        "last_heard": w.last_heard,
        "jobs_finished": w.jobs_finished,
        "worker_file": w.worker_file,
        "jobs": list(w.jobs),
        "resources": w.resources,
        "slots": w.slots,
    }


# ------------------------------------------------------------------------------ jobs


def run_jobs(args: argparse.Namespace) -> int:
    with c.client(args) as cl:
        jobs = cl.jobs(status=args.status, io_type=args.io, limit=args.limit, timeout=args.timeout)
    if args.json:
        c.print_json([job_json(j) for j in jobs])
        return c.OK
    out = c.console()
    if not jobs:
        which = " ".join(
            x for x in (args.status.name if args.status else "", str(args.io or "")) if x
        )
        out.print(
            f"the broker at {args.client} holds no {which + ' ' if which else ''}jobs",
            markup=False,
        )
        return c.OK
    from rich.table import Table

    more = " (newest first; --limit for more)" if len(jobs) >= args.limit else " (newest first)"
    table = Table(
        title=f"{c.plural(len(jobs), 'job')} at {args.client}{more}", title_justify="left"
    )
    for head in ("JOB", "IO TYPE", "STATUS", "TRY", "WORKER", "QUEUED", "RAN", "PROGRESS"):
        table.add_column(head, no_wrap=head in ("JOB", "IO TYPE", "STATUS", "WORKER"))
    table.add_column("REASON")
    for j in jobs:
        table.add_row(
            c.cell(j.id),
            c.cell(j.io_type),
            j.status.name,
            str(j.attempt),
            c.cell(j.worker or "-"),
            c.duration(j.queued_for),
            c.duration(j.running_for),
            c.cell(c.progress_text(j.progress)),
            c.cell(c.first_line(j.reason) or "-"),
        )
    out.print(table)
    return c.OK


def job_json(j: JobInfo) -> dict[str, Any]:
    return {
        "id": j.id,
        "io_type": str(j.io_type),
        "status": j.status.name,
        "attempt": j.attempt,
        "worker": j.worker,
        "queued_for": j.queued_for,
        "running_for": j.running_for,
        "progress": c.progress_json(j.progress),
        "reason": j.reason,
        "resources": j.resources,
        "priority": j.priority,
        "protected": j.protected,
        "parent": j.parent,
    }
