"""What workers say: register, report, heartbeat, goodbye.

Part of the pure broker rules (no sockets, ``now`` passed in), driven by
:class:`~remus.server.core.BrokerCore`'s dispatch table like :mod:`remus.server.requests`:
each method applies one decoded worker message to the core's state. The core owns the state and
what happens to jobs (finish, requeue, lose a worker); this module owns reading what a worker
reports.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from remus import protocol as p
from remus.errors import FileError
from remus.server.packages import release
from remus.server.preemption import PROTECTED_HALF
from remus.server.records import WorkerRecord
from remus.server.recovery import saved_files
from remus.types import Status

if TYPE_CHECKING:
    from remus.server.core import BrokerCore

log = logging.getLogger(__name__)


class WorkerMessages:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core

    def register(self, wid: bytes, msg: p.Register, now: float) -> None:
        core = self._core
        worker = core.workers.get(wid)
        if worker is not None and worker.reqs != msg.requirements:
            core.lose_worker(worker, now, "worker re-registered with other requirements")
            worker = None
        if worker is None:
            worker = WorkerRecord(wid, msg.requirements, msg.heartbeat, msg.host, msg.pid, now)
            worker.peer_key = core.sender
            core.workers[wid] = worker
            core.serving.joined(worker)
            core.spawns.registered(worker)
            log.info("worker %s registered for %s", worker.name, msg.requirements.io_type)
            core._worker_event("worker.registered", worker)
            # A worker we do not know that holds jobs: this broker restarted from its journal
            # while the worker kept working. Give it back the jobs it holds that are waiting
            # to run again, rather than run them twice.
            core.recovery.returned(worker)
            core.recovery.claim(worker, msg.held, now)
            for job_id in msg.held:
                job = core.jobs.get(job_id)
                if job is not None and job.status is Status.QUEUED and job.worker is None:
                    core.matcher.forget_queued(job)
                    job.worker = wid
                    core.census.move(job, Status.IN_PROGRESS)
                    job.dispatched_at = now
                    job.started = True
                    worker.jobs.add(job_id)
                    core.journal_status(job)
        else:
            # A reconnect: jobs we assigned that the worker never saw go back to the queue
            # (with its credit at zero, so they do not come straight back to it); started jobs
            # it no longer holds are lost with whatever it did not manage to report.
            worker.heartbeat = msg.heartbeat
            core.matcher.set_credit(worker, 0)
            worker.outgoing = []
            held = set(msg.held)
            for job in sorted((core.jobs[i] for i in worker.jobs), key=lambda j: j.order):
                if job.id in held:
                    continue
                release(worker, job)
                if not job.started:
                    core.requeue(job)
                else:
                    reason = "it no longer held the job when it reconnected"
                    core._retry_or_fail(job, worker, reason, now)
        worker.last_seen = now
        worker.slots = msg.slots
        # answer at once, naming the client endpoint (where its jobs submit assistants): the
        # worker knows it is registered, so Worker.connected is true within one round trip
        core.out.workers.append((wid, p.Heartbeat(client=core.endpoints.get("client", ""))))
        worker.next_beat = now + worker.heartbeat
        core.matcher.set_credit(worker, 0 if core.draining else msg.credit)
        if msg.credit and core.wants_event("worker.ready"):
            core._worker_event("worker.ready", worker)

    def _known(self, wid: bytes, what: str) -> WorkerRecord | None:
        core = self._core
        worker = core.workers.get(wid)
        if worker is None:
            core.out.workers.append(
                (
                    wid,
                    p.Error(
                        -1, "unknown-worker", f"{what} from an unregistered worker: register first"
                    ),
                )
            )
        return worker

    def _progress(self, wid: bytes, updates: Sequence[tuple[str, int | None, str]]) -> None:
        """A report's progress updates, in order. A report carries them by the hundred when a
        job reports fast, so what is the same for all of them is looked up once."""
        core = self._core
        jobs = core.jobs
        limit = core.config.max_progress_history
        journal = core.journal.progress if core.journal is not None else None
        events = core.wants_event("job.progress")
        job = None
        for job_id, value, message in updates:
            if job is None or job.id != job_id:
                if job is not None:
                    core.holds.updated(job)
                job = jobs.get(job_id)
                if job is None or job.worker != wid or job.status.done:
                    job = None
                    continue
                job.started = True  # progress says so even before a lazy "started" arrives
            seq = job.add_progress(value, message, limit)[0]
            if journal is not None:
                journal.append((job_id, seq, value, message))
            if events:
                core._event("job.progress", job, value=value, message=message, seq=seq)
        if job is not None:
            core.holds.updated(job)

    def report(self, wid: bytes, msg: p.Report, now: float) -> None:
        core = self._core
        worker = self._known(wid, "report")
        if worker is None:
            return
        worker.last_seen = now
        if msg.seq and not core.recovery.fresh(worker, msg.seq):
            return  # a copy of a report already applied (its ack was lost): acked again
        jobs = core.jobs
        for job_id, blob in msg.checkpoints:
            job = jobs.get(job_id)
            if job is None or job.status.done:
                continue
            if job.worker == wid or (
                job.worker is None and core.preemption.stopping_on(wid, job_id)
            ):  # (a preempted run saving where it stopped, before the job starts elsewhere)
                job.checkpoint = blob
                if core.journal is not None:
                    core.journal.checkpoints.append((job_id, blob))
        for job_id in msg.started:
            job = jobs.get(job_id)
            if job is not None and job.worker == wid and not job.started and not job.status.done:
                job.started = True
                if not job.retries_left and not job.error_retries and job.rank >= PROTECTED_HALF:
                    # it will never be sent again (no retry left if its worker is lost), so its
                    # contents can go now: a big input and its big result are not held together
                    job.blobs = job.files = None
                core._event("job.started", job)
        if msg.progress:
            self._progress(wid, msg.progress)
        if msg.usage is not None:
            self._usage(worker, msg.usage)
        for job_id, peak, cpu in msg.used:  # (before the results: their endings tell it)
            job = jobs.get(job_id)
            if job is not None and job.worker == wid:
                job.used = (peak, cpu)
        if msg.results or msg.failures or msg.stopped:  # a cancelled job did stop
            over = (*(r[0] for r in msg.results), *(f[0] for f in msg.failures), *msg.stopped)
            core.limits.heard(wid, over)
            core.preemption.heard(wid, over)
        for job_id, blob, *result_files in msg.results:
            job = jobs.get(job_id)
            if job is None or job.worker != wid or job.status.done:
                core.counters["dropped_results"] += 1
                core.recovery.refused(worker, job_id, job, Status.FINISHED, "")
                continue
            if result_files:  # paths in it are on the worker's host
                try:
                    core.blobs.check(result_files[0], worker.peer_key)
                except FileError as e:
                    core.finish(job, Status.FAILED, now, f"its result cannot be kept: {e}")
                    continue
                job.result_files = replace(result_files[0], host=worker.host)
                core.blobs.use(job.result_files, job_id, now)
                if core.journal is not None:  # (what they are, and where: restored with it)
                    core.journal.result_files.append(
                        (job_id, p.pack(saved_files(job.result_files)))
                    )
            job.result = blob
            if core.journal is not None:
                core.journal.results.append((job_id, blob))
            core.finish(job, Status.FINISHED, now)
        for job_id, reason, tb in msg.failures:
            job = jobs.get(job_id)
            if job is None or job.worker != wid or job.status.done:
                core.recovery.refused(worker, job_id, job, Status.FAILED, reason)
                continue
            core._handler_failed(job, worker, reason, tb, now)
        if msg.credit and not core.draining:  # draining: nothing new starts
            core.matcher.add_credit(worker, msg.credit)

    def heartbeat(self, wid: bytes, msg: p.Heartbeat, now: float) -> None:
        worker = self._known(wid, "heartbeat")
        if worker is not None:
            worker.last_seen = now
            if msg.usage is not None:
                self._usage(worker, msg.usage)

    def _usage(self, worker: WorkerRecord, usage: p.Usage) -> None:
        core = self._core
        worker.usage = usage
        if core.wants_event("worker.usage"):
            rss, peak, cpu = usage
            core._worker_event("worker.usage", worker, rss=rss, peak_rss=peak, cpu=cpu)

    def goodbye(self, wid: bytes, msg: p.Goodbye, now: float) -> None:
        core = self._core
        worker = core.workers.get(wid)
        if worker is not None:
            core.lose_worker(worker, now, f"worker {worker.name} exited", topic="worker.exited")
