"""The core's side of the worker factory: what its processes did, and what it asks of them.

Part of the pure broker rules, driven by :class:`~remus.server.core.BrokerCore`. The factory
(outside the rules, on the core thread) starts and reaps processes; it needs to know which of
them registered, with what requirements, whether each is idle and how many jobs it finished
(to tell a failed start from a crash, to reset its back-off, to find an idle worker it may ask
to leave). And when it quarantines a worker file, the jobs only that file could run must end
with its evidence instead of waiting forever.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from remus import protocol as p
from remus.server.records import SpawnRecord, WorkerRecord
from remus.types import JobRequirements, Status, matches

if TYPE_CHECKING:
    from remus.server.core import BrokerCore

log = logging.getLogger(__name__)


class Spawns:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core
        #: processes the factory started on this broker's host, by pid
        self.records: dict[int, SpawnRecord] = {}

    # -------------------------------------------------------------- news from the factory

    def started(self, pid: int) -> None:
        self.records[pid] = SpawnRecord()

    def reaped(self, pid: int) -> None:
        self.records.pop(pid, None)

    # -------------------------------------------------------------- news from the rules

    def registered(self, worker: WorkerRecord) -> None:
        rec = self._mine(worker)
        if rec is not None:
            rec.reqs, rec.worker = worker.reqs, worker.id

    def finished_job(self, worker: WorkerRecord) -> None:
        rec = self._mine(worker)
        if rec is not None:
            rec.finished += 1

    def _mine(self, worker: WorkerRecord) -> SpawnRecord | None:
        if not self.records or worker.host != self._core.host:
            return None
        return self.records.get(worker.pid)

    # -------------------------------------------------------------- for the factory

    def view(self) -> dict[int, tuple[JobRequirements | None, bool, int]]:
        """Per process the factory started: what it registered (None: not yet), whether it is
        idle (registered, holding no job), how many jobs it finished."""
        workers = self._core.workers
        view = {}
        for pid, rec in self.records.items():
            worker = workers.get(rec.worker) if rec.worker is not None else None
            view[pid] = (rec.reqs, worker is not None and not worker.jobs, rec.finished)
        return view

    def ask_to_leave(self, pid: int, reason: str, now: float) -> bool:
        """Tell the worker the factory started as ``pid`` to exit, with ``reason``: it is taken
        off now (nothing more goes to it; jobs it holds are requeued or retried)."""
        core = self._core
        rec = self.records.get(pid)
        worker = core.workers.get(rec.worker) if rec is not None and rec.worker else None
        if worker is None:
            return False
        core.out.workers.append((worker.id, p.Shutdown(reason)))
        text = f"worker {worker.name} was asked to leave: {reason}"
        core.lose_worker(worker, now, text, topic="worker.exited")
        return True

    def quarantined(self, offer: JobRequirements, reason: str, now: float) -> int:
        """A worker file offering ``offer`` was quarantined: FAIL with ``reason`` each queued
        job that only it could run (no connected worker, no other worker file serves it)."""
        core = self._core
        doomed = [
            job
            for job in core.jobs.values()
            if job.status is Status.QUEUED
            and job.worker is None
            and not job.reason  # (one waiting for its worker after a restart)
            and matches(job.reqs, offer)
            and not core.serving.serves(job.reqs)
        ]
        for job in doomed:
            core.finish(job, Status.FAILED, now, reason)
        if doomed:
            log.warning("failed %d queued jobs only the quarantined file could run", len(doomed))
        return len(doomed)
