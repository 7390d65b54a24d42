"""Who can serve a job, and why a queued job is not running yet, in words.

Part of the pure broker rules (no sockets, no clocks), driven by
:class:`~remus.server.core.BrokerCore`: it counts connected workers per queue key as they come
and go, so "is anyone there for this job?" is one dict lookup on the submit path, and it turns
the state of the workers and the factory into the sentences a client sees: the ``no-worker``
refusal and the ``reason`` of a QUEUED job's status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from remus import protocol as p
from remus.server.records import JobRecord, QueueKey, WorkerRecord, job_key
from remus.types import JobRequirements, describe

if TYPE_CHECKING:
    from remus.server.core import BrokerCore


class Serving:
    def __init__(self, core: BrokerCore) -> None:
        self._core = core
        #: connected workers per queue key they accept
        self._served: dict[QueueKey, int] = {}

    # -------------------------------------------------------------- workers come and go

    def joined(self, worker: WorkerRecord) -> None:
        for key in worker.keys:
            self._served[key] = self._served.get(key, 0) + 1

    def left(self, worker: WorkerRecord) -> None:
        for key in worker.keys:
            count = self._served[key] = self._served[key] - 1
            if count <= 0:
                del self._served[key]

    # -------------------------------------------------------------- can it run?

    def serves(self, reqs: JobRequirements) -> bool:
        """A connected worker, or a worker the factory could start, would take such a job."""
        catalog = self._core.catalog
        return self._served.get(job_key(reqs), 0) > 0 or (
            catalog is not None and catalog.can_mesh(reqs)
        )

    def unserved(self, jobs: Iterable[p.SubmittedJob]) -> JobRequirements | None:
        """The first requirements among submitted jobs that nobody can serve, if any
        (a batch shares its requirements objects: each distinct one is looked at once)."""
        seen: set[int] = set()
        for job in jobs:
            reqs = job.requirements
            if id(reqs) not in seen:
                seen.add(id(reqs))
                if not self.serves(reqs):
                    return reqs
        return None

    def offered(self) -> list[str]:
        """Every io type a connected worker or the factory serves, as words."""
        core = self._core
        types = {w.reqs.io_type for w in core.workers.values()}
        if core.catalog is not None:
            types |= core.catalog.supported_io_types()
        return sorted(str(t) for t in types)

    def no_worker(self, rid: int, reqs: JobRequirements) -> p.Error:
        """The refusal of a submit nobody can serve: what was asked, what there is, what to do."""
        offered = self.offered()
        what = describe(reqs)
        there = ", ".join(offered) or "nothing (no worker is connected, no worker file)"
        factory = self.explain(reqs)
        return p.Error(
            rid,
            "no-worker",
            f"no connected worker and no worker file serves {what}"
            + (f" ({factory})" if factory else "")
            + f"; this broker serves: {there}. Start a worker for it, or submit with "
            "wait_for_worker=True to queue the job until one connects",
            {"requirements": what, "serves": offered},
        )

    # -------------------------------------------------------------- why does it wait?

    def explain(self, reqs: JobRequirements) -> str | None:
        """What the factory is doing about such a job, in its own words (None: nothing)."""
        explain: Any = getattr(self._core.catalog, "explain", None)
        return explain(reqs) if explain is not None else None

    def queued_reason(self, job: JobRecord) -> str:
        """Why a QUEUED job is not running yet."""
        if job.reason:  # set by a rule that holds it back (a restart waiting for its worker)
            return job.reason
        if job.worker is not None:
            return "handed to a worker in this very pass"
        core = self._core
        factory = self.explain(job.reqs)
        serving = self._served.get(job.key, 0)
        if serving:
            if core.draining:
                text = "the broker is draining: no new job starts"
            else:
                plural = "worker serves" if serving == 1 else "workers serve"
                text = f"all matching workers are busy ({serving} {plural} it)"
            return text + (f"; {factory}" if factory else "")
        if factory:
            return factory
        if core.catalog is not None and core.catalog.can_mesh(job.reqs):
            return "waiting for the factory to start a worker for it"
        return f"no connected worker serves {describe(job.reqs)}; waiting for one to connect"
