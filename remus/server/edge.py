"""The client and worker socket threads: each owns one ROUTER and one end of a PAIR to the core.

An edge thread only forwards: what arrives on the ROUTER goes down the pipe to the core
(identity frame first), and what the core sends up the pipe goes out on the ROUTER. Checking
messages is the core's job (its decoder rejects anything malformed and answers the sender), so
an edge can forward inside libzmq with ``zmq.proxy_steerable``: no Python, no GIL, no copy per
message. That is what keeps the mandated three-thread shape close to a one-thread broker in
latency. With trace logging on, a Python loop forwards instead and logs every message.

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

from remus.log import TRACE, describe

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
    ) -> None:
        super().__init__(name=f"remus-{role}", daemon=True)
        self.role = role
        self._context = context
        self._bind = bind
        self._pipe = pipe
        self._control = control
        self._max_bytes = max_message_bytes
        self._linger = linger_ms
        self.ready = threading.Event()
        #: set when the thread is about to exit (the core waits on it to stop the edge)
        self.finished = threading.Event()
        self.endpoint = ""
        self.error: BaseException | None = None

    def run(self) -> None:
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
            if log.isEnabledFor(TRACE):
                self._trace_loop(sock, pipe, control)
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

    def _trace_loop(
        self, sock: zmq.Socket[Any], pipe: zmq.Socket[Any], control: zmq.Socket[Any]
    ) -> None:
        """What the proxy does, in Python, logging each message (``remus server -v``)."""
        poller = zmq.Poller()
        for s in (sock, pipe, control):
            poller.register(s, zmq.POLLIN)
        parts_read = 0
        while True:
            ready = dict(poller.poll())
            if pipe in ready:
                for _ in range(DRAIN):
                    try:
                        frames = pipe.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    parts_read += len(frames)
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
                    log.log(
                        TRACE,
                        "%s in <- %s %s",
                        self.role,
                        frames[0].bytes.hex(),
                        describe(frames[1:]),
                    )
                    pipe.send_multipart(frames, copy=False)
            if control in ready:
                order = control.recv()
                if order == TERMINATE:
                    return
                if order == STATISTICS:
                    stats = [0] * 8
                    stats[PIPE_PARTS_READ] = parts_read
                    control.send_multipart([struct.pack("Q", n) for n in stats])


def pipe_parts_read(reply: list[bytes]) -> int:
    """From a STATISTICS reply: message parts the edge has read from the core's pipe."""
    return int(struct.unpack("Q", reply[PIPE_PARTS_READ])[0])
