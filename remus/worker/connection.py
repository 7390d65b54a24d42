"""The worker's background thread: it alone owns the socket to the broker.

The user's threads hand it what to send through a thread-safe queue plus a one-byte wake-up on
a socketpair (which ZeroMQ's poller watches beside the DEALER); it hands them jobs through
another queue. Each wake-up drains everything queued into ONE ``report`` message, so a worker
that finishes many small jobs quickly sends few messages.

It heartbeats every interval. If the broker stays silent for ``LIVENESS`` intervals the worker
says so once and registers again, on the same socket: ZeroMQ reconnects TCP by itself, and
everything queued meanwhile (a finished job's result included) is delivered in order when the
broker answers again. A broker that was only suspended sees the result, then the re-register;
a broker that restarted answers the first message with ``unknown-worker`` and the worker
registers again with the jobs it still holds.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from typing import Any

import zmq

from remus import protocol as p
from remus.errors import ProtocolError
from remus.hostid import host_id
from remus.types import JobRequirements
from remus.worker.job import Contents, Job

log = logging.getLogger(__name__)

#: broker silence, in heartbeat intervals, after which the worker reconnects
LIVENESS = 3.0
SMALL = 4096


class Connection(threading.Thread):
    def __init__(
        self,
        context: zmq.Context[Any],
        endpoint: str,
        requirements: JobRequirements,
        heartbeat: float,
        identity: bytes,
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
        self.cancelled: set[str] = set()
        self.shutdown = threading.Event()
        self.connected = threading.Event()
        #: jobs asked for by the user side (written there) and jobs received (written here)
        self.requested = 0
        self.received = 0
        self._held: set[str] = set()
        #: credit this thread has actually sent (what a re-register must restate)
        self._credit_sent = 0
        self.reconnects = 0

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

    def close(self, timeout: float = 5.0) -> None:
        if self.is_alive():
            self.post("stop")
            self.join(timeout)
        self._wake_r.close()
        self._wake_w.close()

    # -------------------------------------------------------------- thread body

    def run(self) -> None:
        sock = self._connect()
        try:
            self._loop(sock)
        except Exception:
            log.exception("worker connection thread failed")
            self.shutdown.set()
            self.inbox.put(None)
        finally:
            sock.close(linger=1000)

    def _connect(self) -> zmq.Socket[Any]:
        sock = self._context.socket(zmq.DEALER)
        sock.routing_id = self.identity
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 0
        sock.connect(self.endpoint)
        self._send(sock, self._register())
        return sock

    def _send(self, sock: zmq.Socket[Any], msg: p.Message) -> None:
        """Send without ever blocking: a TCP DEALER queues while disconnected; one whose
        inproc broker is gone has no peer at all, and then there is nobody to tell."""
        try:
            sock.send_multipart(p.encode(msg), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.debug("no broker to send %s to", type(msg).__name__)

    def _register(self) -> p.Register:
        outstanding = max(0, self._credit_sent - self.received)
        return p.Register(
            self.requirements,
            self.heartbeat,
            host_id(),
            os.getpid(),
            outstanding,
            sorted(self._held),
        )

    def _loop(self, sock: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        now = time.monotonic()
        last_heard = now
        next_beat = now + self.heartbeat
        silent = False
        while True:
            timeout = max(0.0, min(next_beat, last_heard + self.heartbeat * LIVENESS) - now)
            ready = dict(poller.poll(int(timeout * 1000)))
            now = time.monotonic()
            if self._wake_r.fileno() in ready or self._wake_r in ready:
                if self._flush_outbox(sock):
                    self._send(sock, p.Goodbye())
                    return
                next_beat = now + self.heartbeat
            if sock in ready:
                if silent:
                    log.info("broker at %s answers again", self.endpoint)
                    silent = False
                last_heard = now
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    stop = self._handle(sock, frames)
                    del frames  # a big job's frames now belong to its Job alone
                    if stop:
                        return
            if now - last_heard > self.heartbeat * LIVENESS:
                if not silent:
                    log.warning(
                        "broker at %s silent for %.1f s; registering again and waiting for it",
                        self.endpoint,
                        now - last_heard,
                    )
                silent = True
                self.connected.clear()
                self._send(sock, self._register())
                self.reconnects += 1
                last_heard = now
                next_beat = now + self.heartbeat
            elif now >= next_beat:
                if self.outbox.empty():
                    self._send(sock, p.Heartbeat())
                elif self._flush_outbox(sock):  # lazy items waiting: they are the heartbeat
                    self._send(sock, p.Goodbye())
                    return
                next_beat = now + self.heartbeat

    def _handle(self, sock: zmq.Socket[Any], frames: list[Any]) -> bool:
        """Act on one broker message; True means stop."""
        try:
            msg = p.decode(frames, p.BROKER_TO_WORKER)
        except ProtocolError as e:
            log.warning("dropped an unreadable message from the broker: %s", e)
            return False
        self.connected.set()
        if isinstance(msg, p.Jobs):
            for assigned in msg.jobs:
                contents = Contents(dict(zip(assigned.keys, assigned.values, strict=True)))
                self._held.add(assigned.id)
                self.inbox.put(
                    Job(assigned.id, assigned.requirements, contents, wire_files=assigned.files)
                )
            self.received += len(msg.jobs)
        elif isinstance(msg, p.Cancel):
            self.cancelled.update(msg.ids)
        elif isinstance(msg, p.Shutdown):
            log.info("the broker told this worker to exit: %s", msg.reason or "no reason given")
            self.shutdown.set()
            self.inbox.put(None)
            return True
        elif isinstance(msg, p.Error):
            if msg.code == "unknown-worker":
                # the broker restarted or forgot us: register again, keeping what we hold
                self._send(sock, self._register())
            else:
                log.warning("the broker refused a message: %s (%s)", msg.message, msg.code)
        return False

    def _flush_outbox(self, sock: zmq.Socket[Any]) -> bool:
        """Send everything queued as one report; True if the user side asked to stop."""
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
        credit = 0
        stop = False
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
            elif kind == "result":  # (id, data) or (id, data, files)
                results.append(item[1:])
                self._held.discard(item[1])
            elif kind == "failure":
                failures.append(item[1:])
                self._held.discard(item[1])
            elif kind == "credit":
                credit += item[1]
            elif kind == "stop":
                stop = True
        self._credit_sent += credit
        if started or progress or results or failures or credit:
            self._send(sock, p.Report(started, progress, results, failures, credit))
        return stop
