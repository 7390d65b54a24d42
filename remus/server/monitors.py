"""Monitoring hooks: ``Server(monitors=[...])`` calls your code on errors, latencies and resource
use, off the core thread.

As the Occamy notes ask, the broker has no monitoring system of its own, only interfaces to
plug one in. A monitor is any object with one or more of these methods, each taking a
:class:`MonitorEvent`::

    class Pager:
        def on_error(self, event):      # a job failed or expired, a worker was lost, ...
            send_page(f"{event.topic} {event.job or event.worker}: {event.reason}")

        def on_latency(self, event):    # every job that ended: how long it waited and ran
            statsd.timing("remus.wait", event.queued_for)

        def on_resource(self, event):   # a worker's memory and CPU (once per heartbeat), and
            ...                         # what each ended job used (peak_rss, cpu)

    Server(ports, monitors=[Pager()])

The core builds these events only for what a monitor wants (as for status subscribers) and
hands them to the monitor thread through an inproc pipe without waiting; the methods run in
that thread, in the order the events happened. A monitor slower than the events makes the
pipe fill up: then events are dropped (counted, and logged once a minute), never the broker
slowed. An exception in a monitor method is logged and the monitor keeps getting events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from remus import protocol as p
from remus.log import name_os_thread

log = logging.getLogger(__name__)

#: topics that call ``on_error``
ERROR_TOPICS = frozenset(
    {
        "job.failed",
        "job.expired",
        "job.requeued",
        "job.dropped",
        "worker.lost",
        "worker.quarantined",
        "worker.spawn_failed",
    }
)
#: topics that call ``on_latency``: every ending
LATENCY_TOPICS = frozenset({"job.finished", "job.failed", "job.expired", "job.terminated"})
#: topics that call ``on_resource`` (job endings only when their worker said what they used)
RESOURCE_TOPICS = frozenset({"worker.usage"}) | LATENCY_TOPICS
HOOKS = (
    ("on_error", ERROR_TOPICS),
    ("on_latency", LATENCY_TOPICS),
    ("on_resource", RESOURCE_TOPICS),
)
#: events waiting for the monitor thread before new ones are dropped
PIPE_LIMIT = 100_000
#: how often dropped events and failing monitors are logged, at most (seconds)
LOG_EVERY = 60.0
#: the last message on the pipe: the broker stopped
END = b""


@dataclass(frozen=True, slots=True)
class MonitorEvent:
    """One event, as the status feed carries it (docs/protocol.md, "Status feed")."""

    topic: str
    #: when it happened (Unix time)
    time: float
    #: the whole payload
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def job(self) -> str:
        return str(self.data.get("job", ""))

    @property
    def worker(self) -> str:
        return str(self.data.get("worker", ""))

    @property
    def io_type(self) -> str:
        """``"Input->Output"``."""
        io = self.data.get("io_type")
        return "->".join(io) if isinstance(io, list) else str(io or "")

    @property
    def reason(self) -> str:
        return str(self.data.get("reason", ""))

    @property
    def queued_for(self) -> float | None:
        """Seconds the job waited for a worker (endings)."""
        return self.data.get("queued_for")

    @property
    def running_for(self) -> float | None:
        """Seconds the job ran (endings; None if it never ran)."""
        return self.data.get("running_for")

    @property
    def rss(self) -> int | None:
        """A worker's resident memory now, in bytes (``worker.usage``)."""
        return self.data.get("rss")

    @property
    def peak_rss(self) -> int | None:
        """A worker's peak (``worker.usage``) or a job's (endings), in bytes."""
        return self.data.get("peak_rss")

    @property
    def cpu(self) -> float | None:
        """CPU seconds: a worker's so far, or what a job used."""
        return self.data.get("cpu")


def check_monitors(monitors: Sequence[Any]) -> tuple[Any, ...]:
    """The monitors, refused (TypeError) if one has none of the hooks."""
    for m in monitors:
        if not any(callable(getattr(m, hook, None)) for hook, _ in HOOKS):
            raise TypeError(
                f"monitor {m!r} has none of the methods on_error, on_latency, on_resource"
            )
    return tuple(monitors)


def topics_for(monitors: Sequence[Any]) -> frozenset[str]:
    """The status topics the monitors want."""
    wanted: set[str] = set()
    for m in monitors:
        for hook, topics in HOOKS:
            if callable(getattr(m, hook, None)):
                wanted |= topics
    return frozenset(wanted)


class MonitorThread(threading.Thread):
    """Owns the pipe's receiving end: binds it at ``endpoint`` (inproc) before the core thread
    connects, and calls the monitors for each event until the core says :data:`END`."""

    def __init__(self, context: zmq.Context[Any], monitors: Sequence[Any], endpoint: str) -> None:
        super().__init__(name="remus-monitors", daemon=True)
        self.monitors = check_monitors(monitors)
        self.topics = topics_for(self.monitors)
        self.endpoint = endpoint
        self._pipe = context.socket(zmq.PAIR)
        self._pipe.linger = 0
        self._pipe.rcvhwm = PIPE_LIMIT
        self._pipe.bind(endpoint)  # in the caller's thread: bound before the core connects
        self._failed: dict[tuple[int, str], float] = {}

    def run(self) -> None:
        name_os_thread()
        pipe = self._pipe
        try:
            while True:
                frames = pipe.recv_multipart()
                if frames[0] == END:
                    return
                try:
                    data = p.unpack(frames[1])
                except Exception:
                    continue
                if isinstance(data, dict):
                    topic = frames[0].decode(errors="replace")
                    self.dispatch(MonitorEvent(topic, float(data.get("time", 0.0)), data))
        except zmq.ContextTerminated:
            pass
        finally:
            pipe.close()

    def close(self) -> None:
        """Close the pipe of a thread that was never started (the broker did not start)."""
        self._pipe.close()

    def dispatch(self, event: MonitorEvent) -> None:
        topic = event.topic
        for m in self.monitors:
            for hook, topics in HOOKS:
                if topic not in topics:
                    continue
                if (
                    hook == "on_resource"
                    and topic != "worker.usage"
                    and "peak_rss" not in event.data
                ):
                    continue
                method = getattr(m, hook, None)
                if not callable(method):
                    continue
                try:
                    method(event)
                except Exception:
                    self._complain(m, hook)

    def _complain(self, monitor: Any, hook: str) -> None:
        key = (id(monitor), hook)
        now = time.monotonic()
        if now - self._failed.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._failed[key] = now
            log.exception(
                "monitor %r failed in %s (it keeps getting events; logged once a minute)",
                monitor,
                hook,
            )


class MonitorPipe:
    """The core thread's end: sends the events the monitors want, never waiting."""

    def __init__(self, context: zmq.Context[Any], endpoint: str, topics: frozenset[str]) -> None:
        self.topics = topics
        self._sock = context.socket(zmq.PAIR)
        self._sock.linger = 1000
        self._sock.sndhwm = PIPE_LIMIT
        self._sock.connect(endpoint)
        self.dropped = 0
        self._logged = -LOG_EVERY

    def send(self, topic: str, packed: bytes) -> None:
        try:
            self._sock.send_multipart([topic.encode(), packed], zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            now = time.monotonic()
            if now - self._logged >= LOG_EVERY:
                self._logged = now
                log.warning(
                    "monitors are slower than the broker's events: %d dropped so far", self.dropped
                )

    def close(self) -> None:
        self._sock.sndtimeo = 2000  # the end must get through, after whatever is queued
        try:
            self._sock.send(END)
        except zmq.Again:
            log.warning("monitors: could not tell the monitor thread to stop (pipe full)")
        self._sock.close()
