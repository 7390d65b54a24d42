"""Preemption: a protected job that waits takes the slot of a spare-capacity job.

Part of the pure broker rules (``now`` passed in), driven by
:class:`~remus.server.core.BrokerCore`. Unprotected jobs (``protected=False``) run only in slots
no protected job wants: when a protected job is queued and no free slot takes it, the youngest
unprotected job running on a worker that could take it is cancelled there (reason
``preempted``) and queued again at the front of its rank, without counting an attempt. The
worker has ``preempt_grace`` seconds to say it stopped (``report.stopped``, or any result or
failure of the job); a spawned worker still silent then is killed, a connected one is no longer
waited for. Its credit, sent when the handler stops, is the freed slot: the waiting protected
job (ranked above every unprotected one) takes it.

The check runs at the end of a pass, and only when something could have changed the answer: a
protected job was queued, an unprotected job started running, or a grace ran out.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from remus import protocol as p
from remus.server.limits import PREEMPT
from remus.server.records import PROTECTED_RANK, JobRecord, QueueKey

if TYPE_CHECKING:
    from remus.server.core import BrokerCore

log = logging.getLogger(__name__)

#: ranks below this are unprotected
PROTECTED_HALF = PROTECTED_RANK // 2


class Preemption:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core
        #: unprotected jobs handed to a worker (sent), by id
        self.running: dict[str, JobRecord] = {}
        #: per queue key: preemptions made for its protected jobs whose slot is not free yet
        self._pending: dict[QueueKey, int] = {}
        #: (worker id, job id) -> the key it was preempted for, until the worker says it stopped
        self._stopping: dict[tuple[bytes, str], QueueKey | None] = {}
        #: something changed that may call for a preemption
        self._check = False

    # ------------------------------------------------------------------ what the core tells

    def dispatched(self, job: JobRecord) -> None:
        """A job was sent to a worker."""
        if job.rank < PROTECTED_HALF:
            self.running[job.id] = job
            self._check = True
            return
        pending = self._pending.get(job.key)
        if pending:  # one of the slots made for this key's protected jobs is taken
            self._pending[job.key] = pending - 1
        worker = self._core.workers.get(job.worker) if job.worker is not None else None
        if self.running and worker is not None and len(worker.jobs) - worker.riders > worker.slots:
            # it went to the worker's prefetch: it must not wait there behind a spare job
            mine = [j for j in self.running.values() if j.worker == worker.id]
            if mine:
                youngest = max(mine, key=lambda j: j.dispatched_at or 0.0)
                self._preempt(youngest, None, self._core._now)

    def left(self, job: JobRecord) -> None:
        """The job is no longer running where it was sent (ended, requeued)."""
        self.running.pop(job.id, None)

    def heard(self, wid: bytes, job_ids: list[str] | tuple[str, ...]) -> None:
        """The worker says these jobs stopped (or reported their end)."""
        if self._stopping:
            for job_id in job_ids:
                self._stopping.pop((wid, job_id), None)

    def stopping_on(self, wid: bytes, job_id: str) -> bool:
        """Was the job preempted on this worker, which has not said it stopped yet?"""
        return (wid, job_id) in self._stopping

    # ------------------------------------------------------------------ the rule

    def check(self, now: float) -> None:
        """Preempt what the protected jobs waiting now need (at the end of a pass)."""
        core = self._core
        matcher = core.matcher
        if matcher.protected_waits:
            matcher.protected_waits = False
            self._check = True
        if self._pending:  # never more than the protected jobs still waiting (some left)
            for key, count in list(self._pending.items()):
                waiting = matcher.protected.get(key, 0)
                if count > waiting:
                    self._pending[key] = waiting
                if not self._pending[key]:
                    del self._pending[key]
        if not self._check or not self.running:
            return
        self._check = False
        need = {}
        for key, waiting in matcher.waiting_protected().items():
            short = waiting - self._pending.get(key, 0)
            if short > 0:
                need[key] = short
        if not need:
            return
        workers = core.workers
        for job in sorted(
            self.running.values(), key=lambda j: j.dispatched_at or 0.0, reverse=True
        ):
            worker = workers.get(job.worker) if job.worker is not None else None
            if worker is None:
                continue
            for key in worker.keys:
                if need.get(key, 0) > 0:
                    need[key] -= 1
                    self._preempt(job, key, now)
                    break
            if not any(need.values()):
                return

    def _preempt(self, job: JobRecord, key: QueueKey | None, now: float) -> None:
        """Cancel ``job`` where it runs and queue it again; ``key``: the queue key of the
        protected jobs that wait for its slot (None: one already on that worker)."""
        core = self._core
        assert job.worker is not None
        worker = core.workers[job.worker]
        line = f"attempt {job.attempt} on {worker.name}: preempted for a protected job"
        job.history = [*(job.history or ()), line]
        log.warning("job %s: %s; queued again", job.id, line)
        core.out.workers.append((worker.id, p.Cancel([job.id], "preempted")))
        self._stopping[(worker.id, job.id)] = key
        if key is not None:
            self._pending[key] = self._pending.get(key, 0) + 1
        worker.jobs.discard(job.id)
        core.matcher.slot_freed(worker)
        core.counters["preempted"] += 1
        core.requeue(job)  # its attempt is not counted: it did nothing wrong
        core._event("job.preempted", job, worker=worker.name)
        core.limits.add(now + core.config.preempt_grace, PREEMPT, job)

    def grace_over(self, job_id: str, now: float) -> None:
        """``preempt_grace`` after a preemption: a worker still running the job is killed if
        the broker spawned it; either way its slot is no longer counted on."""
        core = self._core
        for wid, jid in [k for k in self._stopping if k[1] == job_id]:
            key = self._stopping.pop((wid, jid))
            if key is not None and self._pending.get(key):
                self._pending[key] -= 1
                self._check = True  # another unprotected job may have to make way instead
            worker = core.workers.get(wid)
            if worker is not None:
                log.warning(
                    "worker %s did not stop preempted job %s within %g s: %s",
                    worker.name,
                    jid,
                    core.config.preempt_grace,
                    "killing it if this broker spawned it; its run is abandoned",
                )
                core.out.kills.append((worker.host, worker.pid))
