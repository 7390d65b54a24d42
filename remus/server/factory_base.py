"""What the broker needs of a worker factory, and the pure rules shared by factories.

See :mod:`remus.server.factory` for how the core thread drives a factory.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remus.errors import ConfigError
from remus.types import IOType, JobRequirements, matches, tag_key

SPAWNED = "worker.spawned"
EXITED = "worker.reaped"
SPAWN_FAILED = "worker.spawn_failed"
#: a worker file no longer starts (payload: worker_file, io_type, worker_name, reason, starts)
QUARANTINED = "worker.quarantined"
#: the factory asks the broker to tell a worker it started to exit (payload: pid, reason, ...)
ASKED_TO_LEAVE = "worker.asked_to_leave"


@dataclass(frozen=True, slots=True)
class FactoryEvent:
    """Something a factory did, for the log and the status channel; ``payload`` is msgpack-able.

    ``requirements`` (not published) is the offer a ``worker.quarantined`` event is about."""

    topic: str
    payload: dict[str, Any]
    requirements: JobRequirements | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class WorkerSeen:
    """What the broker knows of one process a factory started (by pid, on the broker's host)."""

    #: what it registered with; None until it registers
    requirements: JobRequirements | None = None
    #: registered and holding no job
    idle: bool = False
    #: jobs it finished
    finished: int = 0


def describe_requirements(reqs: JobRequirements) -> str:
    """``Edges->Mesh2D named 'EdgeMesher' tagged {'q': 1}``: for logs and reasons."""
    text = str(reqs.io_type)
    if reqs.worker_name:
        text += f" named {reqs.worker_name!r}"
    if reqs.tag is not None:
        text += f" tagged {reqs.tag!r}"
    return text


def declares(declared: JobRequirements, registered: JobRequirements) -> bool:
    """True if a worker that registered ``registered`` is what a file declaring ``declared``
    promised: same io type, worker name and tag (requirement content is not compared)."""
    return (
        declared.io_type == registered.io_type
        and declared.worker_name == registered.worker_name
        and tag_key(declared.tag) == tag_key(registered.tag)
    )


class WorkerFactoryBase(abc.ABC):
    """What the server needs of a factory. Subclass it for a custom way of starting workers.

    A subclass says what it could start (:meth:`offers`), starts workers
    (:meth:`create_workers`), and counts them (:meth:`alive_count`); it may override
    :meth:`reap`, :meth:`stop`, :meth:`observe` and :meth:`explain`.
    """

    def __init__(self, *, max_workers: int = 1) -> None:
        if not isinstance(max_workers, int) or max_workers < 0:
            raise ConfigError(f"max_workers must be an integer >= 0, got {max_workers!r}")
        self.max_workers = max_workers
        self.arguments: list[str] = []

    @abc.abstractmethod
    def offers(self) -> list[JobRequirements]:
        """The requirements of every kind of worker this factory can start."""

    @abc.abstractmethod
    def create_workers(
        self, demand: Mapping[JobRequirements, int], worker_endpoint: str, now: float
    ) -> list[FactoryEvent]:
        """Start workers for the demand, within ``max_workers``; return what happened."""

    @abc.abstractmethod
    def alive_count(self) -> int:
        """How many workers this factory started are still alive."""

    def supported_io_types(self) -> set[IOType]:
        return {reqs.io_type for reqs in self.offers()}

    def can_mesh(self, reqs: JobRequirements) -> bool:
        """True if some worker this factory can start would take a job with ``reqs``."""
        return any(matches(reqs, offer) for offer in self.offers())

    def retrieve_requirements(self, io_type: IOType) -> list[JobRequirements]:
        found: list[JobRequirements] = []
        for offer in self.offers():
            if offer.io_type == io_type and offer not in found:
                found.append(offer)
        return found

    def explain(self, reqs: JobRequirements, now: float | None = None) -> str | None:
        """In words, what the factory is doing about a queued job with ``reqs``; None when it
        has nothing to offer for it (no worker of its would take it)."""
        if not self.can_mesh(reqs):
            return None
        if self.max_workers <= 0:
            return "max_workers=0: the broker starts no worker"
        return f"{type(self).__name__} can start a worker for it"

    def observe(self, seen: Mapping[int, WorkerSeen], now: float) -> list[FactoryEvent]:
        """What the broker knows of the processes this factory started, every pass; nothing
        to do by default."""
        return []

    def add_argument(self, arg: str) -> None:
        """Pass ``arg`` to every worker started from now on, before its own arguments."""
        if not isinstance(arg, str):
            raise TypeError(f"worker arguments are strings, got {arg!r}")
        self.arguments.append(arg)

    def add_search_path(self, path: str | os.PathLike[str]) -> None:
        raise ConfigError(f"{type(self).__name__} does not read worker files")

    def rescan(self) -> None:
        """Look again for what the factory can start (worker files); nothing to do by default."""
        return None

    def lift_quarantine(self, path: str | None = None) -> list[str]:
        """Let quarantined workers start again; nothing is quarantined by default."""
        return []

    def reap(self, now: float) -> list[FactoryEvent]:
        """Collect workers that ended, without blocking; nothing to do by default."""
        return []

    def stop(self, grace: float = 2.0) -> None:
        """Stop every worker this factory started; nothing to do by default."""
        return None

    def describe(self) -> list[dict[str, Any]]:
        """For ``Client.stats()``, one map per kind of worker this factory starts: ``path``
        (its worker file, "" if none), ``io_type`` ("In->Out"), ``worker_name``, ``spawned``
        (workers started since the broker started), ``alive`` (still running) and
        ``quarantined`` (why, "" if not). Called on the core thread; one entry per offer by
        default."""
        return [
            {
                "path": "",
                "io_type": str(reqs.io_type),
                "worker_name": reqs.worker_name,
                "spawned": 0,
                "alive": 0,
                "quarantined": "",
            }
            for reqs in self.offers()
        ]

    def worker_file_of(self, pid: int) -> str:
        """The worker file the process ``pid`` this factory started runs ("" if unknown)."""
        return ""


def plan_spawns(
    demand: Mapping[JobRequirements, int],
    offers: Sequence[JobRequirements],
    alive: Sequence[int],
    limits: Sequence[int],
    capacity: int,
) -> list[int]:
    """Which offers to start a worker of, one index per worker, in start order.

    Each demand entry goes to the first matching offer that may start now (``limits[i] > 0``),
    else to its first match. An offer is wanted up to its share of the demand counting its
    ``alive`` workers; starts go round-robin between offers, so one busy io type does not take
    every slot, and stop at ``capacity`` (free slots under ``max_workers``). The plan for a
    larger capacity starts with the plan for a smaller one.
    """
    wanted = [0] * len(offers)
    for reqs, count in demand.items():
        if count <= 0:
            continue
        candidates = [i for i, offer in enumerate(offers) if matches(reqs, offer)]
        if candidates:
            ready = [i for i in candidates if limits[i] > 0]
            wanted[(ready or candidates)[0]] += count
    starts: list[int] = []
    extra = [0] * len(offers)
    while len(starts) < capacity:
        before = len(starts)
        for i in range(len(offers)):
            if len(starts) < capacity and extra[i] < limits[i] and alive[i] + extra[i] < wanted[i]:
                extra[i] += 1
                starts.append(i)
        if len(starts) == before:
            break
    return starts
