"""The client and worker socket threads: each owns one ROUTER and one end of a PAIR to the core.

An edge thread checks the envelope of what arrives (frame count, size, protocol version,
command) and answers a broken one itself, so garbage never reaches the core. Everything else it
forwards untouched, bulk frames included, without copying; and whatever the core sends down the
pipe it puts on the wire. It stops when the core sends a single ``stop`` frame.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from remus import protocol as p
from remus.errors import ProtocolError
from remus.log import TRACE, describe

log = logging.getLogger(__name__)

STOP = b"stop"
#: messages handled per socket per wake-up before looking at the other socket
DRAIN = 2000


class EdgeThread(threading.Thread):
    def __init__(
        self,
        context: zmq.Context[Any],
        *,
        role: str,
        bind: str,
        pipe: str,
        allowed: frozenset[bytes],
        max_message_bytes: int,
        linger_ms: int,
    ) -> None:
        super().__init__(name=f"remus-{role}", daemon=True)
        self.role = role
        self._context = context
        self._bind = bind
        self._pipe = pipe
        self._allowed = allowed
        self._max_bytes = max_message_bytes
        self._linger = linger_ms
        self.ready = threading.Event()
        self.endpoint = ""
        self.error: BaseException | None = None
        self.received = 0
        self.rejected = 0

    def run(self) -> None:
        sock = self._context.socket(zmq.ROUTER)
        pipe = self._context.socket(zmq.PAIR)
        try:
            sock.linger = self._linger
            pipe.linger = 0
            sock.router_handover = 1  # a peer that reconnects with its old identity takes over
            sock.sndhwm = 0  # replies and jobs are bounded by the protocol, never dropped
            sock.rcvhwm = 10_000
            pipe.sndhwm = pipe.rcvhwm = 0
            try:
                sock.bind(self._bind)
            except zmq.ZMQError as e:
                raise OSError(f"cannot bind the {self.role} endpoint {self._bind}: {e}") from e
            pipe.connect(self._pipe)
            self.endpoint = sock.last_endpoint.decode()
        except BaseException as e:
            self.error = e
            self.ready.set()
            sock.close(0)
            pipe.close(0)
            return
        self.ready.set()
        try:
            self._loop(sock, pipe)
        except Exception:
            log.exception("%s thread failed", self.role)
        finally:
            pipe.close()
            sock.close()

    def _loop(self, sock: zmq.Socket[Any], pipe: zmq.Socket[Any]) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        tracing = log.isEnabledFor(TRACE)
        while True:
            ready = dict(poller.poll())
            if pipe in ready:
                for _ in range(DRAIN):
                    try:
                        frames = pipe.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if len(frames) == 1 and frames[0].bytes == STOP:
                        return
                    if tracing:
                        log.log(
                            TRACE,
                            "%s out -> %s %s",
                            self.role,
                            frames[0].bytes.hex(),
                            describe(frames[1:]),
                        )
                    sock.send_multipart(frames, copy=False)
            if sock in ready:
                for _ in range(DRAIN):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.received += 1
                    try:
                        self._check(frames)
                    except ProtocolError as e:
                        self._reject(sock, frames, e)
                        continue
                    if tracing:
                        log.log(
                            TRACE,
                            "%s in <- %s %s",
                            self.role,
                            frames[0].bytes.hex(),
                            describe(frames[1:]),
                        )
                    pipe.send_multipart(frames, copy=False)

    def _check(self, frames: list[Any]) -> None:
        p.check_envelope(frames[1:], self._allowed)
        if len(frames) > 4 and sum(len(f) for f in frames) > self._max_bytes:
            raise ProtocolError(
                f"message of {sum(len(f) for f in frames)} bytes is over the broker's limit of "
                f"{self._max_bytes} bytes",
                code="too-large",
            )

    def _reject(self, sock: zmq.Socket[Any], frames: list[Any], error: ProtocolError) -> None:
        self.rejected += 1
        identity = frames[0].bytes
        rid = p.request_id(frames[1:]) if len(frames) >= 4 else -1
        log.warning("%s %s: rejected a message: %s", self.role, identity.hex(), error)
        reply = p.encode(p.Error(rid, error.code, str(error)))
        try:
            sock.send_multipart([identity, *reply], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the peer is gone; nothing to tell
