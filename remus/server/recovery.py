"""Acknowledged reports and recovery after a restart: no finished result is thrown away.

A worker numbers each report that carries something it must not lose (``seq``) and keeps it
until the broker acknowledges it; it sends the unacknowledged ones again after it registers
again (docs/protocol.md, "Acknowledged reports"). On the broker's side this module:

- remembers, per worker, the highest ``seq`` applied, so that a copy sent again to the same
  broker (its ack was lost) is acknowledged again but not applied twice;
- journals, per worker routing id, the highest ``seq`` applied (in the batch of what the report
  changed), so that after a restart the copies a returning worker sends again are
  acknowledged, not applied twice (its progress would appear twice);
- acknowledges on the next ``jobs`` message the worker gets, or on an ``ack`` message ahead of
  any other message it gets, or alone ACK_DELAY after the report at the latest (a refusal in
  the same pass). One job at a time, the next job's message carries the ack: the worker is
  woken once per job, not twice. The core thread writes a pass's journal before it sends
  anything, so an acknowledged report is durable;
- tells the worker which results and failures it refused, and why (the job was terminated,
  ran over its time limit, was given to another worker), so that the worker can say so;
- after a restart from the journal, keeps each job that was running aside for
  ``ServerConfig.restart_grace`` seconds, waiting for the worker that ran it: if it registers
  again holding the job, the job carries on there with its attempt unchanged (its result is on
  the way); past the grace it is requeued counting an attempt, or FAILS with no retry left.

Part of the pure broker rules (no sockets, ``now`` passed in), driven by
:class:`~remus.server.core.BrokerCore` as :class:`~remus.server.holds.Holds` is.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from remus import protocol as p
from remus.server.limits import QUEUE, RESTART, RUN
from remus.server.records import JobRecord, WorkerRecord, job_key, rank_of
from remus.types import Status

if TYPE_CHECKING:
    from remus.server.core import BrokerCore, Outbox
    from remus.server.journal import JournaledJob

log = logging.getLogger(__name__)

#: the longest an ack waits for a message to the same worker to ride on before it goes alone
ACK_DELAY = 0.05
#: a file job's files and args, journaled with its submit options
FILES_OPTION = "_files"
#: the submit option the journal keeps the jobs a job waits for in (remus.server.dependencies)
AFTER_OPTION = "_after"
#: the submit option the journal keeps a job's owner in (secure mode), never a client's
OWNER_OPTION = "_owner"


def saved_files(fs: p.FileSet) -> dict[str, Any]:
    """A job's file set as a self-contained msgpack-able value (inline bytes included; a
    spooled file by its reference: its bytes are in the spool folder)."""
    files_ = [
        [e.path, e.mode, e.ref.to_wire()]
        if e.ref is not None
        else [e.path, e.mode, None if e.data is None else bytes(e.data)]
        for e in fs.files
    ]
    return {"files": files_, "args": list(fs.args), "host": fs.host}


def restored_files(saved: dict[str, Any]) -> p.FileSet:
    entries = [
        p.FileEntry(path, mode, None, p.BlobRef.from_wire(data, "journal"))
        if isinstance(data, dict)
        else p.FileEntry(path, mode, data)
        for path, mode, data in saved["files"]
    ]
    return p.FileSet(entries, saved["args"], saved["host"])


class Recovery:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core
        #: workers whose reports were applied (or copied) and not acknowledged yet
        self._due: dict[bytes, WorkerRecord] = {}
        #: when the oldest of those acks goes, even alone
        self.ack_due = math.inf
        #: after a restart: worker routing id (hex) -> the highest report seq the broker
        #: before applied (from the journal), for the worker's record when it registers again.
        #: (Report seqs count per routing id: several workers of one process share a name.)
        self.acked_before: dict[str, int] = {}
        #: restored running jobs waiting for their worker: job id -> that worker's name
        self.awaiting: dict[str, str] = {}
        #: the same, by worker name
        self._by_worker: dict[str, set[str]] = {}

    # ================================================================ acknowledgements

    def fresh(self, worker: WorkerRecord, seq: int) -> bool:
        """A report numbered ``seq`` (> 0) arrived: True to apply it, False if it is a copy of
        one already applied. Either way it is acknowledged (see :meth:`flush`)."""
        self._owe(worker)
        if seq <= worker.acked:
            return False
        worker.acked = seq
        journal = self._core.journal
        if journal is not None:  # (in the same batch as what the report changes)
            journal.acks[worker.id.hex()] = seq
        return True

    def returned(self, worker: WorkerRecord) -> None:
        """A worker registered (its record is new): if the broker before a restart applied
        reports from it, the copies it sends again are acknowledged, not applied twice."""
        if self.acked_before:
            worker.acked = self.acked_before.pop(worker.id.hex(), 0)

    def refused(
        self, worker: WorkerRecord, job_id: str, job: JobRecord | None, ending: Status, reason: str
    ) -> None:
        """A result (``ending`` FINISHED) or failure (FAILED, with ``reason``) the core did not
        apply: note why for the worker, unless it is a copy of the very one already taken."""
        why = self._why(worker.id, job, ending, reason)
        if not why:
            return
        log.warning("dropped the %s of job %s from %s: %s", _what(ending), job_id, worker.name, why)
        self._core.add_event(
            "job.dropped",
            {"job": job_id, "worker": worker.name, "what": _what(ending), "reason": why},
        )
        if worker.dropped is None:
            worker.dropped = []
        worker.dropped.append((job_id, why))
        self._owe(worker)

    def _owe(self, worker: WorkerRecord) -> None:
        if not self._due:
            self.ack_due = self._core._now + ACK_DELAY
        self._due[worker.id] = worker

    @staticmethod
    def _why(wid: bytes, job: JobRecord | None, ending: Status, reason: str) -> str:
        """Why a result or failure is refused; "" if it is a copy of the one already taken
        (its first copy was applied, by this broker or by the one before a restart)."""
        if job is None:
            return "the broker does not know the job (forgotten, or never journaled)"
        copy = ending is Status.FINISHED or job.reason.startswith(reason)
        if job.status is ending and job.worker in (wid, None) and copy:
            return ""
        if job.status.done:
            said = f": {job.reason}" if job.reason and job.status is not Status.FINISHED else ""
            return f"the job is already {job.status.name}{said}"
        if job.worker is None:
            return "the broker took the job back from this worker and queued it again"
        return "the job was given to another worker"

    def on_jobs(self, worker: WorkerRecord, msg: p.Jobs) -> p.Jobs:
        """The ``jobs`` message for ``worker``, carrying its ack if one is due (and nothing
        was refused: that needs an ``ack`` message)."""
        if worker.dropped is None and self._due.pop(worker.id, None) is not None:
            return p.Jobs(msg.jobs, worker.acked)
        return msg

    def flush(self, out: Outbox) -> None:
        """The acks not sent on a ``jobs`` message, as ``ack`` messages: to a worker that gets
        another message in this pass, or was refused something, or whose ack is due (see
        ACK_DELAY); the others wait for a later pass. They go first: an ack is cumulative, so
        it may overtake anything, and a worker told to shut down in the same pass reads it
        before it stops."""
        if not self._due:
            self.ack_due = math.inf  # (the last went on jobs messages)
            return
        overdue = self._core._now >= self.ack_due
        busy = {wid for wid, _ in out.workers} if out.workers else ()
        workers = self._core.workers
        acks: list[tuple[bytes, p.Message]] = []
        for wid, worker in list(self._due.items()):
            if overdue or worker.dropped is not None or wid in busy:
                if workers.get(wid) is worker:
                    acks.append((wid, p.Ack(worker.acked, worker.dropped or ())))
                worker.dropped = None
                del self._due[wid]
        if not self._due:
            self.ack_due = math.inf
        out.workers[:0] = acks

    # ================================================================ restart

    def restore(
        self,
        jobs: list[JournaledJob],
        now: float,
        gone: Callable[[str], bool] | None = None,
        acks: Mapping[str, int] | None = None,
    ) -> None:
        """Take back the jobs a journal remembers (after a restart): finished ones stay
        retrievable, queued ones queue again, running ones wait ``restart_grace`` seconds for
        the worker that ran them to come back holding them (then carry on there, their attempt
        unchanged), else queue again counting an attempt (``Recovery``). ``gone(name)`` says
        a worker is known to be gone (no wait for it). ``acks``: per worker routing id, the highest
        report seq applied from it (see :meth:`returned`); kept in memory from now on, and
        taken out of the journal, so that workers that never come back leave nothing there."""
        core = self._core
        if acks:
            self.acked_before = dict(acks)
            if core.journal is not None:
                core.journal.acks.update(dict.fromkeys(acks, 0))
        for saved in jobs:
            job = JobRecord(
                saved.id,
                saved.requirements,
                job_key(saved.requirements),
                core.keys_cache.setdefault(saved.keys, saved.keys),
                list(saved.values),
                sum(len(v) for v in saved.values),
                saved.order,
                now,
            )
            opts = saved.options
            if FILES_OPTION in opts:
                job.files = restored_files(opts[FILES_OPTION])
                core.blobs.use(job.files, job.id, now)
            group = opts.get("group")
            if isinstance(group, str):
                job.group = group
                core.groups.setdefault(group, []).append(job.id)
                core.group_left[group] = core.group_left.get(group, 0) + 1
            owner = opts.get(OWNER_OPTION)
            job.owner = owner.encode() if isinstance(owner, str) else None
            job.limits = (
                int(opts.get("max_retries", core.config.max_retries)),
                opts.get("time_limit"),
                opts.get("queue_time_limit"),
            )
            job.rank = rank_of(opts.get("priority", 0), opts.get("protected", True))
            job.checkpoint = saved.checkpoint
            parent = core.jobs.get(opts.get("parent", ""))  # (restored before: older)
            if parent is not None:
                job.parent = parent.id
                parent.assistants = [*(parent.assistants or ()), job.id]
            job.attempt = saved.attempt
            # the journal keeps the attempt, not what ended the earlier ones: count each
            # against both budgets (a restart errs on the side of fewer reruns)
            job.losses = saved.attempt - 1
            retries = opts.get("retries_on_error", 0)
            job.error_retries = max(0, retries - (saved.attempt - 1)) if type(retries) is int else 0
            if saved.progress:
                job.progress = deque(saved.progress, maxlen=core.config.max_progress_history)
                job.seq = saved.progress[-1][0]
            core.order = max(core.order, saved.order)
            core.jobs[job.id] = job
            core.census.add(job)
            after = opts.get(AFTER_OPTION)
            if after and not core.deps.restored(job, tuple(after), saved.status, now):
                continue  # WAITING again (or FAILED: what it waited for ended otherwise)
            if saved.status.done:
                core.census.move(job, saved.status)
                if saved.status is not Status.FINISHED:
                    core.census.bad[job.id] = job
                job.reason, job.traceback = saved.reason, saved.traceback
                job.result = saved.result
                if saved.result_files is not None and saved.status is Status.FINISHED:
                    job.result_files = restored_files(p.unpack(saved.result_files))
                    core.blobs.use(job.result_files, job.id, now)
                job.blobs = None
                job.finished_at = now
                core.ended.append((now, job.id))
                continue
            if saved.status is Status.IN_PROGRESS:
                if self.await_worker(job, saved.worker, now, gone):
                    continue
                job.evidence = [f"attempt {saved.attempt}: the broker restarted while it ran"]
                if not job.retries_left:
                    core.census.move(job, Status.IN_PROGRESS)  # it never went into the queue
                    core.finish(
                        job,
                        Status.FAILED,
                        now,
                        f"no retry left (max_retries={job.limits[0]}): " + job.evidence[0],
                    )
                    continue
                job.history = [job.evidence[0] + "; requeued"]
                job.attempt += 1
                job.losses += 1
            if job.limits[2] is not None:  # the queue time limit starts again with the broker
                core.limits.add(now + job.limits[2], QUEUE, job)
            core.matcher.enqueue(job)
            core.journal_status(job)
        log.info("restored %d jobs from the journal", len(jobs))

    def await_worker(
        self, job: JobRecord, name: str, now: float, gone: Callable[[str], bool] | None = None
    ) -> bool:
        """A restored job was running on worker ``name``: keep it aside (QUEUED, not in the
        queue) for the restart grace. False if there is no grace, no name to wait for, or
        ``gone(name)`` says that worker is known to be gone."""
        grace = self._core.config.restart_grace
        if grace <= 0 or not name or (gone is not None and gone(name)):
            return False
        self.awaiting[job.id] = name
        self._by_worker.setdefault(name, set()).add(job.id)
        job.reason = (
            f"waiting up to {grace:g} s for worker {name}, which ran it before the broker restarted"
        )
        self._core.limits.add(now + grace, RESTART, job)
        return True

    def forget(self, job_id: str) -> bool:
        """Stop waiting for the job's worker (the job ends, or is given back). True if it was
        waiting (and so is in no queue)."""
        name = self.awaiting.pop(job_id, None)
        if name is None:
            return False
        ids = self._by_worker[name]
        ids.discard(job_id)
        if not ids:
            del self._by_worker[name]
        return True

    def claim(self, worker: WorkerRecord, held: Iterable[str], now: float) -> None:
        """A worker registered anew: the jobs it held before the restart carry on there; jobs
        its name ran that it does not hold never reached it, and are queued again at once."""
        if not self.awaiting:
            return
        core = self._core
        held = set(held)
        for job_id in sorted(
            {*(i for i in held if i in self.awaiting), *self._by_worker.get(worker.name, ())}
        ):
            name = self.awaiting[job_id]
            self.forget(job_id)
            job = core.jobs[job_id]
            job.reason = ""
            if job_id not in held:
                log.info(
                    "job %s: worker %s came back without it (it never reached the worker); "
                    "queued again",
                    job_id,
                    name,
                )
                core.requeue(job)
                self._queue_limit(job, now)
                continue
            log.info(
                "job %s: worker %s came back holding it; it carries on (attempt %d)",
                job_id,
                worker.name,
                job.attempt,
            )
            job.worker = worker.id
            core.census.move(job, Status.IN_PROGRESS)
            job.dispatched_at = now
            job.started = True
            worker.jobs.add(job_id)
            if job.limits[1] is not None:  # its run time limit counts again from here
                job.runs += 1
                core.limits.add(now + job.limits[1], RUN, job, job.runs)
            core.journal_status(job)

    def grace_over(self, job: JobRecord, now: float) -> None:
        """The restart grace of a job ended: if its worker did not come back for it, it is
        requeued counting an attempt, or FAILS with no retry left."""
        name = self.awaiting.get(job.id)
        if name is None:
            return
        core = self._core
        line = (
            f"attempt {job.attempt} on {name}: the broker restarted while it ran, and the "
            f"worker did not come back for it within {core.config.restart_grace:g} s"
        )
        job.evidence = [*(job.evidence or ()), line]
        job.reason = ""
        if not job.retries_left:
            core.finish(
                job, Status.FAILED, now, f"no retry left (max_retries={job.limits[0]}): {line}"
            )
            return
        self.forget(job.id)
        job.history = [*(job.history or ()), line + "; requeued"]
        log.warning("job %s: %s; requeued", job.id, line)
        job.attempt += 1
        job.losses += 1
        core.requeue(job)
        self._queue_limit(job, now)

    def _queue_limit(self, job: JobRecord, now: float) -> None:
        if job.limits[2] is not None and job.status is Status.QUEUED and job.worker is None:
            self._core.limits.add(now + job.limits[2], QUEUE, job)


def local_process_gone(host: str) -> Callable[[str], bool]:
    """For the core thread to hand to ``BrokerCore.restore``: whether worker ``name``
    (``worker_name@host:pid``) was a process on this ``host`` that no longer exists, such as a
    worker the broker's factory spawned, which dies with the broker. No job waits for it."""

    def gone(name: str) -> bool:
        rest, _, pid = name.rpartition(":")
        if os.name != "posix" or not rest.endswith("@" + host) or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # it exists (another user's process, say)
        try:  # a zombie nobody reaped yet is gone too (Linux)
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
        except (OSError, IndexError):
            return False

    return gone


def _what(ending: Status) -> str:
    return "result" if ending is Status.FINISHED else "failure"
