"""Queued jobs meet workers with credit.

Two indexes, each O(1) per job: queued jobs by queue key (io type, worker name, tag), and
workers that still want jobs by every key they accept. A new job goes straight to a ready
worker if there is one, else into its queue; new credit pulls the oldest matching queued jobs.
Nothing here touches a socket: assigned jobs collect in ``worker.outgoing`` and the core sends
them as one message per worker per pass.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from remus.server.records import JobRecord, QueueKey, WorkerRecord
from remus.types import Status


class Matcher:
    def __init__(self) -> None:
        self._queues: dict[QueueKey, deque[JobRecord]] = {}
        #: live (still QUEUED, unassigned) jobs per key; the deques may hold terminated leftovers
        self._counts: dict[QueueKey, int] = {}
        self._ready: dict[QueueKey, dict[bytes, WorkerRecord]] = {}
        self.queued = 0
        self.queued_bytes = 0
        #: workers that were given jobs since the last flush
        self.dirty: dict[bytes, WorkerRecord] = {}

    # ------------------------------------------------------------------ jobs

    def enqueue(self, job: JobRecord, *, front: bool = False) -> WorkerRecord | None:
        """Give the job to a ready worker, or queue it. Returns the worker it went to."""
        ready = self._ready.get(job.key)
        if ready:
            worker = next(iter(ready.values()))
            self._assign(worker, job)
            if worker.credit:
                # round robin: the next job of this key goes to the next ready worker
                del ready[worker.id]
                ready[worker.id] = worker
            return worker
        queue = self._queues.get(job.key)
        if queue is None:
            queue = self._queues[job.key] = deque()
        if front:
            # a requeued job goes back among the oldest, in submission order
            i = 0
            while i < len(queue) and queue[i].order < job.order:
                i += 1
            queue.insert(i, job)
        else:
            queue.append(job)
        self._counts[job.key] = self._counts.get(job.key, 0) + 1
        self.queued += 1
        self.queued_bytes += job.size
        return None

    def forget_queued(self, job: JobRecord) -> None:
        """A queued job left the queue without a worker (terminated, expired): lazy removal."""
        self._counts[job.key] -= 1
        self.queued -= 1
        self.queued_bytes -= job.size

    def _pop_oldest(self, keys: tuple[QueueKey, ...]) -> JobRecord | None:
        best: deque[JobRecord] | None = None
        for key in keys:
            queue = self._queues.get(key)
            if not queue:
                continue
            while queue and (queue[0].status is not Status.QUEUED or queue[0].worker is not None):
                queue.popleft()  # terminated or expired while queued
            if queue and (best is None or queue[0].order < best[0].order):
                best = queue
        if best is None:
            return None
        job = best.popleft()
        self._counts[job.key] -= 1
        self.queued -= 1
        self.queued_bytes -= job.size
        return job

    # ------------------------------------------------------------------ workers

    def add_credit(self, worker: WorkerRecord, credit: int) -> None:
        worker.credit += credit
        while worker.credit > 0:
            job = self._pop_oldest(worker.keys)
            if job is None:
                break
            self._assign(worker, job)
        if worker.credit > 0:
            for key in worker.keys:
                self._ready.setdefault(key, {})[worker.id] = worker

    def set_credit(self, worker: WorkerRecord, credit: int) -> None:
        """The worker told us (on register) how many more jobs it wants: that is the truth."""
        self._unready(worker)
        worker.credit = 0
        self.add_credit(worker, credit)

    def remove_worker(self, worker: WorkerRecord) -> None:
        self._unready(worker)
        self.dirty.pop(worker.id, None)
        worker.credit = 0

    def _unready(self, worker: WorkerRecord) -> None:
        for key in worker.keys:
            ready = self._ready.get(key)
            if ready is not None:
                ready.pop(worker.id, None)
                if not ready:
                    del self._ready[key]

    def _assign(self, worker: WorkerRecord, job: JobRecord) -> None:
        job.worker = worker.id
        worker.jobs.add(job.id)
        worker.outgoing.append(job)
        worker.credit -= 1
        self.dirty[worker.id] = worker
        if worker.credit == 0:
            self._unready(worker)

    # ------------------------------------------------------------------ reporting

    def demand(self) -> Iterator[tuple[JobRecord, int]]:
        """For each key with waiting jobs: its oldest live job and how many wait."""
        for key, count in self._counts.items():
            if count <= 0:
                continue
            queue = self._queues[key]
            while queue and (queue[0].status is not Status.QUEUED or queue[0].worker is not None):
                queue.popleft()
            if queue:
                yield queue[0], count

    def queued_jobs(self) -> Iterator[JobRecord]:
        """Every job in a queue, in no particular order; leftovers included (a job that left
        its queue lazily is still there: check its status and worker)."""
        for queue in self._queues.values():
            yield from queue

    def ready_workers(self) -> int:
        return len({wid for ready in self._ready.values() for wid in ready})
