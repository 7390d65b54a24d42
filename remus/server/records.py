"""What the broker remembers about each job and each worker (owned by the core thread only)."""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any

from remus.types import JobRequirements, Status, tag_key

#: A queue key: io type, worker name ("" = any) and tag key (None = any), as one string (a
#: str caches its hash: the matcher looks keys up several times per job)
QueueKey = str

#: the keys made so far, by (io type, worker name, tag key)
_KEYS: dict[tuple[Any, str, str | None], QueueKey] = {}


def _key(io: Any, worker_name: str, tk: str | None) -> QueueKey:
    parts = (io, worker_name, tk)
    key = _KEYS.get(parts)
    if key is None:
        if len(_KEYS) > 100_000:  # requirements with ever new tags: do not grow for ever
            _KEYS.clear()
        key = _KEYS[parts] = repr((io.input, io.output, worker_name, tk))
    return key


def job_key(reqs: JobRequirements) -> QueueKey:
    return _key(reqs.io_type, reqs.worker_name, tag_key(reqs.tag))


def worker_keys(reqs: JobRequirements) -> tuple[QueueKey, ...]:
    """Every queue key whose jobs this worker can take (the matching rule, precomputed)."""
    tk = tag_key(reqs.tag)
    io, name = reqs.io_type, reqs.worker_name
    keys = dict.fromkeys(
        (_key(io, "", None), _key(io, name, None), _key(io, "", tk), _key(io, name, tk))
    )
    return tuple(keys)


#: a job's rank in its queue: protected jobs above every unprotected one, then by priority
#: (``protocol.MAX_PRIORITY`` bounds it, so one int orders both)
PROTECTED_RANK = 1 << 32


def rank_of(priority: int, protected: bool) -> int:
    return priority + (PROTECTED_RANK if protected else 0)


#: a progress update as the broker keeps it: (seq, value 0-100 or None, message)
Update = tuple[int, int | None, str]


class JobRecord:
    __slots__ = (
        "after",
        "assistants",
        "attempt",
        "blobs",
        "checkpoint",
        "controls",
        "counts",
        "dependents",
        "dispatched_at",
        "error_retries",
        "evidence",
        "files",
        "finished_at",
        "group",
        "history",
        "id",
        "key",
        "keys",
        "leader",
        "limits",
        "linked",
        "losses",
        "order",
        "owner",
        "package",
        "parent",
        "progress",
        "rank",
        "reason",
        "reqs",
        "result",
        "result_files",
        "runs",
        "seq",
        "size",
        "started",
        "status",
        "submitted_at",
        "traceback",
        "used",
        "waiting",
        "worker",
    )

    def __init__(
        self,
        job_id: str,
        reqs: JobRequirements,
        key: QueueKey,
        keys: tuple[str, ...],
        blobs: list[Any],
        size: int,
        order: int,
        now: float,
    ) -> None:
        self.id = job_id
        self.reqs = reqs
        self.key = key
        self.keys = keys
        self.blobs: list[Any] | None = blobs
        self.size = size
        self.order = order
        self.submitted_at = now
        self.status = Status.QUEUED
        self.worker: bytes | None = None
        #: the holding worker said it took the job up (status is IN_PROGRESS from dispatch on)
        self.started = False
        #: progress history: (seq, value, message) oldest first, None until the first update;
        #: bounded by ServerConfig.max_progress_history (the oldest drop off)
        self.progress: deque[Update] | None = None
        self.seq = 0
        self.result: Any = None
        #: a file request's files (protocol.FileSet, stamped with the submitter's host) until
        #: the job starts, and a file result's files (stamped with the worker's host)
        self.files: Any = None
        self.result_files: Any = None
        self.reason = ""
        self.traceback = ""
        self.finished_at = 0.0
        self.attempt = 1
        #: how many times it was handed to a worker (each run has its own time limit)
        self.runs = 0
        #: (max_retries, run time limit or None, queue time limit or None)
        self.limits: tuple[int, float | None, float | None] = (0, None, None)
        #: one line per attempt that ended badly (worker lost, handler raised), None until then
        self.evidence: list[str] | None = None
        #: runs left after a handler raised (the submission's ``retries_on_error``)
        self.error_retries = 0
        #: times it ran again because its worker was lost (or the broker restarted under it)
        self.losses = 0
        #: when it was last handed to a worker (None: not since it was last queued)
        self.dispatched_at: float | None = None
        #: its io type's job counts by status (``Census``), kept as its status changes
        self.counts: list[Any] | None = None
        #: (peak RSS bytes, CPU seconds) its worker says its last run used, None if unknown
        self.used: tuple[int, float] | None = None
        #: its place in its queue (``rank_of``): protected and priority 0 unless submitted so
        self.rank = PROTECTED_RANK
        #: in secure mode, the public key (Z85) of the client that submitted it; only that key
        #: and admin keys may see or touch it (None: plain mode, anyone may)
        self.owner: bytes | None = None
        #: the master job of an assistant, and the assistants of a master (None: none)
        self.parent: str | None = None
        self.assistants: list[str] | None = None
        #: the latest checkpoint its handler saved (bytes-like), None if none
        self.checkpoint: Any = None
        #: control messages sent to it, in order (each run gets all of them), None if none
        self.controls: list[Any] | None = None
        #: one line per preemption or requeue, oldest first (None until the first)
        self.history: list[str] | None = None
        #: workflows (remus.server.dependencies): the jobs it was submitted after, those of
        #: them not finished yet (while WAITING), the jobs that wait for it, and per
        #: predecessor (id, first file, file count) of what was attached to it
        self.after: tuple[str, ...] | None = None
        self.waiting: set[str] | None = None
        self.dependents: list[str] | None = None
        self.linked: list[tuple[str, int, int]] | None = None
        #: the group it was submitted in (``opts.group``), None if none
        self.group: str | None = None
        #: work packages (``opts.package_size``, remus.server.packages). While queued: on a
        #: package's leader (the one job of it in a queue) its other jobs, in order; on a
        #: leader that left the queue before its package went out, ``[heir]``, the job that
        #: took its place there. None otherwise
        self.package: list[JobRecord] | None = None
        #: on a queued package's other jobs, the id of its leader; on every job of a package
        #: handed to a worker, the id of the package's leader (until the job leaves it)
        self.leader: str | None = None

    @property
    def protected(self) -> bool:
        return self.rank >= PROTECTED_RANK // 2

    @property
    def priority(self) -> int:
        return self.rank - PROTECTED_RANK if self.protected else self.rank

    @property
    def retries_left(self) -> bool:
        """May it run again after losing its worker (``max_retries`` counts only those)?"""
        return self.losses < self.limits[0]

    def last_progress(self) -> Update | None:
        return self.progress[-1] if self.progress else None

    def add_progress(self, value: int | None, message: str, limit: int) -> Update:
        """Number a new update and keep it (at most ``limit`` are kept: the oldest drop off)."""
        if self.progress is None:
            self.progress = deque(maxlen=limit)
        self.seq += 1
        update = (self.seq, value, message)
        self.progress.append(update)
        return update

    def progress_since(self, since: int, count: int) -> tuple[list[Update], int]:
        """At most ``count`` updates after seq ``since``, oldest first, and how many updates
        after ``since`` are no longer kept (dropped by the history bound)."""
        history = self.progress
        if not history:
            return [], 0
        first = history[0][0]
        start = max(0, since + 1 - first)
        n = len(history)
        stop = min(n, start + count)
        if start >= stop:
            updates: list[Update] = []
        elif start <= n - stop:  # (a deque is read from its nearer end)
            updates = list(islice(history, start, stop))
        else:
            updates = list(islice(reversed(history), n - stop, n - start))
            updates.reverse()
        return updates, max(0, first - since - 1)

    def __repr__(self) -> str:
        return f"<JobRecord {self.id} {self.status.name}>"


class WorkerRecord:
    __slots__ = (
        "acked",
        "credit",
        "dropped",
        "finished",
        "heartbeat",
        "host",
        "id",
        "jobs",
        "keys",
        "last_seen",
        "name",
        "next_beat",
        "outgoing",
        "packs",
        "peer_key",
        "pid",
        "reqs",
        "riders",
        "slots",
        "usage",
    )

    def __init__(
        self,
        worker_id: bytes,
        reqs: JobRequirements,
        heartbeat: float,
        host: str,
        pid: int,
        now: float,
    ) -> None:
        self.id = worker_id
        self.reqs = reqs
        self.keys = worker_keys(reqs)
        #: ``worker_name@host:pid``, as job statuses and logs name it
        self.name = f"{reqs.worker_name or 'worker'}@{host}:{pid}"
        self.heartbeat = heartbeat
        self.host = host
        self.pid = pid
        self.credit = 0
        #: secure mode: the public key (Z85) it registered with (None: plain mode)
        self.peer_key: bytes | None = None
        #: ids of jobs assigned to this worker (started or not)
        self.jobs: set[str] = set()
        #: jobs assigned in this pass, sent as one message at flush
        self.outgoing: list[JobRecord] = []
        self.last_seen = now
        self.next_beat = now + heartbeat
        #: the highest report ``seq`` applied from this worker (acknowledged at flush)
        self.acked = 0
        #: (job id, why) of results and failures refused since the last ack, None if none
        self.dropped: list[tuple[str, str]] | None = None
        #: jobs it finished (FINISHED) since it registered
        self.finished = 0
        #: its process's latest (rss, peak_rss, cpu seconds), None until it sends them
        self.usage: tuple[int, int, float] | None = None
        #: how many jobs it runs at once (credit beyond its free slots is prefetch)
        self.slots = 1
        #: work packages it holds: per package (its leader's id) how many of its jobs it still
        #: holds (None: none yet); all of them share one slot, so ``riders`` (the held jobs
        #: beyond one per package) take none: the slots in use are len(jobs) - riders
        self.packs: dict[str, int] | None = None
        self.riders = 0

    def __repr__(self) -> str:
        return f"<WorkerRecord {self.name} credit={self.credit} jobs={len(self.jobs)}>"


class SpawnRecord:
    """What the broker saw of one process its factory started on its own host."""

    __slots__ = ("finished", "reqs", "worker")

    def __init__(self) -> None:
        #: what it registered with (None until it registers)
        self.reqs: JobRequirements | None = None
        #: its worker id once registered
        self.worker: bytes | None = None
        #: jobs it finished
        self.finished = 0
