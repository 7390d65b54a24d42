"""``AsyncClient``: ``Client`` and ``BasicClient`` for asyncio, on ``zmq.asyncio``.

::

    async with AsyncClient("tcp://127.0.0.1:50505", timeout=10) as c:
        result = await c.run(IOType("Text", "Upper"), b"hello", on_progress=print)
        async for update in c.job_progress(job):
            ...
        async for result in c.as_completed(jobs):
            ...

Many coroutines share one client: each call is a request with its own id on one DEALER
socket, and one reader task hands every reply to the call it answers (``Connection``). Every
call takes ``timeout=`` and raises ``remus.TimeoutError`` past it, and every call can be
cancelled (``task.cancel()``, ``asyncio.timeout``): a cancelled call's reply, when it comes,
is dropped. Cancelling a wait does not stop the job; ``terminate`` does. Requests, replies
and errors are those of the synchronous clients, whose helpers this module reuses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from typing import Any, Literal

import zmq

from remus import files
from remus import protocol as p
from remus.aio.connection import Connection
from remus.aio.waits import (
    AsyncPatience,
    JobProgressCallback,
    ProgressCallback,
    SpooledFiles,
    called,
    collect,
    follow,
)
from remus.client import workflow
from remus.client.basic import Content, _Known, _submission
from remus.client.client import (
    BATCH_BYTES,
    BATCH_JOBS,
    WINDOW,
    Client,
    Submission,
    _deadline,
    _id,
    _left,
    _package_size,
    _records,
    _status,
    about_job,
    control_bytes,
    control_seq,
    followed_result,
    job_error,
    limits,
    listing_limit,
    results_of,
    scheduling,
    stats_of,
)
from remus.client.workflow import Step
from remus.errors import JobNotRunningError, ProtocolError, TimeoutError, UnknownJobError
from remus.files import JobFileRequest
from remus.hostid import host_id
from remus.introspect import BrokerStats, JobInfo, WorkerInfo
from remus.security import KeyArg, SecretArg
from remus.types import (
    IOType,
    Job,
    JobProgress,
    JobRequirements,
    JobResult,
    JobStatus,
    JobSubmission,
    Status,
)


class AsyncClient:
    """The client of a broker at ``endpoint`` (else ``$REMUS_CLIENT``, else
    ``tcp://127.0.0.1:50505``), for asyncio code.

    ``timeout`` (seconds, default 10) is how long the broker may take to answer, or stay
    silent during a wait; each call's own ``timeout=`` replaces it for that call (for waits:
    a hard deadline for the whole call). ``server_key=`` and ``secret_key=`` (or the
    environment) put it in secure mode, as ``BasicClient``. ``context``: a ``zmq.Context``
    (or ``zmq.asyncio.Context``) to make the socket in; default the process's shared one.
    Use it from one event loop; ``await close()`` (or ``async with``) when done.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout: float = 10.0,
        context: zmq.Context[Any] | None = None,
        server_key: KeyArg | bytes = None,
        secret_key: SecretArg = None,
    ) -> None:
        self.conn = Connection(
            endpoint,
            timeout=timeout,
            context=context,
            server_key=server_key,
            secret_key=secret_key,
        )
        #: this client's host id, sent with every submit (docs/files.md)
        self.host = host_id()
        self._prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._broker: dict[str, Any] | None = None

    @property
    def endpoint(self) -> str:
        return self.conn.endpoint

    @property
    def timeout(self) -> float:
        return self.conn.timeout

    def new_job_id(self) -> str:
        """Job ids are chosen by the client: unique per client, so a submit can be pipelined."""
        return f"{self._prefix}-{next(self._ids):x}"

    # -------------------------------------------------------------- what the broker offers

    async def broker_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The broker's ``host`` id and ``max_message_bytes``: asked once, then kept."""
        if self._broker is None:
            data = (await self.conn.call(p.HelloRequest, timeout=timeout)).data
            if not isinstance(data, dict) or type(data.get("host")) is not str:
                raise ProtocolError(f"the broker's hello reply is malformed: {data!r}")
            self._broker = data
        return self._broker

    async def supported_io_types(self, *, timeout: float | None = None) -> set[IOType]:
        """Every io type a connected worker or the broker's factory can serve."""
        reply = await self.conn.call(p.IoTypesRequest, timeout=timeout)
        return {IOType.from_wire(t) for t in reply.data}

    async def can_mesh(
        self, what: IOType | JobRequirements, *, timeout: float | None = None
    ) -> bool:
        """Whether a job with these requirements could run (a worker or a worker file for it)."""
        reply = await self.conn.call(p.CanMeshRequest, JobRequirements.of(what), timeout=timeout)
        return bool(reply.data)

    async def retrieve_requirements(
        self, io_type: IOType, *, timeout: float | None = None
    ) -> list[JobRequirements]:
        """The requirements of every worker (connected or in the factory) for ``io_type``."""
        reply = await self.conn.call(p.RequirementsRequest, io_type, timeout=timeout)
        return [JobRequirements.from_wire(r) for r in reply.data]

    # -------------------------------------------------------------- submitting

    async def submit(
        self,
        what: IOType | JobRequirements,
        data: Content | None = None,
        *,
        files: Iterable[files.PathLike] | None = None,
        args: Iterable[str] | None = None,
        max_retries: int | None = None,
        time_limit: float | None = None,
        queue_time_limit: float | None = None,
        wait_for_worker: bool = False,
        retries_on_error: int | None = None,
        priority: int = 0,
        protected: bool = True,
        parent: Job | str | None = None,
        after: Iterable[Job | str] | None = None,
        timeout: float | None = None,
        **contents: Content,
    ) -> Job:
        """Queue a job for any worker that serves ``what``, as ``BasicClient.submit``: ``data``
        (and named ``contents``), or ``files`` and ``args``; per-job limits and the job's
        place in the queue; ``after``: the jobs it waits for; ``timeout`` bounds this call."""
        plain = _submission(what, data, files, args, contents)
        return await self.submit_job(
            Step(plain, tuple(after)) if after else plain,
            max_retries=max_retries,
            time_limit=time_limit,
            queue_time_limit=queue_time_limit,
            wait_for_worker=wait_for_worker,
            retries_on_error=retries_on_error,
            priority=priority,
            protected=protected,
            parent=parent,
            timeout=timeout,
        )

    async def submit_job(
        self, submission: Submission, *, timeout: float | None = None, **options: Any
    ) -> Job:
        """Queue one JobSubmission or JobFileRequest (options as in :meth:`submit_many`)."""
        return (await self.submit_many([submission], timeout=timeout, **options))[0]

    async def submit_many(
        self,
        submissions: Iterable[Submission],
        *,
        max_retries: int | None = None,
        time_limit: float | None = None,
        queue_time_limit: float | None = None,
        wait_for_worker: bool = False,
        retries_on_error: int | None = None,
        priority: int = 0,
        protected: bool = True,
        parent: Job | str | None = None,
        group: str | None = None,
        package_size: int | None = None,
        timeout: float | None = None,
    ) -> list[Job]:
        """Queue many jobs in batches, several batches in flight (``Client.submit_jobs``):
        a batch is accepted or refused whole. ``group`` names the group they belong to (as
        ``BasicClient.submit_group`` does). ``package_size`` (2-1000) hands them to workers
        in work packages of that many, as ``BasicClient.submit_many`` does. ``timeout``
        bounds the whole call (None: the client's timeout for each batch's answer)."""
        opts = {
            "host": self.host,
            **limits(max_retries, time_limit, queue_time_limit, wait_for_worker, retries_on_error),
            **scheduling(priority, protected, parent),
        }
        if group is not None:
            opts["group"] = group
        if package_size is not None:
            opts["package_size"] = _package_size(package_size, protected)
        try:
            return await self._submit_many(submissions, opts, timeout)
        except (UnknownJobError, JobNotRunningError) as e:
            about_job(e, opts.get("parent", ""))
            raise

    async def _submit_many(
        self, submissions: Iterable[Submission], opts: dict[str, Any], timeout: float | None
    ) -> list[Job]:
        c = self.conn
        deadline = _deadline(timeout)
        jobs: list[Job] = []
        in_flight: deque[int] = deque()
        # the broker packs each batch on its own: a batch holds whole packages
        package = opts.get("package_size", 1)
        most = max(package, BATCH_JOBS - BATCH_JOBS % package)
        batch: list[p.SubmittedJob] = []
        size = 0

        async def flush() -> None:
            nonlocal batch, size
            if len(in_flight) >= WINDOW:
                await c.receive(in_flight.popleft(), _left(deadline))
            jobs.extend(Job(e.id, e.requirements) for e in batch)
            in_flight.append(await c.send(p.SubmitRequest, batch, opts, timeout=_left(deadline)))
            batch, size = [], 0

        try:
            for sub in submissions:
                if not isinstance(sub, (JobSubmission, JobFileRequest, Step)):
                    raise TypeError(
                        "submit_many takes JobSubmission, JobFileRequest or Step objects, "
                        f"got {type(sub).__name__}"
                    )
                entry = await self._entry(sub, timeout=_left(deadline))
                entry_size = sum(len(v) for v in entry.values)
                if entry.files is not None:
                    entry_size += files.inline_size(entry.files)
                if batch and size + entry_size > BATCH_BYTES:
                    await flush()  # a big job travels on its own, not on top of a full batch
                batch.append(entry)
                size += entry_size
                if len(batch) >= most or size >= BATCH_BYTES:
                    await flush()
            if batch:
                await flush()
            while in_flight:
                await c.receive(in_flight.popleft(), _left(deadline))
        except TimeoutError:
            if timeout is None:
                raise
            raise TimeoutError(
                f"the broker at {c.endpoint} did not accept the jobs within {timeout:.3g} s; "
                "is it running?",
                endpoint=c.endpoint,
            ) from None
        finally:
            c.forget(in_flight)  # after an error: late answers to the other batches dropped
        return jobs

    async def _entry(self, sub: Submission, *, timeout: float | None) -> p.SubmittedJob:
        """The wire form of a submission, with a fresh job id (``Client.entry``); a file
        request's files are read on a thread, off the event loop; a Step: with what it waits
        for, and its own id if it has one."""
        if isinstance(sub, Step):
            entry = await self._entry(sub.submission, timeout=timeout)
            return dataclasses.replace(
                entry, id=sub.id or entry.id, after=workflow.job_ids(sub.after)
            )
        if isinstance(sub, JobFileRequest):
            fs = p.FileSet((), sub.args)
            if sub.files:
                broker = await self.broker_info(timeout=timeout)
                limit = int(broker.get("max_message_bytes", files.MAX_FILE_BYTES)) - 64 * 1024
                inline = broker["host"] != self.host
                fs = await asyncio.to_thread(
                    files.request_files, sub, inline=inline, limit=limit, upload=self._upload
                )
            return p.SubmittedJob(self.new_job_id(), sub.requirements, files=fs)
        contents = sub.contents
        return p.SubmittedJob(
            self.new_job_id(), sub.requirements, tuple(contents), list(contents.values())
        )

    # -------------------------------------------------------------- waiting

    async def wait(
        self,
        job: Job | str,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobResult:
        """The job's result, calling ``on_progress`` (a function or a coroutine function)
        once for every update, in order. Raises JobFailedError (JobTerminatedError,
        JobExpiredError) if it ends without one, TimeoutError past ``timeout`` (the job keeps
        running) or when the broker stays silent past the client's timeout,
        BrokerStoppedError if the broker stops."""
        job_id = _id(job)
        known = _Known()
        wait = AsyncPatience(self.conn, timeout, f"job {job_id}", lambda: str(known))
        try:
            return await self._outcome(wait, None, job_id, known, on_progress)
        finally:
            wait.close()

    async def run(
        self,
        what: IOType | JobRequirements,
        data: Content | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        files: Iterable[files.PathLike] | None = None,
        args: Iterable[str] | None = None,
        max_retries: int | None = None,
        time_limit: float | None = None,
        queue_time_limit: float | None = None,
        wait_for_worker: bool = False,
        retries_on_error: int | None = None,
        priority: int = 0,
        protected: bool = True,
        parent: Job | str | None = None,
        release: bool = False,
        after: Iterable[Job | str] | None = None,
        **contents: Content,
    ) -> JobResult:
        """Submit and wait in one round trip, as ``BasicClient.run`` (options as in
        :meth:`submit`, errors as in :meth:`wait`; ``timeout`` bounds the whole call).
        ``release=True`` lets the broker forget the job once its result is on its way here:
        a run cancelled then loses that result."""
        plain = _submission(what, data, files, args, contents)
        sub: Submission = Step(plain, tuple(after)) if after else plain
        place = scheduling(priority, protected, parent)  # checked before anything is sent
        c = self.conn
        known = _Known()
        wait = AsyncPatience(c, timeout, "the job", lambda: str(known))
        try:
            entry = await self._entry(sub, timeout=wait.left())
            wait.subject = f"job {entry.id}"
            # follow: the broker answers the submit like a held progress request
            hold = wait.hold()
            opts = {
                "follow": hold,
                "release": release,
                "host": self.host,
                **limits(
                    max_retries, time_limit, queue_time_limit, wait_for_worker, retries_on_error
                ),
                **place,
            }
            rid = await c.send(p.SubmitRequest, [entry], opts)
            wait.sent(rid, hold)
            job_id = entry.id
            del entry  # inlined file bytes are ZeroMQ's now, not held for the wait
            return await self._outcome(wait, rid, job_id, known, on_progress, release=release)
        except (UnknownJobError, JobNotRunningError) as e:
            about_job(e, place.get("parent", ""))  # (a refused submit: its parent)
            raise
        finally:
            wait.close()

    async def _outcome(
        self,
        wait: AsyncPatience,
        rid: int | None,
        job_id: str,
        known: _Known,
        on_progress: ProgressCallback | None,
        *,
        release: bool = False,
    ) -> JobResult:
        """Follow a job to its end and return its result or raise its failure."""
        steps = follow(self.conn, wait, job_id, known, rid=rid, release=release)
        async with aclosing(steps):
            async for step in steps:
                if isinstance(step, JobProgress):
                    if on_progress is not None:
                        await called(on_progress, step)
                    continue
                data = step.data
                if known.status is Status.FINISHED:
                    spooled = SpooledFiles(self)
                    result = followed_result(step, job_id, host=self.host, fetch=spooled)
                    if result is not None:
                        await spooled.fetch()
                        return result
                    return await self.retrieve_result(job_id, timeout=wait.left())
                assert known.status is not None  # set before follow yields its last answer
                raise job_error(
                    job_id, known.status, data.get("reason", ""), data.get("traceback", "")
                )
        raise ProtocolError(f"the broker's answers about job {job_id} ended without its end")

    async def job_progress(
        self, job: Job | str, since: int = 0, *, timeout: float | None = None
    ) -> AsyncIterator[JobProgress]:
        """Every progress update after number ``since``, in order, as it happens, until the
        job ends (then the iteration stops, whatever the outcome: :meth:`wait` or
        :meth:`retrieve_result` says which). UnknownJobError for a job the broker does not
        know; ``timeout`` bounds the whole iteration; a silent broker ends it as a wait."""
        job_id = _id(job)
        known = _Known()
        wait = AsyncPatience(self.conn, timeout, f"job {job_id}", lambda: str(known))
        steps = follow(self.conn, wait, job_id, known, since=since, with_result=False)
        try:
            async with aclosing(steps):
                async for step in steps:
                    if not isinstance(step, JobProgress):
                        return
                    yield step
        finally:
            wait.close()

    async def as_completed(
        self,
        jobs: Iterable[Job],
        timeout: float | None = None,
        *,
        errors: Literal["raise", "yield"] = "raise",
        on_progress: JobProgressCallback | None = None,
    ) -> AsyncIterator[Any]:
        """Each job's JobResult as it finishes, in the order they finish, as
        ``BasicClient.as_completed``: a failed job raises its JobFailedError (or, with
        ``errors="yield"``, is yielded as it); ``on_progress(job, update)`` (a function or a
        coroutine function) sees every update of every job, in order per job; ``timeout``
        bounds the whole iteration."""
        results = collect(self, jobs, timeout, errors, on_progress)
        async with aclosing(results):
            async for result in results:
                yield result

    # -------------------------------------------------------------- one request each

    async def job_status(self, job: Job | str, *, timeout: float | None = None) -> JobStatus:
        """Where the job is; an unknown id has status INVALID."""
        reply = await self.conn.call(p.StatusRequest, [_id(job)], timeout=timeout)
        return _status(reply.data[0])

    async def job_statuses(
        self, jobs: Iterable[Job | str], *, timeout: float | None = None
    ) -> list[JobStatus]:
        reply = await self.conn.call(p.StatusRequest, [_id(j) for j in jobs], timeout=timeout)
        return [_status(row) for row in reply.data]

    async def retrieve_result(self, job: Job | str, *, timeout: float | None = None) -> JobResult:
        """The job's result. Raises JobFailedError (and subclasses), JobNotFinishedError or
        UnknownJobError when there is none."""
        reply = await self.conn.call(p.ResultRequest, [_id(job)], timeout=timeout)
        spooled = SpooledFiles(self)
        (result,) = results_of(reply, host=self.host, fetch=spooled)
        if isinstance(result, Exception):
            raise result
        await spooled.fetch()
        return result

    # -------------------------------------------------------------- large files

    def _in_thread(self, do: Any, *args: Any) -> Any:
        """``do(client, *args)`` with a synchronous Client of the broker made for the call, in
        the calling thread (a worker thread of the event loop's)."""
        keys = self.conn.keys
        with Client(
            self.conn.endpoint,
            server_key=keys.server if keys is not None else None,
            secret_key=keys.own if keys is not None else False,
        ) as c:
            return do(c, *args)

    def _upload(self, path: str, fd: int, size: int) -> p.BlobRef:
        """Upload a large input in chunks (called on the thread that reads the files)."""
        return self._in_thread(lambda c: c.upload(path, fd, size))

    async def terminate(self, job: Job | str, *, timeout: float | None = None) -> JobStatus:
        """Stop a job: a queued job never runs, a running one's worker is told to stop and its
        late result is dropped. Terminating a finished job changes nothing."""
        reply = await self.conn.call(p.TerminateRequest, [_id(job)], timeout=timeout)
        return _status(reply.data[0])

    async def send_control(
        self, job: Job | str, data: bytes | str, *, timeout: float | None = None
    ) -> int:
        """Send a running or queued job a control message; returns its number among the
        job's messages (see ``Client.send_control``)."""
        job_id = _id(job)
        try:
            reply = await self.conn.call(
                p.ControlRequest, job_id, control_bytes(data), timeout=timeout
            )
        except UnknownJobError:
            raise UnknownJobError(job_id) from None
        except JobNotRunningError as e:
            about_job(e, job_id)
            raise
        return control_seq(reply)

    async def workers(self, timeout: float | None = None) -> list[WorkerInfo]:
        """One record per connected worker: what it serves, what it holds, when it was heard."""
        data = (await self.conn.call(p.WorkersRequest, timeout=timeout)).data
        return _records(data, WorkerInfo.from_wire, "workers")

    async def jobs(
        self,
        status: Status | None = None,
        io_type: IOType | None = None,
        limit: int = 100,
        timeout: float | None = None,
    ) -> list[JobInfo]:
        """The jobs the broker holds, newest first: only those with ``status`` and of
        ``io_type`` if given, at most ``limit`` (up to 10,000)."""
        limit = listing_limit(status, io_type, limit)
        reply = await self.conn.call(p.ListJobsRequest, status, io_type, limit, timeout=timeout)
        return _records(reply.data, JobInfo.from_wire, "list_jobs")

    async def stats(self, timeout: float | None = None) -> BrokerStats:
        """The broker's version, uptime, endpoints, job and worker counts, rates and limits."""
        return stats_of((await self.conn.call(p.StatsRequest, timeout=timeout)).data)

    # -------------------------------------------------------------- lifetime

    async def close(self) -> None:
        """Close the connection; calls still waiting raise RuntimeError. Idempotent."""
        await self.conn.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncClient {self.conn!r}>"
