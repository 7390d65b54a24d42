"""Crash-loop bookkeeping for worker factories: back-off, quarantine, and the evidence.

Pure: no process, no clock (``now`` is passed in). A factory reports what became of each worker
it started, and asks how many of a kind may start now:

* a **failed start** (the program exited before it registered with the broker, or could not be
  executed) backs its kind off (1, 2, 4 … s) and is kept as evidence; after
  ``Backoff.quarantine_after`` failed starts in a row the kind is **quarantined**: nothing of it
  starts again until an operator lifts the quarantine (or the broker restarts);
* a worker that registered but crashed before it was healthy backs off too (it is not a failed
  start: a job that crashes its worker is the job's fault, and max_retries deals with it);
* a worker that finished a job or lived ``Backoff.healthy_after`` seconds is **healthy**: the
  back-off of its kind resets;
* a worker the broker itself stopped or killed never counts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

#: lines of a failed start's stderr kept as evidence
EVIDENCE_LINES = 10
_UNLIMITED = 1 << 30


#: seconds a started worker has to register before its process group is killed (a failed
#: start: it would hold its max_workers slot for ever)
REGISTER_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """How a worker kind that keeps failing is backed off, and when it is quarantined.

    After ``n`` failures in a row the next start waits ``initial * factor**(n-1)`` seconds, at
    most ``cap``, and only one worker of that kind runs until one is healthy (finished a job or
    lived ``healthy_after`` seconds). ``quarantine_after`` failed starts in a row (0: never)
    quarantine it. ``quick_exit`` is the old name of ``healthy_after``.
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    healthy_after: float = 60.0
    quarantine_after: int = 5
    quick_exit: float | None = None

    def __post_init__(self) -> None:
        if self.quick_exit is not None:
            object.__setattr__(self, "healthy_after", self.quick_exit)
        if not isinstance(self.quarantine_after, int) or self.quarantine_after < 0:
            raise ValueError(f"quarantine_after must be an integer >= 0: {self.quarantine_after!r}")

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.cap, self.initial * self.factor ** (failures - 1))


DEFAULT_BACKOFF = Backoff()


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def last_lines(text: str, count: int = EVIDENCE_LINES) -> str:
    """The last ``count`` non-blank lines of ``text``, each stripped of trailing blanks."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-count:])


def peak_rss_bytes(ru_maxrss: int) -> int:
    """``ru_maxrss`` in bytes (kilobytes on Linux and most systems, bytes on macOS)."""
    return ru_maxrss if sys.platform == "darwin" else ru_maxrss * 1024


@dataclass(frozen=True, slots=True)
class StartFailure:
    """The evidence of one failed start of a worker."""

    pid: int  #: 0 if it could not be started at all
    runtime: float
    returncode: int | None = None
    signal: str | None = None
    peak_rss: int = 0  #: bytes; 0 if unknown
    stderr_tail: str = ""  #: its last lines
    error: str = ""  #: why it could not be started

    def how(self) -> str:
        if self.error:
            return f"could not be started: {self.error}"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by {self.signal or f'signal {-self.returncode}'}"
        return f"exit code {self.returncode}"

    def describe(self, lines: int = EVIDENCE_LINES) -> str:
        """One line of evidence, e.g. ``exit code 3 after 0.05 s, peak RSS 9.6 MiB, stderr: …``."""
        if self.error:
            return self.how()
        text = f"{self.how()} after {self.runtime:.2f} s"
        if self.peak_rss:
            text += f", peak RSS {_mib(self.peak_rss)}"
        tail = last_lines(self.stderr_tail, lines)
        text += f", stderr: {tail!r}" if tail else ", stderr empty"
        return text

    def to_wire(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "runtime": round(self.runtime, 3),
            "returncode": self.returncode,
            "signal": self.signal,
            "peak_rss": self.peak_rss,
            "stderr_tail": self.stderr_tail,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Why a worker kind no longer starts."""

    reason: str
    since: float
    starts: tuple[StartFailure, ...] = ()


@dataclass
class _State:
    failures: int = 0
    not_before: float = 0.0
    #: failed starts in a row (cleared when a worker registers)
    starts: list[StartFailure] = field(default_factory=list)
    last: StartFailure | None = None


class Health:
    """Back-off and quarantine per kind of worker (a worker file's path, a handler's reqs)."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._state: dict[Any, _State] = {}
        self.quarantined: dict[Any, Quarantine] = {}

    def limit(self, key: Any, alive: int, now: float) -> int:
        """How many workers of this kind may start now: all, none (backing off) or one."""
        if key in self.quarantined:
            return 0
        state = self._state.get(key)
        if state is None or not state.failures:
            return _UNLIMITED
        if now < state.not_before:
            return 0
        return 0 if alive else 1  # on probation: one at a time until one is healthy

    def failed(self, key: Any, now: float, evidence: StartFailure | None = None) -> float:
        """Count a failure (with ``evidence``: a failed start); returns the delay before the
        next start. Check :meth:`due_quarantine` afterwards."""
        state = self._state.setdefault(key, _State())
        state.failures += 1
        if evidence is not None:
            state.starts.append(evidence)
            state.last = evidence
        retry_in = self.backoff.delay(state.failures)
        state.not_before = now + retry_in
        return retry_in

    def due_quarantine(self, key: Any) -> list[StartFailure] | None:
        """The failed starts in a row, if there are enough of them to quarantine ``key``."""
        state = self._state.get(key)
        limit = self.backoff.quarantine_after
        if key in self.quarantined or state is None or not limit or len(state.starts) < limit:
            return None
        return list(state.starts)

    def exited(self, key: Any, failed: bool, runtime: float, now: float) -> float | None:
        """Count an exit: a failure before ``healthy_after`` s backs off; anything else resets."""
        if failed and runtime < self.backoff.healthy_after:
            return self.failed(key, now)
        self.healthy(key)
        return None

    def registered(self, key: Any) -> None:
        """A worker of this kind registered: its failed starts are no longer in a row."""
        state = self._state.get(key)
        if state is not None:
            state.starts.clear()

    def healthy(self, key: Any) -> None:
        """A worker of this kind finished a job or lived long enough: the back-off resets."""
        self._state.pop(key, None)

    def quarantine(
        self, key: Any, reason: str, now: float, starts: list[StartFailure] | None = None
    ) -> Quarantine:
        q = self.quarantined[key] = Quarantine(reason, now, tuple(starts or ()))
        self._state.pop(key, None)
        return q

    def lift(self, key: Any = None) -> list[Any]:
        """Lift the quarantine of ``key`` (None: of all); returns the keys lifted."""
        keys = (
            list(self.quarantined) if key is None else [k for k in [key] if k in self.quarantined]
        )
        for k in keys:
            del self.quarantined[k]
            self._state.pop(k, None)
        return keys

    def backing_off(self, key: Any, now: float) -> tuple[int, float, StartFailure | None] | None:
        """(failures, seconds until the next start, last failed start) while backing off."""
        state = self._state.get(key)
        if state is None or not state.failures:
            return None
        return state.failures, max(0.0, state.not_before - now), state.last
