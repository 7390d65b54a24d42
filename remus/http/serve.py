"""Serving the gateway: an aiohttp ``AppRunner`` on one TCP address, until told to stop.

``Serving`` is what ``remus http`` and the tests use::

    async with Serving(make_app(config), "127.0.0.1", 0) as s:
        print(s.url)          # http://127.0.0.1:PORT, the real port

A request whose caller hangs up is cancelled (``handler_cancellation``): its wait stops at
once, its place in the throttle is given back, and a ``/run`` job it submitted is terminated.
On stop, requests still running get ``SHUTDOWN_GRACE`` seconds, then are cancelled the same way.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: pending TCP connections the listening socket queues (a burst of callers connecting at once)
BACKLOG = 4096
#: seconds requests still running get to finish when the gateway stops
SHUTDOWN_GRACE = 2.0


class Serving:
    """``app`` listening on ``host:port`` (port 0: a free one) while the block runs."""

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        access_log: bool = False,
        shutdown_grace: float = SHUTDOWN_GRACE,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        kwargs: dict[str, Any] = {} if access_log else {"access_log": None}
        self.runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=shutdown_grace, **kwargs
        )
        self.url = ""

    async def start(self) -> str:
        """Listen; the URL callers use (with the real port)."""
        await self.runner.setup()
        try:
            site = web.TCPSite(self.runner, self.host, self.port, backlog=BACKLOG)
            await site.start()
        except BaseException:
            await self.runner.cleanup()
            raise
        self.url = _url(self.runner.addresses[0])
        log.info("serving HTTP at %s", self.url)
        return self.url

    async def stop(self) -> None:
        """Stop listening, let running requests finish (briefly), close the app. Idempotent."""
        await self.runner.cleanup()

    async def __aenter__(self) -> Serving:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _url(address: tuple[str, int] | tuple[str, int, int, int] | str) -> str:
    if isinstance(address, str):
        return address
    host, port = address[0], address[1]
    try:
        socket.inet_pton(socket.AF_INET6, host)
        host = f"[{host}]"
    except OSError:
        pass
    return f"http://{host}:{port}"
