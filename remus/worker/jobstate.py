"""What one run of a job shares between the worker's threads.

The connection thread writes into a :class:`JobState` (a cancel and its reason, control
messages); the handler's thread reads it through its :class:`~remus.worker.job.Job`. Each time
the broker hands a job over, it gets a new state: a job that runs again after a preemption is
a new run, with no cancel and every control message again from ``seq`` 1.

The :class:`Hub` is what a running job reaches of its worker: the outbox, the thread that calls
control-message callbacks, and the client that submits assistants.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from remus.client.basic import BasicClient
    from remus.types import Job as ClientJob

log = logging.getLogger(__name__)

#: the reasons a broker gives in ``cancel`` (docs/protocol.md)
CANCEL_REASONS = ("terminated", "time limit", "preempted", "parent ended")

ControlCallback = Callable[[bytes], Any]


class Dispatcher:
    """Calls control-message callbacks on one thread of its own (``remus-controls``), one at
    a time, in the order the messages arrived; started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[ControlCallback, bytes] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call(self, callback: ControlCallback, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put((callback, data))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            callback, data = item
            try:
                callback(data)
            except Exception:
                log.exception("a control-message callback raised")

    def close(self, timeout: float = 5.0) -> None:
        """Call what is queued, then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


class Hub:
    """A worker's services for its running jobs (set up by the Worker)."""

    def __init__(self, name: str, client: Callable[[], BasicClient]) -> None:
        #: ``Connection.post``, set once the connection exists
        self.post: Callable[..., None] = _nowhere
        #: the BasicClient of the calling thread, for assistants
        self.client = client
        self.dispatcher = Dispatcher(name)


def _nowhere(*item: Any, wake: bool = True) -> None:
    raise RuntimeError("this worker has no connection")


class _Live:
    """What only some runs need (a lock, control messages, callbacks, cancel hooks,
    assistants): made on a run's first cancel, control message or call that needs it, so
    that most runs of a busy worker (tiny jobs that see none of these) never pay for it."""

    __slots__ = ("assistants", "callbacks", "hooks", "lock", "messages", "seq", "taken")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[bytes] = []
        self.seq = 0
        self.taken = 0
        self.callbacks: list[ControlCallback] = []
        self.hooks: list[Callable[[str], Any]] = []
        self.assistants: list[ClientJob] = []


#: makes a run's _Live, once, whichever thread comes first
_making = threading.Lock()


class JobState:
    """One run of one job: its cancel, its control messages, its assistants. A new one per
    job handed over, so it is light: its job id, hub and cancel reason, and the rest
    (:class:`_Live`) made only for a run that uses it."""

    __slots__ = ("_live", "hub", "job_id", "reason")

    def __init__(self, job_id: str, hub: Hub | None = None) -> None:
        self.job_id = job_id
        self.hub = hub
        #: why the broker cancelled this run (None: it did not)
        self.reason: str | None = None
        self._live: _Live | None = None

    def _get(self) -> _Live:
        live = self._live
        if live is None:
            with _making:
                live = self._live
                if live is None:
                    live = self._live = _Live()
        return live

    @property
    def assistants(self) -> list[ClientJob]:
        """The assistants this run submitted, in order."""
        return self._get().assistants

    # ------------------------------------------------------------------ cancel

    def cancel(self, reason: str) -> None:
        """The broker cancelled this run (connection thread). The first reason stays."""
        live = self._get()
        with live.lock:
            if self.reason is not None:
                return
            self.reason = reason
            hooks, live.hooks = live.hooks, []
        for hook in hooks:
            hook(reason)

    def on_cancel(self, hook: Callable[[str], Any]) -> None:
        """Call ``hook(reason)`` when this run is cancelled (now, if it already is)."""
        live = self._get()
        with live.lock:
            reason = self.reason
            if reason is None:
                live.hooks.append(hook)
                return
        hook(reason)

    # ------------------------------------------------------------------ control messages

    def control(self, seq: int, data: bytes) -> bool:
        """Control message number ``seq`` arrived (connection thread); False for a copy of one
        already here."""
        live = self._get()
        with live.lock:
            if seq <= live.seq:
                return False
            live.seq = seq
            live.messages.append(data)
            hub = self.hub
            if hub is not None:  # (a callback is only ever taken with a hub)
                for callback in live.callbacks:
                    hub.dispatcher.call(callback, data)
        return True

    def take_controls(self) -> list[bytes]:
        """The messages not returned by an earlier call, in order."""
        live = self._live
        if live is None:
            return []  # none came (one that comes now makes it: the next call sees it)
        with live.lock:
            new = live.messages[live.taken :]
            live.taken = len(live.messages)
        return new

    def on_control(self, callback: ControlCallback) -> None:
        """Call ``callback(data)`` for every message, those already here first."""
        if self.hub is None:
            raise RuntimeError(f"job {self.job_id} does not come from a worker")
        live = self._get()
        with live.lock:
            live.callbacks.append(callback)
            for data in live.messages:
                self.hub.dispatcher.call(callback, data)
