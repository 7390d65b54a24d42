"""What the broker says about itself: the ``workers``, ``list_jobs`` and ``stats`` requests.

Part of the pure broker rules (no sockets, ``now`` passed in), driven by
:class:`~remus.server.core.BrokerCore` like :mod:`remus.server.requests`: each answer is built
from the core's own state, and is cheap enough to poll every second with 100,000 jobs queued.
What it needs that the rules do not keep anyway is kept here, incrementally:

- :class:`Census`: jobs by io type and status (each job points at its io type's counts, so a
  status change is two list updates), and the jobs that ended badly, in the order they ended;
- :class:`Rates`: the submitted / finished / failed counters sampled once a second by ``tick``,
  so a rate over the last minute is one subtraction.

The records on the wire are those of :mod:`remus.introspect` (docs/protocol.md).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import remus
from remus import protocol as p
from remus import usage
from remus.security import CLIENT_DOMAIN, WORKER_DOMAIN
from remus.server.records import JobRecord, WorkerRecord
from remus.types import IOType, Status

if TYPE_CHECKING:
    from remus.server.core import BrokerCore

#: a ``list_jobs`` request returns at most this many jobs, whatever limit it asks for
MAX_LIST = 10_000
#: a worker record names at most this many of the jobs it holds
MAX_WORKER_JOBS = 100
#: the statuses a job has in its life (INVALID is only the answer for an unknown id)
STATUSES = tuple(s for s in Status if s is not Status.INVALID)
#: the endings kept in ``Census.bad`` (rare by nature; ``remus top`` shows the latest)
BAD_ENDINGS = frozenset({Status.FAILED, Status.EXPIRED, Status.TERMINATED})
#: on the submit, dispatch and finish paths the census counts with these module constants: an
#: enum class attribute (``Status.QUEUED``) costs ~15 times a global, and an IntEnum list
#: index twice a plain int's
QUEUED, RUNNING, FINISHED = Status.QUEUED, Status.IN_PROGRESS, Status.FINISHED
AT_QUEUED, AT_RUNNING, AT_FINISHED = int(QUEUED), int(RUNNING), int(FINISHED)
#: a status filter is "rare" when fewer than one job in this many has it: its jobs are then
#: gathered from where they are kept (the queues, the ended list) and sorted, instead of
#: walking every job newest first until they are all found
RARE = 8
#: how many groups ``stats`` describes (the most recently submitted)
MAX_GROUPS = 100
#: the counters a rate is kept for
RATED = ("submitted", "finished", "failed")
#: the span of the rates, in seconds
RATE_WINDOW = 60.0

# Each io type's counters are one flat list of numbers (``Census.by_io``), each job pointing at
# its io type's: a status change, an ending or a timing is then an index update, no lookup.
#: [0, STATUS_SLOTS): jobs held now, by status value
STATUS_SLOTS = max(Status) + 1
#: TOTAL + status value: jobs that ended with that status since the broker started
TOTAL = STATUS_SLOTS
#: jobs submitted since the broker started
SUBMITTED = 2 * STATUS_SLOTS
#: the upper bounds (seconds) of the queue wait and run time histograms' buckets
BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0)
#: WAIT + i: waits of at most BOUNDS[i] seconds (the last: any longer); then their sum
WAIT = SUBMITTED + 1
WAIT_SUM = WAIT + len(BOUNDS) + 1
#: the same for run times (from the hand-over to a worker to the end)
RUN = WAIT_SUM + 1
RUN_SUM = RUN + len(BOUNDS) + 1
COUNTER_SLOTS = RUN_SUM + 1


def usage_map(usage: tuple[int, int, float] | None) -> dict[str, float]:
    """A worker's reported (rss, peak_rss, cpu) as a record's ``resources``."""
    if usage is None:
        return {}
    return {"rss": usage[0], "peak_rss": usage[1], "cpu": usage[2]}


class Census:
    """Jobs the broker holds, by io type and status, kept as they change (never counted), and
    each io type's totals and timings since the start (the layout is above)."""

    def __init__(self) -> None:
        #: io type -> its counters: job count per status (indexed by the Status value), ...
        self.by_io: dict[IOType, list[Any]] = {}
        #: jobs that ended FAILED, EXPIRED or TERMINATED and are still held, in ending order
        self.bad: dict[str, JobRecord] = {}

    def counts_for(self, io: IOType) -> list[Any]:
        """The job counts of ``io``, by status value."""
        counts = self.by_io.get(io)
        if counts is None:
            counts = self.by_io[io] = [0] * COUNTER_SLOTS
            counts[WAIT_SUM] = counts[RUN_SUM] = 0.0
        return counts

    def add(self, job: JobRecord) -> None:
        """A job the broker now holds, with the status it has."""
        counts = job.counts = self.counts_for(job.reqs.io_type)
        counts[job.status] += 1

    def move(self, job: JobRecord, status: Status) -> None:
        """Every status change of a held job goes through here (or copies it inline, on the
        dispatch and finish paths)."""
        counts = job.counts
        if counts is not None:
            counts[job.status] -= 1
            counts[status] += 1
        job.status = status

    def remove(self, job: JobRecord) -> None:
        """A job the broker forgot."""
        if job.counts is not None:
            job.counts[job.status] -= 1
        if job.status is not FINISHED:
            self.bad.pop(job.id, None)

    def count(self, status: Status | None = None, io: IOType | None = None) -> int:
        rows: Iterable[list[int]]
        if io is not None:
            found = self.by_io.get(io)
            rows = () if found is None else (found,)
        else:
            rows = self.by_io.values()
        if status is None:
            return sum(sum(row[:STATUS_SLOTS]) for row in rows)
        return sum(row[status] for row in rows)


class Rates:
    """Submitted, finished and failed jobs per second over the last minute: the counters are
    sampled at most once a second (by ``tick``); a rate is the growth since the sample a
    minute old, over the time since then."""

    def __init__(self, counters: dict[str, int], now: float) -> None:
        self._counters = counters
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()
        self.sample(now)

    def sample(self, now: float) -> None:
        samples = self._samples
        if samples and int(now) == int(samples[-1][0]):
            return
        counters = self._counters
        samples.append((now, tuple(counters[k] for k in RATED)))
        self._trim(now)

    def _trim(self, now: float) -> None:
        # keep the newest sample at least a minute old as the base, drop the ones before it
        samples = self._samples
        while len(samples) > 1 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()

    def rates(self, now: float) -> dict[str, float]:
        self._trim(now)
        since, base = self._samples[0]
        span = max(now - since, 1.0)
        counters = self._counters
        return {k: (counters[k] - b) / span for k, b in zip(RATED, base, strict=True)}


class Introspection:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core

    # ================================================================ workers

    def workers(self, client: bytes, msg: p.WorkersRequest, now: float) -> None:
        core = self._core
        rows = [self.worker_row(w, now, core.sender) for w in core.workers.values()]
        core.reply(client, msg.rid, rows)

    def worker_state(self, worker: WorkerRecord) -> str:
        if self._core.draining:
            return "leaving"
        return "busy" if worker.jobs else "idle"

    def worker_row(
        self, worker: WorkerRecord, now: float, key: bytes | None = None
    ) -> dict[str, Any]:
        """A worker as the client with ``key`` may see it (in secure mode, only the ids of
        its own jobs)."""
        core = self._core
        held = sorted(
            (j for j in (core.jobs.get(i) for i in worker.jobs) if j is not None),
            key=lambda j: j.order,
        )
        reqs = worker.reqs
        return {
            "id": worker.id.hex(),
            "name": worker.name,
            "io_type": reqs.io_type.to_wire(),
            "worker_name": reqs.worker_name,
            "tag": reqs.tag,
            "host": worker.host,
            "pid": worker.pid,
            "state": self.worker_state(worker),
            "jobs_held": len(worker.jobs),
            "jobs_running": sum(1 for j in held if j.started),
            "credit": worker.credit,
            "last_heard": max(0.0, now - worker.last_seen),
            "jobs_finished": worker.finished,
            "worker_file": self.worker_file(worker),
            "jobs": [j.id for j in held if core.may_see(j, key)][:MAX_WORKER_JOBS],
            "resources": usage_map(worker.usage),
            "slots": worker.slots,
        }

    def worker_file(self, worker: WorkerRecord) -> str:
        """The worker file the factory spawned this worker from ("" if it did not)."""
        core = self._core
        if worker.host != core.host or worker.pid not in core.spawns.records:
            return ""
        of = getattr(core.catalog, "worker_file_of", None)
        return (of(worker.pid) or "") if of is not None else ""

    # ================================================================ jobs

    def jobs(self, client: bytes, msg: p.ListJobsRequest, now: float) -> None:
        core = self._core
        limit = min(msg.limit, MAX_LIST)
        reasons: dict[Any, str] = {}
        key = core.sender
        if key is not None and core.auth is not None and key not in core.auth.admins:
            chosen = self.owned(key, msg.status, msg.io_type, limit)
        else:
            chosen = self.select(msg.status, msg.io_type, limit)
        rows = [self.job_row(j, now, reasons) for j in chosen]
        core.reply(client, msg.rid, rows)

    def owned(
        self, key: bytes, status: Status | None, io: IOType | None, limit: int
    ) -> list[JobRecord]:
        """Secure mode, a client that is not an admin: its own jobs only, newest first."""
        found = []
        for job in reversed(self._core.jobs.values()):
            if (
                job.owner == key
                and (status is None or job.status is status)
                and (io is None or job.reqs.io_type == io)
            ):
                found.append(job)
                if len(found) >= limit:
                    break
        return found

    def select(self, status: Status | None, io: IOType | None, limit: int) -> list[JobRecord]:
        """At most ``limit`` jobs with ``status`` and ``io`` (None: any), newest first.

        The census says how many match, so a walk stops at the last one. Running jobs are
        taken from the workers that hold them and bad endings from their own index (both
        small, then sorted), and so are queued and finished jobs when they are rare (from the
        queues, and from the list of ended jobs); the rest walk the jobs newest first (dicts
        keep their order)."""
        core = self._core
        census = core.census
        want = min(limit, census.count(status, io))
        if want <= 0:
            return []
        counts = None if io is None else census.by_io.get(io)
        if status is Status.IN_PROGRESS:
            jobs = core.jobs
            held = (jobs.get(i) for w in core.workers.values() for i in w.jobs)
            return self._newest(held, status, counts, want)
        if status in BAD_ENDINGS:
            return self._newest(census.bad.values(), status, counts, want)
        rare = census.count(status) * RARE < len(core.jobs)
        if rare and status is Status.QUEUED:
            return self._newest(self._queued(), status, counts, want)
        if rare and status is Status.FINISHED:
            jobs = core.jobs
            ended = (jobs.get(i) for _, i in core.ended)
            return self._newest(ended, status, counts, want)
        found = []
        for job in reversed(core.jobs.values()):
            if (status is None or job.status is status) and (
                counts is None or job.counts is counts
            ):
                found.append(job)
                if len(found) >= want:
                    break
        return found

    def _queued(self) -> Iterator[JobRecord]:
        """Every QUEUED job, once: in a queue, handed to a worker in this very pass, or
        waiting for its worker after a restart."""
        core = self._core
        seen: set[str] = set()
        jobs = core.jobs
        sources: Iterable[Iterable[JobRecord | None]] = (
            core.matcher.queued_jobs(),
            (j for w in core.workers.values() for j in w.outgoing),
            (jobs.get(i) for i in core.recovery.awaiting),
        )
        for source in sources:
            for job in source:
                if job is not None and job.status is Status.QUEUED and job.id not in seen:
                    seen.add(job.id)
                    yield job

    @staticmethod
    def _newest(
        jobs: Iterable[JobRecord | None], status: Status, counts: list[int] | None, want: int
    ) -> list[JobRecord]:
        def matching() -> Iterator[JobRecord]:
            for job in jobs:
                if (
                    job is not None
                    and job.status is status
                    and (counts is None or job.counts is counts)
                ):
                    yield job

        return heapq.nlargest(want, matching(), key=lambda j: j.order)

    def job_row(self, job: JobRecord, now: float, reasons: dict[Any, str]) -> dict[str, Any]:
        core = self._core
        status = job.status
        end = job.finished_at if status.done else now
        dispatched = job.dispatched_at
        queued_for = max(0.0, (end if dispatched is None else dispatched) - job.submitted_at)
        running_for = None if dispatched is None else max(0.0, end - dispatched)
        if status is Status.QUEUED:
            if job.reason or job.worker is not None:
                reason = core.serving.queued_reason(job)
            else:  # the same words for every job of a queue key: asked once per request
                said = reasons.get(job.key)
                if said is None:
                    said = reasons[job.key] = core.serving.queued_reason(job)
                reason = said
        elif status is Status.WAITING:
            reason = core.deps.why_waiting(job)
        else:
            reason = job.reason
        holder = None if job.worker is None or status.done else core.workers.get(job.worker)
        last = job.last_progress()
        if job.used is not None:  # what its (last) run used, as its worker measured it
            resources: dict[str, float] = {"peak_rss": job.used[0], "cpu": job.used[1]}
        elif holder is not None and job.started:  # running: its worker's process now
            resources = usage_map(holder.usage)
        else:
            resources = {}
        return {
            "id": job.id,
            "io_type": job.reqs.io_type.to_wire(),
            "status": int(status),
            "attempt": job.attempt,
            "worker": holder.name if holder is not None else "",
            "queued_for": queued_for,
            "running_for": running_for,
            "progress": list(last) if last is not None else None,
            "reason": reason,
            "resources": resources,
            "priority": job.priority,
            "protected": job.protected,
            "parent": job.parent or "",
            "group": job.group or "",
        }

    # ================================================================ stats

    def security(self) -> dict[str, Any]:
        """Plain or secure mode, the keys allowed, and the peers refused since the start."""
        core = self._core
        lists = core.auth
        if lists is None:
            return {"mode": "plain"}
        refused = dict(core.refused or {})
        clients, admins, workers = lists.counts()
        return {
            "mode": "curve",
            "client_keys": clients,
            "admin_keys": admins,
            "worker_keys": workers,
            "refused_clients": refused.get(CLIENT_DOMAIN, 0),
            "refused_workers": refused.get(WORKER_DOMAIN, 0),
        }

    def groups(self) -> dict[str, dict[str, int]]:
        """The jobs of the latest MAX_GROUPS groups by status name."""
        core = self._core
        out: dict[str, dict[str, int]] = {}
        for name in list(core.groups)[-MAX_GROUPS:][::-1]:
            counts: dict[str, int] = {}
            for job_id in core.groups[name]:
                job = core.jobs.get(job_id)
                if job is not None:
                    counts[job.status.name] = counts.get(job.status.name, 0) + 1
            if counts:
                out[name] = counts
        return out

    def stats(self, client: bytes, msg: p.StatsRequest, now: float) -> None:
        self._core.reply(client, msg.rid, self.stats_map(now))

    def stats_map(self, now: float) -> dict[str, Any]:
        core = self._core
        census = core.census
        by_io = {
            str(io): {s.name: counts[s] for s in STATUSES}
            for io, counts in sorted(census.by_io.items(), key=lambda kv: str(kv[0]))
            if any(counts[:STATUS_SLOTS])
        }
        workers = dict.fromkeys(("idle", "busy", "leaving"), 0)
        for w in core.workers.values():
            workers[self.worker_state(w)] += 1
        describe = getattr(core.catalog, "describe", None)
        cfg = core.config
        return {
            "version": remus.__version__,
            "uptime": max(0.0, now - core.started_at),
            "endpoints": dict(core.endpoints),
            "host": core.host,
            "journal": core.journal is not None,
            "jobs": {s.name: census.count(s) for s in STATUSES},
            "jobs_by_io_type": by_io,
            "totals": dict(core.counters),
            "workers": workers,
            "worker_files": list(describe()) if describe is not None else [],
            "rates": core.rates.rates(now),
            "queued_bytes": core.matcher.queued_bytes,
            "max_queued_bytes": cfg.max_queued_bytes,
            "max_queued_jobs": cfg.max_queued_jobs,
            "totals_by_io_type": {
                str(io): {
                    "submitted": counts[SUBMITTED],
                    **{s.name: counts[TOTAL + s] for s in BAD_ENDINGS | {FINISHED}},
                }
                for io, counts in census.by_io.items()
            },
            "timings": {"bounds": list(BOUNDS), **self.timings()},
            "loop": core.loop.stats(now),
            "groups": self.groups(),
            "messages": dict(core.traffic),
            "security": self.security(),
            "usage": list(usage.current()),
        }

    def timings(self) -> dict[str, Any]:
        """Per io type: the queue wait and run time histograms (bucket counts, not
        cumulative; the last bucket is everything over the last bound) and their sums."""
        n = len(BOUNDS) + 1
        return {
            str(io): {
                "queue_wait": counts[WAIT : WAIT + n],
                "queue_wait_sum": counts[WAIT_SUM],
                "run": counts[RUN : RUN + n],
                "run_sum": counts[RUN_SUM],
            }
            for io, counts in self._core.census.by_io.items()
        }


class LoopLag:
    """How late the core thread ran its timed rules: the latest lateness and the worst over
    the last minute (in one-second slots, so the maximum is a max over 60 numbers)."""

    def __init__(self) -> None:
        self.last = 0.0
        self._slots: deque[tuple[int, float]] = deque()

    def observe(self, now: float, lag: float) -> None:
        self.last = lag
        second = int(now)
        slots = self._slots
        if slots and slots[-1][0] == second:
            if lag > slots[-1][1]:
                slots[-1] = (second, lag)
        else:
            slots.append((second, lag))
            while slots and slots[0][0] <= second - RATE_WINDOW:
                slots.popleft()

    def stats(self, now: float) -> dict[str, float]:
        recent = [lag for second, lag in self._slots if second > now - RATE_WINDOW]
        return {"lag": self.last, "lag_max_1m": max(recent, default=0.0)}
