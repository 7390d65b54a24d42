"""Who may talk to the broker: allow-lists of public keys, and the ZAP handler that checks them.

In secure mode every broker socket is a CURVE server. libzmq asks the ZAP handler (pyzmq's
``zmq.auth`` authenticator, run on its own thread by :class:`KeyGuard`) about each new
connection before a single message is read: a client key must be in the client (or admin)
folder, a worker key in the worker folder. A refused peer is counted and logged, once per
address a minute, so a flood cannot fill the log.

An allow-list folder holds public key files (``NAME.key``, as ``remus keys new`` writes them).
A worker key may be limited to some io types by a file beside it, ``NAME.io_types``: one
``INPUT:OUTPUT`` per line (``#`` starts a comment); without one the key may register any.

The lists are read again when the server is told to (SIGHUP on ``remus server``,
``Server.reload_keys()``) and when a folder changes (checked once a second); the core thread
then stops serving any connected peer whose key is gone (see ``BrokerCore.revoke``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from remus.errors import ConfigError
from remus.security import CLIENT_DOMAIN, WORKER_DOMAIN, KeyPair, load_key_pair, public_key_of
from remus.types import IOType

log = logging.getLogger("remus.server.auth")

#: a refused address is logged at most once in this many seconds
LOG_EVERY = 60.0
#: addresses remembered for rate-limited logging (past it the memory starts over)
MAX_REMEMBERED = 10_000
#: how often the folders are checked for a change (by the core thread's tick)
CHECK_EVERY = 1.0


#: worker key -> the io types it may register (None: any)
WorkerKeys = dict[bytes, frozenset[IOType] | None]


@dataclass(frozen=True)
class AllowLists:
    """One reading of the allow-list folders. Replaced whole, never changed in place, so the
    ZAP thread and the core thread can both read the current one without a lock."""

    clients: frozenset[bytes] = frozenset()
    admins: frozenset[bytes] = frozenset()
    #: worker key -> the io types it may register (None: any)
    workers: dict[bytes, frozenset[IOType] | None] = field(default_factory=dict)

    #: keys the broker allows by itself (its own, its spawned workers'), not from a folder
    implicit: frozenset[bytes] = frozenset()

    def counts(self) -> tuple[int, int, int]:
        """(client, admin, worker) keys allowed from the folders."""
        mine = self.implicit
        return len(self.clients - mine), len(self.admins - mine), len(self.workers.keys() - mine)

    def client_allowed(self, key: bytes) -> bool:
        return key in self.clients or key in self.admins

    def worker_allowed(self, key: bytes) -> bool:
        return key in self.workers

    def may_serve(self, key: bytes, io_type: IOType) -> bool:
        allowed = self.workers.get(key, frozenset())
        return allowed is None or io_type in allowed


@dataclass(frozen=True)
class Security:
    """Secure mode for a broker: its own key and the folders of keys it lets in."""

    secret_key: str
    allow_clients: str
    allow_workers: str
    admin_clients: str | None = None

    @classmethod
    def from_options(
        cls,
        secret_key: str | os.PathLike[str] | None,
        allow_clients: str | os.PathLike[str] | None,
        allow_workers: str | os.PathLike[str] | None,
        admin_clients: str | os.PathLike[str] | None = None,
    ) -> Security | None:
        """None for plain mode (nothing given); else checks that secure mode is whole: a
        secret key with no allow-list would let anyone in, so it is refused."""
        given = [x for x in (secret_key, allow_clients, allow_workers, admin_clients) if x]
        if not given:
            return None
        if not secret_key:
            raise ConfigError(
                "allow-lists were given without the broker's own key: add --secret-key FILE "
                "(secret_key=), made by `remus keys new broker`"
            )
        if not allow_clients or not allow_workers:
            missing = " and ".join(
                name
                for name, value in (
                    ("--allow-clients", allow_clients),
                    ("--allow-workers", allow_workers),
                )
                if not value
            )
            raise ConfigError(
                f"a secret key without {missing} would accept any key: name the folder(s) of "
                "public keys to let in (an empty folder lets no one in)"
            )
        security = cls(
            os.fspath(secret_key),
            os.fspath(allow_clients),
            os.fspath(allow_workers),
            os.fspath(admin_clients) if admin_clients else None,
        )
        security.own_keys()  # the key file is read now, so a bad one fails the start
        security.read()
        return security

    def own_keys(self) -> KeyPair:
        return load_key_pair(self.secret_key)

    def folders(self) -> list[str]:
        return [f for f in (self.allow_clients, self.allow_workers, self.admin_clients) if f]

    def signature(self) -> tuple[Any, ...]:
        """Changes whenever a key file in one of the folders is added, removed or rewritten."""
        seen: list[Any] = []
        for folder in self.folders():
            try:
                with os.scandir(folder) as entries:
                    for e in entries:
                        st = e.stat()
                        seen.append((folder, e.name, st.st_mtime_ns, st.st_size))
            except OSError as e:
                seen.append((folder, str(e)))
        return tuple(sorted(seen))

    def read(
        self, extra_workers: dict[bytes, frozenset[IOType] | None] | None = None
    ) -> AllowLists:
        """The allow-lists as the folders hold them now (raises ConfigError if one is gone)."""
        admins = frozenset(_keys_in(self.admin_clients)) if self.admin_clients else frozenset()
        workers: dict[bytes, frozenset[IOType] | None] = {}
        for key, path in _keys_in(self.allow_workers).items():
            workers[key] = _io_types_beside(path)
        workers.update(extra_workers or {})
        return AllowLists(frozenset(_keys_in(self.allow_clients)), admins, workers)


def _keys_in(folder: str) -> dict[bytes, Path]:
    """Public key -> file, for every ``*.key`` file in ``folder``."""
    if not os.path.isdir(folder):
        raise ConfigError(f"allow-list folder {folder} does not exist (make it, even empty)")
    found: dict[bytes, Path] = {}
    for path in sorted(Path(folder).glob("*.key")):
        try:
            found[public_key_of(path)] = path
        except ConfigError as e:
            log.warning("skipping %s: %s", path, e)
    return found


def _io_types_beside(key_file: Path) -> frozenset[IOType] | None:
    """The io types in ``NAME.io_types`` beside ``NAME.key`` (None if there is no such file)."""
    path = key_file.with_suffix(".io_types")
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("cannot read %s (%s): the key may register no io type", path, e)
        return frozenset()
    allowed = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.replace("->", ":").split(":")]
        if len(parts) != 2 or not all(parts):
            log.warning("%s:%d: %r is not INPUT:OUTPUT; line skipped", path, number, line)
            continue
        allowed.add(IOType(parts[0], parts[1]))
    return frozenset(allowed)


class KeyGuard(ThreadAuthenticator):
    """The broker's ZAP handler: pyzmq's authenticator thread, asking :attr:`lists`."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        super().__init__(context, log=logging.getLogger("remus.server.zap"))
        self.lists = AllowLists()
        #: peers refused, by domain (read by the core thread for stats)
        self.refused = {CLIENT_DOMAIN: 0, WORKER_DOMAIN: 0}
        self._logged: dict[str, float] = {}
        self._address = ""
        self._domain = ""
        self._lock = threading.Lock()
        self.configure_curve_callback(CLIENT_DOMAIN, self)
        self.configure_curve_callback(WORKER_DOMAIN, self)

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether ``key`` (Z85) may connect to the socket of ``domain``."""
        lists = self.lists
        if domain == CLIENT_DOMAIN:
            return lists.client_allowed(key)
        if domain == WORKER_DOMAIN:
            return lists.worker_allowed(key)
        return False

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        self._domain = msg[2].decode("utf-8", "replace") if len(msg) > 2 else "?"
        await super().handle_zap_message(msg)

    def _send_zap_reply(
        self, request_id: bytes, status_code: bytes, status_text: bytes, user_id: str = "anonymous"
    ) -> None:
        super()._send_zap_reply(request_id, status_code, status_text, user_id)
        if status_code != b"200":
            who = "client" if self._domain == CLIENT_DOMAIN else "worker"
            text = status_text.decode("utf-8", "replace")
            self.refuse(self._domain, self._address, f"{text}: not in the {who} allow-list")

    def refuse(self, domain: str, address: str, why: str) -> None:
        """Count a refused peer and log it, at most once a minute per address."""
        with self._lock:
            self.refused[domain] = self.refused.get(domain, 0) + 1
            now = time.monotonic()
            if now - self._logged.get(address, -LOG_EVERY) < LOG_EVERY:
                return
            if len(self._logged) >= MAX_REMEMBERED:
                self._logged.clear()
            self._logged[address] = now
        who = "client" if domain == CLIENT_DOMAIN else "worker"
        log.warning(
            "refused a %s connection from %s: %s (logged once a minute per address)",
            who,
            address,
            why or "refused",
        )


class Gate:
    """Secure mode of one broker: its key pair, the ZAP thread, and the lists in force.

    The broker's own context must not be shared with another secure broker (ZAP handlers are
    one per context), so a secure :class:`~remus.server.Server` makes its own. The factory's
    spawned workers get a key pair made for this broker's lifetime (``spawn_keys``), allowed
    as a worker of any io type and handed to them in their environment.
    """

    def __init__(self, security: Security, context: zmq.Context[Any]) -> None:
        self.security = security
        self.own = security.own_keys()
        public, secret = zmq.curve_keypair()
        #: the key pair of the workers the factory spawns
        self.spawn_keys = KeyPair(public, secret)
        self._extra: dict[bytes, frozenset[IOType] | None] = {public: None}
        self.guard = KeyGuard(context)
        self._signature = security.signature()
        self.guard.lists = self._read()
        self._checked = time.monotonic()

    def _read(self) -> AllowLists:
        """The folders' lists, plus the spawned workers' key (as a worker and a client), and
        the broker's own key as an admin (so tools in its process, such as the metrics
        exporter, can use it)."""
        lists = self.security.read(self._extra)
        spawned = self.spawn_keys.public  # (its handlers may submit assistants)
        return replace(
            lists,
            clients=lists.clients | {spawned},
            admins=lists.admins | {self.own.public},
            implicit=frozenset((spawned, self.own.public)),
        )

    @property
    def lists(self) -> AllowLists:
        return self.guard.lists

    def start(self) -> None:
        self.guard.start()
        lists = self.lists
        log.info(
            "secure mode (CURVE): %d client keys, %d admin keys, %d worker keys allowed (from %s)",
            *lists.counts(),
            ", ".join(self.security.folders()),
        )

    def stop(self) -> None:
        self.guard.stop()

    def reload(self) -> AllowLists | None:
        """Read the folders again; the new lists, or None if they cannot be read (the old
        ones stay in force and the error is logged)."""
        self._signature = self.security.signature()
        try:
            lists = self._read()
        except ConfigError as e:
            log.error("could not reload the allow-lists (the old ones stay in force): %s", e)
            return None
        old = self.guard.lists
        self.guard.lists = lists
        gone = (old.clients | old.admins | set(old.workers)) - (
            lists.clients | lists.admins | set(lists.workers)
        )
        log.info(
            "allow-lists reloaded: %d client keys, %d admin keys, %d worker keys; %d revoked",
            *lists.counts(),
            len(gone),
        )
        return lists

    def poll(self, now: float) -> AllowLists | None:
        """At most once every CHECK_EVERY seconds: reload if a folder changed."""
        if now - self._checked < CHECK_EVERY:
            return None
        self._checked = now
        if self.security.signature() == self._signature:
            return None
        return self.reload()
