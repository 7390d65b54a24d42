"""``Feed``: one poll of the broker per second, shared by every open dashboard page.

Each page that opens ``GET /api/stream`` follows the feed (:meth:`Feed.follow`). The first
page starts a single poll loop on the gateway's AsyncClient; every page gets each snapshot it
makes; when the last page goes, the loop stops (at once if it was between two polls), so an
idle gateway asks the broker nothing. Ten pages cost the broker what one does.

A page gets, in order: a ``history`` event (the queue depths of the last ``window`` seconds,
for the chart), the latest snapshot if it is fresh, then one ``snapshot`` a second. A page
that reads slowly is never queued for: it holds one slot, and a newer snapshot replaces one
it has not taken yet (its chart then misses a point; nothing grows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from remus.aio import AsyncClient
from remus.errors import RemusError
from remus.http.snapshot import failed_snapshot, snapshot
from remus.types import Status

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]


class _Page:
    """One page's mailbox: the newest snapshot it has not taken yet."""

    __slots__ = ("latest", "ready")

    def __init__(self) -> None:
        self.latest: dict[str, Any] | None = None
        self.ready = asyncio.Event()

    def put(self, snap: dict[str, Any] | None) -> None:
        self.latest = snap
        self.ready.set()


class Feed:
    """Snapshots of the broker behind ``client`` (see the module's docstring).

    ``every``: seconds between polls; ``window``: seconds of queue-depth history kept;
    ``recent``/``failures``: how many of the newest jobs / FAILED jobs each snapshot lists;
    ``running``: at most this many running jobs are looked up for the workers' progress bars;
    ``timeout``: how long one poll waits for the broker."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        every: float = 1.0,
        window: float = 300.0,
        recent: int = 15,
        failures: int = 10,
        running: int = 500,
        timeout: float = 3.0,
    ) -> None:
        if not every > 0 or not window >= every:
            raise ValueError("Feed: use 0 < every <= window")
        self.client = client
        self.every = every
        self.window = window
        self.recent = recent
        self.failures = failures
        self.running = running
        self.timeout = timeout
        self.polls = 0
        self.latest: dict[str, Any] | None = None
        self._history: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(window / every) + 2)
        self._pages: set[_Page] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self._epoch = time.monotonic()

    # -------------------------------------------------------------- pages

    @property
    def pages(self) -> int:
        """How many pages follow the feed now."""
        return len(self._pages)

    @property
    def polling(self) -> bool:
        """Whether the poll loop runs."""
        return self._task is not None

    async def follow(self) -> AsyncGenerator[Event, None]:
        """The events one page gets, until the feed closes (use with ``aclosing``: leaving
        the loop is what tells the feed the page is gone)."""
        if self._closed:
            return
        page = _Page()
        self._pages.add(page)
        try:
            yield "history", self.history()
            if self._fresh():
                page.put(self.latest)
            self._start()
            while not self._closed:
                await page.ready.wait()
                page.ready.clear()
                snap, page.latest = page.latest, None
                if snap is None:
                    return  # closed
                yield "snapshot", snap
        finally:
            self._pages.discard(page)
            if not self._pages:
                self._wake.set()  # the loop ends now rather than after its next poll

    def history(self) -> dict[str, Any]:
        """The queue depths per io type over the last ``window`` seconds: ``points`` as
        ``[t, {io: depth}]``, oldest first, ``t`` on the same clock as the snapshots'."""
        return {
            "every": self.every,
            "window": self.window,
            "points": [[t, depth] for t, depth in self._history],
        }

    def _fresh(self) -> bool:
        return self.latest is not None and self._now() - self.latest["t"] < 2 * self.every

    def _now(self) -> float:
        return round(time.monotonic() - self._epoch, 3)

    # -------------------------------------------------------------- the loop

    def _start(self) -> None:
        if self._task is None and not self._closed:
            self._wake.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="remus-feed")

    async def _run(self) -> None:
        try:
            while self._pages and not self._closed:
                began = time.monotonic()
                try:
                    snap = await self.poll()
                except Exception as e:  # a bug: say so on every page, keep the pages open
                    log.exception("the dashboard's poll of the broker failed")
                    snap = failed_snapshot(
                        self._now(), self.client.endpoint, f"the poll failed: {e!r}"
                    )
                self._keep(snap)
                for page in self._pages:
                    page.put(snap)
                pause = self.every - (time.monotonic() - began)
                if pause > 0 and self._pages:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(pause):
                            await self._wake.wait()  # set when the last page leaves
                self._wake.clear()
        finally:
            self._task = None

    async def poll(self) -> dict[str, Any]:
        """One snapshot: the broker's stats, workers and jobs, asked at once; a snapshot with
        ``error`` if the broker did not answer within ``timeout``."""
        c, t = self.client, self.timeout
        answers = await asyncio.gather(
            c.stats(timeout=t),
            c.workers(timeout=t),
            c.jobs(Status.IN_PROGRESS, limit=self.running, timeout=t),
            c.jobs(limit=self.recent, timeout=t),
            c.jobs(Status.FAILED, limit=self.failures, timeout=t),
            return_exceptions=True,
        )
        self.polls += 1
        now = self._now()
        for a in answers:
            if isinstance(a, RemusError):
                return failed_snapshot(now, c.endpoint, f"the broker did not answer: {a}")
            if isinstance(a, BaseException):
                raise a
        stats, workers, running, recent, failures = answers
        return snapshot(now, c.endpoint, stats, workers, running, recent, failures)  # type: ignore[arg-type]

    def _keep(self, snap: dict[str, Any]) -> None:
        self.latest = snap
        if "queued" in snap:
            self._history.append((snap["t"], snap["queued"]))
        while self._history and self._history[0][0] < snap["t"] - self.window:
            self._history.popleft()

    # -------------------------------------------------------------- lifetime

    async def close(self) -> None:
        """End every page's stream and the loop (the gateway is stopping). Idempotent."""
        self._closed = True
        for page in self._pages:
            page.put(None)
        self._wake.set()
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def __repr__(self) -> str:
        state = "closed" if self._closed else "polling" if self.polling else "idle"
        return f"<Feed {state} pages={len(self._pages)} polls={self.polls}>"
