"""``Gateway``: what every request handler shares, kept on the app as ``app[GATEWAY]``.

One ``GatewayClient`` (an ``AsyncClient``: one ZeroMQ connection for every request) with the
``Submitter`` and ``Collector`` that run the jobs of waiting requests on it (remus.http.runner),
the config, the throttle, the tokens, and the background tasks the gateway starts itself
(batches of submits, fetches of large results, the termination of a job whose caller hung up).
Nothing here blocks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from remus.errors import RemusError
from remus.http.auth import Tokens
from remus.http.client import GatewayClient
from remus.http.config import GatewayConfig
from remus.http.replies import Problem
from remus.http.runner import Collector, Submitter
from remus.http.throttle import Throttle
from remus.types import Job

log = logging.getLogger(__name__)

#: how long closing waits for the gateway's own background tasks
CLOSE_GRACE = 3.0


class Place:
    """A request's place in its io type's bounded set of waiting requests, held for a
    ``with`` block (a plain class, not a generator: it lives as long as the request waits)."""

    __slots__ = ("ended", "io", "throttle")

    def __init__(self, throttle: Throttle, io: str) -> None:
        self.throttle = throttle
        self.io = io
        #: set when the request's job ended (finished or failed): counts toward the rate
        self.ended = False

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc: object) -> None:
        self.throttle.release(self.io, time.monotonic(), ended=self.ended)


class Gateway:
    """The gateway's shared state. ``client``: an AsyncClient to use (its owner closes it);
    default: a ``GatewayClient`` made from ``config`` and closed with the gateway."""

    def __init__(self, config: GatewayConfig, client: GatewayClient | None = None) -> None:
        self.config = config
        self.own_client = client is None
        self.client = client or GatewayClient(
            config.broker,
            timeout=config.broker_timeout,
            server_key=config.server_key,
            secret_key=config.secret_key,
        )
        self.throttle = Throttle(
            config.max_pending,
            window=config.rate_window,
            floor=config.retry_floor,
            ceiling=config.retry_ceiling,
        )
        self.tokens = Tokens(config.tokens) if config.tokens is not None else None
        self._background: set[asyncio.Task[Any]] = set()
        #: the jobs of many requests, submitted together and collected together
        self.submitter = Submitter(self.client, self.spawn)
        self.collector = Collector(self.client, self.spawn)
        #: jobs terminated because their caller hung up
        self.abandoned = 0

    # -------------------------------------------------------------- throttling

    def place(self, io: str) -> Place:
        """A place among ``io``'s waiting requests, for a ``with`` block; 503 with Retry-After
        when none is free."""
        if not self.throttle.admit(io, time.monotonic()):
            raise self.refusal(
                io,
                f"{self.throttle.max_pending} requests for {io} are waiting already "
                "(remus http --max-pending)",
            )
        return Place(self.throttle, io)

    def refusal(self, io: str, why: str) -> Problem:
        """503 for ``io``, with a Retry-After from its observed service rate."""
        now = time.monotonic()
        retry = self.throttle.retry_after(io, now)
        return Problem(
            503,
            "busy",
            f"{why}; try again in {retry} s",
            headers={"Retry-After": str(retry)},
            retry_after=retry,
            pending=self.throttle.pending.get(io, 0),
            per_second=round(self.throttle.per_second(io, now), 3),
        )

    def busy(self, io: str, e: RemusError) -> Problem:
        """503 for the broker's own refusal (its queue is full)."""
        return self.refusal(io, f"the broker is busy: {e}")

    # -------------------------------------------------------------- background work

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def orphan(self, job: Job) -> None:
        """A job submitted for a request that had stopped waiting: nobody knows its id."""
        self.abandon(job.id)

    def abandon(self, job_id: str) -> None:
        """Terminate a job whose caller went away (in the background: the request's own task
        is being cancelled)."""
        self.abandoned += 1
        self.spawn(self._terminate(job_id), f"remus-http terminate {job_id}")

    async def _terminate(self, job_id: str) -> None:
        try:
            await self.client.terminate(job_id)
            log.info("job %s terminated: its HTTP caller went away", job_id)
        except RemusError as e:
            log.warning("could not terminate job %s after its caller went away: %s", job_id, e)

    async def stop_waiting(self) -> None:
        """The gateway stops: every request waiting for a result is answered 503 now, naming
        its job (which goes on: any gateway of the broker can give its result later)."""
        await self.collector.close(
            Problem(
                503,
                "gateway-stopping",
                "this gateway is stopping; the job goes on: ask a gateway of the same broker "
                "for /jobs/ID/result later",
                headers={"Retry-After": "1"},
            )
        )

    async def close(self) -> None:
        """Let the background tasks finish (briefly), then close the client if it is ours."""
        await self.collector.close()
        if self._background:
            await asyncio.wait(set(self._background), timeout=CLOSE_GRACE)
            for task in list(self._background):
                task.cancel()
            if self._background:
                await asyncio.wait(set(self._background))
        if self.own_client:
            await self.client.close()

    def __repr__(self) -> str:
        return (
            f"<Gateway broker={self.client.endpoint} {self.throttle!r} "
            f"auth={'tokens' if self.tokens else 'open'} abandoned={self.abandoned} "
            f"{self.collector!r}>"
        )


GATEWAY = web.AppKey("remus_gateway", Gateway)
