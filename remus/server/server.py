"""The broker: three threads (client edge, worker edge, core) joined by inproc PAIR sockets."""

from __future__ import annotations

import gc
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import zmq

from remus.errors import ConfigError, RemusError
from remus.security import CLIENT_DOMAIN, WORKER_DOMAIN, PeerKeys
from remus.server.auth import Gate, Security
from remus.server.config import ServerConfig, ServerPorts
from remus.server.core_thread import (
    DRAIN_FOR,
    ENDPOINTS,
    LIFT_QUARANTINE,
    RELOAD_KEYS,
    STOP,
    WORKER_ENDPOINT,
    CoreThread,
)
from remus.server.edge import EdgeThread
from remus.server.journal import Journal
from remus.server.monitors import MonitorThread, check_monitors

log = logging.getLogger(__name__)


class _Collector:
    """The garbage collector's thresholds while brokers run (``ServerConfig.gc_threshold``):
    set when the first one starts, restored when the last one stops. Process-wide, so counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: tuple[int, ...] = ()

    def acquire(self, threshold: tuple[int, int, int] | None) -> bool:
        if threshold is None:
            return False
        with self._lock:
            if self._users == 0:
                self._saved = gc.get_threshold()
                gc.set_threshold(*threshold)
            self._users += 1
        return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                gc.set_threshold(*self._saved)


_collector = _Collector()


def reachable(endpoint: str) -> str:
    """The address a local process connects to for a bound endpoint (0.0.0.0/* -> loopback)."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard) :]
    if endpoint.startswith("tcp://[::]:"):
        return "tcp://[::1]:" + endpoint[len("tcp://[::]:") :]
    return endpoint


class Server:
    """A remus broker.

    ::

        with Server(ports=ServerPorts.ephemeral()) as server:
            print(server.ports.client)   # the real endpoint, port 0 resolved

    ``factory`` (a :class:`~remus.server.factory.WorkerFactory` or any object with the same
    methods) starts workers for jobs that no connected worker can take.
    """

    def __init__(
        self,
        ports: ServerPorts | None = None,
        factory: Any = None,
        *,
        config: ServerConfig | None = None,
        context: zmq.Context[Any] | None = None,
        journal: str | os.PathLike[str] | None = None,
        monitors: Sequence[Any] = (),
        secret_key: str | os.PathLike[str] | None = None,
        allow_clients: str | os.PathLike[str] | None = None,
        allow_workers: str | os.PathLike[str] | None = None,
        admin_clients: str | os.PathLike[str] | None = None,
    ) -> None:
        #: secure mode (CURVE, allow-lists, owners) if a secret key is given, else plain
        self.security = Security.from_options(
            secret_key, allow_clients, allow_workers, admin_clients
        )
        self._gate: Gate | None = None
        self._public_key = self.security.own_keys().public if self.security else None
        self.requested_ports = ports or ServerPorts()
        if self.security is not None:
            for role, endpoint in (
                ("client", self.requested_ports.client),
                ("worker", self.requested_ports.worker),
                ("status", self.requested_ports.status),
            ):
                if endpoint.startswith("inproc://"):
                    raise ConfigError(
                        f"secure mode needs tcp:// or ipc:// endpoints, and the {role} endpoint "
                        f"is {endpoint}: inproc peers skip the CURVE handshake, so they have no "
                        "key to check"
                    )
        if getattr(factory, "spawns_processes", False) and self.requested_ports.worker.startswith(
            "inproc://"
        ):
            raise ConfigError(
                f"the worker factory starts separate processes, which cannot reach the worker "
                f"endpoint {self.requested_ports.worker}: use tcp:// or ipc://, or a "
                "ThreadWorkerFactory for workers inside this process"
            )
        #: the SQLite journal file: jobs and results survive a restart (None: memory only)
        self.journal_path = journal
        #: objects with on_error / on_latency / on_resource (remus.server.monitors)
        self.monitors = check_monitors(monitors)
        self._journal: Journal | None = None
        self.ports = self.requested_ports
        self.factory = factory
        self.config = config or ServerConfig()
        # ZAP handlers are one per context: a secure broker gets a context of its own
        self._own_context = context is None and self.security is not None
        self._context = context or (zmq.Context() if self._own_context else zmq.Context.instance())
        self.status = "created"
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._control: zmq.Socket[Any] | None = None
        self._core: CoreThread | None = None
        self._stopped = threading.Event()
        #: this server raised the collector's thresholds (ServerConfig.gc_threshold)
        self._tuned_gc = False

    # -------------------------------------------------------------- lifetime

    def start(self, timeout: float = 10.0) -> Server:
        """Bind the three endpoints and start the threads; raises if any of them cannot start."""
        with self._lock:
            if self.status == "running":
                return self
            if self.status != "created":
                raise RemusError(f"a {self.status} server cannot be started again; make a new one")
            tag = uuid.uuid4().hex[:12]
            control, client_pipe, worker_pipe, client_ctl, worker_ctl = (
                f"inproc://remus-{tag}-{name}"
                for name in ("control", "client", "worker", "client-ctl", "worker-ctl")
            )
            limit = self.config.max_message_bytes
            self._tuned_gc = _collector.acquire(self.config.gc_threshold)
            gate = self._start_gate()
            secure: dict[str, Any] = {}
            if gate is not None:
                secure = {"curve": gate.own, "on_refused": gate.guard.refuse}
            edges = [
                EdgeThread(
                    self._context,
                    role="client",
                    bind=self.requested_ports.client,
                    pipe=client_pipe,
                    control=client_ctl,
                    max_message_bytes=limit,
                    linger_ms=200,
                    domain=CLIENT_DOMAIN,
                    **secure,
                ),
                EdgeThread(
                    self._context,
                    role="worker",
                    bind=self.requested_ports.worker,
                    pipe=worker_pipe,
                    control=worker_ctl,
                    max_message_bytes=limit,
                    linger_ms=int(self.config.stop_timeout * 1000),
                    domain=WORKER_DOMAIN,
                    **secure,
                ),
            ]
            if self.journal_path is not None:
                try:
                    self._journal = Journal(  # ConfigError, in the caller
                        self.journal_path, synchronous=self.config.journal_sync
                    )
                except BaseException:
                    self._stop_gate()
                    self._untune_gc()
                    raise
            monitors = None
            if self.monitors:  # its pipe is bound before the core thread connects to it
                watcher = MonitorThread(self._context, self.monitors, f"inproc://remus-{tag}-mon")
                monitors = (watcher.endpoint, watcher.topics)
            core = CoreThread(
                self._context,
                config=self.config,
                control=control,
                client_pipe=client_pipe,
                worker_pipe=worker_pipe,
                edge_controls=(client_ctl, worker_ctl),
                edges_finished=(edges[0].finished, edges[1].finished),
                status=self.requested_ports.status,
                factory=self.factory,
                journal=self._journal,
                monitors=monitors,
                gate=gate,
                spool_dir=self.config.spool_dir
                or (None if self.journal_path is None else f"{os.fspath(self.journal_path)}.spool"),
            )
            core.start()
            self._threads.append(core)
            self._core = core
            if not core.ready.wait(timeout) or core.error is not None:
                self.status = "failed"
                self._close_journal()
                core.join(timeout)
                self._stop_gate()
                self._untune_gc()
                if monitors is not None:
                    watcher.close()
                raise RemusError(f"the broker could not start: {core.error or 'timed out'}")
            if monitors is not None:
                watcher.start()  # it ends when the core thread sends its last event
                self._threads.append(watcher)
            self._control = self._context.socket(zmq.PAIR)
            self._control.linger = 0
            self._control.connect(control)
            for edge in edges:
                edge.start()
                self._threads.append(edge)
            for edge in edges:
                if not edge.ready.wait(timeout) or edge.error is not None:
                    self.status = "running"  # so that stop() tears down what did start
                    self._stop_locked(timeout)
                    self.status = "failed"
                    raise RemusError(f"the broker could not start: {edge.error or 'timed out'}")
            self._control.send(WORKER_ENDPOINT + reachable(edges[1].endpoint).encode())
            self._control.send(ENDPOINTS + f"{edges[0].endpoint} {edges[1].endpoint}".encode())
            self.ports = ServerPorts(edges[0].endpoint, edges[1].endpoint, core.status_endpoint)
            self.status = "running"
            log.info(
                "remus broker running: client=%s worker=%s status=%s; %s",
                self.ports.client,
                self.ports.worker,
                self.ports.status,
                "secure mode (CURVE), public key " + gate.own.public.decode()
                if gate is not None
                else "plain mode (no encryption, no keys: anyone who reaches these ports may "
                "use them; see --secret-key)",
            )
            return self

    def stop(self, timeout: float | None = None) -> None:
        """Tell workers to exit, stop the threads and wait for them. Safe to call twice."""
        with self._lock:
            if self.status == "created":
                self.status = "closed"
            if self.status != "running":
                return
            self._stop_locked(timeout)
            log.info("remus broker stopped")

    def drain(self, seconds: float) -> None:
        """Stop taking new jobs, let running ones finish for up to ``seconds``, then stop
        (queued jobs stay queued: with a journal they run after a restart)."""
        with self._lock:
            if self.status != "running":
                return
            assert self._control is not None and self._core is not None
            self._control.send(DRAIN_FOR + str(max(0.0, float(seconds))).encode())
            core = self._core
        core.join(seconds + self.config.stop_timeout + 5)  # stop() from another thread cuts it
        self.stop()

    def lift_quarantine(self, path: str | os.PathLike[str] | None = None) -> None:
        """Let a quarantined worker file (None: every one) start workers again, and rescan the
        worker files (what SIGHUP does to ``remus server``). Done by the core thread, which
        owns the factory; returns at once."""
        with self._lock:
            if self.status != "running" or self._control is None:
                return
            where = b"" if path is None else os.path.abspath(os.fspath(path)).encode()
            self._control.send(LIFT_QUARANTINE + where)

    @property
    def public_key(self) -> bytes | None:
        """The broker's public key (Z85) in secure mode; None in plain mode."""
        return self._public_key

    def reload_keys(self) -> None:
        """Read the allow-list folders again (what SIGHUP does to ``remus server``): keys no
        longer listed are refused from now on, and their connected workers are told to exit
        and their jobs requeued. Done by the core thread; returns at once."""
        with self._lock:
            if self.status == "running" and self._control is not None and self._gate:
                self._control.send(RELOAD_KEYS)

    def _start_gate(self) -> Gate | None:
        if self.security is None:
            return None
        gate = self._gate = Gate(self.security, self._context)
        gate.start()
        use_keys = getattr(self.factory, "use_keys", None)
        if use_keys is not None:  # the workers it starts get a key of this broker's lifetime
            use_keys(PeerKeys(gate.spawn_keys, gate.own.public))
        return gate

    def _untune_gc(self) -> None:
        if self._tuned_gc:
            self._tuned_gc = False
            _collector.release()

    def _stop_gate(self) -> None:
        if self._gate is not None:
            self._gate.stop()
            self._gate = None
        if self._own_context and not any(t.is_alive() for t in self._threads):
            self._context.term()  # (a thread that did not stop may still hold a socket)

    def _stop_locked(self, timeout: float | None) -> None:
        assert self._control is not None
        try:
            self._control.send(STOP, zmq.NOBLOCK)
        except zmq.Again:
            pass  # the core thread already ended (drained): nobody to tell
        limit = timeout if timeout is not None else self.config.stop_timeout + 5
        for thread in self._threads:
            thread.join(limit)
            if thread.is_alive():
                log.error("thread %s did not stop within %.1f s", thread.name, limit)
        self._control.close()
        self._control = None
        self._close_journal()
        self._stop_gate()
        self._untune_gc()
        self.status = "closed"
        self._stopped.set()

    def _close_journal(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server is stopped (by :meth:`stop` from another thread)."""
        return self._stopped.wait(timeout)

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the core's counters (read without locking; for display only)."""
        core = self._core.core if self._core is not None else None
        return dict(core.stats()) if core is not None else {}

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        stats = self.stats if self.status == "running" else {}
        extra = " ".join(f"{k}={v}" for k, v in stats.items())
        return (
            f"<Server {self.status} client={self.ports.client} worker={self.ports.worker} {extra}>"
        )
