"""A worker factory that runs handler functions on threads inside the broker's process.

As Remus's ThreadWorkerFactory: for tests and for embedding a broker with its workers in one
program. Each started worker is a thread that connects a :class:`remus.worker.Worker` to the
broker's worker endpoint and serves jobs with its handler until the broker tells it to exit or
it has been idle for ``idle_timeout`` seconds. The threads speak ZeroMQ like any other worker:
they share no state with the broker.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from remus.security import PeerKeys
from remus.server.factory_base import (
    EXITED,
    SPAWNED,
    FactoryEvent,
    WorkerFactoryBase,
    plan_spawns,
)
from remus.server.health import DEFAULT_BACKOFF, Backoff, Health
from remus.types import IOType, JobRequirements, matches

log = logging.getLogger(__name__)

Handler = Callable[[Any], bytes]


class _Slot:
    """One worker thread and what became of it."""

    def __init__(
        self, reqs: JobRequirements, started: float, name: str, run: Callable[[_Slot], None]
    ) -> None:
        self.reqs = reqs
        self.started = started
        self.error = ""
        self.thread = threading.Thread(target=run, args=(self,), name=name, daemon=True)


class ThreadWorkerFactory(WorkerFactoryBase):
    """Serve ``handlers`` (requirements or io type -> ``handler(job) -> bytes``) on up to
    ``max_workers`` threads, started on demand like :class:`~remus.server.factory.WorkerFactory`
    processes."""

    def __init__(
        self,
        handlers: Mapping[JobRequirements | IOType, Handler],
        *,
        max_workers: int = 1,
        idle_timeout: float = 5.0,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        super().__init__(max_workers=max_workers)
        self.handlers = {JobRequirements.of(k): h for k, h in handlers.items()}
        self.idle_timeout = idle_timeout
        self.started_total = 0
        #: threads started per handler's requirements
        self._started: dict[JobRequirements, int] = {}
        self._slots: list[_Slot] = []
        self._health = Health(backoff)
        self._stopped = False
        self._keys: PeerKeys | None = None

    def use_keys(self, keys: PeerKeys) -> None:
        """Secure mode: the workers it starts use ``keys``."""
        self._keys = keys

    def __repr__(self) -> str:
        return (
            f"<ThreadWorkerFactory handlers={len(self.handlers)} alive={self.alive_count()}"
            f"/{self.max_workers} started={self.started_total}>"
        )

    def offers(self) -> list[JobRequirements]:
        return list(self.handlers)

    def alive_count(self) -> int:
        return sum(1 for s in self._slots if s.thread is not None and s.thread.is_alive())

    def create_workers(
        self, demand: Mapping[JobRequirements, int], worker_endpoint: str, now: float
    ) -> list[FactoryEvent]:
        events = self.reap(now)
        if self._stopped or not demand or self.max_workers <= 0:
            return events
        offers = self.offers()
        alive = [sum(1 for s in self._slots if s.reqs == reqs) for reqs in offers]
        limits = [self._health.limit(r, n, now) for r, n in zip(offers, alive, strict=True)]
        capacity = self.max_workers - len(self._slots)
        for index in plan_spawns(demand, offers, alive, limits, capacity):
            events.append(self._start(offers[index], worker_endpoint, now))
        return events

    def explain(self, reqs: JobRequirements, now: float | None = None) -> str | None:
        """What the factory does about a queued job with ``reqs``; None if no handler fits."""
        now = time.monotonic() if now is None else now
        offers = [r for r in self.handlers if matches(reqs, r)]
        if not offers:
            return None
        for offer in offers:
            off = self._health.backing_off(offer, now)
            if off is not None and off[1] > 0:
                return (
                    f"thread workers for {offer.io_type} are backing off after {off[0]} "
                    f"failures (next start in {off[1]:.1f} s)"
                )
        if self.max_workers <= 0:
            return "max_workers=0: the broker starts no worker"
        if len(self._slots) >= self.max_workers:
            names = ", ".join(s.thread.name for s in self._slots)
            return f"max_workers={self.max_workers} reached, held by: {names}"
        return f"a thread worker for {offers[0].io_type} will be started"

    def _start(self, reqs: JobRequirements, endpoint: str, now: float) -> FactoryEvent:
        self.started_total += 1
        self._started[reqs] = self._started.get(reqs, 0) + 1
        name = f"remus-thread-worker-{self.started_total}"
        slot = _Slot(reqs, now, name, lambda slot: self._run(slot, endpoint))
        self._slots.append(slot)
        slot.thread.start()
        log.info("started thread worker %s for %s %r", name, reqs.io_type, reqs.worker_name)
        return FactoryEvent(SPAWNED, self._payload(slot))

    def describe(self) -> list[dict[str, Any]]:
        """Per handler (no worker file: ``path`` is ""): threads started, alive now."""
        return [
            {
                "path": "",
                "io_type": str(reqs.io_type),
                "worker_name": reqs.worker_name,
                "spawned": self._started.get(reqs, 0),
                "alive": sum(1 for s in self._slots if s.reqs == reqs and s.thread.is_alive()),
                "quarantined": "",
            }
            for reqs in self.handlers
        ]

    def _run(self, slot: _Slot, endpoint: str) -> None:
        from remus.worker import Worker  # late: the worker package imports the client side

        handler = self.handlers[slot.reqs]
        try:
            keys = self._keys
            secure: dict[str, Any] = (
                {} if keys is None else {"server_key": keys.server, "secret_key": keys.own}
            )
            with Worker(slot.reqs, endpoint=endpoint, **secure) as worker:
                worker.run(handler, idle_timeout=self.idle_timeout)
        except BaseException:
            slot.error = traceback.format_exc()

    def _payload(self, slot: _Slot) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "thread": slot.thread.name,
            "worker_name": slot.reqs.worker_name,
            "io_type": slot.reqs.io_type.to_wire(),
        }

    def reap(self, now: float) -> list[FactoryEvent]:
        events = []
        for slot in list(self._slots):
            if slot.thread.is_alive():
                continue
            self._slots.remove(slot)
            failed = bool(slot.error)
            runtime = max(0.0, now - slot.started)
            retry_in = (
                None if self._stopped else self._health.exited(slot.reqs, failed, runtime, now)
            )
            if failed:
                log.warning("thread worker %s failed:\n%s", slot.thread.name, slot.error.rstrip())
            payload = self._payload(slot)
            payload.update(
                returncode=1 if failed else 0,
                signal=None,
                runtime=round(runtime, 3),
                stderr_tail=slot.error[-4096:],
                stopped_by_broker=self._stopped,
                retry_in=retry_in,
            )
            events.append(FactoryEvent(EXITED, payload))
        return events

    def stop(self, grace: float = 2.0) -> None:
        """Wait up to ``grace`` s for the threads (the broker tells its workers to exit first).

        A thread cannot be killed: one still running after the grace (its handler is busy)
        is left as a daemon thread and logged; it ends when its job does.
        """
        self._stopped = True
        deadline = time.monotonic() + grace
        for slot in self._slots:
            slot.thread.join(max(0.0, deadline - time.monotonic()))
            if slot.thread.is_alive():
                log.warning("thread worker %s still busy after %.1f s", slot.thread.name, grace)
        self.reap(time.monotonic())
