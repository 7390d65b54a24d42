"""How long a wait may last, and how long the broker may stay silent during it.

A wait (``BasicClient.wait``, ``run``, ``as_completed``) asks the broker to hold a request until
there is news, again and again. Three bounds apply to it:

- the call's own ``timeout`` (if given) is a hard deadline for the whole call: past it the wait
  raises TimeoutError with how long it waited and the job's last known status;
- the client's ``timeout`` bounds how long the broker may stay silent. A wait asks for holds of
  at most ``max(GRACE, timeout / 2)`` seconds (never over HOLD) and gives up once the broker
  has said nothing for ``timeout + GRACE`` seconds since the client started waiting on it, so a
  dead or suspended broker is noticed within the client's timeout plus one second. An answer
  that is late brings a *probe* (the same question, not held), then more with back-off: a
  broker that restarts within the bound hears from the client as soon as it is back;
- a broker that stops answers every held request at once with an error: ``broker-stopping``
  (its journal does not keep the job: BrokerStoppedError at once) or
  ``broker-stopping-journaled`` (it does: the wait keeps asking until its own deadline, or for
  RESTART_WAIT seconds without one, then raises BrokerStoppedError).

Every request of a wait stays answerable until the wait ends (a reply to an older one is as
good as any), so a probe that crosses a held reply loses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from remus import protocol as p
from remus.client.client import JOURNALED, Client
from remus.errors import BrokerStoppedError, TimeoutError

#: the longest hold a wait asks of the broker (one request per hold while nothing happens)
HOLD = 5.0
#: what a wait adds to the client's timeout before it calls the broker silent (< 1 s)
GRACE = 0.75
#: how long a wait may still take past its own deadline for the answer due at it
LATE = 0.2
#: the first probe goes this long after an answer was due; later ones back off up to PROBE_MAX
PROBE_AFTER = 0.25
PROBE_MAX = 2.0
#: how long a wait without a deadline rides out a broker that stopped with its journal
RESTART_WAIT = 30.0
#: requests of one wait kept answerable (older ones are given up on)
KEEP = 16


class Peer(Protocol):
    """What the bounds of a wait need of the client that waits (``Client``, or the asyncio
    client's connection in ``remus.aio``)."""

    @property
    def endpoint(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    def forget(self, rids: Iterable[int]) -> None: ...


class Bounds:
    """The bounds of one wait, without the waiting itself (:class:`Patience` waits with a
    ``Client``, ``remus.aio`` with its connection). ``subject`` names what is waited on
    ("job X"), ``state()`` says what the client last knew of it; both go into the messages of
    the errors it raises."""

    def __init__(
        self,
        client: Peer,
        timeout: float | None,
        subject: str,
        state: Callable[[], str],
        *,
        plural: bool = False,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be positive")
        self.client = client
        self.subject = subject
        self.plural = plural
        self.state = state
        self.started = time.monotonic()
        self.timeout = timeout
        self.deadline = None if timeout is None else self.started + timeout
        self.silence = client.timeout
        self._hold = min(HOLD, max(GRACE, client.timeout / 2))
        #: requests sent and not answered, oldest first, with when each answer is due
        self._out: dict[int, float] = {}
        #: since when the client waits for the broker to say anything (None: not waiting)
        self._waiting_since: float | None = None
        self._probe_at = float("inf")
        self._probe_gap = PROBE_AFTER
        #: riding out a broker that stopped with its journal: since when, and until when
        self._stopped_at: float | None = None
        self._restart_until = 0.0

    # -------------------------------------------------------------- asking

    def hold(self) -> float:
        """How long to ask the broker to hold the next request."""
        if self._stopped_at is not None:
            return 0.0
        if self.deadline is None:
            return self._hold
        return max(0.0, min(self._hold, self.deadline - time.monotonic()))

    def sent(self, rid: int, hold: float) -> None:
        """Request ``rid`` went out, asking for a hold of ``hold`` seconds."""
        now = self._track(rid, hold)
        if self._stopped_at is None:
            self._probe_at = now + hold + PROBE_AFTER
            self._probe_gap = PROBE_AFTER

    def _track(self, rid: int, hold: float) -> float:
        now = time.monotonic()
        self._out[rid] = now + hold
        if len(self._out) > KEEP:
            old = list(self._out)[: len(self._out) - KEEP]
            self.client.forget(old)
            for r in old:
                del self._out[r]
        if self._waiting_since is None:
            self._waiting_since = now
        return now

    def held(self) -> bool:
        """Whether a request of this wait is still held (its answer not due yet): then the
        next question need not be asked, that answer will come."""
        now = time.monotonic()
        return any(due > now for due in self._out.values())

    def left(self) -> float | None:
        """Seconds left for a plain request of this wait (None: no deadline of its own, the
        client's timeout applies)."""
        if self.deadline is None:
            return None
        return max(LATE, self.deadline - time.monotonic())

    @property
    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    # -------------------------------------------------------------- waiting

    def listen_until(self, now: float) -> tuple[float, bool]:
        """A step of waiting for the next answer: until when to listen for one, and whether
        to probe first. Raises TimeoutError when a bound is reached."""
        if self._waiting_since is None:
            self._waiting_since = now
        give_up = self._give_up_at()
        if now >= give_up:
            raise self._gave_up(now)
        return min(give_up, self._probe_at), now >= self._probe_at

    def probed(self, rid: int, now: float) -> None:
        """A probe (the question again, not held) went out as ``rid``."""
        self._track(rid, 0.0)
        self._probe_gap = min(PROBE_MAX, self._probe_gap * 2)
        self._probe_at = now + self._probe_gap

    def stopped(self, e: BrokerStoppedError) -> None:
        """The broker answered that it stops: raise, unless its journal keeps the job (then
        ride the restart out)."""
        self._answered()
        if e.code != JOURNALED:
            raise BrokerStoppedError(
                f"the broker at {self.client.endpoint} stopped while this client waited on "
                f"{self.subject} ({self.state()}), and it keeps no journal: "
                f"{'they are' if self.plural else 'the job is'} lost. "
                f"The broker said: {e}"
            ) from None
        self._ride_out(time.monotonic())

    def answered(self, rid: int) -> None:
        """Request ``rid`` of this wait was answered."""
        del self._out[rid]
        self._answered()
        self._stopped_at = None  # (back) up and answering

    def _answered(self) -> None:
        """The broker said something: it is there (or at least was, just now)."""
        self._waiting_since = None
        self._probe_at = float("inf")
        self._probe_gap = PROBE_AFTER

    def _ride_out(self, now: float) -> None:
        if self._stopped_at is None:
            self._stopped_at = now
            self._restart_until = now + RESTART_WAIT if self.deadline is None else self.deadline
        # ask again in a while: the broker is on its way down, then (we hope) back up
        self._probe_at = now + PROBE_MAX / 2

    def _give_up_at(self) -> float:
        if self._stopped_at is not None:
            return self._restart_until
        assert self._waiting_since is not None  # set by next_reply before this is called
        at = self._waiting_since + self.silence + GRACE
        if self.deadline is not None:
            at = min(at, self.deadline + LATE)
        return at

    def _gave_up(self, now: float) -> Exception:
        c = self.client
        waited = now - self.started
        if self._stopped_at is not None:
            return BrokerStoppedError(
                f"the broker at {c.endpoint} stopped (its journal keeps {self.subject}) and did "
                f"not come back within {now - self._stopped_at:.3g} s; waited {waited:.3g} s "
                f"in all; last known: {self.state()}"
            )
        if self.deadline is not None and now >= self.deadline:
            return self.expired()
        assert self._waiting_since is not None
        return TimeoutError(
            f"the broker at {c.endpoint} did not answer for {now - self._waiting_since:.3g} s "
            f"(the client's timeout is {self.silence:.3g} s) while this client waited "
            f"{waited:.3g} s on {self.subject}; last known: {self.state()}. Is it running?",
            endpoint=c.endpoint,
        )

    def expired(self) -> TimeoutError:
        """The error for a wait past its own deadline."""
        waited = time.monotonic() - self.started
        return TimeoutError(
            f"{self.subject} did not {'all ' if self.plural else ''}finish within "
            f"{self.timeout:.3g} s (waited {waited:.3g} s; "
            f"broker at {self.client.endpoint}); last known: {self.state()}",
            endpoint=self.client.endpoint,
        )

    def close(self) -> None:
        """The wait is over: late answers to its requests are dropped."""
        self.client.forget(self._out)
        self._out.clear()


class Patience(Bounds):
    """The bounds of one wait with a ``Client``, and the waiting."""

    client: Client

    def next_reply(self, probe: Callable[[], int]) -> p.Reply:
        """The next answer to any request of this wait. ``probe()`` sends the question again,
        not held, and returns its rid. Raises TimeoutError when a bound is reached and
        BrokerStoppedError when the broker stopped (see the module's doc)."""
        while True:
            now = time.monotonic()
            until, probe_now = self.listen_until(now)
            if probe_now:
                self.probed(probe(), now)
                continue
            try:
                got = self.client.reply_to_any(self._out, until)
            except BrokerStoppedError as e:
                self.stopped(e)
                continue
            if got is None:
                continue
            self.answered(got[0])
            return got[1]
