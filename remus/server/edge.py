"""The client and worker socket threads: each owns one ROUTER and one end of a PAIR to the core.

An edge thread only forwards: what arrives on the ROUTER goes down the pipe to the core
(identity frame first), and what the core sends up the pipe goes out on the ROUTER. Checking
messages is the core's job (its decoder rejects anything malformed and answers the sender), so
an edge can forward inside libzmq with ``zmq.proxy_steerable``: no Python, no GIL, no copy per
message. That is what keeps the mandated three-thread shape close to a one-thread broker in
latency. With trace logging on, a Python loop forwards instead and logs every message.

In secure mode (``curve`` given) the ROUTER is a CURVE server whose peers the ZAP handler
checked at connect time, and a Python loop forwards: libzmq drops a message's metadata when it
is sent on, so the loop reads each message's authenticated key (its ``User-Id``) and puts it
in a frame after the identity: ``[identity, key, *message]``. Handover is off, so a connected
peer's routing id cannot be taken by another connection. A socket monitor reports handshakes
that fail before ZAP (a plain-text peer, a wrong server key) to ``on_refused``.

Each edge also binds a control PAIR that speaks the proxy's commands: ``STATISTICS`` (eight
uint64 counters; index 4 is how many message parts it has read from the core's pipe) and
``TERMINATE``. The core stops an edge only after the edge has read everything the core sent it,
so the last messages (``shutdown`` to every worker) are never lost. libzmq 4.3.5's proxy now
and then sleeps through a TERMINATE that arrives right behind a STATISTICS reply, so the core
repeats TERMINATE until the edge's ``finished`` event is set.
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from remus import wire
from remus.log import TRACE, describe, name_os_thread
from remus.security import KeyPair

log = logging.getLogger(__name__)

TERMINATE = b"TERMINATE"
STATISTICS = b"STATISTICS"
#: index of "message parts read from the backend (the core's pipe)" in a STATISTICS reply
PIPE_PARTS_READ = 4
#: messages handled per socket per wake-up before looking at the other socket (trace loop)
DRAIN = 2000


class EdgeThread(threading.Thread):
    def __init__(
        self,
        context: zmq.Context[Any],
        *,
        role: str,
        bind: str,
        pipe: str,
        control: str,
        max_message_bytes: int,
        linger_ms: int,
        curve: KeyPair | None = None,
        domain: str = "",
        on_refused: Any = None,
    ) -> None:
        super().__init__(name=f"remus-{role}", daemon=True)
        self.role = role
        self._context = context
        self._bind = bind
        self._pipe = pipe
        self._control = control
        self._max_bytes = max_message_bytes
        self._linger = linger_ms
        self._curve = curve
        self._domain = domain
        self._on_refused = on_refused
        self.ready = threading.Event()
        #: set when the thread is about to exit (the core waits on it to stop the edge)
        self.finished = threading.Event()
        self.endpoint = ""
        self.error: BaseException | None = None

    def run(self) -> None:
        name_os_thread()
        ctx = self._context
        sock, pipe, control = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        try:
            sock.linger = self._linger
            pipe.linger = control.linger = 0
            sock.router_handover = 1  # a peer that reconnects with its old identity takes over
            # The core answers a message over max_message_bytes with "too-large"; only a frame
            # twice that big is cut off by libzmq itself (dropping that peer's connection)
            sock.maxmsgsize = min(2 * self._max_bytes, 2**62)
            sock.sndhwm = 0  # replies and jobs are bounded by the protocol, never dropped
            sock.rcvhwm = 100_000
            pipe.sndhwm = pipe.rcvhwm = 0
            if self._curve is not None:
                sock.router_handover = 0
                sock.curve_server = True
                sock.curve_secretkey = self._curve.secret
                sock.curve_publickey = self._curve.public
                sock.zap_domain = self._domain.encode()
            try:
                sock.bind(self._bind)
            except zmq.ZMQError as e:
                raise OSError(f"cannot bind the {self.role} endpoint {self._bind}: {e}") from e
            control.bind(self._control)
            pipe.connect(self._pipe)
            self.endpoint = sock.last_endpoint.decode()
        except BaseException as e:
            self.error = e
            self.ready.set()
            self.finished.set()
            for s in (sock, pipe, control):
                s.close(0)
            return
        self.ready.set()
        try:
            if self._curve is not None or log.isEnabledFor(TRACE):
                self._python_loop(sock, pipe, control)
            else:
                zmq.proxy_steerable(sock, pipe, None, control)
        except zmq.ContextTerminated:
            pass
        except Exception:
            log.exception("%s thread failed", self.role)
        finally:
            control.close()
            pipe.close()
            sock.close()
            self.finished.set()

    def _python_loop(
        self, sock: zmq.Socket[Any], pipe: zmq.Socket[Any], control: zmq.Socket[Any]
    ) -> None:
        """What the proxy does, in Python: logging each message (``remus server -v``) and, in
        secure mode, putting each message's authenticated key after its identity."""
        tracing = log.isEnabledFor(TRACE)
        stamp = self._curve is not None
        poller = zmq.Poller()
        for s in (sock, pipe, control):
            poller.register(s, zmq.POLLIN)
        monitor = None
        if stamp:
            monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            )
            poller.register(monitor, zmq.POLLIN)
        try:
            self._forward(sock, pipe, control, poller, monitor, tracing, stamp)
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(0)

    def _forward(
        self,
        sock: zmq.Socket[Any],
        pipe: zmq.Socket[Any],
        control: zmq.Socket[Any],
        poller: zmq.Poller,
        monitor: zmq.Socket[Any] | None,
        tracing: bool,
        stamp: bool,
    ) -> None:
        parts_read = 0
        while True:
            ready = dict(poller.poll())
            if pipe in ready:
                for count in range(DRAIN):
                    if count and not wire.readable(pipe):
                        break
                    try:
                        frames = wire.recv(pipe, wire.NOBLOCK)
                    except zmq.Again:
                        break
                    parts_read += len(frames)
                    if tracing:
                        log.log(
                            TRACE,
                            "%s out -> %s %s",
                            self.role,
                            frames[0].bytes.hex(),
                            describe(frames[1:]),
                        )
                    wire.send(sock, frames)
            if sock in ready:
                for count in range(DRAIN):
                    if count and not wire.readable(sock):
                        break
                    try:
                        frames = wire.recv(sock, wire.NOBLOCK)
                    except zmq.Again:
                        break
                    if tracing:
                        log.log(
                            TRACE,
                            "%s in <- %s %s",
                            self.role,
                            frames[0].bytes.hex(),
                            describe(frames[1:]),
                        )
                    if stamp:
                        # every message from a CURVE peer carries the key ZAP accepted
                        try:
                            key = str(frames[-1].get("User-Id")).encode()
                        except zmq.ZMQError:  # no handshake, so no key: the core refuses it
                            key = b""
                        wire.send(pipe, [frames[0], key, *frames[1:]])
                        continue
                    wire.send(pipe, frames)
            if monitor is not None and monitor in ready:
                self._handshake_failed(recv_monitor_message(monitor))
            if control in ready:
                order = control.recv()
                if order == TERMINATE:
                    return
                if order == STATISTICS:
                    stats = [0] * 8
                    stats[PIPE_PARTS_READ] = parts_read
                    control.send_multipart([struct.pack("Q", n) for n in stats])

    def _handshake_failed(self, event: Any) -> None:
        """A peer whose handshake failed before ZAP saw it: plain text, or not our server key.
        libzmq names only our own endpoint here, not the peer's address."""
        if self._on_refused is not None:
            self._on_refused(
                self._domain,
                f"{self.role} endpoint {event.get('endpoint', b'').decode('utf-8', 'replace')}",
                "a peer without CURVE or with the wrong server key (handshake failed)",
            )


def pipe_parts_read(reply: list[bytes]) -> int:
    """From a STATISTICS reply: message parts the edge has read from the core's pipe."""
    return int(struct.unpack("Q", reply[PIPE_PARTS_READ])[0])
