"""What a broker says about itself: its workers, its jobs, its counters.

The answers to the ``workers``, ``jobs`` and ``stats`` requests (docs/protocol.md). On the wire
each record is a msgpack map with the field names below (so a client in another language, or
a newer broker with more fields, reads them as it likes); here they are frozen dataclasses,
built with ``from_wire``. Times are seconds: durations, never clocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from remus.types import IOType, JobProgress, Status

#: a worker's state in ``WorkerInfo.state``
WORKER_STATES = ("idle", "busy", "leaving")


def _progress(raw: Any) -> JobProgress | None:
    if not raw:
        return None
    seq, value, message = raw
    return JobProgress(value, message, seq)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One connected worker, as ``Client.workers()`` returns it."""

    #: the worker's routing id, in hex
    id: str
    #: ``worker_name@host:pid``, as job statuses name it
    name: str
    io_type: IOType
    worker_name: str
    tag: Any
    host: str
    pid: int
    #: idle (holds no job), busy (holds at least one), leaving (asked to exit, or draining)
    state: str
    #: jobs assigned to it, and of those the ones it said it started
    jobs_held: int
    jobs_running: int
    #: how many more jobs it asked for
    credit: int
    #: seconds since the broker last heard from it
    last_heard: float
    jobs_finished: int
    #: the worker file it was spawned from ("" if it was not spawned by this broker)
    worker_file: str = ""
    #: the ids of the jobs it holds (at most 100)
    jobs: tuple[str, ...] = ()
    #: its latest resource use (rss, peak_rss in bytes, cpu seconds), when it reports any
    resources: dict[str, float] = field(default_factory=dict)
    #: how many jobs it runs at once
    slots: int = 1

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> WorkerInfo:
        return cls(
            id=raw["id"],
            name=raw["name"],
            io_type=IOType.from_wire(raw["io_type"]),
            worker_name=raw.get("worker_name", ""),
            tag=raw.get("tag"),
            host=raw.get("host", ""),
            pid=raw.get("pid", 0),
            state=raw["state"],
            jobs_held=raw.get("jobs_held", 0),
            jobs_running=raw.get("jobs_running", 0),
            credit=raw.get("credit", 0),
            last_heard=raw.get("last_heard", 0.0),
            jobs_finished=raw.get("jobs_finished", 0),
            worker_file=raw.get("worker_file") or "",
            jobs=tuple(raw.get("jobs", ())),
            resources=dict(raw.get("resources") or {}),
            slots=raw.get("slots", 1),
        )


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One job, as ``Client.jobs()`` returns it (newest first)."""

    id: str
    io_type: IOType
    status: Status
    attempt: int
    #: the worker that holds it ("" if none)
    worker: str
    #: seconds it waited in the queue (so far, if it still waits)
    queued_for: float
    #: seconds it has run (or ran), None if it never started
    running_for: float | None
    progress: JobProgress | None
    #: why it waits (QUEUED) or why it ended
    reason: str
    #: what it used: {"peak_rss": bytes, "cpu": seconds} once its worker reported its end;
    #: while it runs, its worker process's latest {"rss", "peak_rss", "cpu"}; else empty
    resources: dict[str, float] = field(default_factory=dict)
    #: its priority (higher first) and protection (False: spare capacity, preempted first)
    priority: int = 0
    protected: bool = True
    #: the master job of an assistant ("" if none)
    parent: str = ""
    #: the group it was submitted in (``BasicClient.submit_group``; "" if none)
    group: str = ""

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> JobInfo:
        return cls(
            id=raw["id"],
            io_type=IOType.from_wire(raw["io_type"]),
            status=Status(raw["status"]),
            attempt=raw.get("attempt", 1),
            worker=raw.get("worker", ""),
            queued_for=raw.get("queued_for", 0.0),
            running_for=raw.get("running_for"),
            progress=_progress(raw.get("progress")),
            reason=raw.get("reason", ""),
            resources=dict(raw.get("resources") or {}),
            priority=raw.get("priority", 0),
            protected=raw.get("protected", True),
            parent=raw.get("parent") or "",
            group=raw.get("group") or "",
        )


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """The broker's counters, as ``Client.stats()`` returns them."""

    version: str
    #: seconds since the broker started
    uptime: float
    #: {"client": ..., "worker": ..., "status": ...}: the bound endpoints
    endpoints: dict[str, str]
    host: str
    journal: bool
    #: jobs the broker holds now, by status name (QUEUED, IN_PROGRESS, FINISHED, ...)
    jobs: dict[str, int]
    #: the same per io type ("Edges->Mesh2D")
    jobs_by_io_type: dict[str, dict[str, int]]
    #: since the broker started: submitted, finished, failed, expired, terminated, requeued
    totals: dict[str, int]
    #: connected workers by state (idle, busy, leaving)
    workers: dict[str, int]
    #: per worker file: path, io_type, worker_name, spawned, alive, quarantined (reason or "")
    worker_files: list[dict[str, Any]]
    #: over the last minute, per second: submitted, finished, failed
    rates: dict[str, float]
    queued_bytes: int
    max_queued_bytes: int
    max_queued_jobs: int
    #: since it started, per io type: submitted, and ended by status name (FINISHED, ...)
    totals_by_io_type: dict[str, dict[str, int]] = field(default_factory=dict)
    #: per io type: queue wait and run time histograms (see docs/protocol.md); "bounds" too
    timings: dict[str, Any] = field(default_factory=dict)
    #: how late the broker ran its timed rules: latest "lag" and "lag_max_1m" (seconds)
    loop: dict[str, float] = field(default_factory=dict)
    #: messages since it started: client_in, client_out, worker_in, worker_out, status_out
    messages: dict[str, int] = field(default_factory=dict)
    #: the broker process's own (rss, peak_rss, cpu), as in WorkerInfo.resources
    resources: dict[str, float] = field(default_factory=dict)
    #: "mode" ("plain" or "curve"); in secure mode the keys allowed (client_keys, admin_keys,
    #: worker_keys) and the connections refused since the start (refused_clients/_workers)
    security: dict[str, Any] = field(default_factory=dict)
    #: per group (the 100 most recently submitted), its jobs by status name
    groups: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> BrokerStats:
        return cls(
            version=raw.get("version", ""),
            uptime=raw.get("uptime", 0.0),
            endpoints=dict(raw.get("endpoints") or {}),
            host=raw.get("host", ""),
            journal=bool(raw.get("journal")),
            jobs=dict(raw.get("jobs") or {}),
            jobs_by_io_type={k: dict(v) for k, v in (raw.get("jobs_by_io_type") or {}).items()},
            totals=dict(raw.get("totals") or {}),
            workers=dict(raw.get("workers") or {}),
            worker_files=list(raw.get("worker_files") or ()),
            rates=dict(raw.get("rates") or {}),
            queued_bytes=raw.get("queued_bytes", 0),
            max_queued_bytes=raw.get("max_queued_bytes", 0),
            max_queued_jobs=raw.get("max_queued_jobs", 0),
            totals_by_io_type={k: dict(v) for k, v in (raw.get("totals_by_io_type") or {}).items()},
            timings=dict(raw.get("timings") or {}),
            loop=dict(raw.get("loop") or {}),
            messages=dict(raw.get("messages") or {}),
            resources=dict(zip(("rss", "peak_rss", "cpu"), raw.get("usage") or (), strict=False)),
            security=dict(raw.get("security") or {}),
            groups={k: dict(v) for k, v in (raw.get("groups") or {}).items()},
        )
