"""The core thread: plumbing around :class:`BrokerCore`.

It owns the two inproc PAIRs to the edge threads, the status XPUB and the control PAIR, and
nothing else. Each pass drains everything that is ready, feeds it to the core, runs the timed
rules when due, asks the factory for workers when jobs wait, and sends what the core returns.
Draining first and sending once per pass is what batches work under load.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import zmq

from remus import protocol as p
from remus.errors import ProtocolError
from remus.hostid import host_id
from remus.log import TRACE
from remus.server.config import ServerConfig
from remus.server.core import BrokerCore, Outbox
from remus.server.edge import DRAIN, STATISTICS, TERMINATE, pipe_parts_read
from remus.server.factory import EXITED as REAPED
from remus.server.journal import Journal

log = logging.getLogger(__name__)

#: control message from the Server: stop the broker
STOP = b"stop"
#: control message that tells the core where workers connect (for the factory's spawns)
WORKER_ENDPOINT = b"worker-endpoint "
#: how often the factory is asked to reap and to start workers for waiting jobs
FACTORY_PERIOD = 0.05


class CoreThread(threading.Thread):
    def __init__(
        self,
        context: zmq.Context[Any],
        *,
        config: ServerConfig,
        control: str,
        client_pipe: str,
        worker_pipe: str,
        edge_controls: tuple[str, str],
        edges_finished: tuple[threading.Event, threading.Event],
        status: str,
        factory: Any = None,
        journal: Journal | None = None,
    ) -> None:
        super().__init__(name="remus-core", daemon=True)
        self._context = context
        self._config = config
        self._endpoints = (control, client_pipe, worker_pipe)
        self._edge_controls = edge_controls
        self._edges_finished = edges_finished
        self._max_bytes = config.max_message_bytes
        #: message parts sent down each pipe, to know when an edge has forwarded them all
        self._parts_sent: dict[Any, int] = {}
        self._status_bind = status
        self._worker_endpoint = ""
        self._factory = factory
        self._journal = journal
        self._subscriptions: dict[bytes, int] = {}
        self._wanted: dict[str, bool] = {}
        self.ready = threading.Event()
        self.status_endpoint = ""
        self.error: BaseException | None = None
        self.core: BrokerCore | None = None

    # -------------------------------------------------------------- status subscriptions

    def _wants(self, topic: str) -> bool:
        wanted = self._wanted.get(topic)
        if wanted is None:
            raw = topic.encode()
            wanted = self._wanted[topic] = any(raw.startswith(s) for s in self._subscriptions)
        return wanted

    def _subscription(self, frame: bytes) -> None:
        if not frame:
            return
        topic = frame[1:]
        if frame[0] == 1:
            self._subscriptions[topic] = self._subscriptions.get(topic, 0) + 1
        elif frame[0] == 0 and topic in self._subscriptions:
            self._subscriptions[topic] -= 1
            if self._subscriptions[topic] <= 0:
                del self._subscriptions[topic]
        self._wanted.clear()

    # -------------------------------------------------------------- thread body

    def run(self) -> None:
        ctx = self._context
        control, client, worker = (ctx.socket(zmq.PAIR) for _ in range(3))
        status = ctx.socket(zmq.XPUB)
        edges = [ctx.socket(zmq.PAIR) for _ in self._edge_controls]
        sockets = (control, client, worker, status, *edges)
        try:
            for s in sockets:
                s.linger = 0
            for edge in edges:
                # TERMINATE is the last message on these; linger 0 would drop it unread on close
                edge.linger = 2000
            client.sndhwm = client.rcvhwm = worker.sndhwm = worker.rcvhwm = 0
            control.bind(self._endpoints[0])
            client.bind(self._endpoints[1])
            worker.bind(self._endpoints[2])
            for edge, endpoint in zip(edges, self._edge_controls, strict=True):
                edge.connect(endpoint)
            try:
                status.bind(self._status_bind)
            except zmq.ZMQError as e:
                raise OSError(f"cannot bind the status endpoint {self._status_bind}: {e}") from e
            self.status_endpoint = status.last_endpoint.decode()
        except BaseException as e:
            self.error = e
            self.ready.set()
            for s in sockets:
                s.close(0)
            return
        self._parts_sent = {client: 0, worker: 0}
        self.core = BrokerCore(
            self._config,
            catalog=self._factory,
            now=time.monotonic(),
            wants_event=self._wants,
            host=self._config.host_id or host_id(),
            journal=self._journal is not None,
            wall_clock=time.time,
        )
        if self._journal is not None:
            try:
                self.core.restore(self._journal.load(), time.monotonic())
                self._write_journal(self.core)
            except Exception as e:
                self.error = e
                self.ready.set()
                for s in sockets:
                    s.close(0)
                return
        self.ready.set()
        try:
            self._loop(control, client, worker, status)
        except Exception:
            log.exception("core thread failed; stopping the broker")
        finally:
            try:
                out = self.core.shutdown()
                self._write_journal(self.core)
                self._send(out, client, worker, status)
            except Exception:
                log.exception("could not tell workers to stop")
            for edge, pipe, done in zip(edges, (client, worker), self._edges_finished, strict=True):
                self._stop_edge(edge, self._parts_sent[pipe], done)
            if self._factory is not None:
                self._factory.stop()
            for s in sockets:
                s.close()

    def _stop_edge(self, edge: zmq.Socket[Any], parts: int, done: threading.Event) -> None:
        """Terminate an edge once it has read all ``parts`` we sent it (or the stop timeout)."""
        deadline = time.monotonic() + self._config.stop_timeout
        try:
            while time.monotonic() < deadline and not done.is_set():
                edge.send(STATISTICS, zmq.NOBLOCK)
                if edge.poll(100) and pipe_parts_read(edge.recv_multipart()) >= parts:
                    break
            while not done.is_set():
                edge.send(TERMINATE, zmq.NOBLOCK)
                if done.wait(0.05) or time.monotonic() > deadline + 1:
                    break
                while edge.poll(0):
                    edge.recv_multipart()  # a late STATISTICS reply
        except zmq.Again:
            pass  # that edge never started

    def _loop(
        self,
        control: zmq.Socket[Any],
        client: zmq.Socket[Any],
        worker: zmq.Socket[Any],
        status: zmq.Socket[Any],
    ) -> None:
        core = self.core
        assert core is not None
        poller = zmq.Poller()
        for s in (control, client, worker, status):
            poller.register(s, zmq.POLLIN)
        tracing = log.isEnabledFor(TRACE)
        now = time.monotonic()
        tick_due = now
        factory_due = now
        while True:
            timeout = max(0.0, min(tick_due, factory_due if self._factory else tick_due) - now)
            ready = dict(poller.poll(int(timeout * 1000)))
            now = time.monotonic()
            if control in ready:
                order = control.recv()
                if order == STOP:
                    return
                if order.startswith(WORKER_ENDPOINT):
                    self._worker_endpoint = order[len(WORKER_ENDPOINT) :].decode()
            if client in ready:
                self._drain(client, p.CLIENT_COMMANDS, core.client_message, now, tracing)
            if worker in ready:
                self._drain(worker, p.WORKER_COMMANDS, core.worker_message, now, tracing)
            if status in ready:
                while True:
                    try:
                        self._subscription(status.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            if now >= tick_due:
                core.tick(now)
                tick_due = core.next_deadline(now)
            if self._factory is not None and self._worker_endpoint and now >= factory_due:
                self._run_factory(core, now)
                factory_due = now + FACTORY_PERIOD
            out = core.flush()
            # what this pass changed is durable before anyone hears of it
            self._write_journal(core)
            self._send(out, client, worker, status)
            # a reply held in this pass may be due before the next scheduled tick
            tick_due = min(tick_due, core.earliest_hold(tick_due))

    def _drain(
        self,
        pipe: zmq.Socket[Any],
        allowed: frozenset[bytes],
        handle: Any,
        now: float,
        tracing: bool,
    ) -> None:
        core = self.core
        assert core is not None
        for _ in range(DRAIN):
            try:
                frames = pipe.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            try:
                if sum(len(f) for f in frames) > self._max_bytes:
                    raise ProtocolError(
                        f"message of {sum(len(f) for f in frames)} bytes is over the broker's "
                        f"limit of {self._max_bytes} bytes",
                        code="too-large",
                    )
                msg = p.decode(frames[1:], allowed)
            except Exception as e:  # ProtocolError, or a decoder bug: either way, not fatal
                code = e.code if isinstance(e, ProtocolError) else "bad-message"
                log.warning("rejected a message from %s: %s", identity.hex(), e)
                rid = p.request_id(frames[1:]) if len(frames) >= 4 else -1
                self._forward(pipe, [identity, *p.encode(p.Error(rid, code, str(e)))])
                continue
            if tracing:
                log.log(TRACE, "core <- %s %s", identity.hex(), type(msg).__name__)
            try:
                handle(identity, msg, now)
            except Exception:
                # A rule that breaks on one message must not take the broker down with it.
                log.exception(
                    "internal error handling %s from %s", type(msg).__name__, identity.hex()
                )
                if isinstance(msg, p.Request):
                    err = p.Error(
                        msg.rid, "internal", "the broker failed on this request; see its log"
                    )
                    self._forward(pipe, [identity, *p.encode(err)])

    def _forward(self, pipe: zmq.Socket[Any], frames: list[Any]) -> None:
        pipe.send_multipart(frames, copy=False)
        self._parts_sent[pipe] += len(frames)

    def _send(
        self, out: Outbox, client: zmq.Socket[Any], worker: zmq.Socket[Any], status: zmq.Socket[Any]
    ) -> None:
        for identity, msg in out.clients:
            self._forward(client, [identity, *p.encode(msg)])
        for identity, msg in out.workers:
            self._forward(worker, [identity, *p.encode(msg)])
        kill = getattr(self._factory, "kill", None)
        for host, pid in out.kills:
            if kill is not None and self.core is not None and host == self.core.host:
                kill(pid)  # only a process the factory spawned; it ignores any other pid
        if out.events:
            stamp = time.time()
            for topic, payload in out.events:
                payload["time"] = stamp
                status.send_multipart([topic.encode(), p.pack(payload)])

    def _write_journal(self, core: BrokerCore) -> None:
        batch = core.take_journal()
        if batch is not None and self._journal is not None:
            self._journal.write(batch)  # a failure stops the broker: better than lying

    def _run_factory(self, core: BrokerCore, now: float) -> None:
        factory = self._factory
        try:
            for event in factory.reap(now):
                core.add_event(event.topic, event.payload)
                if event.topic == REAPED and not event.payload.get("stopped_by_broker"):
                    sig = event.payload.get("signal")
                    how = (
                        f"was killed by {sig}"
                        if sig
                        else f"exited with code {event.payload.get('returncode')}"
                    )
                    core.process_exited(core.host, event.payload["pid"], how, now)
            demand = core.demand()
            if demand:
                for event in factory.create_workers(demand, self._worker_endpoint, now):
                    core.add_event(event.topic, event.payload)
        except Exception:
            log.exception("worker factory failed")
