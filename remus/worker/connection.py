"""The worker's background thread: it alone owns the socket to the broker.

The user's threads hand it what to send through a thread-safe queue plus a one-byte wake-up on
a socketpair (which ZeroMQ's poller watches beside the DEALER); it hands them jobs through
another queue. Each wake-up drains everything queued into ONE ``report`` message, so a worker
that finishes many small jobs quickly sends few messages.

It heartbeats every interval. If the broker stays silent for ``LIVENESS`` intervals the worker
says so once and registers again, on the same socket: ZeroMQ reconnects TCP by itself, and
everything queued meanwhile is delivered in order when the broker answers again. A broker that
restarted answers the first message with ``unknown-worker`` and the worker registers again with
the jobs it still holds.

Nothing the worker must not lose is thrown away on the way (docs/protocol.md, "Acknowledged
reports"): each report that carries a start, progress, a result or a failure is numbered
(``seq``) and kept until the broker acknowledges it; a job whose result or failure is not
acknowledged yet is still listed as held. After every re-register, and when a silent broker
answers again, the unacknowledged reports are sent again, in order. A result no broker will
ever take is logged as a WARNING that names its job: one the broker refused (the job was
terminated, ran over its time limit, went to another worker), or one still unacknowledged when
the worker closes (after waiting up to ``CLOSE_WAIT`` seconds for the ack).

Each job handed over gets a new :class:`~remus.worker.jobstate.JobState`, where this thread
notes a ``cancel`` (with its reason) and the job's control messages (``controls``, copies
dropped by ``seq``). A cancelled job is no longer listed as held: the broker has let go of it
(ended it, or queued it again after a preemption). Reports saying a cancelled job ``stopped``,
and those carrying checkpoints (only the latest per job), are numbered and kept until
acknowledged like the others. The broker's answer to ``register`` names its client endpoint
(where assistants are submitted): kept in :attr:`Connection.client_endpoint`.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import zmq

from remus import protocol as p
from remus import wire
from remus.errors import ForbiddenError, ProtocolError, ServerError, WrongEndpointError
from remus.hostid import host_id
from remus.log import name_os_thread
from remus.security import HandshakeWatch, PeerKeys
from remus.types import JobRequirements
from remus.usage import current
from remus.worker.job import Contents, Job
from remus.worker.jobstate import Hub, JobState

log = logging.getLogger(__name__)

#: broker silence, in heartbeat intervals, after which the worker reconnects
LIVENESS = 3.0
SMALL = 4096
#: on close, how long to wait for the broker to acknowledge the last reports
CLOSE_WAIT = 2.0
#: error codes after which a worker stops, and the error it then holds
FATAL: dict[str, type[ServerError]] = {
    "wrong-endpoint": WrongEndpointError,
    "forbidden": ForbiddenError,
}


class Connection(threading.Thread):
    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        requirements: JobRequirements,
        heartbeat: float,
        identity: bytes,
        *,
        slots: int = 1,
        hub: Hub | None = None,
        keys: PeerKeys | None = None,
    ) -> None:
        super().__init__(name=f"remus-worker-{identity.hex()[:8]}", daemon=True)
        self._context = context
        self.endpoint = endpoint
        self.requirements = requirements
        self.heartbeat = heartbeat
        self.identity = identity
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._signalled = False
        #: jobs the broker cancelled, with its reason (a job handed over again leaves it)
        self.cancelled: dict[str, str] = {}
        #: how many jobs the worker runs at once, as registered
        self.slots = slots
        self._hub = hub
        self._keys = keys
        #: secure mode: why the handshake with the broker failed, if it did
        self._handshake: HandshakeWatch | None = None
        self._sock: zmq.Socket[Any] | None = None
        #: the state of each job's current run, by id (written here, removed by ``forget``)
        self._states: dict[str, JobState] = {}
        self._states_lock = threading.Lock()
        #: the broker's client endpoint (from its answer to register), for assistants
        self.client_endpoint = ""
        self.shutdown = threading.Event()
        #: why this connection stopped by itself, if for an error (e.g. a wrong endpoint)
        self.error: Exception | None = None
        self.connected = threading.Event()
        #: jobs asked for by the user side (written there) and jobs received (written here)
        self.requested = 0
        self.received = 0
        self._held: set[str] = set()
        #: credit this thread has actually sent (what a re-register must restate)
        self._credit_sent = 0
        self.reconnects = 0
        #: reports sent and not acknowledged yet, oldest first
        self._unacked: deque[p.Report] = deque()
        self._seq = 0
        self._registered_at = -1e9
        #: a silent broker answered again: resend the unacknowledged reports
        self._resend_due = False
        #: when this process's resource use is next sent
        self._usage_due = 0.0

    # -------------------------------------------------------------- user side (any thread)

    def post(self, *item: Any, wake: bool = True) -> None:
        """Queue ``item`` for the next report; ``wake=False`` lets it ride along with the next
        one that wakes the thread (or the next heartbeat) instead of costing a message."""
        self.outbox.put(item)
        if wake and not self._signalled:
            self._signalled = True
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass  # closed: the thread is gone

    def forget(self, job: Job) -> None:
        """The job's run is over here: drop its state (unless the job was handed over again
        meanwhile and has a newer one)."""
        if job.state is not None:
            with self._states_lock:
                if self._states.get(job.id) is job.state:
                    del self._states[job.id]

    def close(self, timeout: float = 5.0) -> None:
        if self.is_alive():
            self.post("stop")
            self.join(timeout)
        if not self.is_alive():
            self._warn_unacknowledged()
        self._wake_r.close()
        self._wake_w.close()

    def _warn_unacknowledged(self) -> None:
        """The thread is gone: name each job whose result or failure no broker took."""
        lost: dict[str, str] = {}
        for report in self._unacked:
            lost.update((r[0], "result") for r in report.results)
            lost.update((f[0], "failure") for f in report.failures)
        while True:  # posted after the thread stopped (the broker told it to exit)
            try:
                item = self.outbox.get_nowait()
            except queue.Empty:
                break
            if item[0] in ("result", "failure"):
                lost[item[1]] = item[0]
        for job_id, what in lost.items():
            log.warning(
                "no broker took the %s of job %s: the worker closed before a broker "
                "acknowledged it",
                what,
                job_id,
            )

    # -------------------------------------------------------------- thread body

    def run(self) -> None:
        name_os_thread()
        sock = self._connect()
        try:
            self._loop(sock)
        except Exception:
            log.exception("worker connection thread failed")
            self.shutdown.set()
            self.inbox.put(None)
        finally:
            self._close_socket(self._sock, linger=1000)

    def _close_socket(self, sock: zmq.Socket[Any] | None, linger: int = 0) -> None:
        if sock is None:
            return
        if self._handshake is not None:
            self._handshake.close(sock)
        sock.close(linger=linger)

    def _connect(self) -> zmq.Socket[Any]:
        sock = self._context.socket(zmq.DEALER)
        sock.routing_id = self.identity
        if self._keys is not None:
            self._keys.apply(sock)
            self._handshake = HandshakeWatch(sock)
        self._sock = sock
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 0
        sock.connect(self.endpoint)
        self._reregister(sock, resend=False)
        return sock

    def _send(self, sock: zmq.Socket[Any], msg: p.Message) -> None:
        """Send without ever blocking: a TCP DEALER queues while disconnected; one whose
        inproc broker is gone has no peer at all, and then there is nobody to tell."""
        try:
            wire.send(sock, p.encode(msg), wire.NOBLOCK)
        except zmq.Again:
            log.debug("no broker to send %s to", type(msg).__name__)

    def _reregister(self, sock: zmq.Socket[Any], *, resend: bool) -> None:
        """Register (again), then, if ``resend``, send every unacknowledged report again."""
        self._send(sock, self._register())
        self._registered_at = time.monotonic()
        if resend:
            self._resend(sock)

    def _resend(self, sock: zmq.Socket[Any]) -> None:
        """Send the unacknowledged reports again, in order, without their credit: the
        register sent before restated it."""
        self._resend_due = False
        for r in self._unacked:
            self._send(sock, replace(r, credit=0, usage=None))

    def _acked(self, seq: int, dropped: Any = ()) -> None:
        """The broker applied our reports up to ``seq``: forget them, and the jobs they end."""
        unacked = self._unacked
        while unacked and unacked[0].seq <= seq:
            report = unacked.popleft()
            for r in report.results:
                self._held.discard(r[0])
            for f in report.failures:
                self._held.discard(f[0])
        for job_id, why in dropped:
            self._held.discard(job_id)
            log.warning("job %s: the broker dropped its result: %s", job_id, why)

    def _register(self) -> p.Register:
        outstanding = max(0, self._credit_sent - self.received)
        return p.Register(
            self.requirements,
            self.heartbeat,
            host_id(),
            os.getpid(),
            outstanding,
            sorted(self._held),
            self.slots,
        )

    def _loop(self, sock: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        now = time.monotonic()
        last_heard = now
        next_beat = now + self.heartbeat
        silent = False
        #: set once the user side asked to stop: wait until then for the last acks
        closing: float | None = None
        while True:
            due = min(next_beat, last_heard + self.heartbeat * LIVENESS)
            if closing is not None:
                due = min(due, closing)
            ready = dict(poller.poll(int(max(0.0, due - now) * 1000)))
            now = time.monotonic()
            if self._wake_r.fileno() in ready or self._wake_r in ready:
                if self._flush_outbox(sock, self._usage(now)) and closing is None:
                    closing = now + CLOSE_WAIT
                next_beat = now + self.heartbeat
            if sock in ready:
                if silent:
                    log.info("broker at %s answers again", self.endpoint)
                    silent = False
                    self._resend_due = True
                last_heard = now
                stop = False
                while True:
                    try:
                        frames = wire.recv(sock, wire.NOBLOCK)
                    except zmq.Again:
                        break
                    # after a shutdown, read on what already arrived: the acks among it
                    stop = self._handle(sock, frames) or stop
                    del frames  # a big job's frames now belong to its Job alone
                    if not wire.readable(sock):
                        break
                if stop:
                    return
                if self._resend_due:
                    self._resend(sock)
            if closing is not None and (not self._unacked or now >= closing):
                self._send(sock, p.Goodbye())
                return
            if now - last_heard > self.heartbeat * LIVENESS:
                refused = self._handshake.failure() if self._handshake is not None else ""
                if refused:
                    # ZeroMQ does not retry a refused handshake: a new socket tries again
                    # (the key may be allowed by now, or the broker back with its key)
                    if not silent:
                        log.warning("broker at %s: %s; trying again", self.endpoint, refused)
                    poller.unregister(sock)
                    self._close_socket(sock)
                    sock = self._connect()  # (which registers)
                    poller.register(sock, zmq.POLLIN)
                else:
                    self._reregister(sock, resend=False)
                if not refused and not silent:
                    log.warning(
                        "broker at %s silent for %.1f s; registering again and waiting for it",
                        self.endpoint,
                        now - last_heard,
                    )
                silent = True
                self.connected.clear()
                # the reports go again once the broker answers: not once per silent period
                self.reconnects += 1
                last_heard = now
                next_beat = now + self.heartbeat
            elif now >= next_beat:
                usage = self._usage(now, due=True)
                if self.outbox.empty():
                    self._send(sock, p.Heartbeat(usage))
                elif self._flush_outbox(sock, usage) and closing is None:
                    closing = now + CLOSE_WAIT  # lazy items waiting: they are the heartbeat
                next_beat = now + self.heartbeat

    def _usage(self, now: float, *, due: bool = False) -> p.Usage | None:
        """What this process uses, once per heartbeat interval: it rides on the heartbeat, or
        on a report when a busy worker sends those instead."""
        if not due and now < self._usage_due:
            return None
        self._usage_due = now + self.heartbeat
        return current()

    def _handle(self, sock: zmq.Socket[Any], frames: list[Any]) -> bool:
        """Act on one broker message; True means stop."""
        try:
            msg = p.decode(frames, p.BROKER_TO_WORKER)
        except ProtocolError as e:
            log.warning("dropped an unreadable message from the broker: %s", e)
            return False
        self.connected.set()
        if isinstance(msg, p.Jobs):
            if msg.ack:
                self._acked(msg.ack)
            places = _package_places(msg.jobs)
            if places is None:
                for assigned in msg.jobs:
                    self.inbox.put(self._job(assigned))
                self.received += len(msg.jobs)
            else:  # a package came on one credit: it counts as one job received
                for assigned, place in zip(msg.jobs, places, strict=True):
                    self.inbox.put(self._job(assigned, place))
                self.received += sum(1 for place in places if place is None or place[1] == 0)
        elif isinstance(msg, p.Ack):
            self._acked(msg.seq, msg.dropped)
        elif isinstance(msg, p.Cancel):
            reason = msg.reason or "terminated"
            for job_id in msg.ids:
                self.cancelled[job_id] = reason
                # the broker no longer counts it ours: a register after a broker restart must
                # not claim it back while its handler stops
                self._held.discard(job_id)
                state = self._states.get(job_id)
                if state is not None:
                    state.cancel(reason)
        elif isinstance(msg, p.Controls):
            for job_id, seq, data in msg.messages:
                state = self._states.get(job_id)
                if state is None:
                    log.debug("control message %d for job %s, which is over here", seq, job_id)
                elif not state.control(seq, _bytes(data)):
                    log.debug("dropped a copy of control message %d for job %s", seq, job_id)
        elif isinstance(msg, p.Heartbeat):
            if msg.client:
                self.client_endpoint = client_endpoint(msg.client, self.endpoint)
        elif isinstance(msg, p.Shutdown):
            log.info("the broker told this worker to exit: %s", msg.reason or "no reason given")
            self.shutdown.set()
            self.inbox.put(None)
            return True
        elif isinstance(msg, p.Error):
            if msg.code == "unknown-worker":
                # the broker restarted or forgot us: register again, keeping what we hold, and
                # hand in again what it has not acknowledged. Every message sent before the
                # register gets this answer: one re-register per heartbeat interval (at most a
                # second) is enough.
                if time.monotonic() - self._registered_at >= min(self.heartbeat, 1.0):
                    self._reregister(sock, resend=True)
            elif msg.code in FATAL:
                # nothing will ever work here: a client endpoint, not a worker one; or (secure
                # mode) this key may not serve this io type, or was revoked. Each message sent
                # before this answer gets one too: say it once
                if self.error is None:
                    log.error("worker stops: the broker at %s says %s", self.endpoint, msg.message)
                    self.error = FATAL[msg.code](msg.message)
                self.shutdown.set()
                self.inbox.put(None)
                return True
            else:
                log.warning("the broker refused a message: %s (%s)", msg.message, msg.code)
        return False

    def _job(self, assigned: p.AssignedJob, package: tuple[str, int, int] | None = None) -> Job:
        """The job as handed to the user side, with a new run state."""
        job_id = assigned.id
        state = JobState(job_id, self._hub)
        with self._states_lock:
            self._states[job_id] = state
        self.cancelled.pop(job_id, None)  # (a run before this one was cancelled)
        self._held.add(job_id)
        return Job(
            job_id,
            assigned.requirements,
            Contents(dict(zip(assigned.keys, assigned.values, strict=True))),
            wire_files=assigned.files,
            last_checkpoint=None if assigned.checkpoint is None else _bytes(assigned.checkpoint),
            parent=assigned.parent,
            protected=assigned.protected,
            state=state,
            linked=tuple(assigned.after),
            package=package,
        )

    def _flush_outbox(self, sock: zmq.Socket[Any], usage: p.Usage | None = None) -> bool:
        """Send everything queued as one report (with ``usage`` if given); True if the user
        side asked to stop."""
        # Order matters: empty the wake-up socket, then clear the flag, then empty the queue.
        # A post() racing with this either lands in the queue before we read it or sees the
        # cleared flag and wakes us again; it can never be left unread with no wake-up pending.
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self._signalled = False
        started: list[str] = []
        progress: list[tuple[str, int | None, str]] = []
        results: list[Any] = []
        failures: list[tuple[str, str, str]] = []
        used: list[tuple[str, int, float]] = []
        stopped: list[str] = []
        checkpoints: dict[str, bytes] = {}  # only the latest of each job goes
        credit = 0
        stop = False
        slots = self.slots
        while True:
            try:
                item = self.outbox.get_nowait()
            except queue.Empty:
                break
            kind = item[0]
            if kind == "started":
                started.append(item[1])
            elif kind == "progress":
                progress.append(item[1:])
            elif kind == "result":  # (id, data) or (id, data, files); held until acknowledged
                results.append(item[1:])
            elif kind == "failure":
                failures.append(item[1:])
            elif kind == "used":  # what a job used: (id, peak_rss, cpu), before its result
                used.append(item[1:])
            elif kind == "credit":
                credit += item[1]
            elif kind == "stopped":  # a cancelled job's handler stopped: no result follows
                stopped.append(item[1])
            elif kind == "checkpoint":
                checkpoints.pop(item[1], None)  # (in the order of the latest)
                checkpoints[item[1]] = item[2]
            elif kind == "slots":
                slots = item[1]
            elif kind == "stop":
                stop = True
        if slots != self.slots:  # say so before the credit that counts on it
            self.slots = slots
            self._send(sock, self._register())
        self._credit_sent += credit
        if started or progress or results or failures or stopped or checkpoints:
            self._seq += 1  # kept until acknowledged
            report = p.Report(
                started,
                progress,
                results,
                failures,
                credit,
                self._seq,
                used,
                usage,
                stopped,
                list(checkpoints.items()),
            )
            self._unacked.append(report)
            self._send(sock, report)
        elif credit or used or usage is not None:
            self._send(sock, p.Report(credit=credit, used=used, usage=usage))
        return stop


def _package_places(
    jobs: Sequence[p.AssignedJob],
) -> list[tuple[str, int, int] | None] | None:
    """For each job of a ``jobs`` message, (package id, its place, the package's size) if it
    is one of a work package's (they come one after the other), else None; None for a
    message with no package at all."""
    sizes: dict[str, int] = {}
    for assigned in jobs:
        if assigned.package:
            sizes[assigned.package] = sizes.get(assigned.package, 0) + 1
    if not sizes:
        return None
    seen: dict[str, int] = {}
    places: list[tuple[str, int, int] | None] = []
    for assigned in jobs:
        package = assigned.package
        if not package:
            places.append(None)
            continue
        place = seen.get(package, 0)
        seen[package] = place + 1
        places.append((package, place, sizes[package]))
    return places


def _bytes(blob: Any) -> bytes:
    """A blob off the wire (bytes, or a ZeroMQ frame for a big one) as bytes."""
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, (bytearray, memoryview)):
        return bytes(blob)
    return bytes(blob.bytes)


#: hosts that mean "every interface" in a bound endpoint
WILDCARDS = frozenset({"*", "0.0.0.0", "::", "[::]", ""})


def client_endpoint(named: str, worker_endpoint: str) -> str:
    """The broker's client endpoint as a worker connected to ``worker_endpoint`` reaches it: a
    wildcard host in ``named`` (``tcp://0.0.0.0:50505``) becomes the worker endpoint's host."""
    scheme, sep, rest = named.partition("://")
    if scheme != "tcp" or not sep:
        return named
    host, _, port = rest.rpartition(":")
    if host not in WILDCARDS:
        return named
    w_scheme, _, w_rest = worker_endpoint.partition("://")
    w_host = w_rest.rpartition(":")[0]
    if w_scheme != "tcp" or w_host in WILDCARDS:
        return named
    return f"tcp://{w_host}:{port}"
