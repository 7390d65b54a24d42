"""The broker's rules, as a pure state machine: messages and ``now`` in, messages out.

No sockets, no threads, no clocks: the core thread (``remus.server.core_thread``) decodes what
arrives, calls :meth:`BrokerCore.client_message` / :meth:`BrokerCore.worker_message` /
:meth:`BrokerCore.tick`, then sends what :meth:`BrokerCore.flush` hands back. Tests drive it
directly.

Batching lives here: every job assigned to a worker during one pass goes out as one ``jobs``
message at flush, and every parked client request that became answerable is answered once.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from remus import files
from remus import protocol as p
from remus.errors import FileError
from remus.server.config import ServerConfig
from remus.server.holds import Holds
from remus.server.journal import JournalBatch, JournaledJob
from remus.server.matching import Matcher
from remus.server.records import JobRecord, WorkerRecord, job_key
from remus.types import IOType, JobRequirements, Status, matches

log = logging.getLogger(__name__)


class Catalog(Protocol):
    """What a worker factory tells the broker about the workers it could start."""

    def supported_io_types(self) -> set[IOType]: ...
    def can_mesh(self, reqs: JobRequirements) -> bool: ...
    def retrieve_requirements(self, io_type: IOType) -> list[JobRequirements]: ...


@dataclass
class Outbox:
    clients: list[tuple[bytes, p.Message]] = field(default_factory=list)
    workers: list[tuple[bytes, p.Message]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: (host, pid) of workers that ignored a cancel past the grace: kill them if we spawned them
    kills: list[tuple[str, int]] = field(default_factory=list)


#: a file job's files and args, journaled with its submit options
FILES_OPTION = "_files"


def _saved_files(fs: p.FileSet) -> dict[str, Any]:
    """A job's file set as a self-contained msgpack-able value (inline bytes included)."""
    files_ = [[e.path, e.mode, None if e.data is None else bytes(e.data)] for e in fs.files]
    return {"files": files_, "args": list(fs.args), "host": fs.host}


def _restored_files(saved: dict[str, Any]) -> p.FileSet:
    entries = [p.FileEntry(path, mode, data) for path, mode, data in saved["files"]]
    return p.FileSet(entries, saved["args"], saved["host"])


class BrokerCore:
    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        catalog: Catalog | None = None,
        now: float = 0.0,
        wants_event: Callable[[str], bool] | None = None,
        host: str = "",
        journal: bool = False,
        wall_clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.config = config or ServerConfig()
        #: this broker's host id: paths are only taken from clients on it (docs/files.md)
        self.host = host or self.config.host_id
        self.catalog = catalog
        self.jobs: dict[str, JobRecord] = {}
        self.workers: dict[bytes, WorkerRecord] = {}
        self.matcher = Matcher()
        self.out = Outbox()
        #: decides whether an event topic has a subscriber; events nobody wants cost nothing
        self.wants_event = wants_event or (lambda topic: False)
        self._order = 0
        self._now = now
        #: what this pass changed, for the durable journal (None: no journal)
        self.journal: JournalBatch | None = JournalBatch() if journal else None
        self._wall = wall_clock
        #: time limits: (deadline, seq, kind, job id, attempt); kind is queue, run or kill
        self._limits: list[tuple[float, int, str, str, int]] = []
        #: (worker id, job id) cancelled for its time limit, awaiting the worker's word
        self._cancelled: dict[tuple[bytes, str], float] = {}
        #: one shared tuple per distinct set of content keys (most jobs use ("data",))
        self._keys_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._done: deque[tuple[float, str]] = deque()
        #: held progress and collect requests
        self.holds = Holds(self)
        self._last_tick = now
        self.counters = {
            "submitted": 0,
            "finished": 0,
            "failed": 0,
            "terminated": 0,
            "expired": 0,
            "dropped_results": 0,
        }
        self._client_handlers: dict[type, Callable[[bytes, Any, float], None]] = {
            p.HelloRequest: self._hello,
            p.IoTypesRequest: self._io_types,
            p.CanMeshRequest: self._can_mesh,
            p.RequirementsRequest: self._requirements,
            p.SubmitRequest: self._submit,
            p.StatusRequest: self._status,
            p.TerminateRequest: self._terminate,
            p.ProgressRequest: self.holds.progress,
            p.ResultRequest: self._result,
            p.CollectRequest: self.holds.collect,
        }
        self._worker_handlers: dict[type, Callable[[bytes, Any, float], None]] = {
            p.Register: self._register,
            p.Report: self._report,
            p.Heartbeat: self._heartbeat,
            p.Goodbye: self._goodbye,
        }

    # ================================================================ entry points

    def client_message(self, client: bytes, msg: p.Message, now: float) -> None:
        self._now = now
        handler = self._client_handlers.get(type(msg))
        if handler is None:
            rid = getattr(msg, "rid", -1)
            self._error(
                client, rid, "unknown-command", f"{msg.COMMAND.value!r} is not a client request"
            )
            return
        handler(client, msg, now)

    def worker_message(self, worker: bytes, msg: p.Message, now: float) -> None:
        self._now = now
        handler = self._worker_handlers.get(type(msg))
        if handler is None:
            self.out.workers.append(
                (worker, p.Error(-1, "unknown-command", "not a worker message"))
            )
            return
        handler(worker, msg, now)

    def tick(self, now: float) -> None:
        """Time-driven rules: heartbeats, lost workers, held-reply deadlines, forgetting."""
        stalled = now - self._last_tick > self.config.stall_threshold
        self._last_tick = self._now = now
        if stalled:
            # The freebie rule: our own loop was late (suspended, asleep, overloaded), so any
            # silence we measured is ours. Restart every worker's clock instead of blaming it.
            log.warning("broker loop stalled; not blaming workers for the silence")
            for w in self.workers.values():
                w.last_seen = now
        for w in list(self.workers.values()):
            if now - w.last_seen > w.heartbeat * self.config.liveness_factor:
                self._lose_worker(w, now, f"worker {w.name} stopped heartbeating")
            elif now >= w.next_beat:
                w.next_beat = now + w.heartbeat
                self.out.workers.append((w.id, p.Heartbeat()))
        self.holds.expire(now, self.config.result_ttl)
        while self._limits and self._limits[0][0] <= now:
            _, _, kind, job_id, run = heapq.heappop(self._limits)
            self._limit_due(kind, job_id, run, now)
        ttl = self.config.result_ttl
        while self._done and now - self._done[0][0] > ttl:
            _, job_id = self._done.popleft()
            job = self.jobs.get(job_id)
            if job is not None and job.status.done and now - job.finished_at > ttl:
                self.forget(job)

    def next_deadline(self, now: float) -> float:
        """When :meth:`tick` next has something to do (the core thread polls until then)."""
        soon = now + self.config.stall_threshold / 2
        if self.workers:
            soon = min(soon, min(w.next_beat for w in self.workers.values()))
        soon = min(soon, self.holds.earliest(soon))
        if self._limits:
            soon = min(soon, self._limits[0][0])
        return max(soon, now + 0.001)

    def earliest_hold(self, default: float) -> float:
        """The deadline of the next held reply, or ``default`` if none is held."""
        return self.holds.earliest(default)

    def flush(self) -> Outbox:
        """Everything to send after this pass: jobs batched per worker, held replies answered."""
        dirty = self.matcher.dirty
        while dirty:  # a job whose files cannot go gives its credit back: that may assign more
            _, worker = dirty.popitem()
            if worker.outgoing:
                jobs, worker.outgoing = worker.outgoing, []
                msg = self._jobs_message(worker, jobs)
                if msg.jobs:
                    self.out.workers.append((worker.id, msg))
        self.holds.flush()
        out, self.out = self.out, Outbox()
        return out

    def shutdown(self, reason: str = "broker stopping") -> Outbox:
        """Tell every worker to exit; returns the final outbox."""
        for w in self.workers.values():
            self.out.workers.append((w.id, p.Shutdown(reason)))
        return self.flush()

    def restore(self, jobs: list[JournaledJob], now: float) -> None:
        """Take back the jobs a journal remembers (after a restart): finished ones stay
        retrievable, queued ones queue again, running ones queue again counting an attempt."""
        for saved in jobs:
            job = JobRecord(
                saved.id,
                saved.requirements,
                job_key(saved.requirements),
                self._keys_cache.setdefault(saved.keys, saved.keys),
                list(saved.values),
                sum(len(v) for v in saved.values),
                saved.order,
                now,
            )
            opts = saved.options
            if FILES_OPTION in opts:
                job.files = _restored_files(opts[FILES_OPTION])
            job.limits = (
                int(opts.get("max_retries", self.config.max_retries)),
                opts.get("time_limit"),
                opts.get("queue_time_limit"),
            )
            job.attempt = saved.attempt
            if saved.progress:
                job.progress = list(saved.progress)
                job.seq = saved.progress[-1][0]
            self._order = max(self._order, saved.order)
            self.jobs[job.id] = job
            if saved.status.done:
                job.status = saved.status
                job.reason, job.traceback = saved.reason, saved.traceback
                job.result = saved.result
                job.blobs = None
                job.finished_at = now
                self._done.append((now, job.id))
                continue
            if saved.status is Status.IN_PROGRESS:
                job.evidence = [f"attempt {saved.attempt}: the broker restarted while it ran"]
                if not job.retries_left:
                    job.status = Status.IN_PROGRESS  # it never went into the queue
                    self._finish(
                        job,
                        Status.FAILED,
                        now,
                        f"no retry left (max_retries={job.limits[0]}): " + job.evidence[0],
                    )
                    continue
                job.attempt += 1
            if job.limits[2] is not None:  # the queue time limit starts again with the broker
                self._limit(now + job.limits[2], "queue", job)
            self.matcher.enqueue(job)
            self._journal_status(job)
        log.info("restored %d jobs from the journal", len(jobs))

    def demand(self) -> dict[JobRequirements, int]:
        """Queued jobs that no connected worker can take now, by requirements (for a factory)."""
        return {job.reqs: count for job, count in self.matcher.demand()}

    # ================================================================ client requests

    def reply(self, client: bytes, rid: int, data: Any, frames: list[Any] | None = None) -> None:
        self.out.clients.append((client, p.Reply(rid, data, frames or ())))

    def _error(self, client: bytes, rid: int, code: str, message: str) -> None:
        self.out.clients.append((client, p.Error(rid, code, message)))

    def _hello(self, client: bytes, msg: p.HelloRequest, now: float) -> None:
        data = {"host": self.host, "max_message_bytes": self.config.max_message_bytes}
        self.reply(client, msg.rid, data)

    def _io_types(self, client: bytes, msg: p.IoTypesRequest, now: float) -> None:
        types = {w.reqs.io_type for w in self.workers.values()}
        if self.catalog is not None:
            types |= self.catalog.supported_io_types()
        self.reply(client, msg.rid, sorted(t.to_wire() for t in types))

    def _can_mesh(self, client: bytes, msg: p.CanMeshRequest, now: float) -> None:
        ok = any(matches(msg.requirements, w.reqs) for w in self.workers.values()) or (
            self.catalog is not None and self.catalog.can_mesh(msg.requirements)
        )
        self.reply(client, msg.rid, ok)

    def _requirements(self, client: bytes, msg: p.RequirementsRequest, now: float) -> None:
        found: dict[JobRequirements, None] = {}
        for w in self.workers.values():
            if w.reqs.io_type == msg.io_type:
                found[w.reqs] = None
        if self.catalog is not None:
            for reqs in self.catalog.retrieve_requirements(msg.io_type):
                found[reqs] = None
        self.reply(client, msg.rid, [r.to_wire() for r in found])

    def _submit(self, client: bytes, msg: p.SubmitRequest, now: float) -> None:
        ids = [j.id for j in msg.jobs]
        if len(set(ids)) != len(ids) or any(i in self.jobs for i in ids):
            dup = next(i for i in ids if i in self.jobs or ids.count(i) > 1)
            self._error(client, msg.rid, "duplicate-id", f"job id {dup} is already in use")
            return
        origin = msg.options.get("host")
        origin = origin if type(origin) is str else ""
        try:
            file_sets = [
                None if j.files is None else files.accept_files(j.files, origin, self.host)
                for j in msg.jobs
            ]
        except FileError as e:
            self._error(client, msg.rid, "bad-files", str(e))
            return
        size = sum(len(v) for j in msg.jobs for v in j.values)
        size += sum(files.inline_size(fs) for fs in file_sets if fs is not None)
        cfg = self.config
        if self.matcher.queued + len(ids) > cfg.max_queued_jobs:
            self._error(
                client,
                msg.rid,
                "busy",
                f"the queue is full ({self.matcher.queued} jobs waiting, limit "
                f"{cfg.max_queued_jobs}); retry later or raise max_queued_jobs",
            )
            return
        if self.matcher.queued_bytes + size > cfg.max_queued_bytes:
            self._error(
                client,
                msg.rid,
                "busy",
                f"queued job contents would exceed {cfg.max_queued_bytes} bytes; retry later",
            )
            return
        wants = self.wants_event("job.queued")
        keys_cache = self._keys_cache
        opts = msg.options
        limits = (
            int(opts.get("max_retries", cfg.max_retries)),
            opts.get("time_limit"),
            opts.get("queue_time_limit"),
        )
        journal = self.journal
        wall = self._wall() if journal is not None else 0.0
        for sub, fs in zip(msg.jobs, file_sets, strict=True):
            values = list(sub.values)
            self._order += 1
            job = JobRecord(
                sub.id,
                sub.requirements,
                job_key(sub.requirements),
                keys_cache.setdefault(sub.keys, sub.keys),
                values,
                sum(len(v) for v in values) + (files.inline_size(fs) if fs is not None else 0),
                self._order,
                now,
            )
            job.files = fs
            job.limits = limits
            self.jobs[job.id] = job
            if journal is not None:
                saved = opts if fs is None else {**opts, FILES_OPTION: _saved_files(fs)}
                journal.submitted.append(
                    (job.id, job.reqs.to_wire(), job.keys, values, job.order, wall, saved)
                )
            if limits[2] is not None:
                self._limit(now + limits[2], "queue", job)
            self.matcher.enqueue(job)
            if wants:
                self._event("job.queued", job)
        self.counters["submitted"] += len(ids)
        follow = msg.options.get("follow")
        if follow is not None:
            # submit-and-wait: the answer is the job's first progress reply, result included
            release = bool(msg.options.get("release"))
            self.holds.progress(
                client, p.ProgressRequest(msg.rid, ids[0], 0, follow, True, release), now
            )
        else:
            self.reply(client, msg.rid, len(ids))

    def _status_row(self, job_id: str) -> list[Any]:
        job = self.jobs.get(job_id)
        if job is None:
            return [job_id, int(Status.INVALID), None, "", 0, "", 0]
        last = job.last_progress()
        value, message = (last[1], last[2]) if last else (None, "")
        return [job_id, int(job.status), value, message, job.seq, job.reason, job.attempt]

    def _status(self, client: bytes, msg: p.StatusRequest, now: float) -> None:
        self.reply(client, msg.rid, [self._status_row(i) for i in msg.ids])

    def _terminate(self, client: bytes, msg: p.TerminateRequest, now: float) -> None:
        cancels: dict[bytes, list[str]] = {}
        for job_id in msg.ids:
            job = self.jobs.get(job_id)
            if job is None or job.status.done:
                continue
            holder = self.workers.get(job.worker) if job.worker is not None else None
            if holder is not None and job in holder.outgoing:
                # assigned in this very pass and not sent yet: take it back, return the credit
                holder.outgoing.remove(job)
                self._finish(job, Status.TERMINATED, now, "terminated by a client")
                self.matcher.add_credit(holder, 1)
                continue
            if holder is not None:
                cancels.setdefault(holder.id, []).append(job_id)
            self._finish(job, Status.TERMINATED, now, "terminated by a client")
        for wid, ids in cancels.items():
            self.out.workers.append((wid, p.Cancel(ids)))
        self.reply(client, msg.rid, [self._status_row(i) for i in msg.ids])

    def forget(self, job: JobRecord) -> None:
        """Drop a finished job now (its result was delivered to a client that released it)."""
        if self.jobs.pop(job.id, None) is not None and self.journal is not None:
            self.journal.forgotten.append(job.id)

    def result_rows(self, ids: list[str]) -> tuple[list[Any], list[Any]]:
        rows: list[Any] = []
        frames: list[Any] = []
        for job_id in ids:
            job = self.jobs.get(job_id)
            if job is None:
                rows.append([job_id, int(Status.INVALID), "", "", None])
                continue
            slot = p.inline(job.result, frames) if job.status is Status.FINISHED else None
            row = [job_id, int(job.status), job.reason, job.traceback, slot]
            if job.result_files is not None and job.status is Status.FINISHED:
                row.append(p.pack_files(job.result_files, frames))
            rows.append(row)
        return rows, frames

    def _result(self, client: bytes, msg: p.ResultRequest, now: float) -> None:
        rows, frames = self.result_rows(list(msg.ids))
        self.reply(client, msg.rid, rows, frames)

    # ================================================================ worker messages

    def _register(self, wid: bytes, msg: p.Register, now: float) -> None:
        worker = self.workers.get(wid)
        if worker is not None and worker.reqs != msg.requirements:
            self._lose_worker(worker, now, "worker re-registered with other requirements")
            worker = None
        if worker is None:
            worker = WorkerRecord(wid, msg.requirements, msg.heartbeat, msg.host, msg.pid, now)
            self.workers[wid] = worker
            log.info("worker %s registered for %s", worker.name, msg.requirements.io_type)
            self._worker_event("worker.registered", worker)
            # A worker we do not know that holds jobs: this broker restarted from its journal
            # while the worker kept working. Give it back the jobs it holds that are waiting
            # to run again, rather than run them twice.
            for job_id in msg.held:
                job = self.jobs.get(job_id)
                if job is not None and job.status is Status.QUEUED and job.worker is None:
                    self.matcher.forget_queued(job)
                    job.worker = wid
                    job.status = Status.IN_PROGRESS
                    worker.jobs.add(job_id)
                    self._journal_status(job)
        else:
            # A reconnect: jobs we assigned that the worker never saw go back to the queue
            # (with its credit at zero, so they do not come straight back to it); started jobs
            # it no longer holds are lost with whatever it did not manage to report.
            worker.heartbeat = msg.heartbeat
            self.matcher.set_credit(worker, 0)
            worker.outgoing = []
            held = set(msg.held)
            for job in sorted((self.jobs[i] for i in worker.jobs), key=lambda j: j.order):
                if job.id in held:
                    continue
                worker.jobs.discard(job.id)
                if job.status is Status.QUEUED:
                    self._requeue(job)
                else:
                    self._finish(
                        job, Status.EXPIRED, now, f"worker {worker.name} lost it on reconnect"
                    )
        worker.last_seen = now
        self.matcher.set_credit(worker, msg.credit)
        if msg.credit and self.wants_event("worker.ready"):
            self._worker_event("worker.ready", worker)

    def _known(self, wid: bytes, what: str) -> WorkerRecord | None:
        worker = self.workers.get(wid)
        if worker is None:
            self.out.workers.append(
                (
                    wid,
                    p.Error(
                        -1, "unknown-worker", f"{what} from an unregistered worker: register first"
                    ),
                )
            )
        return worker

    def _report(self, wid: bytes, msg: p.Report, now: float) -> None:
        worker = self._known(wid, "report")
        if worker is None:
            return
        worker.last_seen = now
        jobs = self.jobs
        for job_id in msg.started:
            job = jobs.get(job_id)
            if job is not None and job.worker == wid and job.status is Status.QUEUED:
                job.status = Status.IN_PROGRESS
                if not job.retries_left:
                    # it will never be sent again (no retry left if its worker is lost), so its
                    # contents can go now: a big input and its big result are not held together
                    job.blobs = job.files = None
                self._journal_status(job)
                job.runs += 1
                if job.limits[1] is not None:  # the run time limit counts from here
                    self._limit(now + job.limits[1], "run", job, job.runs)
                self._event("job.started", job)
        limit = self.config.max_progress_history
        for job_id, value, message in msg.progress:
            job = jobs.get(job_id)
            if job is None or job.worker != wid or job.status.done:
                continue
            job.status = Status.IN_PROGRESS
            job.seq += 1
            if job.progress is None:
                job.progress = []
            job.progress.append((job.seq, value, message))
            if len(job.progress) > limit:
                del job.progress[: len(job.progress) - limit]
            if self.journal is not None:
                self.journal.progress.append((job_id, job.seq, value, message))
            self.holds.updated(job)
            if self.wants_event("job.progress"):
                self._event("job.progress", job, value=value, message=message, seq=job.seq)
        if self._cancelled:
            for job_id in (*(r[0] for r in msg.results), *(f[0] for f in msg.failures)):
                self._cancelled.pop((wid, job_id), None)  # it did stop
        for job_id, blob, *result_files in msg.results:
            job = jobs.get(job_id)
            if job is None or job.worker != wid or job.status.done:
                self.counters["dropped_results"] += 1
                log.debug("dropped a late result for job %s", job_id)
                continue
            job.result = blob
            if result_files:  # paths in it are on the worker's host
                job.result_files = replace(result_files[0], host=worker.host)
            if self.journal is not None:
                self.journal.results.append((job_id, blob))
            self._finish(job, Status.FINISHED, now)
        for job_id, reason, tb in msg.failures:
            job = jobs.get(job_id)
            if job is None or job.worker != wid or job.status.done:
                continue
            self._finish(job, Status.FAILED, now, reason, tb)
        if msg.credit:
            self.matcher.add_credit(worker, msg.credit)

    def _heartbeat(self, wid: bytes, msg: p.Heartbeat, now: float) -> None:
        worker = self._known(wid, "heartbeat")
        if worker is not None:
            worker.last_seen = now

    def _goodbye(self, wid: bytes, msg: p.Goodbye, now: float) -> None:
        worker = self.workers.get(wid)
        if worker is not None:
            self._lose_worker(worker, now, f"worker {worker.name} exited", topic="worker.exited")

    # ================================================================ lifecycle helpers

    def _lose_worker(
        self, worker: WorkerRecord, now: float, reason: str, topic: str = "worker.lost"
    ) -> None:
        del self.workers[worker.id]
        self.matcher.remove_worker(worker)
        held = sorted((self.jobs[i] for i in worker.jobs), key=lambda j: j.order)
        # A worker that died without reporting any job started most likely died on the first
        # one it took (a job that crashes its worker): that one counts an attempt, so a poison
        # job fails after max_retries instead of taking down worker after worker.
        suspect = (
            held[0].id
            if held and topic == "worker.lost" and all(j.status is Status.QUEUED for j in held)
            else None
        )
        for job in held:
            if job.id == suspect:
                self._retry_or_fail(job, worker, reason + " before reporting the job started", now)
            elif job.status is Status.QUEUED:
                self._requeue(job)  # it never started: no harm in running it elsewhere
            elif not job.status.done:
                self._retry_or_fail(job, worker, reason, now)
        worker.jobs.clear()
        (log.info if topic == "worker.exited" else log.warning)("%s", reason)
        self._worker_event(topic, worker, reason=reason)

    def _requeue(self, job: JobRecord) -> None:
        job.worker = None
        self.matcher.enqueue(job, front=True)
        self._journal_status(job)

    def _retry_or_fail(self, job: JobRecord, worker: WorkerRecord, reason: str, now: float) -> None:
        """A started job lost its worker: run it again while retries are left, else FAIL it
        with the evidence of every attempt."""
        line = f"attempt {job.attempt} on {worker.name}: {reason}"
        last = job.last_progress()
        if last is not None:
            value = "" if last[1] is None else f"{last[1]}% "
            line += f" (last progress: {value}{last[2]!r})".replace(" ''", "")
        job.evidence = [*(job.evidence or ()), line]
        if job.retries_left and job.blobs is not None:
            log.warning("job %s: %s; requeued", job.id, line)
            job.attempt += 1
            job.status = Status.QUEUED
            self._requeue(job)
            self._event("job.requeued", job, reason=reason)
        else:
            tries = "attempt" if job.attempt == 1 else "attempts"
            self._finish(
                job,
                Status.FAILED if job.attempt > 1 else Status.EXPIRED,
                now,
                f"its worker was lost on {job.attempt} {tries} (max_retries={job.limits[0]}): "
                + "; ".join(job.evidence),
            )

    def process_exited(self, host: str, pid: int, how: str, now: float) -> None:
        """A worker process the factory spawned exited: lose it now, with its exit status as
        the evidence, rather than waiting for its heartbeats to run out."""
        for worker in list(self.workers.values()):
            if worker.pid == pid and worker.host == host:
                self._lose_worker(worker, now, f"worker {worker.name} process {how}")

    def _limit(self, deadline: float, kind: str, job: JobRecord, tag: int = 0) -> None:
        heapq.heappush(self._limits, (deadline, job.order, kind, job.id, tag))

    def _limit_due(self, kind: str, job_id: str, run: int, now: float) -> None:
        job = self.jobs.get(job_id)
        if job is None or (job.status.done and kind != "kill"):
            return
        if kind == "queue" and job.status is Status.QUEUED and job.worker is None:
            reqs = job.reqs
            name = f" named {reqs.worker_name!r}" if reqs.worker_name else ""
            tag = f" tagged {reqs.tag!r}" if reqs.tag is not None else ""
            self._finish(
                job,
                Status.EXPIRED,
                now,
                f"no worker for {reqs.io_type}{name}{tag} took it within its queue time limit "
                f"of {job.limits[2]:g} s",
            )
        elif kind == "run" and job.runs == run and job.worker is not None:
            worker = self.workers.get(job.worker)
            self._finish(job, Status.FAILED, now, f"time limit: ran over {job.limits[1]:g} s")
            if worker is not None:
                self.out.workers.append((worker.id, p.Cancel([job.id])))
                self._cancelled[(worker.id, job.id)] = now
                self._limit(now + self.config.kill_grace, "kill", job)
        elif kind == "kill":
            for (wid, jid), _ in list(self._cancelled.items()):
                if jid != job_id:
                    continue
                del self._cancelled[(wid, jid)]
                worker = self.workers.get(wid)
                if worker is not None:  # still silent about the job after the grace
                    log.warning("worker %s ignored the time limit of job %s", worker.name, jid)
                    self.out.kills.append((worker.host, worker.pid))

    def _journal_status(self, job: JobRecord) -> None:
        if self.journal is not None:
            name = self.workers[job.worker].name if job.worker in self.workers else ""
            self.journal.status.append(
                (job.id, int(job.status), job.reason, job.traceback, job.attempt, name)
            )

    def take_journal(self) -> JournalBatch | None:
        """What this pass changed (to write before anything is sent), or None if nothing."""
        batch = self.journal
        if not batch:
            return None
        self.journal = JournalBatch()
        return batch

    def _finish(
        self, job: JobRecord, status: Status, now: float, reason: str = "", tb: str = ""
    ) -> None:
        if job.status is Status.QUEUED and job.worker is None:
            self.matcher.forget_queued(job)
        if job.worker is not None:
            worker = self.workers.get(job.worker)
            if worker is not None:
                worker.jobs.discard(job.id)
        job.status = status
        job.reason = reason
        job.traceback = tb
        job.finished_at = now
        job.blobs = job.files = None  # contents are no longer needed once the job is over
        self._journal_status(job)
        self._done.append((now, job.id))
        self.counters[status.name.lower()] += 1
        self.holds.ended(job)
        topic = "job." + status.name.lower()
        if self.wants_event(topic):
            self._event(topic, job, reason=reason)

    def _jobs_message(self, worker: WorkerRecord, jobs: list[JobRecord]) -> p.Jobs:
        assigned = []
        wants = self.wants_event("job.assigned")
        refused = 0
        for job in jobs:
            fs = job.files
            if fs is not None:
                try:  # paths for a worker on another host: the broker sends the bytes
                    fs = files.files_for_worker(fs, worker.host, self.config.file_roots)
                except FileError as e:
                    reason = f"cannot send the job's files to worker {worker.name}: {e}"
                    self._finish(job, Status.FAILED, self._now, reason)
                    refused += 1
                    continue
            assigned.append(p.AssignedJob(job.id, job.reqs, job.keys, job.blobs or (), fs))
            if wants:
                self._event("job.assigned", job)
        if refused:
            self.matcher.add_credit(worker, refused)
        return p.Jobs(assigned)

    # ================================================================ events

    def _event(self, topic: str, job: JobRecord, **extra: Any) -> None:
        if not self.wants_event(topic):
            return
        payload = {"job": job.id, "status": job.status.name, "io_type": job.reqs.io_type.to_wire()}
        if job.worker is not None and job.worker in self.workers:
            payload["worker"] = self.workers[job.worker].name
        payload.update(extra)
        self.out.events.append((topic, payload))

    def _worker_event(self, topic: str, worker: WorkerRecord, **extra: Any) -> None:
        if not self.wants_event(topic):
            return
        payload = {
            "worker": worker.name,
            "host": worker.host,
            "pid": worker.pid,
            "io_type": worker.reqs.io_type.to_wire(),
            "worker_name": worker.reqs.worker_name,
            "credit": worker.credit,
            "jobs": len(worker.jobs),
        }
        payload.update(extra)
        self.out.events.append((topic, payload))

    def add_event(self, topic: str, payload: dict[str, Any]) -> None:
        """Events from outside the rules (the factory's spawns and exits)."""
        if self.wants_event(topic):
            self.out.events.append((topic, payload))

    def stats(self) -> dict[str, int]:
        return {
            "jobs": len(self.jobs),
            "queued": self.matcher.queued,
            "workers": len(self.workers),
            **self.counters,
        }
