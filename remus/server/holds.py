"""Held replies: client requests the broker answers later, when there is news.

A ``progress`` request with ``wait`` is held until its job has a new update or ends; a
``collect`` request is held until a job on its client's watch list ends (or, for a watch list
that follows progress, has a new update). Either is answered at its deadline at the latest.
This is what lets a client follow every progress update, and gather thousands of results (with
their progress), without polling on a timer.

Part of the pure broker rules (no sockets, ``now`` passed in): :class:`Holds` keeps the state
and is driven by :class:`~remus.server.core.BrokerCore`, which owns the jobs and sends replies.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remus import protocol as p
from remus.server.records import JobRecord
from remus.types import Status

if TYPE_CHECKING:
    from remus.server.core import BrokerCore

#: the most progress updates or results one reply carries
MAX_PER_REPLY = 10_000


@dataclass(slots=True)
class _Waiter:
    """A held request: answered once, when it can be or at ``deadline``."""

    client: bytes
    rid: int
    deadline: float
    job_id: str = ""
    since: int = 0
    with_result: bool = False
    release: bool = False
    answered: bool = False
    watch: _Watch | None = None
    #: secure mode: the asking client's key (it sees only jobs it may see)
    key: bytes | None = None


@dataclass(slots=True)
class _Watch:
    """A client's as-completed watch list (see CollectRequest)."""

    client: bytes
    name: str
    pending: set[str] = field(default_factory=set)
    done: deque[str] = field(default_factory=deque)
    parked: _Waiter | None = None
    max: int = MAX_PER_REPLY
    last_used: float = 0.0
    #: hand over the jobs' progress updates too (CollectRequest.progress)
    progress: bool = False
    #: jobs with updates not handed over yet (an ordered set)
    news: dict[str, None] = field(default_factory=dict)
    #: per job, the seq of the last update handed over
    sent: dict[str, int] = field(default_factory=dict)
    #: secure mode: the watching client's key (it sees only jobs it may see)
    key: bytes | None = None


class Holds:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core
        self._progress_waiters: dict[str, list[_Waiter]] = {}
        self._ready_waiters: list[_Waiter] = []
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._watches: dict[tuple[bytes, str], _Watch] = {}
        self._watchers: dict[str, list[_Watch]] = {}
        self._ready_watches: dict[tuple[bytes, str], _Watch] = {}

    # -------------------------------------------------------------- requests

    def progress(self, client: bytes, msg: p.ProgressRequest, now: float) -> None:
        waiter = _Waiter(
            client,
            msg.rid,
            now,
            msg.id,
            msg.since,
            msg.with_result,
            msg.with_result and msg.release,
            key=self._core.sender,
        )
        job = self._core.visible(msg.id)
        if job is None or job.status.done or job.seq > msg.since or not msg.wait > 0:
            self._answer_progress(waiter)
            return
        waiter.deadline = now + min(msg.wait, self._core.config.max_wait)
        self._progress_waiters.setdefault(msg.id, []).append(waiter)
        heapq.heappush(self._deadlines, (waiter.deadline, id(waiter), waiter))

    def collect(self, client: bytes, msg: p.CollectRequest, now: float) -> None:
        key = (client, msg.watch)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch(client, msg.watch, key=self._core.sender)
        watch.last_used = now
        watch.max = min(msg.max, MAX_PER_REPLY)
        watch.progress = watch.progress or msg.progress
        if watch.parked is not None:  # a new request supersedes a held one
            watch.parked.answered = True
            watch.parked = None
        visible = self._core.visible
        for job_id in msg.add:
            job = visible(job_id, watch.key)
            if job is None or job.status.done:
                watch.done.append(job_id)
            elif job_id not in watch.pending:
                watch.pending.add(job_id)
                self._watchers.setdefault(job_id, []).append(watch)
            if watch.progress and job is not None and job.seq > watch.sent.get(job_id, 0):
                watch.news[job_id] = None  # updates from before it was watched go out too
        deadline = now + min(msg.wait, self._core.config.max_wait)
        waiter = _Waiter(client, msg.rid, deadline, watch=watch)
        watch.parked = waiter
        if watch.done or watch.news or not watch.pending or not msg.wait > 0:
            self._answer_watch(watch)
        else:
            heapq.heappush(self._deadlines, (waiter.deadline, id(waiter), waiter))

    # -------------------------------------------------------------- news from the core

    def updated(self, job: JobRecord) -> None:
        """The job has a new progress update: its held progress requests can be answered, and
        so can the held collect requests of watch lists that follow its progress."""
        waiters = self._progress_waiters.pop(job.id, None)
        if waiters:
            self._ready_waiters.extend(waiters)
        watchers = self._watchers.get(job.id)
        if watchers:
            for watch in watchers:
                if watch.progress:
                    watch.news[job.id] = None
                    if watch.parked is not None:
                        self._ready_watches[(watch.client, watch.name)] = watch

    def ended(self, job: JobRecord) -> None:
        """The job is over: answer its progress requests and move it to 'done' on watches."""
        self.updated(job)
        watchers = self._watchers.pop(job.id, None)
        if watchers:
            for watch in watchers:
                watch.pending.discard(job.id)
                watch.done.append(job.id)
                if watch.parked is not None:
                    self._ready_watches[(watch.client, watch.name)] = watch

    # -------------------------------------------------------------- time and flushing

    def expire(self, now: float, ttl: float) -> None:
        """Held requests past their deadline are answered at the next flush; watch lists
        unused for ``ttl`` are dropped."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(self._deadlines)
            if waiter.answered:
                continue
            if waiter.watch is not None:
                self._ready_watches[(waiter.client, waiter.watch.name)] = waiter.watch
            else:
                self._ready_waiters.append(waiter)
        for key, watch in list(self._watches.items()):
            if watch.parked is None and now - watch.last_used > ttl:
                self._drop_watch(key)

    def earliest(self, default: float) -> float:
        """The deadline of the next held request, or ``default`` if none is held."""
        return self._deadlines[0][0] if self._deadlines else default

    def flush(self) -> None:
        """Answer every held request that became answerable in this pass."""
        if self._ready_waiters:
            waiters, self._ready_waiters = self._ready_waiters, []
            for waiter in waiters:
                if not waiter.answered:
                    self._answer_progress(waiter)
        if self._ready_watches:
            watches, self._ready_watches = self._ready_watches, {}
            for watch in watches.values():
                if watch.parked is not None:
                    self._answer_watch(watch)

    def stopping(self, code: str, message: str) -> int:
        """The broker is stopping: answer every held request now with an error (``code``), so
        no client learns it from a timeout. Returns how many were answered."""
        held = [w for ws in self._progress_waiters.values() for w in ws]
        held += [w.parked for w in self._watches.values() if w.parked is not None]
        self._progress_waiters.clear()
        count = 0
        for waiter in held:
            if waiter.answered:
                continue
            waiter.answered = True
            if waiter.watch is not None:
                waiter.watch.parked = None
            self._core.out.clients.append((waiter.client, p.Error(waiter.rid, code, message)))
            count += 1
        return count

    # -------------------------------------------------------------- answers

    def _answer_progress(self, waiter: _Waiter) -> None:
        waiter.answered = True
        core = self._core
        job = core.visible(waiter.job_id, waiter.key)
        if job is None:
            core.reply(waiter.client, waiter.rid, {"status": int(Status.INVALID), "updates": []})
            return
        kept, dropped = job.progress_since(waiter.since, MAX_PER_REPLY)
        updates = [list(u) for u in kept]
        data: dict[str, Any] = {"status": int(job.status), "updates": updates}
        if dropped:
            data["dropped"] = dropped
        frames: list[Any] = []
        complete = not updates or updates[-1][0] == job.seq
        if job.status.done and complete:
            data["reason"] = job.reason
            data["traceback"] = job.traceback
            if waiter.with_result and job.status is Status.FINISHED:
                data["result"] = p.inline(job.result, frames)
                if job.result_files is not None:
                    data["files"] = p.pack_files(job.result_files, frames)
            if job.used is not None:
                data["used"] = list(job.used)
            if waiter.release:
                core.forget(job)
        core.reply(waiter.client, waiter.rid, data, frames)

    def _answer_watch(self, watch: _Watch) -> None:
        waiter = watch.parked
        assert waiter is not None  # internal invariant, not wire input
        watch.parked = None
        waiter.answered = True
        data: dict[str, Any] = {}
        if watch.news:
            data["progress"] = self._watch_progress(watch)
        if not watch.news:
            ids = [watch.done.popleft() for _ in range(min(watch.max, len(watch.done)))]
        else:  # a job's updates all go out before its result; other results need not wait
            ids, kept = [], deque[str]()
            for job_id in watch.done:
                (kept if job_id in watch.news or len(ids) >= watch.max else ids).append(job_id)
            watch.done = kept
        for job_id in ids:
            watch.sent.pop(job_id, None)
        rows, frames = self._core.result_rows(ids, watch.key)
        remaining = len(watch.pending) + len(watch.done)
        data["results"] = rows
        data["remaining"] = remaining
        self._core.reply(watch.client, waiter.rid, data, frames)
        if not remaining:
            self._drop_watch((watch.client, watch.name))

    def _watch_progress(self, watch: _Watch) -> list[Any]:
        """``[[id, [[seq, value, message], ...]], ...]``: the updates of the watched jobs not
        handed over yet, at most MAX_PER_REPLY of them (the rest stay news)."""
        rows: list[Any] = []
        budget = MAX_PER_REPLY
        jobs = self._core.jobs
        for job_id in list(watch.news):
            if budget <= 0:
                break
            del watch.news[job_id]
            job = jobs.get(job_id)
            if job is None:
                continue
            updates = job.progress_since(watch.sent.get(job_id, 0), budget)[0]
            if not updates:
                continue
            rows.append([job_id, [list(u) for u in updates]])
            budget -= len(updates)
            watch.sent[job_id] = updates[-1][0]
            if updates[-1][0] < job.seq:
                watch.news[job_id] = None
        return rows

    def _drop_watch(self, key: tuple[bytes, str]) -> None:
        watch = self._watches.pop(key, None)
        if watch is None:
            return
        for job_id in watch.pending:
            watchers = self._watchers.get(job_id)
            if watchers is not None:
                watchers.remove(watch)
                if not watchers:
                    del self._watchers[job_id]
