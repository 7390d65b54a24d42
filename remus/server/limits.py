"""Time limits: every deadline the broker keeps for a job, in one heap.

Part of the pure broker rules (``now`` passed in), driven by
:class:`~remus.server.core.BrokerCore`. Four kinds of deadline:

- ``queue``: the job's ``queue_time_limit``, from submission; a job no worker took by then
  EXPIRES (the only way a job expires);
- ``run``: the job's ``time_limit``, from the moment the broker hands it to a worker, whatever
  the worker reports; past it the job FAILS ("time limit") and its worker gets a ``cancel``;
- ``kill``: ``kill_grace`` after such a cancel; a worker still silent about the job by then is
  killed if the broker spawned it (and that is not counted as a crash);
- ``restart``: a job that was running when the broker restarted stops waiting for its worker
  (:mod:`remus.server.recovery`);
- ``preempt``: ``preempt_grace`` after a preemption (:mod:`remus.server.preemption`).

Deadlines are never removed from the heap: each one checks, when due, that it still applies
(the job's run number for ``run``), which keeps adding one O(log n).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from remus import protocol as p
from remus.server.records import JobRecord
from remus.types import Status, describe

if TYPE_CHECKING:
    from remus.server.core import BrokerCore

log = logging.getLogger(__name__)

QUEUE = "queue"
RUN = "run"
KILL = "kill"
RESTART = "restart"
#: ``preempt_grace`` after a preemption (:mod:`remus.server.preemption`)
PREEMPT = "preempt"


class Limits:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core
        #: (deadline, job order, kind, job id, run number)
        self._heap: list[tuple[float, int, str, str, int]] = []
        #: (worker id, job id) cancelled for its time limit, awaiting the worker's word
        self._cancelled: dict[tuple[bytes, str], float] = {}

    def add(self, deadline: float, kind: str, job: JobRecord, run: int = 0) -> None:
        heapq.heappush(self._heap, (deadline, job.order, kind, job.id, run))

    def earliest(self, default: float) -> float:
        """The next deadline, or ``default`` if there is none."""
        return self._heap[0][0] if self._heap else default

    def heard(self, wid: bytes, job_ids: Iterable[str]) -> None:
        """The worker reported these jobs over: a cancelled one did stop, no kill is due."""
        if self._cancelled:
            for job_id in job_ids:
                self._cancelled.pop((wid, job_id), None)

    def due(self, now: float) -> None:
        """Act on every deadline that has come."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, kind, job_id, run = heapq.heappop(heap)
            self._due(kind, job_id, run, now)

    def _due(self, kind: str, job_id: str, run: int, now: float) -> None:
        core = self._core
        job = core.jobs.get(job_id)
        if kind == PREEMPT:  # whatever became of the job, its old worker may still run it
            core.preemption.grace_over(job_id, now)
            return
        if job is None or (job.status.done and kind != KILL):
            return
        if kind == QUEUE and job.status is Status.QUEUED and job.worker is None:
            core.finish(
                job,
                Status.EXPIRED,
                now,
                f"no worker for {describe(job.reqs)} took it within its queue time limit "
                f"of {job.limits[2]:g} s ({core.serving.queued_reason(job)})",
            )
        elif kind == RUN and job.runs == run and job.worker is not None:
            worker = core.workers.get(job.worker)
            core.finish(job, Status.FAILED, now, f"time limit: ran over {job.limits[1]:g} s")
            if worker is not None:
                core.out.workers.append((worker.id, p.Cancel([job.id], "time limit")))
                self._cancelled[(worker.id, job.id)] = now
                self.add(now + core.config.kill_grace, KILL, job)
        elif kind == KILL:
            for wid, jid in [key for key in self._cancelled if key[1] == job_id]:
                del self._cancelled[(wid, jid)]
                worker = core.workers.get(wid)
                if worker is not None:  # still silent about the job after the grace
                    log.warning("worker %s ignored the time limit of job %s", worker.name, jid)
                    core.out.kills.append((worker.host, worker.pid))
        elif kind == RESTART:
            core.recovery.grace_over(job, now)
