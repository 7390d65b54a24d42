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
from remus import wire
from remus.errors import ProtocolError
from remus.hostid import host_id
from remus.log import TRACE, name_os_thread
from remus.security import CLIENT_DOMAIN
from remus.server.auth import Gate
from remus.server.config import ServerConfig
from remus.server.core import TOPIC_FAMILIES, BrokerCore, Outbox
from remus.server.edge import DRAIN, STATISTICS, TERMINATE, pipe_parts_read
from remus.server.factory_base import ASKED_TO_LEAVE, QUARANTINED, SPAWNED, WorkerSeen
from remus.server.factory_base import EXITED as REAPED
from remus.server.group_commit import GroupCommit
from remus.server.journal import Journal
from remus.server.monitors import MonitorPipe
from remus.server.recovery import local_process_gone
from remus.server.spool import REQUEST, STORED, Spool
from remus.server.spool import STOP as STOP_SPOOL

log = logging.getLogger(__name__)

#: control message from the Server: stop the broker
STOP = b"stop"
#: control message from the Server: drain for up to the seconds that follow, then stop
DRAIN_FOR = b"drain "
#: control message that tells the core where workers connect (for the factory's spawns)
WORKER_ENDPOINT = b"worker-endpoint "
#: control message with the bound client and worker endpoints (space apart), for the words to
#: a peer that reached the wrong one
ENDPOINTS = b"endpoints "
#: a peer at the wrong endpoint is logged at most once per this many seconds
WRONG_ENDPOINT_LOG_EVERY = 60.0
#: control message from the Server: lift the quarantine of the worker file that follows (of
#: every file if nothing follows) and rescan the worker files
LIFT_QUARANTINE = b"lift-quarantine "
#: after a stop, how long requests from clients that were active just before are still
#: answered (with the stopping error), so a client between two of its requests hears it too
CLOSING = 0.25
#: how often the factory is asked to reap and to start workers for waiting jobs
FACTORY_PERIOD = 0.05
#: where the topic starts in an owner's subscription ``@KEY topic`` (40 Z85 characters)
OWNED_AT = 42
#: control message from the Server: read the allow-lists again (secure mode)
RELOAD_KEYS = b"reload-keys"


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
        monitors: tuple[str, frozenset[str]] | None = None,
        gate: Gate | None = None,
        spool_dir: str | None = None,
    ) -> None:
        super().__init__(name="remus-core", daemon=True)
        #: the spool thread (file chunks, off this thread) and its folder (None: a temp one)
        self._spool_dir = spool_dir
        self._spool: Spool | None = None
        self._spool_pipe: zmq.Socket[Any] | None = None
        #: secure mode: keys and allow-lists (None: plain mode)
        self._gate = gate
        #: (the monitor thread's pipe endpoint, the topics its monitors want), if any
        self._monitors = monitors
        self._monitor_pipe: MonitorPipe | None = None
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
        #: the bound client and worker endpoints, and when each misdirected peer was last logged
        self._bound = {"client": "", "worker": ""}
        self._misdirected: dict[bytes, float] = {}
        self._factory = factory
        self._journal = journal
        #: with a journal: its writer thread, and the outboxes held until their pass is durable
        self._commits: GroupCommit | None = None
        self._subscriptions: dict[bytes, int] = {}
        #: secure mode: per topic a subscriber asked for, what was applied for each of them
        self._applied: dict[bytes, list[tuple[bytes, ...]]] = {}
        #: when a client was last heard or answered (a stop answers late requests if recently)
        self._last_client = -CLOSING
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
            wanted = any(raw.startswith(s) for s in self._subscriptions)
            if not wanted and self._gate is not None and raw.startswith(b"job."):
                # an owner following "@KEY " or "@KEY job.x" wants job events made (then sent
                # under its owned topic, to it alone)
                wanted = any(
                    raw.startswith(s[OWNED_AT:]) for s in self._subscriptions if s.startswith(b"@")
                )
            pipe = self._monitor_pipe
            self._wanted[topic] = wanted = wanted or (pipe is not None and topic in pipe.topics)
        return wanted

    def _secure_subscription(self, status: zmq.Socket[Any], frame: zmq.Frame) -> None:
        """Secure mode (a manual XPUB): apply what the subscriber's key may follow. An admin
        follows any topic ("" is every family); any other client only ``@ITS-KEY ...``
        ("" is all of its own jobs' events). Anything else is not applied."""
        raw = frame.bytes
        if not raw or raw[0] not in (0, 1):
            return
        topic = raw[1:]
        applied_for = self._applied.setdefault(topic, [])
        try:
            key = str(frame.get("User-Id")).encode()
        except zmq.ZMQError:
            # libzmq's own unsubscribe for a subscriber that left, naming the topic it asked
            # for, not whose it was. Count it off only if every subscriber of that topic had
            # the same applied (else it could silence another key's feed: leave it counted)
            if applied_for and all(a == applied_for[0] for a in applied_for):
                for t in applied_for.pop():
                    self._subscription(b"\x00" + t)
            return
        assert self._gate is not None
        lists = self._gate.lists
        own = b"@" + key + b" "
        if not lists.client_allowed(key):
            applied: list[bytes] = []
        elif key in lists.admins:
            applied = [t.encode() for t in TOPIC_FAMILIES] if topic == b"" else [topic]
        elif topic == b"":
            applied = [own]
        elif topic.startswith(own):
            applied = [topic]
        else:
            log.debug("a subscriber that is not an admin asked for %r: not applied", topic)
            applied = []
        option = zmq.SUBSCRIBE if raw[0] == 1 else zmq.UNSUBSCRIBE
        for t in applied:
            status.setsockopt(option, t)
            self._subscription(raw[:1] + t)
        if raw[0] == 1:
            applied_for.append(tuple(applied))
        elif tuple(applied) in applied_for:
            applied_for.remove(tuple(applied))

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
        name_os_thread()
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
            if self._gate is not None:
                keys = self._gate.own
                status.curve_server = True
                status.curve_secretkey = keys.secret
                status.curve_publickey = keys.public
                status.zap_domain = CLIENT_DOMAIN.encode()
                status.xpub_manual = 1
            try:
                status.bind(self._status_bind)
            except zmq.ZMQError as e:
                raise OSError(f"cannot bind the status endpoint {self._status_bind}: {e}") from e
            self.status_endpoint = status.last_endpoint.decode()
            self._start_spool(ctx)
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
        self.core.endpoints = {**self._bound, "status": self.status_endpoint}
        if self._gate is not None:
            self.core.auth = self._gate.lists
            self.core.refused = self._gate.guard.refused
        if self._journal is not None:
            try:
                gone = local_process_gone(self.core.host)  # no wait for a worker that died
                jobs = self._journal.load()
                acks = self._journal.worker_acks()
                self.core.restore(jobs, time.monotonic(), gone, acks)
                self._write_journal(self.core)
                self._commits = GroupCommit(
                    ctx, self._journal, f"inproc://remus-journal-{id(self)}"
                )
                self._commits.start(self._config.stop_timeout)
            except Exception as e:
                if self._commits is not None:
                    self._commits.close(self._config.stop_timeout)
                self.error = e
                self.ready.set()
                for s in sockets:
                    s.close(0)
                return
        assert self._spool is not None
        for stored in self._spool.stored_at_start:
            self.core.blobs.stored(stored, time.monotonic())
        self._spool.start()
        if self._monitors is not None:
            self._monitor_pipe = MonitorPipe(ctx, *self._monitors)
            self._wanted.clear()
        self.ready.set()
        try:
            self._loop(control, client, worker, status)
        except Exception:
            log.exception("core thread failed; stopping the broker")
        finally:
            try:
                recent = time.monotonic() - self._last_client < CLOSING
                out = self.core.shutdown()
                self._deliver(out, client, worker, status)
                if self._commits is not None:  # everything held, once durable
                    for done in self._commits.finish(self._config.stop_timeout):
                        self._send(done, client, worker, status)
                if recent:  # (not the stopping answers just sent: they end their waits)
                    self._refuse_while_closing(client, self.core.stopping_error())
            except Exception:
                log.exception("could not tell workers to stop")
            if self._commits is not None:
                self._commits.close(self._config.stop_timeout)
            for edge, pipe, done in zip(edges, (client, worker), self._edges_finished, strict=True):
                self._stop_edge(edge, self._parts_sent[pipe], done)
            if self._factory is not None:
                self._factory.stop()
            if self._monitor_pipe is not None:
                self._monitor_pipe.close()
            self._stop_spool()
            for s in sockets:
                s.close()

    def _refuse_while_closing(self, client: zmq.Socket[Any], error: tuple[str, str]) -> None:
        """For CLOSING seconds, answer every client request with the stopping error."""
        code, words = error
        deadline = time.monotonic() + CLOSING
        while (left := deadline - time.monotonic()) > 0:
            if not client.poll(max(1, int(left * 1000))):
                continue
            frames = client.recv_multipart()
            if self._gate is not None:
                del frames[1]  # the sender's key
            rid = p.request_id(frames[1:]) if len(frames) >= 4 else -1
            self._forward(client, [frames[0], *p.encode(p.Error(rid, code, words))])

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
        # The client and worker pipes are read only once the Server has said which endpoints
        # the edges bound (ENDPOINTS): a worker that registers earlier would be answered
        # without the client endpoint, and never learn it.
        for s in (control, status):
            poller.register(s, zmq.POLLIN)
        spool = self._spool_pipe
        assert spool is not None
        poller.register(spool, zmq.POLLIN)
        commits = self._commits
        if commits is not None:
            poller.register(commits.pipe, zmq.POLLIN)
        tracing = log.isEnabledFor(TRACE)
        now = time.monotonic()
        tick_due = now
        factory_due = now
        drain_until: float | None = None
        while True:
            due = min(tick_due, factory_due if self._factory else tick_due)
            if drain_until is not None:
                due = min(due, now + 0.05)  # look again soon: the last running job may be done
            ready = dict(poller.poll(int(max(0.0, due - now) * 1000)))
            now = time.monotonic()
            if control in ready:
                order = control.recv()
                if order == STOP:
                    return
                if order.startswith(WORKER_ENDPOINT):
                    self._worker_endpoint = order[len(WORKER_ENDPOINT) :].decode()
                elif order.startswith(ENDPOINTS):
                    bound = order[len(ENDPOINTS) :].decode().split(" ")
                    self._bound = dict(zip(("client", "worker"), bound, strict=False))
                    core.endpoints = {**self._bound, "status": self.status_endpoint}
                    for pipe in (client, worker):
                        poller.register(pipe, zmq.POLLIN)  # (again: a no-op)
                elif order.startswith(LIFT_QUARANTINE):
                    self._lift_quarantine(order[len(LIFT_QUARANTINE) :].decode())
                elif order.startswith(DRAIN_FOR):
                    drain_until = now + float(order[len(DRAIN_FOR) :])
                    core.drain()
                elif order == RELOAD_KEYS and self._gate is not None:
                    lists = self._gate.reload()
                    if lists is not None:
                        core.revoke(lists, now)
            if drain_until is not None and (core.running_count() == 0 or now >= drain_until):
                left = core.running_count()
                if left:
                    log.warning("drain time is up with %d jobs still running", left)
                else:
                    log.info("drained: no job is running")
                return
            if commits is not None and commits.pipe in ready:
                for done in commits.committed():  # their passes are durable now
                    self._send(done, client, worker, status)
            if spool in ready:
                self._from_spool(spool, client, worker, now)
            traffic = core.traffic
            if client in ready:
                self._last_client = now
                traffic["client_in"] += self._drain(
                    client, p.CLIENT_COMMANDS, core.client_message, now, tracing
                )
            if worker in ready:
                traffic["worker_in"] += self._drain(
                    worker, p.WORKER_COMMANDS, core.worker_message, now, tracing
                )
            if status in ready:
                while True:
                    try:
                        if self._gate is None:
                            self._subscription(status.recv(zmq.NOBLOCK))
                        else:
                            self._secure_subscription(status, status.recv(zmq.NOBLOCK, copy=False))
                    except zmq.Again:
                        break
            if self._gate is not None:
                lists = self._gate.poll(now)
                if lists is not None:
                    core.revoke(lists, now)
            if now >= tick_due:
                core.loop.observe(now, now - tick_due)
                core.tick(now)
                tick_due = core.next_deadline(now)
            if self._factory is not None and self._worker_endpoint and now >= factory_due:
                self._run_factory(core, now)
                factory_due = now + FACTORY_PERIOD
            # what this pass changed is durable before anyone hears of it
            self._deliver(core.flush(), client, worker, status)
            # a reply held in this pass may be due before the next scheduled tick
            tick_due = min(tick_due, core.earliest_hold(tick_due))

    def _drain(
        self,
        pipe: zmq.Socket[Any],
        allowed: frozenset[bytes],
        handle: Any,
        now: float,
        tracing: bool,
    ) -> int:
        """Read and handle up to DRAIN messages from ``pipe``; how many were read."""
        core = self.core
        assert core is not None
        secure = self._gate is not None
        for count in range(DRAIN):
            if count and not wire.readable(pipe):
                return count  # (the poll said the first one is there)
            try:
                frames = wire.recv(pipe, wire.NOBLOCK)
            except zmq.Again:
                return count
            identity = frames[0].bytes
            if secure:
                key = frames.pop(1).bytes
                refusal = self._refusal(identity, key, allowed is p.WORKER_COMMANDS)
                if refusal:
                    rid = p.request_id(frames[1:]) if len(frames) >= 4 else -1
                    self._forward(pipe, [identity, *p.encode(p.Error(rid, "forbidden", refusal))])
                    continue
                core.sender = key
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
                text = str(e)
                wrong = self._wrong_endpoint(frames, allowed) if code == "unknown-command" else ""
                if wrong:
                    code, text = "wrong-endpoint", wrong
                    if now - self._misdirected.get(identity, -WRONG_ENDPOINT_LOG_EVERY) >= (
                        WRONG_ENDPOINT_LOG_EVERY
                    ):
                        if len(self._misdirected) > 10_000:
                            self._misdirected.clear()
                        self._misdirected[identity] = now
                        log.warning("peer %s at the wrong endpoint: %s", identity.hex(), wrong)
                else:
                    log.warning("rejected a message from %s: %s", identity.hex(), e)
                rid = p.request_id(frames[1:]) if len(frames) >= 4 else -1
                self._forward(pipe, [identity, *p.encode(p.Error(rid, code, text))])
                continue
            if tracing:
                log.log(
                    TRACE,
                    "core <- %s %s%s",
                    identity.hex(),
                    type(msg).__name__,
                    p.name_jobs(p.job_ids(msg)),
                )
            if msg.COMMAND.value in p.TRANSFER_COMMANDS:
                side = b"w" if allowed is p.WORKER_COMMANDS else b"c"
                self._to_spool(pipe, side, identity, msg, frames, now)
                continue
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
        return DRAIN

    # -------------------------------------------------------------- the spool thread

    def _start_spool(self, ctx: zmq.Context[Any]) -> None:
        pipe = ctx.socket(zmq.PAIR)
        pipe.linger = 0
        pipe.sndhwm = pipe.rcvhwm = 0
        endpoint = f"inproc://remus-spool-{id(self):x}"
        try:
            pipe.bind(endpoint)
            self._spool = Spool(
                ctx,
                endpoint,
                self._spool_dir,
                list(self._config.file_roots),
                durable=self._journal is not None and self._config.journal_sync == "full",
            )
        except BaseException:
            pipe.close(0)
            raise
        self._spool_pipe = pipe

    def _stop_spool(self) -> None:
        pipe, spool = self._spool_pipe, self._spool
        if pipe is None:
            return
        if spool is not None and spool.is_alive():
            pipe.send(STOP_SPOOL)
            spool.join(self._config.stop_timeout)
        pipe.close(0)
        self._spool_pipe = None

    def _to_spool(
        self,
        pipe: zmq.Socket[Any],
        side: bytes,
        identity: bytes,
        msg: p.Message,
        frames: list[Any],
        now: float,
    ) -> None:
        """A ``put`` or ``get`` that came on ``side`` (``c`` or ``w``, the edge to answer
        through): the spool thread does the I/O and answers; the core only says who may read
        what (secure mode)."""
        core = self.core
        assert core is not None and self._spool_pipe is not None
        key = core.sender if self._gate is not None else None
        if isinstance(msg, p.GetRequest) and not core.blobs.may_get(msg.blob, key, now):
            err = p.Error(msg.rid, "forbidden", f"blob {msg.blob} is not this key's to read")
            self._forward(pipe, [identity, *p.encode(err)])
            return
        self._spool_pipe.send_multipart(
            [REQUEST, side, identity, key or b"", *frames[1:]], copy=False
        )

    def _from_spool(
        self, spool: zmq.Socket[Any], client: zmq.Socket[Any], worker: zmq.Socket[Any], now: float
    ) -> None:
        core = self.core
        assert core is not None
        while True:
            try:
                frames = spool.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            head = frames[0].bytes
            if head == STORED:
                core.blobs.stored(p.unpack(frames[1].bytes), now)
            else:
                self._forward(worker if head == b"w" else client, frames[1:])

    def _refusal(self, identity: bytes, key: bytes, from_worker: bool) -> str:
        """Secure mode: why a message from ``key`` is refused ("" if it is not). Its key was
        allowed when it connected, but may have been revoked since; and a routing id the
        broker could have assigned itself could be claimed by another peer, so it must be one
        the peer chose (remus's clients and workers choose random ones)."""
        assert self._gate is not None
        lists = self._gate.lists
        if not (lists.worker_allowed(key) if from_worker else lists.client_allowed(key)):
            return f"key {key.decode()} is no longer allowed by this broker (revoked)"
        if not identity or identity[0] == 0:
            return (
                "in secure mode a peer must set its own random routing id (ZMQ_ROUTING_ID, 16 "
                "random bytes): the broker's own ids can be guessed"
            )
        return ""

    def _wrong_endpoint(self, frames: list[Any], allowed: frozenset[bytes]) -> str:
        """The words for a peer at the wrong socket: a client's command on the worker pipe, or
        a worker's on the client pipe ("" if the command is no one's)."""
        command = bytes(frames[2])
        here, there, peers = (
            ("worker", "client", "clients")
            if allowed is p.WORKER_COMMANDS
            else ("client", "worker", "workers")
        )
        if command not in (p.CLIENT_COMMANDS if here == "worker" else p.WORKER_COMMANDS):
            return ""
        at = self._bound.get(here, "")
        to = self._bound.get(there) or "(see the broker's log)"
        return (
            f"this is the broker's {here} endpoint{' ' + at if at else ''}; {peers} connect to "
            f"its {there} endpoint {to}"
        )

    def _forward(self, pipe: zmq.Socket[Any], frames: list[Any]) -> None:
        wire.send(pipe, frames)
        self._parts_sent[pipe] += len(frames)

    def _send(
        self, out: Outbox, client: zmq.Socket[Any], worker: zmq.Socket[Any], status: zmq.Socket[Any]
    ) -> None:
        if out.clients:
            self._last_client = time.monotonic()
        if self.core is not None:
            traffic = self.core.traffic
            traffic["client_out"] += len(out.clients)
            traffic["worker_out"] += len(out.workers)
            traffic["status_out"] += len(out.events)
        for identity, msg in out.clients:
            self._forward(client, [identity, *p.encode(msg)])
        for identity, msg in out.workers:
            self._forward(worker, [identity, *p.encode(msg)])
        if out.spool and self._spool_pipe is not None:
            for order in out.spool:
                self._spool_pipe.send_multipart(order)
        kill = getattr(self._factory, "kill", None)
        for host, pid in out.kills:
            if kill is not None and self.core is not None and host == self.core.host:
                kill(pid)  # only a process the factory spawned; it ignores any other pid
        if out.events:
            stamp = time.time()
            monitors = self._monitor_pipe
            for topic, payload in out.events:
                payload["time"] = stamp
                packed = p.pack(payload)
                wire.send(status, (topic.encode(), packed))
                if monitors is not None and topic in monitors.topics:
                    monitors.send(topic, packed)

    def _deliver(
        self, out: Outbox, client: zmq.Socket[Any], worker: zmq.Socket[Any], status: zmq.Socket[Any]
    ) -> None:
        """Send a pass's outbox once what the pass changed is durable: with a journal, its batch
        is written here, or by the writer thread while the outbox waits (see group_commit)."""
        core = self.core
        assert core is not None
        if self._commits is None:
            self._write_journal(core)
            self._send(out, client, worker, status)
            return
        for done in self._commits.after_pass(core.take_journal(), out):
            self._send(done, client, worker, status)

    def _write_journal(self, core: BrokerCore) -> None:
        batch = core.take_journal()
        if batch is not None and self._journal is not None:
            self._journal.write(batch)  # a failure stops the broker: better than lying

    def _run_factory(self, core: BrokerCore, now: float) -> None:
        factory = self._factory
        processes = getattr(factory, "spawns_processes", False)
        try:
            if processes:
                seen = {
                    pid: WorkerSeen(reqs, idle, finished)
                    for pid, (reqs, idle, finished) in core.spawns.view().items()
                }
                self._factory_events(core, factory.observe(seen, now), processes, now)
            self._factory_events(core, factory.reap(now), processes, now)
            demand = core.demand()
            if demand:
                events = factory.create_workers(demand, self._worker_endpoint, now)
                self._factory_events(core, events, processes, now)
        except Exception:
            log.exception("worker factory failed")

    def _factory_events(
        self, core: BrokerCore, events: list[Any], processes: bool, now: float
    ) -> None:
        """Publish what the factory did, and act on what concerns the core."""
        for event in events:
            payload = event.payload
            core.add_event(event.topic, payload)
            if event.topic == QUARANTINED and event.requirements is not None:
                core.spawns.quarantined(event.requirements, payload["reason"], now)
            elif not processes:
                continue  # thread workers share the broker's pid: the rest is for processes
            elif event.topic == SPAWNED:
                core.spawns.started(payload["pid"])
            elif event.topic == ASKED_TO_LEAVE:
                core.spawns.ask_to_leave(payload["pid"], payload["reason"], now)
            elif event.topic == REAPED:
                core.spawns.reaped(payload["pid"])
                sig = payload.get("signal")
                how = f"was killed by {sig}" if sig else f"exited with code {payload['returncode']}"
                if payload.get("stopped_by_broker"):
                    how += " (stopped by the broker)"
                core.process_exited(core.host, payload["pid"], how, now)

    def _lift_quarantine(self, path: str) -> None:
        factory = self._factory
        if factory is None:
            return
        try:
            factory.lift_quarantine(path or None)
            factory.rescan()
        except Exception:
            log.exception("could not lift the quarantine of worker files")
