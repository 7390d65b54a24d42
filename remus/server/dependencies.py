"""Jobs submitted ``after`` others: held WAITING until every one of them has FINISHED.

The rules (docs/protocol.md, "Workflows"):

- a submit names, per job, the ids of the jobs it waits for. Each must be a job the sender
  may see, or one that comes *before* it in the same submit (so a whole graph goes in one
  message, in an order where every job follows what it waits for, and a cycle cannot be
  written down). Anything else refuses the whole submit (``bad-after``);
- a job whose predecessors have all FINISHED is queued at once; one of them that ended
  otherwise fails it at once; else it is WAITING;
- when its last predecessor FINISHES the job is queued, carrying each predecessor's result
  as the content ``@<id>`` and its result files appended to its own files (the worker's
  ``job.inputs_from(id)`` gives both back);
- when a predecessor ends in any other way, every job that waits for it, directly or not,
  ends FAILED at once, with a reason that names the predecessor and how it ended.

A job's ``after`` list is journaled with its options, so a graph survives a restart: the
waiting jobs wait again for whatever has not finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from remus import protocol as p
from remus.server.limits import QUEUE
from remus.types import Status

if TYPE_CHECKING:
    from remus.server.core import BrokerCore
    from remus.server.records import JobRecord


class Dependencies:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core

    # -------------------------------------------------------------- at submit

    def refusal(self, jobs: Sequence[p.SubmittedJob]) -> str:
        """Why a submit's ``after`` lists cannot be taken ("" if they can)."""
        core = self._core
        before: set[str] = set()
        ids = {j.id for j in jobs}
        for j in jobs:
            for pred in j.after:
                if pred in before:
                    continue
                if pred in ids:
                    return (
                        f"job {j.id} waits for {pred}, which comes after it in the same "
                        "submit: put every job after the jobs it waits for (a cycle cannot be "
                        "ordered so)"
                    )
                if core.visible(pred) is None:
                    return f"job {j.id} waits for {pred}, which this broker does not know"
            before.add(j.id)
        return ""

    def place(self, job: JobRecord, after: tuple[str, ...], now: float) -> bool:
        """A new job submitted ``after`` these jobs: True if it can be queued now (its
        predecessors' results attached); else it is WAITING, or FAILED already."""
        job.after = after
        return self._settle(job, now)

    def _settle(self, job: JobRecord, now: float) -> bool:
        """True if ``job`` can be queued now (its predecessors' results attached); else it
        waits, or it failed already."""
        waiting = self._waiting(job, now)
        if waiting is None:  # failed
            return False
        if waiting:
            self._wait(job, waiting)
            return False
        self._attach(job, now)
        return True

    def why_waiting(self, job: JobRecord) -> str:
        """A WAITING job's status reason, in words."""
        waiting = sorted(job.waiting or ())
        named = ", ".join(waiting[:3]) + (
            f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
        )
        return f"waiting for {len(waiting)} job{'s' * (len(waiting) != 1)} to finish: {named}"

    def _waiting(self, job: JobRecord, now: float) -> set[str] | None:
        """The predecessors of ``job`` that have not finished yet, or None after failing the
        job because one of them ended otherwise (or is gone)."""
        core = self._core
        waiting = set()
        for pred_id in job.after or ():
            pred = core.jobs.get(pred_id)
            if pred is None:
                self._fail(job, pred_id, "is no longer known to the broker", now)
                return None
            if pred.status is Status.FINISHED:
                continue
            if pred.status.done:
                self._fail(job, pred_id, f"ended {pred.status.name}: {pred.reason}", now)
                return None
            waiting.add(pred_id)
        return waiting

    def _wait(self, job: JobRecord, waiting: set[str]) -> None:
        core = self._core
        job.waiting = waiting
        core.census.move(job, Status.WAITING)
        for pred_id in waiting:
            pred = core.jobs[pred_id]
            if pred.dependents is None:
                pred.dependents = []
            pred.dependents.append(job.id)

    def _fail(self, job: JobRecord, pred_id: str, how: str, now: float) -> None:
        if job.status is Status.QUEUED:  # (new or restored: in no queue yet)
            self._core.census.move(job, Status.WAITING)
        self._core.finish(
            job, Status.FAILED, now, f"it was to run after job {pred_id}, which {how}"
        )

    # -------------------------------------------------------------- as predecessors end

    def ended(self, pred: JobRecord, now: float) -> None:
        """``pred`` is over: queue the jobs it was the last wait of, or fail every job that
        waits for it (they fail theirs in turn, through ``finish``)."""
        core = self._core
        dependents, pred.dependents = pred.dependents or [], None
        for job_id in dependents:
            job = core.jobs.get(job_id)
            if job is None or job.status is not Status.WAITING:
                continue
            if pred.status is not Status.FINISHED:
                self._fail(job, pred.id, f"ended {pred.status.name}: {pred.reason}", now)
                continue
            assert job.waiting is not None
            job.waiting.discard(pred.id)
            if not job.waiting:
                self._ready(job, now)

    def _ready(self, job: JobRecord, now: float) -> None:
        core = self._core
        job.waiting = None
        self._attach(job, now)
        core.census.move(job, Status.QUEUED)
        core.journal_status(job)
        if job.limits[2] is not None:  # its queue time limit counts from now
            core.limits.add(now + job.limits[2], QUEUE, job)
        core.matcher.enqueue(job)
        if core.wants_event("job.queued"):
            core._event("job.queued", job)

    def _attach(self, job: JobRecord, now: float) -> None:
        """Each predecessor's result as the content ``@id``, its files after the job's own."""
        core = self._core
        keys = list(job.keys)
        values = list(job.blobs or ())
        entries = list(job.files.files) if job.files is not None else []
        host = job.files.host if job.files is not None else ""
        linked = []
        for pred_id in job.after or ():
            pred = core.jobs.get(pred_id)
            if pred is None or pred.status is not Status.FINISHED:
                continue
            keys.append("@" + pred_id)
            values.append(pred.result if pred.result is not None else b"")
            fs = pred.result_files
            count = len(fs.files) if fs is not None else 0
            linked.append((pred_id, len(entries), count))
            if fs is not None:
                entries.extend(fs.files)
                # a path in a result is on its worker's host (which then was its submitter's:
                # a worker returns paths only to a submitter on its host); bytes and stored
                # files are anyone's, and leave the job's origin unknown (results as bytes)
                if any(e.data is None and e.ref is None for e in fs.files):
                    host = host or fs.host
        job.keys = core.keys_cache.setdefault(tuple(keys), tuple(keys))
        job.blobs = values
        job.size = sum(len(v) for v in values)
        job.linked = linked
        if entries or job.files is not None:
            args = job.files.args if job.files is not None else ()
            job.files = dataclasses.replace(
                job.files or p.FileSet(), files=entries, args=args, host=host
            )
            core.blobs.use(job.files, job.id, now)

    # -------------------------------------------------------------- after a restart

    def restored(self, job: JobRecord, after: tuple[str, ...], saved: Status, now: float) -> bool:
        """A journaled job with ``after``, journaled as ``saved`` and held as QUEUED: True if
        it goes on as journaled (queued, running, or over: its predecessors' results attached
        again), False if it waits again (or failed: a predecessor ended otherwise, or is gone)."""
        job.after = after
        if saved.done:
            return True
        if saved is Status.WAITING:
            return self._settle(job, now)
        self._attach(job, now)
        return True
