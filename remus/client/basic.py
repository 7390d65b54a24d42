"""``BasicClient``: what a script author reaches for.

::

    with BasicClient("tcp://127.0.0.1:50505") as c:
        result = c.run(IOType("Points", "Mesh2D"), data=points, on_progress=print)

        jobs = c.submit_many(JobSubmission.of(io, data) for data in inputs)
        for result in c.as_completed(jobs, on_progress=lambda job, update: ...):
            ...

Waiting never polls on a timer: the broker holds a progress or collect request until there is
news, so every progress update arrives, in order, as soon as it happens. ``as_completed``
gets the updates of all its jobs with their results, in the same batched requests.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import zmq

from remus import files
from remus import protocol as p
from remus.client import workflow
from remus.client.client import (
    BATCH_JOBS,
    Client,
    Submission,
    about_job,
    followed_result,
    job_error,
    limits,
    results_of,
    scheduling,
)
from remus.client.patience import Patience
from remus.client.workflow import Group, Step
from remus.errors import JobNotRunningError, RemusError, UnknownJobError
from remus.files import JobFileRequest
from remus.security import KeyArg, SecretArg
from remus.types import (
    FileHandle,
    IOType,
    Job,
    JobProgress,
    JobRequirements,
    JobResult,
    JobSubmission,
    Status,
    progress_update,
)

log = logging.getLogger(__name__)


def updates_after(job_id: str, data: dict[str, Any], since: int) -> list[JobProgress]:
    """The updates of a progress reply after seq ``since``, oldest first (an answer to an
    older request of the same wait repeats some); a WARNING if the broker's history bound
    dropped some before them. Shared by the sync and the asyncio client."""
    if data.get("dropped"):
        log.warning(
            "job %s: %d progress updates were dropped by the broker's history bound",
            job_id,
            data["dropped"],
        )
    return [
        progress_update(value, message, seq)
        for seq, value, message in data["updates"]
        if seq > since
    ]


ProgressCallback = Callable[[JobProgress], Any]
#: ``as_completed``'s ``on_progress``: called with the job and each of its updates
JobProgressCallback = Callable[[Job, JobProgress], Any]
#: contents of a job: bytes, or str (sent as UTF-8)
Content = bytes | str


class _Known:
    """What a wait last heard of its job, for the message of an error that ends the wait."""

    def __init__(self) -> None:
        self.status: Status | None = None
        self.progress: JobProgress | None = None

    def __str__(self) -> str:
        if self.status is None:
            return "no answer about it yet"
        text = self.status.name
        if self.progress is not None:
            value = "" if self.progress.value is None else f" {self.progress.value}%"
            text += f",{value} {self.progress.message!r}".rstrip()
        return text


class BasicClient:
    """Submit, follow, wait, collect: the client of a broker at ``endpoint`` (else
    ``$REMUS_CLIENT``, else ``tcp://127.0.0.1:50505``).

    ``timeout`` (seconds, default 10) is how long the broker may stay silent: every call raises
    TimeoutError within it plus one second when the broker is dead, stopped or suspended (see
    ``remus.client.patience``). Waits also take their own ``timeout``, a hard deadline for the
    whole call. A broker that stops while a wait is under way answers at once: the wait raises
    BrokerStoppedError, or, when the broker's journal keeps the job, waits for it to come back.
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
        self.client = Client(
            endpoint,
            timeout=timeout,
            context=context,
            server_key=server_key,
            secret_key=secret_key,
        )

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    # -------------------------------------------------------------- one job

    def submit(
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
        """Queue a job for any worker that serves ``what``; ``data`` is its main content
        (bytes, or str sent as UTF-8). ``after``: jobs it waits for (it is WAITING until they
        have all FINISHED, and fails at once if one of them does not; its handler gets their
        results with ``job.inputs_from(...)``).

        With ``files`` (a list of paths or FileHandles) and ``args`` it is a JobFileRequest
        instead: the worker gets each file as a local path (docs/files.md). ``max_retries``,
        ``time_limit``, ``queue_time_limit``, ``wait_for_worker`` and ``retries_on_error`` are
        per-job options (see ``remus.client.limits``); ``priority`` (higher first),
        ``protected`` (False: a spare-capacity job, preempted when a protected job needs its
        slot) and ``parent`` (for assistants only) place it in the queue (see
        ``remus.client.scheduling``); ``timeout`` bounds this call.
        """
        plain = _submission(what, data, files, args, contents)
        sub: Submission = Step(plain, tuple(after)) if after else plain
        return self.client.submit_job(
            sub,
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

    def submit_graph(
        self,
        steps: Mapping[str, Step | JobSubmission | JobFileRequest],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> dict[str, Job]:
        """Submit a whole workflow in one call: ``steps`` names each step (a Step, whose
        ``after`` may name other steps of the graph or existing jobs, or a plain submission).
        Returns each name's Job. A cycle or a step that names nothing known raises before
        anything is sent (ValueError), or is refused by the broker (ServerError ``bad-after``);
        ``options`` as in :meth:`submit_many`."""
        order = workflow.graph_order(steps)
        ids = {name: self.client.new_job_id() for name in steps}
        subs = []
        for name in order:
            step = steps[name]
            if not isinstance(step, Step):
                step = Step(step)
            after = [ids.get(a, a) if isinstance(a, str) else a for a in step.after]
            subs.append(Step(step.submission, after, id=ids[name]))
        jobs = self.client.submit_jobs(subs, timeout=timeout, **options)
        by_name = dict(zip(order, jobs, strict=True))
        return {name: by_name[name] for name in steps}

    def submit_group(
        self,
        submissions: Iterable[Submission],
        *,
        name: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Group:
        """Submit jobs as one group (``name``: its name on the broker, in ``jobs``, ``stats``
        and the status feed; default a new one): a :class:`~remus.client.workflow.Group`
        with one ``status()``, ``wait()`` (results in submission order), ``as_completed()``
        and ``terminate()``. ``options`` as in :meth:`submit_many`."""
        name = name or f"group-{secrets.token_hex(4)}"
        jobs = self.client.submit_jobs(submissions, timeout=timeout, group=name, **options)
        return Group(self, name, jobs)

    def send_control(
        self, job: Job | str, data: bytes | str, *, timeout: float | None = None
    ) -> int:
        """Send a running or queued job a control message; returns its number (1, 2, ...)
        among the job's messages. UnknownJobError for a job the broker does not know,
        JobNotRunningError for one that is over (see ``Client.send_control``)."""
        return self.client.send_control(job, data, timeout=timeout)

    def wait(
        self,
        job: Job,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobResult:
        """Wait for the job's result, calling ``on_progress`` once for every update, in order.

        Raises JobFailedError (JobTerminatedError, JobExpiredError) if it ends without one,
        TimeoutError if ``timeout`` seconds pass first (the job keeps running) or the broker
        stays silent past the client's timeout, BrokerStoppedError if the broker stops.
        """
        known = _Known()
        wait = Patience(self.client, timeout, f"job {job.id}", lambda: str(known))
        return self._follow(wait, None, job.id, known, on_progress)

    def run(
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
        """Submit and wait, in one round trip: the wait is sent right behind the submission.
        ``files`` and ``args`` make it a JobFileRequest, options as in :meth:`submit`;
        ``timeout`` bounds the whole call, errors as in :meth:`wait`.

        ``release=True`` lets the broker forget the job as soon as its result is on its way
        here (its status then reads INVALID): for big one-shot results the broker need not
        keep for ``result_ttl``."""
        plain = _submission(what, data, files, args, contents)
        sub: Submission = Step(plain, tuple(after)) if after else plain
        place = scheduling(priority, protected, parent)  # checked before anything is sent
        c = self.client
        known = _Known()
        wait = Patience(c, timeout, "the job", lambda: str(known))
        entry = c.entry(sub, timeout=wait.left())
        wait.subject = f"job {entry.id}"
        # follow: the broker answers the submit like a held progress request, result included,
        # so a quick job costs one message each way
        hold = wait.hold()
        opts = {
            "follow": hold,
            "release": release,
            "host": c.host,
            **limits(max_retries, time_limit, queue_time_limit, wait_for_worker, retries_on_error),
            **place,
        }
        rid = c.send(p.SubmitRequest, [entry], opts)
        wait.sent(rid, hold)
        job_id = entry.id
        del entry  # inlined file bytes are ZeroMQ's now: freed once sent, not held for the wait
        try:
            return self._follow(wait, rid, job_id, known, on_progress, release=release)
        except (UnknownJobError, JobNotRunningError) as e:
            about_job(e, place.get("parent", ""))  # (a refused submit: its parent)
            raise

    def _follow(
        self,
        wait: Patience,
        rid: int | None,
        job_id: str,
        known: _Known,
        on_progress: ProgressCallback | None,
        *,
        release: bool = False,
    ) -> JobResult:
        """Follow a job to its end. ``rid``: a following submit already sent (and told to
        ``wait``); None to start with a progress request."""
        c = self.client
        since = 0  # the last update handed over

        def ask(hold: float, after: int) -> int:
            return c.send(p.ProgressRequest, job_id, after, hold, True, release)

        def probe() -> int:
            return ask(0.0, since)

        try:
            if rid is None:
                hold = wait.hold()
                wait.sent(ask(hold, since), hold)
            while True:
                reply = wait.next_reply(probe)
                data = reply.data
                for update in updates_after(job_id, data, since):
                    since = update.seq
                    known.progress = update
                    if on_progress is not None:
                        on_progress(update)
                status = known.status = Status(data["status"])
                if status.done and "reason" in data:
                    if status is Status.FINISHED:
                        result = followed_result(reply, job_id, host=c.host, fetch=c.fetch)
                        if result is not None:
                            return result
                        return c.retrieve_result(job_id, timeout=wait.left())
                    raise job_error(
                        job_id, status, data.get("reason", ""), data.get("traceback", "")
                    )
                if status is Status.INVALID:
                    raise job_error(job_id, status, "")
                if wait.past_deadline:
                    raise wait.expired()
                if not wait.held():
                    hold = wait.hold()
                    wait.sent(ask(hold, since), hold)
        finally:
            wait.close()

    # -------------------------------------------------------------- many jobs

    def submit_many(
        self, submissions: Iterable[Submission], *, timeout: float | None = None, **limits: Any
    ) -> list[Job]:
        """Queue many jobs in batches, without a round trip per job (options as in submit,
        ``priority`` and ``protected`` included; ``timeout`` bounds the whole call).
        ``package_size=K`` (2-1000) hands them to workers K at a time, as work packages: one
        message each way per package instead of per job, for many tiny jobs."""
        return self.client.submit_jobs(submissions, timeout=timeout, **limits)

    def as_completed(
        self,
        jobs: Iterable[Job],
        timeout: float | None = None,
        *,
        errors: Literal["raise", "yield"] = "raise",
        on_progress: JobProgressCallback | None = None,
    ) -> Iterator[Any]:
        """Yield each job's JobResult as it finishes, in the order they finish.

        A job that fails raises its JobFailedError (``errors="raise"``) or is yielded as that
        exception (``errors="yield"``) so the rest can still be collected. Results come in
        batches: one request brings every result ready by then. ``timeout`` bounds the whole
        iteration (from the first ``next``); errors as in :meth:`wait`.

        ``on_progress(job, update)`` is called for every progress update of every job, in
        order for each job and before its result is yielded (``remus.progress.BatchBar``'s
        ``progress`` shows them). The updates come with the results, in the same requests:
        following a thousand jobs costs no more round trips than collecting them.
        """
        c = self.client
        by_id = {j.id: j for j in jobs}
        pending = dict.fromkeys(by_id)  # in submission order, not yet yielded
        total = len(pending)
        seen: dict[str, int] = {}  # per job, the seq of the last update passed on

        def state() -> str:
            ids = ", ".join(list(pending)[:3]) + (", ..." if len(pending) > 3 else "")
            return f"{len(pending)} of {total} not finished ({ids})"

        wait = Patience(c, timeout, f"{total} job{'s' * (total != 1)}", state, plural=True)
        watch = ""
        collect: Any = p.CollectRequest
        if on_progress is not None:
            collect = functools.partial(p.CollectRequest, progress=True)

        def ask(add: list[str], hold: float) -> int:
            return c.send(collect, watch, add, hold)

        def news(reply: p.Reply) -> None:
            """Pass on the reply's progress updates not passed on before (a re-registered
            watch list hands a job's history over again)."""
            if on_progress is None:
                return
            for job_id, updates in reply.data.get("progress", ()):
                if job_id not in pending:
                    continue
                last = seen.get(job_id, 0)
                for seq, value, message in updates:
                    if seq > last:
                        last = seen[job_id] = seq
                        on_progress(by_id[job_id], progress_update(value, message, seq))

        try:
            while pending:
                if not watch:
                    # register the watch list in chunks, collecting what is already done
                    watch = secrets.token_hex(6)
                    ids = list(pending)
                    for start in range(0, len(ids), BATCH_JOBS * 10):
                        chunk = ids[start : start + BATCH_JOBS * 10]
                        wait.sent(ask(chunk, 0.0), 0.0)
                        reply = wait.next_reply(lambda: ask(chunk, 0.0))  # noqa: B023
                        news(reply)
                        yield from self._yield_results(reply, errors, c.host, pending, c.fetch)
                    continue
                if not wait.held():
                    hold = wait.hold()
                    wait.sent(ask([], hold), hold)
                reply = wait.next_reply(lambda: ask([], 0.0))
                news(reply)
                yield from self._yield_results(reply, errors, c.host, pending, c.fetch)
                if pending and not reply.data["remaining"]:
                    watch = ""  # a broker that restarted never heard of this watch list
                if pending and wait.past_deadline:
                    raise self._late(wait, pending)
        finally:
            wait.close()

    def _late(self, wait: Patience, pending: dict[str, None]) -> RemusError:
        """The error for jobs not finished by the deadline, with what the broker says of the
        first few (asked briefly: the broker answered just now)."""
        error = wait.expired()
        try:
            some = self.client.job_statuses(list(pending)[:5], timeout=min(0.3, wait.silence))
        except RemusError:
            return error
        words = "; ".join(str(s) for s in some) + ("; ..." if len(pending) > 5 else "")
        return type(error)(f"{error} [{words}]", endpoint=error.endpoint)

    @staticmethod
    def _yield_results(
        reply: p.Reply,
        errors: str,
        host: str,
        pending: dict[str, None],
        fetch: files.Fetch | None = None,
    ) -> Iterator[Any]:
        """Each result in the reply not yielded before (a re-registered watch list can bring
        one twice), raising or yielding failures as ``errors`` says."""
        for result in results_of(reply, reply.data["results"], host=host, fetch=fetch):
            job_id = getattr(result, "job_id", None)
            if job_id not in pending:
                continue
            del pending[job_id]
            if isinstance(result, Exception) and errors == "raise":
                raise result
            yield result

    # -------------------------------------------------------------- lifetime

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> BasicClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BasicClient {self.client!r}>"


def _submission(
    what: IOType | JobRequirements,
    data: Content | None,
    file_list: Iterable[files.PathLike] | None,
    args: Iterable[str] | None,
    contents: dict[str, Content],
) -> JobSubmission | JobFileRequest:
    if file_list is None and args is None:
        return JobSubmission.of(what, data, **contents)
    if data is not None or contents:
        raise TypeError("a job takes data and contents, or files and args, not both")
    if isinstance(file_list, (str, bytes, os.PathLike, FileHandle)):
        raise TypeError(
            f"files must be a list of paths or FileHandles, not one {type(file_list).__name__}: "
            f"write files=[{file_list!r}]"
        )
    return JobFileRequest(
        JobRequirements.of(what),
        [files.handle(f) for f in file_list or ()],
        list(args or ()),
    )
