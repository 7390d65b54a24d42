"""Work packages: many tiny jobs of one submit handed to a worker as one unit.

Part of the pure broker rules (no sockets, no clock). The rules (docs/protocol.md,
"Workflows: work packages"):

- A submit with ``opts.package_size`` K cuts the jobs it queues at once (not those that wait
  for others), in order and per queue key, into packages of up to K jobs. The first job of a
  package, its *leader*, goes into the queue; the others ride with it: QUEUED, counted among
  the queued jobs and their bytes, in no queue.
- One credit takes a package as it takes one job: the leader and each of its jobs still
  queued go out in the same ``jobs`` message, one after the other, each row's extra naming the
  package (``package``: the leader's id). They share one slot (``WorkerRecord.riders``): the
  worker runs them one after the other and gives back one credit when the last one ends.
- A job of a package that ends while queued (terminated, expired) is left out when the package
  goes. A leader that leaves the queue first hands its place in the queue to the package's next
  job still queued (its *heir*), which leads the jobs after it (``Matcher.forget_queued``).
- Once handed out, a package's jobs are jobs like any other: each ends on its own (result,
  failure, cancel, time limit). One its worker loses goes back to the queue on its own and is
  never packed again; one it finished stays finished.
- The journal keeps ``package_size`` among the options but knows no packages: after a restart
  the jobs are queued one by one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from remus.server.matching import Matcher
    from remus.server.records import JobRecord, WorkerRecord


class Packer:
    """Cuts a submit's jobs, as they are queued, into packages of up to ``size``: call
    :meth:`add` for each job to queue, in order, then :meth:`flush` once at the end."""

    __slots__ = ("_matcher", "_pack", "size")

    def __init__(self, matcher: Matcher, size: int) -> None:
        self._matcher = matcher
        self.size = size
        self._pack: list[JobRecord] = []

    def add(self, job: JobRecord) -> None:
        pack = self._pack
        if pack and (len(pack) >= self.size or pack[0].key != job.key):
            self.flush()
        self._pack.append(job)

    def flush(self) -> None:
        """Queue the package being filled (its leader; the others ride with it)."""
        pack, self._pack = self._pack, []
        if not pack:
            return
        leader = pack[0]
        if len(pack) > 1:
            leader.package = pack[1:]
            for member in leader.package:
                member.leader = leader.id
        self._matcher.enqueue(leader)


def frees_slot(worker: WorkerRecord, job: JobRecord) -> bool:
    """Would the worker's letting go of ``job`` free one of its slots? Not while other jobs of
    its package are still held there."""
    leader = job.leader
    return leader is None or worker.packs is None or worker.packs.get(leader, 1) <= 1


def release(worker: WorkerRecord, job: JobRecord) -> bool:
    """The worker no longer holds ``job``: True if that frees one of its slots (a package's
    jobs share one, freed when the last of them leaves). The job is a package's no more."""
    worker.jobs.discard(job.id)
    leader = job.leader
    if leader is None:
        return True
    job.leader = None
    packs = worker.packs
    left = packs.get(leader, 0) - 1 if packs is not None else 0
    if packs is None or left < 0:
        return True  # (not held here as a package's: nothing to count)
    if left:
        packs[leader] = left
        worker.riders -= 1
        return False
    del packs[leader]
    return True
