"""The broker's rules, as a pure state machine: messages and ``now`` in, messages out.

No sockets, no threads, no clocks: the core thread (``remus.server.core_thread``) decodes what
arrives, calls :meth:`BrokerCore.client_message` / :meth:`BrokerCore.worker_message` /
:meth:`BrokerCore.tick`, then sends what :meth:`BrokerCore.flush` hands back. Tests drive it
directly.

Batching lives here: every job assigned to a worker during one pass goes out as one ``jobs``
message at flush, and every parked client request that became answerable is answered once.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from remus import files
from remus import protocol as p
from remus.errors import FileError
from remus.server import introspection as ix
from remus.server.blobs import Blobs
from remus.server.config import ServerConfig
from remus.server.dependencies import Dependencies
from remus.server.holds import Holds
from remus.server.journal import JournalBatch, JournaledJob
from remus.server.limits import RUN, Limits
from remus.server.matching import Matcher
from remus.server.packages import frees_slot, release
from remus.server.preemption import PROTECTED_HALF, Preemption
from remus.server.records import JobRecord, WorkerRecord
from remus.server.recovery import Recovery
from remus.server.requests import Requests
from remus.server.serving import Serving
from remus.server.spawns import Spawns
from remus.server.worker_messages import WorkerMessages
from remus.types import IOType, JobRequirements, Status

if TYPE_CHECKING:
    from remus.server.auth import AllowLists

log = logging.getLogger(__name__)
#: one line per job that ends (INFO when it finished, WARNING when not): an operator may set
#: this logger's level apart from the rest
jobs_log = logging.getLogger("remus.jobs")
#: the INFO lines of finished jobs are written together, at most this often ...
FINISHED_LOG_EVERY = 0.2
#: ... or once this many are waiting
FINISHED_LOG_MAX = 1000
INFO, WARNING = logging.INFO, logging.WARNING
#: by status value: the counter of a job that ends so, and its event topic (a list index
#: costs far less than an enum's ``.name``)
ENDING = [s.name.lower() for s in sorted(Status)]
TOPIC = ["job." + name for name in ENDING]
#: the families of event topics (an admin's subscription to everything is to each of these)
TOPIC_FAMILIES = ("job.", "worker.")


def owned_topic(owner: bytes, topic: str) -> str:
    """Secure mode: the topic a job's event has for its owner, ``@KEY topic`` (the 40
    characters of the owner's public key between ``@`` and a space)."""
    return f"@{owner.decode()} {topic}"


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
    #: orders for the spool thread (remus.server.spool: serve a file in place, drop blobs)
    spool: list[list[bytes]] = field(default_factory=list)


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
        #: the last submission order given (requeued jobs go back among the oldest by it)
        self.order = 0
        self._now = now
        #: what this pass changed, for the durable journal (None: no journal)
        self.journal: JournalBatch | None = JournalBatch() if journal else None
        self._wall = wall_clock
        #: every job's time limits
        self.limits = Limits(self)
        #: one shared tuple per distinct set of content keys (most jobs use ("data",))
        self.keys_cache: dict[tuple[str, ...], tuple[str, ...]] = {}
        #: (when, job id) of jobs over, oldest first: forgotten after result_ttl
        self.ended: deque[tuple[float, str]] = deque()
        #: held progress and collect requests
        self.holds = Holds(self)
        #: acknowledged reports, and running jobs waiting for their worker after a restart
        self.recovery = Recovery(self)
        #: who can serve a job, and why a queued one waits
        self.serving = Serving(self)
        #: streamed files in the spool: which exist, who may read them, when they go
        self.blobs = Blobs(self)
        #: jobs submitted after others (workflows)
        self.deps = Dependencies(self)
        #: groups (``opts.group``) and their jobs' ids, oldest group first, and how many of
        #: each group's jobs the broker still holds
        self.groups: dict[str, list[str]] = {}
        self.group_left: dict[str, int] = {}
        #: set by drain(): no new job is accepted or started, running ones may finish
        self.draining = False
        #: what the factory's processes did (and the quarantine rule)
        self.spawns = Spawns(self)
        #: protected jobs that wait take the slots of unprotected ones
        self.preemption = Preemption(self)
        self._last_tick = now
        self.counters = {
            "submitted": 0,
            "finished": 0,
            "failed": 0,
            "terminated": 0,
            "expired": 0,
            "dropped_results": 0,
            "requeued": 0,
            "preempted": 0,
        }
        #: jobs by io type and status, and the bad endings (kept as statuses change)
        self.census = ix.Census()
        #: the counters sampled once a second, for rates over the last minute
        self.rates = ix.Rates(self.counters, now)
        #: when this broker started (``now`` at construction), for its uptime
        self.started_at = now
        #: the bound endpoints by role (client, worker, status), as the core thread tells them
        self.endpoints: dict[str, str] = {}
        #: secure mode: the allow-lists in force (None: plain mode, no keys, no owners)
        self.auth: AllowLists | None = None
        #: secure mode: peers the ZAP handler refused, by domain (its counters, read only)
        self.refused: dict[str, int] | None = None
        #: secure mode: the authenticated public key (Z85) of the message being handled, set
        #: by the core thread before each message (None in plain mode)
        self.sender: bytes | None = None
        #: jobs that finished since their INFO lines were last written (None: INFO is off),
        #: and when that was
        self._finished_lines: list[tuple[JobRecord, float]] | None = (
            [] if jobs_log.isEnabledFor(INFO) else None
        )
        self._lines_at = now
        #: how late the core thread ran the timed rules, as it measures it
        self.loop = ix.LoopLag()
        #: messages in and out per socket, as the core thread counts them
        self.traffic = dict.fromkeys(
            ("client_in", "client_out", "worker_in", "worker_out", "status_out"), 0
        )
        requests = Requests(self)
        introspection = ix.Introspection(self)
        self._client_handlers: dict[type, Callable[[bytes, Any, float], None]] = {
            p.HelloRequest: requests.hello,
            p.IoTypesRequest: requests.io_types,
            p.CanMeshRequest: requests.can_mesh,
            p.RequirementsRequest: requests.requirements,
            p.SubmitRequest: requests.submit,
            p.StatusRequest: requests.status,
            p.TerminateRequest: requests.terminate,
            p.ProgressRequest: self.holds.progress,
            p.ResultRequest: requests.result,
            p.CollectRequest: self.holds.collect,
            p.WorkersRequest: introspection.workers,
            p.ListJobsRequest: introspection.jobs,
            p.StatsRequest: introspection.stats,
            p.ControlRequest: requests.control,
        }
        workers = WorkerMessages(self)
        self._worker_handlers: dict[type, Callable[[bytes, Any, float], None]] = {
            p.Register: workers.register,
            p.Report: workers.report,
            p.Heartbeat: workers.heartbeat,
            p.Goodbye: workers.goodbye,
        }

    # ================================================================ entry points

    def client_message(self, client: bytes, msg: p.Message, now: float) -> None:
        self._now = now
        handler = self._client_handlers.get(type(msg))
        if handler is None:
            rid = getattr(msg, "rid", -1)
            self.error(
                client, rid, "unknown-command", f"{msg.COMMAND.value!r} is not a client request"
            )
            return
        handler(client, msg, now)

    def worker_message(self, worker: bytes, msg: p.Message, now: float) -> None:
        self._now = now
        if self.sender is not None and not self._worker_may(worker, msg):
            return
        handler = self._worker_handlers.get(type(msg))
        if handler is None:
            self.out.workers.append(
                (worker, p.Error(-1, "unknown-command", "not a worker message"))
            )
            return
        handler(worker, msg, now)

    # ================================================================ ownership (secure mode)

    def may_see(self, job: JobRecord, key: bytes | None) -> bool:
        """Whether the client with ``key`` may see and touch ``job``: its owner, or an admin
        (anyone in plain mode, where ``key`` is None)."""
        if key is None or job.owner == key:
            return True
        if self.auth is not None and key in self.auth.admins:
            return True
        # an assistant (owned by the key of the worker that submitted it) is its parent's too
        parent = self.jobs.get(job.parent) if job.parent else None
        return parent is not None and self.may_see(parent, key)

    def visible(self, job_id: str, key: bytes | None = None) -> JobRecord | None:
        """The job ``job_id`` as the sender (or ``key``) may know it: None when it does not
        exist and when it belongs to another key (the two look the same from outside)."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        return job if self.may_see(job, key if key is not None else self.sender) else None

    def run_by_sender(self, job_id: str) -> JobRecord | None:
        """Secure mode: the job ``job_id`` if the sender's key is that of the worker holding
        it (a handler submitting assistants through the client socket)."""
        job = self.jobs.get(job_id)
        holder = self.workers.get(job.worker) if job is not None and job.worker else None
        if holder is None or self.sender is None or holder.peer_key != self.sender:
            return None
        return job

    def _worker_may(self, wid: bytes, msg: p.Message) -> bool:
        """Secure mode: a worker speaks for its own registration only, and registers only io
        types its key may serve. A refusal is answered with ``forbidden``."""
        key = self.sender
        assert key is not None and self.auth is not None
        worker = self.workers.get(wid)
        if worker is not None and worker.peer_key != key:
            why = "this worker id is registered under another key"
        elif isinstance(msg, p.Register) and not self.auth.may_serve(key, msg.requirements.io_type):
            why = (
                f"key {key.decode()} may not serve {msg.requirements.io_type} (its .io_types "
                "file in the broker's worker allow-list does not name it)"
            )
        else:
            return True
        log.warning("refused worker %s: %s", wid.hex(), why)
        self.out.workers.append((wid, p.Error(-1, "forbidden", why)))
        return False

    def revoke(self, lists: AllowLists, now: float) -> None:
        """New allow-lists: every connected worker whose key is gone (or may no longer serve
        its io type) is told to exit and forgotten, its jobs requeued."""
        self.auth = lists
        for worker in list(self.workers.values()):
            key = worker.peer_key
            if key is None or lists.may_serve(key, worker.reqs.io_type):
                continue
            reason = f"worker {worker.name}'s key was revoked"
            self.out.workers.append((worker.id, p.Shutdown(reason)))
            self.lose_worker(worker, now, reason, topic="worker.revoked")

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
                self.lose_worker(w, now, f"worker {w.name} stopped heartbeating")
            elif now >= w.next_beat:
                w.next_beat = now + w.heartbeat
                self.out.workers.append((w.id, p.Heartbeat()))
        self.holds.expire(now, self.config.result_ttl)
        self.limits.due(now)
        self.rates.sample(now)
        self.blobs.sweep(now)
        ttl = self.config.result_ttl
        while self.ended and now - self.ended[0][0] > ttl:
            _, job_id = self.ended.popleft()
            job = self.jobs.get(job_id)
            if job is not None and job.status.done and now - job.finished_at > ttl:
                self.forget(job)

    def next_deadline(self, now: float) -> float:
        """When :meth:`tick` next has something to do (the core thread polls until then)."""
        soon = now + self.config.stall_threshold / 2
        if self.workers:
            soon = min(soon, min(w.next_beat for w in self.workers.values()))
        soon = min(soon, self.holds.earliest(soon))
        soon = min(soon, self.limits.earliest(soon), self.recovery.ack_due)
        return max(soon, now + 0.001)

    def earliest_hold(self, default: float) -> float:
        """The deadline of the next held reply, or ``default`` if none is held."""
        return self.holds.earliest(default)

    def flush(self) -> Outbox:
        """Everything to send after this pass: jobs batched per worker, held replies answered."""
        self.preemption.check(self._now)
        dirty = self.matcher.dirty
        while dirty:  # a job whose files cannot go gives its credit back: that may assign more
            _, worker = dirty.popitem()
            if worker.outgoing:
                jobs, worker.outgoing = worker.outgoing, []
                msg = self._jobs_message(worker, jobs)
                if msg.jobs:
                    self.out.workers.append((worker.id, self.recovery.on_jobs(worker, msg)))
                    controls = [
                        (j.id, seq, data)
                        for j in jobs
                        if j.controls and j.worker == worker.id and not j.status.done
                        for seq, data in enumerate(j.controls, 1)
                    ]
                    if controls:  # messages sent while it was queued: right after the job
                        self.out.workers.append((worker.id, p.Controls(controls)))
        self.recovery.flush(self.out)
        self.holds.flush()
        lines = self._finished_lines
        if lines is None or not lines:
            self._finished_lines = [] if jobs_log.isEnabledFor(INFO) else None
        elif len(lines) >= FINISHED_LOG_MAX or self._now - self._lines_at >= FINISHED_LOG_EVERY:
            # one write for many passes: one job at a time, a write per job cost more CPU
            # than the broker's whole part of the job
            self._log_finished(lines)
            self._lines_at = self._now
            self._finished_lines = [] if jobs_log.isEnabledFor(INFO) else None
        out, self.out = self.out, Outbox()
        return out

    def shutdown(self, reason: str = "broker stopping") -> Outbox:
        """Tell every worker to exit and every waiting client that the broker is stopping
        (logging what becomes of the jobs); returns the final outbox."""
        queued = sum(1 for j in self.jobs.values() if j.status is Status.QUEUED)
        running = sum(1 for j in self.jobs.values() if j.status is Status.IN_PROGRESS)
        kept = self.journal is not None
        if queued or running:
            log.warning(
                "stopping with %d jobs queued and %d running: %s",
                queued,
                running,
                "the journal keeps them; they run again when the broker restarts with it"
                if kept
                else "they are lost (no journal; run remus server --journal FILE to keep them)",
            )
        else:
            log.info("stopping with no job queued or running")
        code, words = self.stopping_error()
        answered = self.holds.stopping(code, words)
        if answered:
            log.info("told %d waiting client requests that the broker is stopping", answered)
        for w in self.workers.values():
            self.out.workers.append((w.id, p.Shutdown(reason)))
        self._lines_at = -FINISHED_LOG_EVERY  # the last finished jobs' lines go now
        return self.flush()

    def stopping_error(self) -> tuple[str, str]:
        """The error code and words for a client whose job the stopping broker leaves."""
        if self.journal is not None:
            return (
                "broker-stopping-journaled",
                "the broker is stopping; its journal keeps the job: ask again once it is back",
            )
        return (
            "broker-stopping",
            "the broker stopped (no journal): the job is lost; submit it again",
        )

    def drain(self) -> None:
        """Stop taking new jobs and starting queued ones; running ones may finish."""
        if self.draining:
            return
        self.draining = True
        for worker in self.workers.values():
            self.matcher.remove_worker(worker)
        log.warning(
            "draining: %d jobs running may finish; %d queued stay queued; new submits refused",
            self.running_count(),
            self.matcher.queued,
        )

    def running_count(self) -> int:
        return sum(len(w.jobs) for w in self.workers.values())

    def restore(
        self,
        jobs: list[JournaledJob],
        now: float,
        gone: Callable[[str], bool] | None = None,
        acks: Mapping[str, int] | None = None,
    ) -> None:
        """Take back the jobs a journal remembers, after a restart (see ``Recovery.restore``)."""
        self.recovery.restore(jobs, now, gone, acks)

    def demand(self) -> dict[JobRequirements, int]:
        """Queued jobs that no connected worker can take now, by requirements (for a factory)."""
        return {job.reqs: count for job, count in self.matcher.demand()}

    # ================================================================ client requests

    def reply(self, client: bytes, rid: int, data: Any, frames: list[Any] | None = None) -> None:
        self.out.clients.append((client, p.Reply(rid, data, frames or ())))

    def error(self, client: bytes, rid: int, code: str, message: str) -> None:
        self.out.clients.append((client, p.Error(rid, code, message)))

    def forget(self, job: JobRecord) -> None:
        """Drop a finished job now (its result was delivered to a client that released it)."""
        if self.jobs.pop(job.id, None) is None:
            return
        self.census.remove(job)
        if self.journal is not None:
            self.journal.forgotten.append(job.id)
        if job.group is not None:  # the last of its group to go takes the group along
            left = self.group_left[job.group] = self.group_left.get(job.group, 1) - 1
            if left <= 0:
                self.groups.pop(job.group, None)
                del self.group_left[job.group]

    def result_rows(self, ids: list[str], key: bytes | None) -> tuple[list[Any], list[Any]]:
        """Result rows of ``ids`` as the client with ``key`` may see them."""
        rows: list[Any] = []
        frames: list[Any] = []
        for job_id in ids:
            job = self.jobs.get(job_id)
            if job is not None and key is not None and not self.may_see(job, key):
                job = None
            if job is None:
                rows.append([job_id, int(Status.INVALID), "", "", None])
                continue
            slot = p.inline(job.result, frames) if job.status is Status.FINISHED else None
            row = [job_id, int(job.status), job.reason, job.traceback, slot]
            if job.result_files is not None and job.status is Status.FINISHED:
                row.append(p.pack_files(job.result_files, frames))
            if job.used is not None:
                if len(row) == 5:
                    row.append(None)  # no files
                row.append(list(job.used))
            rows.append(row)
        return rows, frames

    # ================================================================ lifecycle helpers

    def lose_worker(
        self, worker: WorkerRecord, now: float, reason: str, topic: str = "worker.lost"
    ) -> None:
        del self.workers[worker.id]
        if worker.acked and self.journal is not None:
            self.journal.acks[worker.id.hex()] = 0  # (its row in the journal goes)
        self.serving.left(worker)
        self.matcher.remove_worker(worker)
        held = sorted((self.jobs[i] for i in worker.jobs), key=lambda j: j.order)
        # A worker that died without reporting any job started most likely died on the first
        # one it took (a job that crashes its worker): that one counts an attempt, so a poison
        # job fails after max_retries instead of taking down worker after worker.
        suspect = (
            held[0].id
            if held and topic == "worker.lost" and not any(j.started for j in held)
            else None
        )
        for job in held:
            if job.id == suspect:
                self._retry_or_fail(job, worker, reason + " before reporting the job started", now)
            elif not job.started and not job.status.done:
                self.requeue(job)  # it never started: no harm in running it elsewhere
            elif not job.status.done:
                self._retry_or_fail(job, worker, reason, now)
        worker.jobs.clear()
        (log.info if topic == "worker.exited" else log.warning)("%s", reason)
        self._worker_event(topic, worker, reason=reason)

    def requeue(self, job: JobRecord) -> None:
        if job.rank < PROTECTED_HALF:
            self.preemption.left(job)
        job.worker = None
        job.leader = None  # (a package's job runs again on its own)
        self.census.move(job, Status.QUEUED)
        job.dispatched_at = None
        job.started = False
        self.counters["requeued"] += 1
        self.matcher.enqueue(job, front=True)
        self.journal_status(job)

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
            job.history = [*(job.history or ()), line + "; requeued"]
            job.attempt += 1
            job.losses += 1
            self.requeue(job)
            self._event("job.requeued", job, reason=reason)
        else:
            lost = job.losses + 1
            tries = "attempt" if lost == 1 else "attempts"
            self.finish(
                job,
                Status.FAILED,  # EXPIRED means only that no worker took it in time
                now,
                f"its worker was lost on {lost} {tries} (max_retries={job.limits[0]}): "
                + "; ".join(job.evidence),
            )

    def _handler_failed(
        self, job: JobRecord, worker: WorkerRecord, reason: str, tb: str, now: float
    ) -> None:
        """The worker reported the job failed: run it again while the submission's
        ``retries_on_error`` allows, else FAIL it with every attempt's evidence."""
        line = f"attempt {job.attempt} on {worker.name}: {reason}"
        if job.error_retries and (job.blobs is not None or job.files is not None):
            job.error_retries -= 1
            job.evidence = [*(job.evidence or ()), line]
            job.history = [*(job.history or ()), line + "; running it again"]
            log.warning("job %s failed (%s); running it again", job.id, line)
            release(worker, job)
            job.attempt += 1
            self.requeue(job)
            self._event("job.requeued", job, reason=reason)
            return
        if job.evidence:
            reason = f"{reason} (earlier: {'; '.join(job.evidence)})"
        self.finish(job, Status.FAILED, now, reason, tb)

    def process_exited(self, host: str, pid: int, how: str, now: float) -> None:
        """A worker process the factory spawned exited: lose it now, with its exit status as
        the evidence, rather than waiting for its heartbeats to run out."""
        for worker in list(self.workers.values()):
            if worker.pid == pid and worker.host == host:
                self.lose_worker(worker, now, f"worker {worker.name} process {how}")

    def journal_status(self, job: JobRecord) -> None:
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

    def finish(
        self, job: JobRecord, status: Status, now: float, reason: str = "", tb: str = ""
    ) -> None:
        # (a job waiting for its worker after a restart is QUEUED too, but in no queue)
        if job.status is ix.QUEUED and job.worker is None and not self.recovery.forget(job.id):
            self.matcher.forget_queued(job)
        if job.worker is not None:
            worker = self.workers.get(job.worker)
            if worker is not None:
                if (
                    release(worker, job)
                    and worker.credit
                    and len(worker.jobs) - worker.riders == worker.slots - 1
                ):
                    self.matcher.slot_freed(worker)
                if status is ix.FINISHED:
                    worker.finished += 1
                    self.spawns.finished_job(worker)
            if job.rank < PROTECTED_HALF:
                self.preemption.left(job)
        counts = job.counts  # (census.move, inline: this is the hot path)
        if counts is not None:
            old = job.status
            counts[ix.AT_RUNNING if old is ix.RUNNING else old] -= 1
            at = ix.AT_FINISHED if status is ix.FINISHED else int(status)
            counts[at] += 1
            counts[ix.TOTAL + at] += 1
            dispatched = job.dispatched_at
            if dispatched is None:  # it ended in the queue: its wait is over now
                wait = now - job.submitted_at
                counts[ix.WAIT + bisect_left(ix.BOUNDS, wait)] += 1
                counts[ix.WAIT_SUM] += wait
            else:
                ran = now - dispatched
                counts[ix.RUN + bisect_left(ix.BOUNDS, ran)] += 1
                counts[ix.RUN_SUM] += ran
        job.status = status
        if status is not ix.FINISHED:
            self.census.bad[job.id] = job
        job.reason = reason
        job.traceback = tb
        job.finished_at = now
        # contents, a checkpoint, control messages: no longer needed once the job is over
        job.blobs = job.files = job.checkpoint = job.controls = None
        self.journal_status(job)
        self.ended.append((now, job.id))
        self.counters[ENDING[status]] += 1
        self.holds.ended(job)
        if status is not ix.FINISHED:
            self._log_end(job, status, now, reason)
        elif self._finished_lines is not None:  # logged at the end of the pass, together
            self._finished_lines.append((job, now))
        topic = TOPIC[status]
        if self.wants_event(topic):
            self._event(topic, job, **self.ending(job, now, reason))
        if job.assistants is not None:  # a master's assistants end with it
            why = f"its parent job {job.id} ended ({status.name})"
            for assistant_id in job.assistants:
                assistant = self.jobs.get(assistant_id)
                if assistant is not None and not assistant.status.done:
                    self.end(assistant, Status.TERMINATED, now, why, "parent ended")
        if job.dependents is not None:  # the jobs that wait for it go on, or fail with it
            self.deps.ended(job, now)

    def end(self, job: JobRecord, status: Status, now: float, reason: str, cancel: str) -> None:
        """End a job that is not over from outside its worker (a client terminated it, its
        parent ended): its worker, if it has it, gets a ``cancel`` with ``cancel`` as reason."""
        holder = None if job.worker is None else self.workers.get(job.worker)
        if holder is not None and job in holder.outgoing:
            # assigned in this very pass and not sent yet: take it back, return the credit
            # (a package's job: only with the last of its package)
            holder.outgoing.remove(job)
            freed = frees_slot(holder, job)
            self.finish(job, status, now, reason)
            if freed:
                self.matcher.add_credit(holder, 1)
            return
        if holder is not None:
            self.out.workers.append((holder.id, p.Cancel([job.id], cancel)))
        self.finish(job, status, now, reason)

    def sent(self, job: JobRecord) -> bool:
        """Was the job's hand-over to its worker sent (not just decided in this pass)?"""
        return job.worker is not None and job.dispatched_at is not None

    def ending(self, job: JobRecord, now: float, reason: str) -> dict[str, Any]:
        """What a job-end event says besides the job: why, how long it waited and ran, and
        what it used."""
        dispatched = job.dispatched_at
        queued_for = max(0.0, (now if dispatched is None else dispatched) - job.submitted_at)
        extra: dict[str, Any] = {
            "reason": reason,
            "attempt": job.attempt,
            "queued_for": queued_for,
            "running_for": None if dispatched is None else max(0.0, now - dispatched),
        }
        if job.used is not None:
            extra["peak_rss"], extra["cpu"] = job.used
        return extra

    def _log_finished(self, ended: list[tuple[JobRecord, float]]) -> None:
        """The INFO lines of the jobs that finished in this pass, as one log record (one
        line each; ``remus.log.configure``'s formatter prefixes every line): under load a
        record per job would cost the broker a third of its throughput."""
        workers = self.workers
        lines = []
        for job, now in ended:
            holder = workers.get(job.worker) if job.worker is not None else None
            dispatched = job.dispatched_at if job.dispatched_at is not None else now
            attempt = f", attempt {job.attempt}" if job.attempt > 1 else ""
            lines.append(
                f"job {job.id} FINISHED: {job.reqs.io_type} on "
                f"{holder.name if holder is not None else 'no worker'}, queued "
                f"{dispatched - job.submitted_at:.3f} s, ran {now - dispatched:.3f} s{attempt}"
            )
        jobs_log.info("%s", "\n".join(lines), extra={"lines": lines})

    def _log_end(self, job: JobRecord, status: Status, now: float, reason: str) -> None:
        """The WARNING line of a job that ended badly."""
        holder = self.workers.get(job.worker) if job.worker is not None else None
        dispatched = job.dispatched_at
        queued = (now if dispatched is None else dispatched) - job.submitted_at
        ran = "" if dispatched is None else f", ran {now - dispatched:.3f} s"
        jobs_log.warning(
            "job %s %s: %s on %s, queued %.3f s%s%s%s",
            job.id,
            status.name,
            job.reqs.io_type,
            holder.name if holder is not None else "no worker",
            queued,
            ran,
            f", attempt {job.attempt}" if job.attempt > 1 else "",
            f": {reason}" if reason else "",
        )

    def _jobs_message(self, worker: WorkerRecord, jobs: list[JobRecord]) -> p.Jobs:
        assigned = []
        wants = self.wants_event("job.assigned")
        refused = 0
        now = self._now
        for job in jobs:
            fs = job.files
            if fs is not None:
                try:  # paths for a worker on another host: the broker sends the bytes
                    fs = files.files_for_worker(
                        fs,
                        worker.host,
                        self.config.file_roots,
                        lambda path, job=job: self.blobs.serve(path, job, now),  # type: ignore[misc]
                    )
                except FileError as e:
                    reason = f"cannot send the job's files to worker {worker.name}: {e}"
                    refused += frees_slot(worker, job)  # (a package's last job gives it back)
                    self.finish(job, Status.FAILED, self._now, reason)
                    continue
            assigned.append(
                p.AssignedJob(
                    job.id,
                    job.reqs,
                    job.keys,
                    job.blobs or (),
                    fs,
                    job.checkpoint,
                    job.parent or "",
                    job.rank >= PROTECTED_HALF,
                    job.linked or (),
                    job.leader or "",
                )
            )
            # In the worker's hands from now on: the status says so and names the worker, and
            # the run time limit counts from here, whatever the worker reports (or does not).
            counts = job.counts  # (census.move, inline: this is the hot path)
            if counts is not None:
                old = job.status
                counts[ix.AT_QUEUED if old is ix.QUEUED else old] -= 1
                counts[ix.AT_RUNNING] += 1
                wait = now - job.submitted_at
                counts[ix.WAIT + bisect_left(ix.BOUNDS, wait)] += 1
                counts[ix.WAIT_SUM] += wait
            job.status = ix.RUNNING
            job.dispatched_at = now
            job.runs += 1
            if job.limits[1] is not None:
                self.limits.add(now + job.limits[1], RUN, job, job.runs)
            self.journal_status(job)
            if job.leader is None or job.leader == job.id:  # (a package takes one slot)
                self.preemption.dispatched(job)
            if wants:
                self._event("job.assigned", job)
        if refused:
            self.matcher.add_credit(worker, refused)
        return p.Jobs(assigned)

    # ================================================================ events

    def _event(self, topic: str, job: JobRecord, **extra: Any) -> None:
        """A job's event. In secure mode it goes out twice when both are wanted: under its
        topic (which only admins may follow) and under ``@OWNER topic`` (see ``owned_topic``),
        which only the job's owner may follow."""
        if not self.wants_event(topic):
            return
        payload = {"job": job.id, "status": job.status.name, "io_type": job.reqs.io_type.to_wire()}
        if job.worker is not None and job.worker in self.workers:
            payload["worker"] = self.workers[job.worker].name
        if job.group is not None:
            payload["group"] = job.group
        payload.update(extra)
        self.out.events.append((topic, payload))
        if job.owner is not None:
            owned = owned_topic(job.owner, topic)
            if self.wants_event(owned):
                self.out.events.append((owned, payload))

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
