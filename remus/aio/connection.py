"""``Connection``: one DEALER socket that every coroutine of an ``AsyncClient`` shares.

Each request gets a request id (rid) and a future. One reader task receives every reply and
resolves the future of its rid, so replies may come in any order and any number of requests
may be in flight. A request given up on (timed out, or its task cancelled) is forgotten: its
future goes, and its reply, when the broker sends it anyway, finds no future and is dropped
(counted in ``dropped``). It can never answer another call, because rids are never reused.

The reader starts on the first request and belongs to that event loop: a connection is used
from one loop (make one per loop, as a ``Client`` is made per thread).
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import logging
import time
from collections.abc import Collection, Iterable
from typing import Any

import zmq
import zmq.asyncio

from remus import protocol as p
from remus.client.client import server_error
from remus.errors import ProtocolError, TimeoutError
from remus.security import HandshakeWatch, KeyArg, SecretArg, peer_keys
from remus.server.config import check_endpoint, endpoint_from_env

log = logging.getLogger(__name__)


def _contexts(context: zmq.Context[Any] | None) -> tuple[zmq.Context[Any], zmq.asyncio.Context]:
    """A synchronous and an asyncio view of one libzmq context: the socket is an asyncio one,
    its handshake monitor a plain one (read without awaiting when a call times out). Default:
    the process's shared context, where a ``Server`` in this process binds its inproc://
    endpoints."""
    if isinstance(context, zmq.asyncio.Context):
        return zmq.Context.shadow(context.underlying), context
    sync = context if context is not None else zmq.Context.instance()
    return sync, zmq.asyncio.Context.shadow(sync.underlying)


class Connection:
    """A broker's client endpoint, as ``Client``'s plumbing but for asyncio: ``send`` a
    request, then ``receive`` its reply or the first reply to ``any`` of several."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 10.0,
        context: zmq.Context[Any] | None = None,
        server_key: KeyArg | bytes = None,
        secret_key: SecretArg = None,
    ) -> None:
        endpoint = check_endpoint(endpoint_from_env(endpoint, "client"), "client")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        #: secure mode: this client's keys and the broker's (None: plain mode)
        self.keys = peer_keys(server_key, secret_key)
        self.endpoint = endpoint
        self.timeout = timeout
        sync_context, context = _contexts(context)
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 0
        self._handshake: HandshakeWatch | None = None
        self._view: zmq.Socket[Any] | None = None
        if self.keys is not None:
            self.keys.apply(sock)
            # a plain view of the same socket for the monitor, whose PAIR is a plain socket
            self._view = zmq.Socket.shadow(sock.underlying)
            self._view.context = sync_context
            self._handshake = HandshakeWatch(self._view)
        sock.connect(endpoint)
        self._sock: zmq.asyncio.Socket | None = sock
        self._rids = itertools.count(1)
        #: requests sent and not given up on: their replies go to these futures
        self._waiting: dict[int, asyncio.Future[p.Message]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        #: requests sent, and replies dropped because their request was given up on
        self.calls = 0
        self.dropped = 0

    # -------------------------------------------------------------- requests

    async def send(self, make: Any, *args: Any, timeout: float | None = None) -> int:
        """Send ``make(rid, *args)``; returns the rid to :meth:`receive` with. Sending waits
        only when there is no connection to queue on (a secure broker refused ours): up to
        ``timeout`` seconds (None: the connection's timeout)."""
        self._start()
        rid = next(self._rids)
        frames = p.encode(make(rid, *args))
        assert self._loop is not None and self._sock is not None  # set by _start
        self._waiting[rid] = self._loop.create_future()
        wait = self.timeout if timeout is None else timeout
        limit = asyncio.timeout(max(0.0, wait))
        try:
            async with limit:
                await self._sock.send_multipart(frames, copy=False)
        except BaseException as e:
            self.forget((rid,))
            if isinstance(e, builtins.TimeoutError) and limit.expired():
                raise TimeoutError(
                    f"cannot send to the broker at {self.endpoint}: {self.why_silent()}",
                    endpoint=self.endpoint,
                ) from None
            raise
        self.calls += 1
        return rid

    async def receive(self, rid: int, timeout: float | None = None) -> p.Reply:
        """The reply to request ``rid``, waiting up to ``timeout`` seconds (None: the
        connection's timeout); raises the broker's refusal as an exception (see
        ``remus.client.client.ERRORS``). Cancelled or timed out, the request is forgotten."""
        wait = self.timeout if timeout is None else timeout
        try:
            got = await self.reply_to_any((rid,), time.monotonic() + wait)
        except BaseException:
            self.forget((rid,))
            raise
        if got is None:
            self.forget((rid,))
            raise TimeoutError(
                f"the broker at {self.endpoint} did not answer within {wait:.3g} s; "
                + self.why_silent(),
                endpoint=self.endpoint,
            )
        return got[1]

    async def call(self, make: Any, *args: Any, timeout: float | None = None) -> p.Reply:
        """Send a request and wait for its reply, both within ``timeout``."""
        wait = self.timeout if timeout is None else timeout
        if not wait > 0:
            raise ValueError("timeout must be positive")
        deadline = time.monotonic() + wait
        rid = await self.send(make, *args, timeout=wait)
        return await self.receive(rid, max(0.0, deadline - time.monotonic()))

    async def reply_to_any(
        self, rids: Collection[int], deadline: float
    ) -> tuple[int, p.Reply] | None:
        """The first reply to any of ``rids`` (sent, not yet answered) that arrives before the
        monotonic ``deadline``, as (rid, reply); None if none does. An error reply is raised
        as its exception; its rid is then answered."""
        while True:
            pending = []
            for rid in rids:
                future = self._waiting.get(rid)
                if future is None:
                    continue
                if future.done():
                    return rid, self._take(rid)
                pending.append(future)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not pending:  # all given up on: nothing can come (a caller's bug, not the wire's)
                raise RuntimeError(f"no request among {list(rids)[:5]} is still waited for")
            done, _ = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return None

    def _take(self, rid: int) -> p.Reply:
        msg = self._waiting.pop(rid).result()  # (raises if the connection failed or closed)
        if isinstance(msg, p.Reply):
            return msg
        if isinstance(msg, p.Error):
            raise server_error(msg)
        raise ProtocolError(f"unexpected {type(msg).__name__} from the broker")

    def forget(self, rids: Iterable[int]) -> None:
        """Give up on these requests: a late reply to one is dropped when it comes."""
        for rid in rids:
            future = self._waiting.pop(rid, None)
            if future is None:
                continue
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # seen: asyncio need not log it as never retrieved

    @property
    def in_flight(self) -> int:
        """Requests sent whose replies are still waited for."""
        return len(self._waiting)

    # -------------------------------------------------------------- the reader

    def _start(self) -> None:
        """Start the reader on the running loop the first time; check the loop after."""
        if self._sock is None:
            raise RuntimeError("this AsyncClient is closed")
        if self._failure is not None:
            raise RuntimeError(f"this AsyncClient's connection failed: {self._failure!r}")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError(
                "this AsyncClient belongs to the event loop that first used it: "
                "make one AsyncClient per event loop"
            )
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read(), name=f"remus-aio-reader {self.endpoint}")

    async def _read(self) -> None:
        assert self._sock is not None
        sock = self._sock
        try:
            while True:
                self._dispatch(await sock.recv_multipart(copy=False))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the socket failed under us: no reply can come any more
            log.error("the connection to the broker at %s failed: %r", self.endpoint, e)
            self._failure = e
            self._fail(e)

    def _dispatch(self, frames: list[Any]) -> None:
        """Hand a message from the broker to the request it answers (or drop it)."""
        try:
            msg = p.decode(frames, p.BROKER_TO_CLIENT)
        except ProtocolError as e:
            log.warning("dropped an unreadable message from the broker: %s", e)
            return
        rid = getattr(msg, "rid", -1)
        future = self._waiting.get(rid)
        if future is not None:
            if not future.done():
                future.set_result(msg)
            return
        if rid == -1 and isinstance(msg, p.Error):
            # about no request in particular (a wrong endpoint, another protocol version):
            # every request waiting hears it, as a Client's next call would
            waiting = [f for f in self._waiting.values() if not f.done()]
            for f in waiting:
                f.set_result(msg)
            if not waiting:
                log.warning("the broker at %s said: %s", self.endpoint, msg.message)
            return
        self.dropped += 1  # the late reply to a request given up on

    def _fail(self, error: BaseException) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)

    # -------------------------------------------------------------- lifetime

    def why_silent(self) -> str:
        """What a timeout message says about a silent broker: a refused key if the CURVE
        handshake failed, else the likely causes."""
        failed = self._handshake.failure() if self._handshake is not None else ""
        if failed:
            return failed
        if self.keys is None:
            return "is it running? (a broker in secure mode needs server_key= and secret_key=)"
        return "is it running?"

    async def close(self) -> None:
        """Stop the reader and close the socket; calls still waiting raise RuntimeError.
        Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is reader.get_loop():
                await asyncio.wait([reader])
        self._fail(RuntimeError("this AsyncClient was closed while the call waited"))
        if self._handshake is not None and self._view is not None:
            self._handshake.close(self._view)
        sock.close(0)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "failed" if self._failure else "open"
        return (
            f"<Connection {state} {self.endpoint} calls={self.calls} "
            f"in_flight={self.in_flight} dropped={self.dropped}>"
        )
