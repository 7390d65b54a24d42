"""Helpers for the secure-mode tests: a folder of keys laid out as a broker's allow-lists,
workers with keys, a status feed with a client's keys, and a TCP relay that keeps a copy of the
bytes it carries.

Key pairs are made where their owner keeps them (``private/NAME.key_secret``); letting a key in
is copying its public half into an allow-list folder, revoking it is removing that copy, as an
operator would.
"""

from __future__ import annotations

import selectors
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq
from conftest import wait_for
from helpers_e2e import StatusFeed

from remus.client import BasicClient
from remus.security import PeerKeys, load_key_pair, new_keys, public_key_of, server_key
from remus.worker import Worker


class KeyRing:
    """A broker's key and its three allow-list folders under ``root``, and peers' key pairs.

    ``client``, ``admin`` and ``worker`` make a key pair and allow it in the matching folder;
    ``stranger`` makes a valid key pair that no folder lists. Each returns the secret key file,
    what a peer's ``secret_key=`` takes.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.private = root / "private"
        self.clients = root / "clients"
        self.workers = root / "workers"
        self.admins = root / "admins"
        for folder in (self.clients, self.workers, self.admins):
            folder.mkdir(parents=True)
        _, self.broker_secret = new_keys("broker", root / "broker")
        self.broker_public = public_key_of(self.broker_secret)

    def server_options(self) -> dict[str, Any]:
        """The secure-mode options of ``Server(...)`` for these folders."""
        return {
            "secret_key": self.broker_secret,
            "allow_clients": self.clients,
            "allow_workers": self.workers,
            "admin_clients": self.admins,
        }

    def _made(self, name: str, allow_in: Path | None) -> Path:
        public, secret = new_keys(name, self.private)
        if allow_in is not None:
            shutil.copyfile(public, allow_in / public.name)
        return secret

    def client(self, name: str) -> Path:
        return self._made(name, self.clients)

    def admin(self, name: str) -> Path:
        return self._made(name, self.admins)

    def worker(self, name: str, io_types: str | None = None) -> Path:
        """A worker key; ``io_types`` (lines of INPUT:OUTPUT) limits what it may register."""
        if io_types is not None:  # written first: the key is never allowed unlimited
            (self.workers / f"{name}.io_types").write_text(io_types)
        return self._made(name, self.workers)

    def stranger(self, name: str) -> Path:
        return self._made(name, None)

    def public(self, name: str) -> bytes:
        """The public key (Z85) of ``name``."""
        return public_key_of(self.private / f"{name}.key")

    def revoke(self, name: str) -> None:
        """Remove ``name``'s public key from whichever allow-list folder holds it."""
        removed = [
            f for f in (self.clients, self.workers, self.admins) if (f / f"{name}.key").exists()
        ]
        assert removed, f"{name} is in no allow-list"
        for folder in removed:
            (folder / f"{name}.key").unlink()

    def peer_keys(self, secret: Path, server: bytes | None = None) -> PeerKeys:
        """What a socket of the peer with ``secret`` needs (``server``: another broker key)."""
        return PeerKeys(load_key_pair(secret), server_key(server or self.broker_public))


class SecureFeed(StatusFeed):
    """A status feed whose SUB socket is a CURVE client with ``keys``; it also keeps every
    frame it read as it came off the wire (``raw``), to look for what must not be there."""

    def __init__(self, endpoint: str, keys: PeerKeys, *prefixes: bytes) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.linger = 0
        keys.apply(self.sock)
        for prefix in prefixes:
            self.sock.subscribe(prefix)
        self.sock.connect(endpoint)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.raw: list[bytes] = []

    def read(self, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        new: list[tuple[str, dict[str, Any]]] = []
        if not self.sock.poll(max(0.0, timeout) * 1000):
            return new
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.raw.extend(frames)
            assert len(frames) == 2, f"an event is [topic, payload], got {len(frames)} frames"
            payload = msgpack.unpackb(frames[1], raw=False)
            assert isinstance(payload, dict), f"event payload is not a map: {payload!r}"
            new.append((frames[0].decode(), payload))
        self.events.extend(new)
        return new


class Relay(threading.Thread):
    """A TCP relay on 127.0.0.1 (port 0) to ``target`` (a ``tcp://HOST:PORT`` endpoint) that
    copies bytes both ways and keeps a copy of all of them in :attr:`captured`. Every accepted
    connection (ZeroMQ reconnects) gets its own upstream connection."""

    def __init__(self, target: str) -> None:
        super().__init__(name="remus-test-relay", daemon=True)
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self._captured = bytearray()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.connections = 0

    @property
    def captured(self) -> bytes:
        with self._lock:
            return bytes(self._captured)

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        open_sockets: list[socket.socket] = []
        try:
            while not self._halt.is_set():
                for key, _ in selector.select(0.05):
                    if key.data is None:
                        downstream, _ = self._listener.accept()
                        upstream = socket.create_connection(self._target, timeout=5)
                        for a, b in ((downstream, upstream), (upstream, downstream)):
                            a.setblocking(True)
                            selector.register(a, selectors.EVENT_READ, b)
                            open_sockets.append(a)
                        self.connections += 1
                        continue
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    peer: socket.socket = key.data
                    try:
                        chunk = source.recv(65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        for s in (source, peer):
                            if s in open_sockets:
                                selector.unregister(s)
                                open_sockets.remove(s)
                                s.close()
                        continue
                    with self._lock:
                        self._captured += chunk
                    peer.sendall(chunk)
        finally:
            for s in open_sockets:
                s.close()
            selector.close()
            self._listener.close()

    def close(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(5)
        else:
            self._listener.close()


class SecureWorkers:
    """Workers in this process with keys; ``run=handler`` also runs ``w.run(handler)`` on a
    thread (see :meth:`thread_of`)."""

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys
        self.made: list[tuple[Worker, threading.Thread | None]] = []

    def __call__(
        self,
        requirements: Any,
        endpoint: str,
        secret: Path | None,
        *,
        run: Any = None,
        connected: bool = True,
        **options: Any,
    ) -> Worker:
        """``connected``: return once the broker has answered its register."""
        if secret is not None:
            options.update(secret_key=secret, server_key=self.keys.broker_public)
        worker = Worker(requirements, endpoint, heartbeat_interval=0.2, **options)
        thread = None
        if run is not None:
            thread = threading.Thread(
                target=worker.run, args=(run,), name="remus-test-runner", daemon=True
            )
            thread.start()
        self.made.append((worker, thread))
        if connected:
            wait_for(lambda: worker.connected, timeout=10.0)
        return worker

    def thread_of(self, worker: Worker) -> threading.Thread:
        return next(t for w, t in self.made if w is worker and t is not None)

    def close(self) -> None:
        for worker, _ in self.made:
            worker._conn.shutdown.set()
            worker._conn.inbox.put(None)
        for worker, thread in self.made:
            if thread is not None:
                thread.join(5)
            worker.close()


def security_of(client: BasicClient) -> dict[str, Any]:
    return client.client.stats().security


def workers_of(client: BasicClient) -> int:
    """How many workers the broker has registered (in any state)."""
    return sum(client.client.stats().workers.values())


def submitted_to(client: BasicClient) -> int:
    """How many jobs the broker has accepted since it started, whoever owns them."""
    return client.client.stats().totals["submitted"]


def held_until(
    release: threading.Event, worker: Worker, job: Any, started: threading.Event
) -> None:
    """For a handler: say the job started, then wait until it is released, cancelled, or the
    worker is told to exit (each checked every 10 ms)."""
    started.set()
    deadline = time.monotonic() + 30  # never outlive a test
    while not (job.cancelled or worker.should_terminate or release.wait(0.01)):
        if time.monotonic() > deadline:
            raise RuntimeError("held a job for 30 s and nobody came for it")
