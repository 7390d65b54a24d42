"""The gateway's throttle: a bounded number of waiting requests per io type, and a Retry-After
computed from how fast that io type's jobs have been ending.

As in the seed's design, the size of the queue is the throttle: an io type has at most
``max_pending`` HTTP requests waiting on its jobs; one more is refused at once (503) instead of
queued, so memory and the broker's queue stay bounded whatever the callers do. Nothing here
waits, sleeps or owns a thread: :meth:`Throttle.admit` answers yes or no, and a request gives
its place back when it ends. Time is passed in (``now``, ``time.monotonic()``), so the rules are
tested without a server.

Retry-After says when a refused caller has a fair chance: the requests ahead of it divided by
the io type's observed service rate (jobs ended per second over the last ``window`` seconds),
clamped to ``[floor, ceiling]`` whole seconds. An io type that has not been seen ending a job
within the window is taken as slow (less than one job per window so far), which the ceiling
bounds.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class ServiceRate:
    """Jobs ended per second over a sliding window, kept in one-second buckets (bounded memory
    at any rate)."""

    window: float
    #: (whole second, jobs ended in it), oldest first
    buckets: deque[list[int]] = field(default_factory=deque)
    #: when this io type was first seen (the window is shorter until then)
    since: float | None = None

    def seen(self, now: float) -> None:
        if self.since is None:
            self.since = now

    def ended(self, now: float, n: int = 1) -> None:
        """Count ``n`` jobs that ended at ``now``."""
        self.seen(now)
        second = int(now)
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += n
        else:
            self.buckets.append([second, n])
        self._trim(now)

    def _trim(self, now: float) -> None:
        oldest = int(now - self.window)
        while self.buckets and self.buckets[0][0] < oldest:
            self.buckets.popleft()

    def per_second(self, now: float) -> float:
        """The observed rate; 0.0 when no job ended within the window."""
        self._trim(now)
        ended = sum(n for _, n in self.buckets)
        if not ended:
            return 0.0
        return ended / self._span(now)

    def _span(self, now: float) -> float:
        start = self.since if self.since is not None else now
        return max(1.0, min(self.window, now - start))


class Throttle:
    """At most ``max_pending`` requests waiting per io type (any hashable key, e.g. "A->B")."""

    def __init__(
        self, max_pending: int, *, window: float = 30.0, floor: int = 1, ceiling: int = 60
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be 1 or more")
        self.max_pending = max_pending
        self.window = window
        self.floor = floor
        self.ceiling = ceiling
        self.pending: dict[str, int] = {}
        self._rates: dict[str, ServiceRate] = {}
        #: requests refused since the start, per io type
        self.refused: dict[str, int] = {}

    def admit(self, io: str, now: float) -> bool:
        """Take a place for a request on ``io``: True, or False when all are taken (answer 503
        with :meth:`retry_after`)."""
        self._rate(io).seen(now)
        waiting = self.pending.get(io, 0)
        if waiting >= self.max_pending:
            self.refused[io] = self.refused.get(io, 0) + 1
            return False
        self.pending[io] = waiting + 1
        return True

    def release(self, io: str, now: float, *, ended: bool) -> None:
        """Give a place back; ``ended``: its job ended (finished or failed), which counts
        toward the service rate (a request that timed out or was refused does not)."""
        left = self.pending.get(io, 0) - 1
        if left > 0:
            self.pending[io] = left
        else:
            self.pending.pop(io, None)
        rate = self._rate(io)
        if ended:
            rate.ended(now)
        elif left <= 0 and not rate.buckets:
            del self._rates[io]  # e.g. an io type nobody serves: nothing worth keeping

    def ended(self, io: str, now: float) -> None:
        """A job of ``io`` ended that held no place here (seen by another route)."""
        self._rate(io).ended(now)

    def per_second(self, io: str, now: float) -> float:
        return self._rate(io).per_second(now)

    def retry_after(self, io: str, now: float) -> int:
        """Whole seconds a refused caller should wait before trying again."""
        rate = self._rate(io)
        ahead = max(1, self.pending.get(io, 0))
        per_second = rate.per_second(now)
        if per_second <= 0:
            per_second = 1.0 / rate._span(now)  # none ended yet: slower than one per span
        return max(self.floor, min(self.ceiling, math.ceil(ahead / per_second)))

    def _rate(self, io: str) -> ServiceRate:
        rate = self._rates.get(io)
        if rate is None:
            rate = self._rates[io] = ServiceRate(self.window)
        return rate

    def __repr__(self) -> str:
        waiting = sum(self.pending.values())
        return (
            f"<Throttle max_pending={self.max_pending} waiting={waiting} "
            f"io_types={len(self.pending)} refused={sum(self.refused.values())}>"
        )
