"""Server-sent events (``text/event-stream``): one stream per request, written as events come.

Used by ``GET /jobs/{id}/progress`` and meant for any other live feed the gateway serves (a
dashboard's stats stream, say)::

    stream = EventStream(request)
    await stream.open()
    async for item in events_or_keepalives(source, stream.keepalive):
        ...
        await stream.send("progress", {...}, event_id="3")

:func:`with_keepalive` turns any async iterator into one that also yields ``None`` when it has
been quiet for ``every`` seconds, so the stream can send a comment that keeps proxies from
closing an idle connection, without ever cancelling the iterator mid-step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")

#: what a browser's EventSource waits before it reconnects (milliseconds)
RETRY_MS = 2000


class EventStream:
    """A ``text/event-stream`` answer to ``request``."""

    def __init__(self, request: web.Request, *, headers: dict[str, str] | None = None) -> None:
        self.request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # (nginx: pass events on as they come)
                **(headers or {}),
            }
        )
        self.sent = 0

    async def open(self) -> None:
        """Send the headers and the reconnection delay."""
        await self.response.prepare(self.request)
        await self.response.write(f"retry: {RETRY_MS}\n\n".encode())

    async def send(self, event: str, data: Any, *, event_id: str | None = None) -> None:
        """One event: ``data`` as JSON on one line."""
        head = f"id: {event_id}\n" if event_id is not None else ""
        text = json.dumps(data, separators=(",", ":"), default=str)
        await self.response.write(f"{head}event: {event}\ndata: {text}\n\n".encode())
        self.sent += 1

    async def comment(self, text: str = "keep-alive") -> None:
        await self.response.write(f": {text}\n\n".encode())

    async def close(self) -> web.StreamResponse:
        with contextlib.suppress(ConnectionError):
            await self.response.write_eof()
        return self.response


async def with_keepalive(source: AsyncIterator[T], every: float) -> AsyncIterator[T | None]:
    """Each item of ``source``, and ``None`` whenever it has been silent for ``every`` seconds.
    The next step of ``source`` runs as a task that a quiet spell never cancels; leaving the
    loop cancels it and closes ``source``."""
    step: asyncio.Future[T] | None = None
    try:
        while True:
            if step is None:
                step = asyncio.ensure_future(anext(source))
            done, _ = await asyncio.wait({step}, timeout=every)
            if not done:
                yield None
                continue
            finished, step = step, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if step is not None:
            step.cancel()
            await asyncio.wait({step})  # (the source cannot be closed while it runs)
            if not step.cancelled():
                step.exception()  # seen: asyncio need not log it
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()
