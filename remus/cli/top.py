"""``remus top``: a live view of the broker, redrawn every ``--interval`` seconds until Ctrl-C.

One frame is: a header (version, uptime, endpoints, journal, queue against its limits), the
rates over the last minute, the jobs per io type, the workers with the jobs they run (and each
job's latest progress) and their memory and CPU, and the latest jobs that failed, expired or
were terminated. :func:`frame` draws it from the broker's records alone, so it can be tested
without a broker; :func:`run` polls the broker and hands the frames to ``rich.live.Live``.

When the broker stops answering, the view keeps its last answer under a red line that says
for how long it has been silent, and goes on asking. On a pipe (not a terminal) it prints one
frame after the other instead, like ``top -b``; ``--once`` prints one frame and exits.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from remus.cli import common as c
from remus.errors import RemusError, TimeoutError
from remus.introspect import BrokerStats, JobInfo, WorkerInfo
from remus.types import Status

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

    from remus.client import Client

#: the statuses the io type table counts; the rare ones only when some io type has such jobs
_COLUMNS, _RARE_COLUMNS = ("QUEUED", "IN_PROGRESS", "FINISHED", "FAILED"), ("EXPIRED", "TERMINATED")
_HEADS = {"IN_PROGRESS": "RUNNING"}
#: how jobs end badly, in the order the failures table lists them
BAD_ENDINGS = (Status.FAILED, Status.EXPIRED, Status.TERMINATED)
#: jobs of each bad ending asked for, and shown in all
LATEST_BAD, MAX_BAD_ROWS = 5, 10
#: running jobs asked for (their progress shows in the workers table)
MAX_RUNNING = 200
#: workers shown, and jobs shown per worker
MAX_WORKER_ROWS, JOBS_PER_WORKER = 40, 3
_STATE_STYLES = {"busy": "green", "idle": "dim", "leaving": "yellow"}


def add_parser(sub: Any, reach: argparse.ArgumentParser) -> None:
    top = sub.add_parser(
        "top",
        parents=[reach],
        help="a live view of the broker: queues, workers, rates, failures (Ctrl-C to stop)",
        description="Redraw, every --interval seconds until Ctrl-C, the broker's jobs per io "
        "type, its workers and what each runs (with progress, memory and CPU), the rates over "
        "the last minute and the latest failures. Exits 3 if no broker answers at first; if it "
        "stops answering later, the view says so and keeps asking.",
    )
    top.add_argument(
        "--interval",
        type=c.positive_float,
        default=1.0,
        metavar="S",
        help="seconds between two frames [1]",
    )
    top.add_argument(
        "--once", action="store_true", help="draw one frame and exit (for scripts and logs)"
    )
    top.set_defaults(run=run)


# ------------------------------------------------------------------------------ polling


@dataclass(frozen=True)
class Snapshot:
    """What the broker answered to one round of questions."""

    stats: BrokerStats
    workers: list[WorkerInfo]
    #: its running jobs and the latest that ended badly
    jobs: list[JobInfo]


def fetch(client: Client, timeout: float) -> Snapshot:
    """Ask the broker for one frame's records, all within ``timeout`` seconds. Only statuses
    the counts say exist are asked for (each such question is cheap for the broker)."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.001, deadline - time.monotonic())

    stats = client.stats(timeout=left())
    workers = client.workers(timeout=left())
    jobs: list[JobInfo] = []
    if stats.jobs.get("IN_PROGRESS", 0):
        jobs += client.jobs(status=Status.IN_PROGRESS, limit=MAX_RUNNING, timeout=left())
    for status in BAD_ENDINGS:
        if stats.jobs.get(status.name, 0):
            jobs += client.jobs(status=status, limit=LATEST_BAD, timeout=left())
    return Snapshot(stats, workers, jobs)


def run(args: argparse.Namespace) -> int:
    with c.client(args) as client:
        snap = fetch(client, args.timeout)  # no answer at all: exit 3, as every command
        out = c.console()
        if args.once:
            out.print(frame(snap.stats, snap.workers, snap.jobs, endpoint=args.client))
            return c.OK
        try:
            if out.is_terminal:
                _live(client, snap, args, out)
            else:
                _batch(client, snap, args, out)
        except KeyboardInterrupt:
            pass
    return c.OK


class _Poller:
    """The latest snapshot, and since when the broker has been silent if it stopped answering."""

    def __init__(self, client: Client, snap: Snapshot, args: argparse.Namespace) -> None:
        self.client, self.snap, self.args = client, snap, args
        self.heard = time.monotonic()
        #: the last round went unanswered (or was refused: then ``problem`` says why)
        self.failed = False
        self.problem = ""

    def poll(self) -> RenderableType:
        try:
            self.snap = fetch(self.client, self.args.timeout)
            self.heard, self.failed, self.problem = time.monotonic(), False, ""
        except RemusError as e:  # no answer, the broker stopped, ...: keep its last answer
            self.failed = True
            self.problem = "" if isinstance(e, TimeoutError) else c.first_line(str(e))
        return self.frame()

    def frame(self) -> RenderableType:
        s = self.snap
        silent = time.monotonic() - self.heard if self.failed else None
        where = self.args.client
        return frame(
            s.stats, s.workers, s.jobs, endpoint=where, silent=silent, problem=self.problem
        )

    def wait(self, started: float) -> None:
        """Sleep until ``--interval`` after ``started`` (Ctrl-C wakes it)."""
        time.sleep(max(0.0, started + self.args.interval - time.monotonic()))


def _live(client: Client, snap: Snapshot, args: argparse.Namespace, out: Console) -> None:
    from rich.live import Live

    poller = _Poller(client, snap, args)
    started = time.monotonic()
    with Live(
        poller.frame(),
        console=out,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        while True:
            poller.wait(started)
            started = time.monotonic()
            live.update(poller.poll(), refresh=True)


def _batch(client: Client, snap: Snapshot, args: argparse.Namespace, out: Console) -> None:
    poller = _Poller(client, snap, args)
    started = time.monotonic()
    out.print(poller.frame())
    while True:
        poller.wait(started)
        started = time.monotonic()
        drawn = poller.poll()
        out.print()
        out.print(drawn)


# ------------------------------------------------------------------------------ drawing


def frame(
    stats: BrokerStats,
    workers: list[WorkerInfo],
    jobs: list[JobInfo],
    *,
    endpoint: str = "",
    silent: float | None = None,
    problem: str = "",
) -> RenderableType:
    """One frame of ``remus top`` from the broker's records: ``jobs`` holds its running jobs
    (for their progress) and those that ended badly (the failures table); ``silent``: seconds
    since the broker at ``endpoint`` last answered, when that is longer than usual."""
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = []
    if silent is not None:
        what = f": {problem}" if problem else ""
        parts.append(
            Text(
                f"no answer from {endpoint or 'the broker'} for {c.duration(silent)}{what}; "
                "showing its last answer, still asking",
                style="bold red",
            )
        )
    parts.extend(_header(stats, endpoint))
    parts.append(_io_table(stats, workers))
    parts.append(_workers_table(workers, {j.id: j for j in jobs}))
    bad = [j for status in BAD_ENDINGS for j in jobs if j.status is status][:MAX_BAD_ROWS]
    if bad:
        parts.append(_failures_table(bad))
    else:
        parts.append(Text("no failed, expired or terminated job", style="dim"))
    return Group(*parts)


def _header(s: BrokerStats, endpoint: str) -> list[Text]:
    from rich.text import Text

    at = f" at {endpoint}" if endpoint else ""
    journal = "journal on" if s.journal else "journal off (memory only)"
    first = Text(f"remus broker {s.version}{at}", style="bold")
    first.append(f"  up {c.duration(s.uptime)}  {journal}  host {s.host}", style="")
    ends = "  ".join(f"{role} {ep}" for role, ep in s.endpoints.items()) or "-"
    queued = s.jobs.get("QUEUED", 0)
    workers = ", ".join(f"{n:,} {state}" for state, n in s.workers.items()) or "none"
    return [
        first,
        Text(f"endpoints: {ends}"),
        Text(
            f"queue: {queued:,} of {s.max_queued_jobs:,} jobs, {c.size(s.queued_bytes)} of "
            f"{c.size(s.max_queued_bytes)}   workers: {workers}"
        ),
        Text(
            "last minute: "
            + (", ".join(f"{v:.2f}/s {k}" for k, v in s.rates.items()) or "-")
            + "   since start: "
            + (", ".join(f"{v:,} {k}" for k, v in s.totals.items()) or "-")
        ),
    ]


def _io_table(s: BrokerStats, workers: list[WorkerInfo]) -> Table:
    from rich.table import Table

    per_io: dict[str, int] = {}
    for w in workers:
        per_io[str(w.io_type)] = per_io.get(str(w.io_type), 0) + 1
    rows = sorted(set(s.jobs_by_io_type) | set(per_io))
    counted = s.jobs_by_io_type.values()
    columns = [*_COLUMNS, *(k for k in _RARE_COLUMNS if any(n.get(k) for n in counted))]
    table = Table(title="jobs by io type", title_justify="left", expand=False)
    table.add_column("IO TYPE", no_wrap=True)
    for key in columns:
        table.add_column(_HEADS.get(key, key), justify="right")
    table.add_column("WORKERS", justify="right")
    for io in rows:
        counts = s.jobs_by_io_type.get(io, {})
        table.add_row(
            c.cell(io), *(f"{counts.get(k, 0):,}" for k in columns), f"{per_io.get(io, 0):,}"
        )
    if not rows:
        table.add_row(c.cell("(no jobs, no workers)"), *("" for _ in columns), "")
    return table


def _workers_table(workers: list[WorkerInfo], jobs: dict[str, JobInfo]) -> Table:
    from rich.table import Table
    from rich.text import Text

    shown = sorted(workers, key=lambda w: (str(w.io_type), w.name))[:MAX_WORKER_ROWS]
    title = f"{c.plural(len(workers), 'worker')}"
    if len(workers) > len(shown):
        title += f" (the first {len(shown)}; `remus workers` lists all)"
    table = Table(title=title, title_justify="left")
    for head in ("WORKER", "IO TYPE", "STATE"):
        table.add_column(head, no_wrap=True)
    table.add_column("JOBS (PROGRESS)")
    for head in ("HEARD", "DONE", "RSS", "PEAK RSS", "CPU"):
        table.add_column(head, justify="right", no_wrap=True)
    for w in shown:
        res = w.resources
        table.add_row(
            c.cell(w.name),
            c.cell(w.io_type),
            Text(w.state, style=_STATE_STYLES.get(w.state, "")),
            _jobs_cell(w, jobs),
            f"{c.duration(w.last_heard)} ago",
            f"{w.jobs_finished:,}",
            c.size(res["rss"]) if "rss" in res else "-",
            c.size(res["peak_rss"]) if "peak_rss" in res else "-",
            c.duration(res["cpu"]) if "cpu" in res else "-",
        )
    if not workers:
        table.add_row(c.cell("(no worker is connected)"), *("" for _ in range(8)))
    return table


def _jobs_cell(w: WorkerInfo, jobs: dict[str, JobInfo]) -> RenderableType:
    """The jobs ``w`` holds, one a line: id, a bar and the percentage and message of its
    latest progress when it sent one."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    if not w.jobs:
        return c.cell("-")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column()
    for job_id in w.jobs[:JOBS_PER_WORKER]:
        info = jobs.get(job_id)
        p = info.progress if info is not None else None
        if p is not None and p.value is not None:
            value = max(0, min(100, p.value))
            bar: RenderableType = ProgressBar(total=100, completed=value, width=10)
            grid.add_row(c.cell(job_id), bar, c.cell(f"{value}% {p.message}".strip()))
        elif p is not None and p.message:
            grid.add_row(c.cell(job_id), c.cell(p.message), "")
        else:
            grid.add_row(c.cell(job_id), "", "")
    more = len(w.jobs) - JOBS_PER_WORKER
    if more > 0:
        grid.add_row(c.cell(f"+{more} more"), "", "")
    return grid


def _failures_table(bad: list[JobInfo]) -> Table:
    from rich.table import Table

    table = Table(title="latest failures", title_justify="left")
    for head in ("JOB", "IO TYPE", "STATUS", "TRY"):
        table.add_column(head, no_wrap=True)
    table.add_column("REASON")
    for j in bad:
        table.add_row(
            c.cell(j.id),
            c.cell(j.io_type),
            c.cell(j.status.name),
            str(j.attempt),
            c.cell(c.first_line(j.reason, 80) or "-"),
        )
    return table
