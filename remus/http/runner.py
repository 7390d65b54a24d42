"""How the gateway runs the jobs of many waiting requests at once: submitted together, their
results collected together, each waiting request costing a future rather than a task.

The seed's "independent command execution machinery": requests hand their commands to a queue,
a runner sends them on, and one handler of responses gives each result to the caller that waits
for it. Here, with ``AsyncClient`` underneath:

- :class:`Submitter`: the submissions that arrive while the event loop is busy (one pass of it)
  go to the broker as one ``submit_many`` call per kind (same requirements and options), and
  each request gets its ``Job`` back. A batch is refused whole (no worker, busy broker); every
  request of it then gets the refusal.
- :class:`Collector`: one watch list at the broker (the ``collect`` request of
  docs/protocol.md) holds every job whose result a request waits for. New jobs are added in
  batches as they come; one request is held at the broker until some of them are over, and
  each result goes to the future of its request. A request that stops waiting (a timeout, a
  caller that hung up) only drops its future: its result is dropped when it comes.

The broker's silence is bounded as for every wait (``remus.client.patience``): a held request
not answered within its hold plus the client's timeout (and a second) fails every waiting
request with TimeoutError; a stopping broker fails them with BrokerStoppedError. A watch list
the broker no longer knows (it restarted) is registered again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from remus import protocol as p
from remus.aio import AsyncClient
from remus.aio.waits import SpooledFiles
from remus.client.client import JOURNALED, results_of
from remus.client.patience import GRACE, HOLD, PROBE_AFTER, PROBE_MAX, RESTART_WAIT
from remus.errors import BrokerStoppedError, RemusError, TimeoutError
from remus.files import JobFileRequest, JobFileResult
from remus.types import Job, JobResult, JobSubmission

log = logging.getLogger(__name__)

Submission = JobSubmission | JobFileRequest
#: results handed over per reply at most
MAX_RESULTS = 10_000


class Submitter:
    """Submits the jobs of concurrent requests in batches (see the module's docstring)."""

    def __init__(self, client: AsyncClient, spawn: Callable[..., None]) -> None:
        self.client = client
        self._spawn = spawn
        self._batches: dict[Hashable, list[_Entry]] = {}
        #: submit calls made, and jobs submitted
        self.calls = 0
        self.jobs = 0

    async def submit(
        self,
        sub: Submission,
        options: dict[str, Any],
        *,
        orphan: Callable[[Job], None],
        sent: Callable[[], None] = lambda: None,
    ) -> Job:
        """The job ``sub`` became. ``sent()`` is called once the broker has answered for it
        (or it was never sent); ``orphan(job)`` for a job submitted after its request stopped
        waiting (nobody will know its id)."""
        loop = asyncio.get_running_loop()
        key = (sub.requirements, tuple(sorted(options.items())))
        future: asyncio.Future[Job] = loop.create_future()
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = []
            loop.call_soon(self._flush, key, options)
        batch.append(_Entry(sub, future, orphan, sent))
        return await future

    def _flush(self, key: Hashable, options: dict[str, Any]) -> None:
        batch = []
        for entry in self._batches.pop(key):
            if entry.future.done():  # (given up on before it was sent)
                entry.sent()
            else:
                batch.append(entry)
        if batch:
            self._spawn(self._send(batch, options), "remus-http submit")

    async def _send(self, batch: list[_Entry], options: dict[str, Any]) -> None:
        self.calls += 1
        try:
            jobs = await self.client.submit_many([e.submission for e in batch], **options)
        except Exception as e:  # refused, unreachable, a file gone: each request hears it
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(e)
            return
        finally:
            for entry in batch:
                entry.sent()
        self.jobs += len(jobs)
        for entry, job in zip(batch, jobs, strict=True):
            if entry.future.done():
                entry.orphan(job)
            else:
                entry.future.set_result(job)


@dataclass(slots=True)
class _Entry:
    """A submission waiting for its batch to go."""

    submission: Submission
    future: asyncio.Future[Job]
    orphan: Callable[[Job], None]
    sent: Callable[[], None]


class Collector:
    """Every result a request waits for, from one watch list (see the module's docstring)."""

    def __init__(self, client: AsyncClient, spawn: Callable[..., None]) -> None:
        self.client = client
        self._spawn = spawn
        self._waiters: dict[str, asyncio.Future[JobResult]] = {}
        #: ids to add to the watch list, and those on it (their add was answered)
        self._new: list[str] = []
        self._listed: set[str] = set()
        self._watch = ""
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.hold = min(HOLD, max(GRACE, client.timeout / 2))
        self._closed: Exception | None = None
        #: collect requests sent, and watch lists registered
        self.requests = 0
        self.watches = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def expect(self, job_id: str) -> asyncio.Future[JobResult]:
        """The future of job ``job_id``'s result: set when the job is over (its failure as the
        exception: JobFailedError, ...). Await it, then :meth:`forget` it, whatever happened
        (a future, not a coroutine: a waiting request holds nothing more)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobResult] = loop.create_future()
        if self._closed is not None:
            future.set_exception(self._closed)
            return future
        self._waiters[job_id] = future
        self._new.append(job_id)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="remus-http collect")
        elif self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        return future

    def forget(self, job_id: str) -> None:
        """Stop waiting for job ``job_id`` (its result, when it comes, is dropped)."""
        if self._waiters.pop(job_id, None) is not None:
            self._listed.discard(job_id)

    async def close(self, error: Exception | None = None) -> None:
        """Stop collecting: every request still waiting (and any that comes) gets ``error``
        (default RuntimeError); the jobs themselves go on at the broker."""
        self._closed = error or RuntimeError("the gateway is closing")
        self._fail(self._closed)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    # -------------------------------------------------------------- the one loop

    async def _run(self) -> None:
        """Keep one request held on the watch list while anyone waits.

        A watch list has one request at a time at the broker: a new one (with new ids to add)
        supersedes the held one, which is then never answered, unless its answer was already
        on its way; so an older request is given up on only once a later one is answered. A
        held request not answered in time brings another (a probe: it supersedes a held one at
        a live broker, and finds out about a restarted one); a broker silent past its hold and
        the client's timeout fails every waiter, as does one that stops without a journal. One
        that stops with its journal is asked again until it is back (RESTART_WAIT at most)."""
        conn = self.client.conn
        out: dict[int, list[str]] = {}  # requests sent and not answered: the ids each added
        held: int | None = None  # the latest request (the one the broker holds)
        now = time.monotonic()
        due = now + self.hold + conn.timeout + GRACE  # the broker is silent past this
        probe_at = quiet_until = now
        try:
            while self._waiters:
                now = time.monotonic()
                quiet = now < quiet_until
                if (held is None or self._new or now >= probe_at) and not quiet:
                    held = await self._ask(out)
                    probe_at = now + self.hold + PROBE_AFTER  # (answered by then, if alive)
                try:
                    until = min(due, quiet_until if quiet else probe_at)
                    got = await self._next(out, until, wakeable=not quiet)
                except BrokerStoppedError as e:
                    if e.code != JOURNALED:
                        raise
                    # its journal keeps the jobs: ask again (calmly) until it is back
                    log.info("the broker stops with its journal: waiting for it to come back")
                    conn.forget(out)
                    out.clear()
                    held = None
                    self._lost()
                    now = time.monotonic()
                    due, quiet_until = now + RESTART_WAIT, now + PROBE_MAX
                    continue
                now = time.monotonic()
                if got is None:
                    if now >= due:
                        raise TimeoutError(
                            f"the broker at {conn.endpoint} did not answer within "
                            f"{conn.timeout:g} s; {conn.why_silent()}",
                            endpoint=conn.endpoint,
                        )
                    continue  # woken (new ids to add), or time to probe
                rid, reply = got
                due = now + self.hold + conn.timeout + GRACE
                older = [r for r in out if r <= rid]  # (the others: superseded, if unanswered)
                for r in older:
                    self._listed.update(i for i in out.pop(r) if i in self._waiters)
                conn.forget(older)
                if held is not None and held <= rid:
                    held = None
                self._hand_over(reply)
                if reply.data["remaining"] < len(self._listed):
                    log.info("the broker does not know the gateway's watch list (it restarted)")
                    self._lost()
        except asyncio.CancelledError:
            self._fail(RuntimeError("the gateway is closing"))
            raise
        except Exception as e:  # silent, stopped, unreadable: every waiter hears it
            self._fail(e)
        finally:
            conn.forget(out)

    def _lost(self) -> None:
        """The watch list is gone (the broker restarted): a new one, with every waiter on it."""
        self._watch = ""
        self._new = list(self._waiters)
        self._listed.clear()

    async def _ask(self, out: dict[int, list[str]]) -> int:
        """Send the watch list's next request (held; with the ids to add); its rid."""
        if not self._watch:
            self._watch = secrets.token_hex(8)
            self.watches += 1
            self._new = list(self._waiters)  # (all of them, on a new watch list)
        add = [i for i in dict.fromkeys(self._new) if i in self._waiters]
        self._new = []
        self.requests += 1
        conn = self.client.conn
        rid = await conn.send(p.CollectRequest, self._watch, add, self.hold, MAX_RESULTS)
        out[rid] = add
        return rid

    async def _next(
        self, out: dict[int, list[str]], until: float, *, wakeable: bool = True
    ) -> tuple[int, p.Reply] | None:
        """The first reply to any of ``out`` before ``until``; None at ``until``, or when woken
        by a new id to add (if ``wakeable``)."""
        loop = asyncio.get_running_loop()
        if wakeable and self._new:
            return None
        waits: list[asyncio.Future[Any]] = []
        if wakeable:
            self._wake = loop.create_future()
            waits.append(self._wake)
        reply = None
        if out:
            reply = loop.create_task(self.client.conn.reply_to_any(list(out), until))
            waits.append(reply)
        try:
            left = max(0.0, until - time.monotonic())
            if waits:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(left)  # (riding out a restart: the pause between asks)
        finally:
            self._wake = None
            if reply is not None and not reply.done():
                reply.cancel()
                await asyncio.wait([reply])
        if reply is None or reply.cancelled():
            return None
        return reply.result()

    def _hand_over(self, reply: p.Reply) -> None:
        """Give each result in ``reply`` to its waiter; large files are fetched first, on a
        task of their own."""
        spooled = SpooledFiles(self.client)
        rows = reply.data["results"]
        results = results_of(reply, rows, host=self.client.host, fetch=spooled)
        later: list[tuple[asyncio.Future[JobResult], JobResult]] = []
        for row, result in zip(rows, results, strict=True):  # (a FileError names no job)
            job_id = row[0]
            future = self._waiters.pop(job_id, None)
            self._listed.discard(job_id)
            if future is None or future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            elif isinstance(result, JobFileResult) and result.folder:
                later.append((future, result))
            else:
                future.set_result(result)
        if later:
            self._spawn(_fetched(spooled, later), "remus-http fetch")

    def _fail(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, {}
        self._listed.clear()
        self._new = []
        self._watch = ""
        for future in waiters.values():
            if not future.done():
                future.set_exception(error)

    def __repr__(self) -> str:
        return (
            f"<Collector waiting={len(self._waiters)} requests={self.requests} "
            f"watches={self.watches}>"
        )


async def _fetched(
    spooled: SpooledFiles, later: list[tuple[asyncio.Future[JobResult], JobResult]]
) -> None:
    """Fetch the spooled files of these results, then hand each over."""
    try:
        await spooled.fetch()
    except RemusError as e:
        for future, _ in later:
            if not future.done():
                future.set_exception(e)
        return
    for future, result in later:
        if not future.done():
            future.set_result(result)
