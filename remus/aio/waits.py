"""How an ``AsyncClient`` waits: one job followed to its end, many collected as they finish.

The same requests and the same bounds as ``BasicClient`` (see ``remus.client.patience``): the
broker holds a ``progress`` or ``collect`` request until there is news, each hold at most
``HOLD`` seconds, and a broker silent past the client's timeout (plus ``GRACE``) ends the wait
with TimeoutError. A wait whose task is cancelled forgets its requests at once; the broker
answers the one it still holds within its hold, and that answer is dropped by its rid.

Both waits are async generators so that the caller sees each update as it comes; what they
yield is turned into results, exceptions and callbacks by ``AsyncClient``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from remus import protocol as p
from remus.aio.connection import Connection
from remus.client.basic import BasicClient, _Known, updates_after
from remus.client.client import BATCH_JOBS, Client, job_error
from remus.client.patience import Bounds
from remus.errors import BrokerStoppedError, RemusError
from remus.types import Job, JobProgress, Status, progress_update

if TYPE_CHECKING:
    from remus.aio.client import AsyncClient


#: a progress callback may be a plain function or a coroutine function
ProgressCallback = Callable[[JobProgress], Any]
JobProgressCallback = Callable[[Job, JobProgress], Any]


async def called(callback: Callable[..., Any], *args: Any) -> None:
    """Call ``callback(*args)``, awaiting what it returns if it is awaitable."""
    returned = callback(*args)
    if inspect.isawaitable(returned):
        await returned


class AsyncPatience(Bounds):
    """The bounds of one wait (see ``remus.client.patience``), and the waiting, on a
    ``Connection``."""

    client: Connection

    async def next_reply(self, probe: Callable[[], Awaitable[int]]) -> p.Reply:
        """The next answer to any request of this wait. ``probe()`` sends the question again,
        not held, and returns its rid. Raises TimeoutError when a bound is reached and
        BrokerStoppedError when the broker stopped."""
        while True:
            now = time.monotonic()
            until, probe_now = self.listen_until(now)
            if probe_now:
                self.probed(await probe(), now)
                continue
            try:
                got = await self.client.reply_to_any(self._out, until)
            except BrokerStoppedError as e:
                self.stopped(e)
                continue
            if got is None:
                continue
            self.answered(got[0])
            return got[1]


async def follow(
    conn: Connection,
    wait: AsyncPatience,
    job_id: str,
    known: _Known,
    *,
    since: int = 0,
    rid: int | None = None,
    with_result: bool = True,
    release: bool = False,
) -> AsyncGenerator[JobProgress | p.Reply, None]:
    """Follow job ``job_id`` to its end: yields every update after number ``since``, in order,
    then the broker's last answer (the job is over; its ``reason``, and its result if
    ``with_result``), and stops. ``rid``: a following submit already sent (and told to
    ``wait``); None to start with a progress request. Raises UnknownJobError for a job the
    broker does not know, and what ``wait`` raises."""

    async def ask(hold: float) -> int:
        return await conn.send(p.ProgressRequest, job_id, since, hold, with_result, release)

    if rid is None:
        hold = wait.hold()
        wait.sent(await ask(hold), hold)
    while True:
        reply = await wait.next_reply(lambda: ask(0.0))
        data = reply.data
        for update in updates_after(job_id, data, since):
            since = update.seq
            known.progress = update
            yield update
        status = known.status = Status(data["status"])
        if status.done and "reason" in data:
            yield reply
            return
        if status is Status.INVALID:
            raise job_error(job_id, status, "")
        if wait.past_deadline:
            raise wait.expired()
        if not wait.held():
            hold = wait.hold()
            wait.sent(await ask(hold), hold)


class SpooledFiles:
    """Large result files (in the broker's spool) noted while a reply is read, then fetched
    all at once on a thread with a synchronous client of its own (remus.transfer), so the
    event loop never waits on a file."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.todo: list[tuple[p.BlobRef, str]] = []

    def __call__(self, ref: p.BlobRef, target: str) -> None:
        self.todo.append((ref, target))

    async def fetch(self) -> None:
        """Fetch what was noted (FileError if a file cannot be)."""
        if self.todo:
            todo, self.todo = self.todo, []
            await asyncio.to_thread(self._client._in_thread, _fetch_all, todo)


def _fetch_all(c: Client, todo: list[tuple[p.BlobRef, str]]) -> None:
    for ref, target in todo:
        c.fetch(ref, target)


async def collect(
    client: AsyncClient,
    jobs: Iterable[Job],
    timeout: float | None,
    errors: Literal["raise", "yield"],
    on_progress: JobProgressCallback | None,
) -> AsyncGenerator[Any, None]:
    """``AsyncClient.as_completed``: each job's result as it finishes (see there)."""
    conn = client.conn
    by_id = {j.id: j for j in jobs}
    pending = dict.fromkeys(by_id)  # in submission order, not yet yielded
    total = len(pending)
    seen: dict[str, int] = {}  # per job, the seq of the last update passed on

    def state() -> str:
        ids = ", ".join(list(pending)[:3]) + (", ..." if len(pending) > 3 else "")
        return f"{len(pending)} of {total} not finished ({ids})"

    wait = AsyncPatience(conn, timeout, f"{total} job{'s' * (total != 1)}", state, plural=True)
    spooled = SpooledFiles(client)  # large result files, fetched on a thread
    watch = ""
    request: Any = p.CollectRequest
    if on_progress is not None:
        request = functools.partial(p.CollectRequest, progress=True)

    async def ask(add: list[str], hold: float) -> int:
        return await conn.send(request, watch, add, hold)

    async def news(reply: p.Reply) -> None:
        """Pass on the reply's progress updates not passed on before (a re-registered watch
        list hands a job's history over again)."""
        if on_progress is None:
            return
        for job_id, updates in reply.data.get("progress", ()):
            if job_id not in pending:
                continue
            last = seen.get(job_id, 0)
            for seq, value, message in updates:
                if seq > last:
                    last = seen[job_id] = seq
                    await called(on_progress, by_id[job_id], progress_update(value, message, seq))

    try:
        while pending:
            if not watch:
                # register the watch list in chunks, collecting what is already done
                watch = secrets.token_hex(6)
                ids = list(pending)
                for start in range(0, len(ids), BATCH_JOBS * 10):
                    chunk = ids[start : start + BATCH_JOBS * 10]
                    wait.sent(await ask(chunk, 0.0), 0.0)
                    reply = await wait.next_reply(lambda: ask(chunk, 0.0))  # noqa: B023
                    await news(reply)
                    for result in BasicClient._yield_results(
                        reply, errors, client.host, pending, spooled
                    ):
                        await spooled.fetch()
                        yield result
                continue
            if not wait.held():
                hold = wait.hold()
                wait.sent(await ask([], hold), hold)
            reply = await wait.next_reply(lambda: ask([], 0.0))
            await news(reply)
            for result in BasicClient._yield_results(reply, errors, client.host, pending, spooled):
                await spooled.fetch()
                yield result
            if pending and not reply.data["remaining"]:
                watch = ""  # a broker that restarted never heard of this watch list
            if pending and wait.past_deadline:
                raise await _late(client, wait, pending)
    finally:
        wait.close()


async def _late(client: AsyncClient, wait: AsyncPatience, pending: dict[str, None]) -> RemusError:
    """The error for jobs not finished by the deadline, with what the broker says of the
    first few (asked briefly: the broker answered just now)."""
    error = wait.expired()
    try:
        some = await client.job_statuses(list(pending)[:5], timeout=min(0.3, wait.silence))
    except RemusError:
        return error
    words = "; ".join(str(s) for s in some) + ("; ..." if len(pending) > 5 else "")
    return type(error)(f"{error} [{words}]", endpoint=error.endpoint)
