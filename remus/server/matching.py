"""Queued jobs meet workers with credit.

Two indexes, each O(1) per job (O(log r) with r distinct ranks in a queue): queued jobs by queue
key (io type, worker name, tag), and workers that still want jobs by every key they accept. A
new job goes straight to a ready worker if there is one, else into its queue; new credit pulls
the best matching queued jobs: protected before unprotected, then higher priority, then older
(a job's ``rank``, :func:`remus.server.records.rank_of`). A worker with a free slot is preferred
to one whose credit is only prefetch (it already holds as many jobs as it has slots).

Work packages (:mod:`remus.server.packages`): a package's leader is queued like any job; the
package's other jobs are counted (``queued``, ``queued_bytes``, per key) but in no queue, and
go to the worker that takes the leader, on the same credit and the same slot.

Nothing here touches a socket: assigned jobs collect in ``worker.outgoing`` and the core sends
them as one message per worker per pass.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterator

from remus.server.records import JobRecord, QueueKey, WorkerRecord
from remus.types import Status

QUEUED = Status.QUEUED


def _live(job: JobRecord) -> bool:
    return job.status is QUEUED and job.worker is None


class Level:
    """The jobs of one rank: those queued again (requeued, preempted) in ``front``, in
    submission order, ahead of the rest in ``back``, in arrival order."""

    __slots__ = ("back", "front")

    def __init__(self) -> None:
        self.front: list[JobRecord] = []
        self.back: deque[JobRecord] = deque()


def _by_order(job: JobRecord) -> int:
    return job.order


class KeyQueue:
    """The queued jobs of one key: a :class:`Level` per rank, the ranks in a heap (highest
    first). A push is O(1) (O(log r) for a new rank; a job queued again goes into its rank's
    short ``front`` list by submission order), and so is taking the best job.

    Jobs leave lazily: one terminated or expired while queued stays where it is until it
    reaches the head. A package's leader that left so hands its place to its heir there."""

    __slots__ = ("levels", "ranks", "top", "top_rank")

    def __init__(self) -> None:
        self.levels: dict[int, Level] = {}
        #: negated ranks of ``levels``
        self.ranks: list[int] = []
        #: the level of the highest rank (the fast path: most queues have one rank)
        self.top: Level | None = None
        self.top_rank = 0

    def push(self, job: JobRecord, front: bool) -> None:
        rank = job.rank
        if self.top is not None and rank == self.top_rank:
            level = self.top
        else:
            found = self.levels.get(rank)
            if found is None:
                found = self.levels[rank] = Level()
                heapq.heappush(self.ranks, -rank)
                if self.top is None or rank > self.top_rank:
                    self.top, self.top_rank = found, rank
            level = found
        if front:
            bisect.insort(level.front, job, key=_by_order)
        else:
            level.back.append(job)

    def head(self) -> JobRecord | None:
        """The best live job, or None (dead heads and empty ranks are dropped on the way)."""
        while True:
            level = self.top
            if level is None:
                return None
            front = level.front
            while front and not _live(front[0]):
                del front[0]
            if front:
                return front[0]
            back = level.back
            while back and not _live(back[0]):
                heir = back[0].package  # a package's leader that left: [heir] takes its place
                if heir:
                    back[0].package = None
                    back[0] = heir[0]
                else:
                    back.popleft()
            if back:
                return back[0]
            # this rank is empty: the next one down
            heapq.heappop(self.ranks)
            del self.levels[self.top_rank]
            if self.ranks:
                self.top_rank = -self.ranks[0]
                self.top = self.levels[self.top_rank]
            else:
                self.top = None

    def pop(self) -> JobRecord:
        """Take the job :meth:`head` returned."""
        assert self.top is not None
        if self.top.front:
            return self.top.front.pop(0)
        return self.top.back.popleft()

    def __iter__(self) -> Iterator[JobRecord]:
        for level in self.levels.values():
            yield from level.front
            for job in level.back:
                yield job
                pack = job.package
                while pack:  # a leader's package (one that left: its heir, then the heir's)
                    yield from pack
                    pack = pack[0].package


class Matcher:
    def __init__(self) -> None:
        self._queues: dict[QueueKey, KeyQueue] = {}
        #: live (still QUEUED, unassigned) jobs per key; the queues may hold terminated leftovers
        self._counts: dict[QueueKey, int] = {}
        #: of those, the protected ones (a protected job waiting may preempt)
        self.protected: dict[QueueKey, int] = {}
        #: workers with credit and a free slot, then those whose credit is only prefetch
        self._ready: dict[QueueKey, dict[bytes, WorkerRecord]] = {}
        self._spare: dict[QueueKey, dict[bytes, WorkerRecord]] = {}
        self.queued = 0
        self.queued_bytes = 0
        #: workers that were given jobs since the last flush
        self.dirty: dict[bytes, WorkerRecord] = {}
        #: a protected job was queued (not dispatched) since the core last looked
        self.protected_waits = False

    # ------------------------------------------------------------------ jobs

    def enqueue(self, job: JobRecord, *, front: bool = False) -> WorkerRecord | None:
        """Give the job to a ready worker, or queue it. Returns the worker it went to. A
        package's leader brings its package: counted as queued, going out with it."""
        key = job.key
        if job.package is not None:
            for member in job.package:
                self._counts[key] = self._counts.get(key, 0) + 1
                self.queued += 1
                self.queued_bytes += member.size
        ready = self._ready.get(key) or self._spare.get(key)
        if ready:
            worker = next(iter(ready.values()))
            self._assign(worker, job)
            if worker.credit:
                # round robin: the next job of this key goes to the next ready worker
                mine = self._tier(worker).get(key)
                if mine is not None and mine.pop(worker.id, None) is not None:
                    mine[worker.id] = worker
            return worker
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = KeyQueue()
        queue.push(job, front)
        self._counts[key] = self._counts.get(key, 0) + 1
        if job.rank >= PROTECTED_HALF:
            self.protected[key] = self.protected.get(key, 0) + 1
            self.protected_waits = True
        self.queued += 1
        self.queued_bytes += job.size
        return None

    def forget_queued(self, job: JobRecord) -> None:
        """A queued job left the queue without a worker (terminated, expired): lazy removal.
        A package's leader hands its place and the rest of its package to its heir."""
        if job.leader is not None:  # riding in a package: counted, but in no queue
            self._counts[job.key] -= 1
            self.queued -= 1
            self.queued_bytes -= job.size
            return
        self._left(job)
        if job.package is not None:
            self._promote(job)

    def _promote(self, gone: JobRecord) -> None:
        """``gone`` led a package and left the queue: its first job still queued becomes the
        leader of the jobs after it, in ``gone``'s place (:meth:`KeyQueue.head` puts it there
        when it gets to it: ``gone.package`` is then ``[heir]``)."""
        members, gone.package = gone.package or [], None
        for i, heir in enumerate(members):
            if _live(heir):
                heir.leader = None
                heir.package = members[i + 1 :] or None
                gone.package = [heir]
                if heir.rank >= PROTECTED_HALF:  # now a job in a queue, waiting for a slot
                    self.protected[heir.key] = self.protected.get(heir.key, 0) + 1
                    self.protected_waits = True
                return

    def _left(self, job: JobRecord) -> None:
        key = job.key
        self._counts[key] -= 1
        if job.rank >= PROTECTED_HALF:
            self.protected[key] -= 1
        self.queued -= 1
        self.queued_bytes -= job.size

    def _pop_best(self, keys: tuple[QueueKey, ...]) -> JobRecord | None:
        best: KeyQueue | None = None
        best_job: JobRecord | None = None
        best_again = False
        for key in keys:
            queue = self._queues.get(key)
            if queue is None:
                continue
            job = queue.head()
            if job is None:
                continue
            # queued again (its rank's front list): ahead of its equals under the other keys too
            again = queue.top is not None and bool(queue.top.front) and queue.top.front[0] is job
            if (
                best_job is None
                or job.rank > best_job.rank
                or (
                    job.rank == best_job.rank
                    and (again > best_again or (again == best_again and job.order < best_job.order))
                )
            ):
                best, best_job, best_again = queue, job, again
        if best is None or best_job is None:
            return None
        best.pop()
        self._left(best_job)
        return best_job

    # ------------------------------------------------------------------ workers

    def _tier(self, worker: WorkerRecord) -> dict[QueueKey, dict[bytes, WorkerRecord]]:
        """Where a worker with credit waits: with the free slots, or with the prefetch."""
        return self._ready if len(worker.jobs) - worker.riders < worker.slots else self._spare

    def add_credit(self, worker: WorkerRecord, credit: int) -> None:
        worker.credit += credit
        while worker.credit > 0:
            job = self._pop_best(worker.keys)
            if job is None:
                break
            self._assign(worker, job)
        if worker.credit > 0:
            self._unready(worker)  # its tier may have changed
            tier = self._tier(worker)
            for key in worker.keys:
                tier.setdefault(key, {})[worker.id] = worker

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
        for tier in (self._ready, self._spare):
            for key in worker.keys:
                ready = tier.get(key)
                if ready is not None:
                    ready.pop(worker.id, None)
                    if not ready:
                        del tier[key]

    def _assign(self, worker: WorkerRecord, job: JobRecord) -> None:
        job.worker = worker.id
        had_free_slot = len(worker.jobs) - worker.riders < worker.slots
        worker.jobs.add(job.id)
        worker.outgoing.append(job)
        if job.package is not None:
            self._board(worker, job)
        worker.credit -= 1
        self.dirty[worker.id] = worker
        if worker.credit == 0:
            self._unready(worker)
        elif had_free_slot and len(worker.jobs) - worker.riders >= worker.slots:
            # its slots are full: what credit it has left is prefetch
            self._move(worker, self._ready, self._spare)

    def _board(self, worker: WorkerRecord, leader: JobRecord) -> None:
        """The package of ``leader`` goes with it: each of its jobs still queued, right after
        it, in the same slot (``riders`` take none)."""
        members, leader.package = leader.package or [], None
        riders = 0
        wid = worker.id
        held = worker.jobs
        outgoing = worker.outgoing
        for member in members:
            if member.status is not QUEUED or member.worker is not None:
                continue  # ended while queued (already uncounted), or taken back by a worker
            self._counts[member.key] -= 1
            self.queued -= 1
            self.queued_bytes -= member.size
            member.worker = wid
            member.leader = leader.id
            held.add(member.id)
            outgoing.append(member)
            riders += 1
        if riders:
            leader.leader = leader.id
            worker.riders += riders
            if worker.packs is None:
                worker.packs = {}
            worker.packs[leader.id] = riders + 1

    def slot_freed(self, worker: WorkerRecord) -> None:
        """A job of the worker ended: with credit left, it may move up to the free slots."""
        if worker.credit > 0 and len(worker.jobs) - worker.riders == worker.slots - 1:
            self._move(worker, self._spare, self._ready)

    def _move(
        self,
        worker: WorkerRecord,
        src: dict[QueueKey, dict[bytes, WorkerRecord]],
        dst: dict[QueueKey, dict[bytes, WorkerRecord]],
    ) -> None:
        """Move a ready worker from one tier to the other, for every key it takes."""
        for key in worker.keys:
            here = src.get(key)
            if here is not None and here.pop(worker.id, None) is not None:
                if not here:
                    del src[key]
                dst.setdefault(key, {})[worker.id] = worker

    # ------------------------------------------------------------------ reporting

    def demand(self) -> Iterator[tuple[JobRecord, int]]:
        """For each key with waiting jobs: its best live job and how many wait."""
        for key, count in self._counts.items():
            if count <= 0:
                continue
            job = self._queues[key].head()
            if job is not None:
                yield job, count

    def waiting_protected(self) -> dict[QueueKey, int]:
        """Keys with protected jobs queued, and how many."""
        return {key: n for key, n in self.protected.items() if n > 0}

    def queued_jobs(self) -> Iterator[JobRecord]:
        """Every job in a queue, in no particular order; leftovers included (a job that left
        its queue lazily is still there: check its status and worker)."""
        for queue in self._queues.values():
            yield from queue

    def ready_workers(self) -> int:
        return len({wid for tier in (self._ready, self._spare) for r in tier.values() for wid in r})


#: ranks at or above this are protected (``records.PROTECTED_RANK`` less the priority bound)
PROTECTED_HALF = 1 << 31
