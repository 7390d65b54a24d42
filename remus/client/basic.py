"""``BasicClient``: what a script author reaches for.

::

    with BasicClient("tcp://127.0.0.1:50505") as c:
        result = c.run(IOType("Points", "Mesh2D"), data=points, on_progress=print)

        jobs = c.submit_many(JobSubmission.of(io, data) for data in inputs)
        for result in c.as_completed(jobs):
            ...

Waiting never polls on a timer: the broker holds a progress or collect request until there is
news, so every progress update arrives, in order, as soon as it happens.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import zmq

from remus import files
from remus import protocol as p
from remus.client.client import (
    BATCH_JOBS,
    Client,
    Submission,
    as_bytes,
    job_error,
    limits,
    results_of,
)
from remus.errors import TimeoutError
from remus.files import JobFileRequest
from remus.server.config import DEFAULT_CLIENT
from remus.types import IOType, Job, JobProgress, JobRequirements, JobResult, JobSubmission, Status

log = logging.getLogger(__name__)

#: the longest single hold asked of the broker while waiting (each hold is one request)
HOLD = 5.0
#: how many client timeouts in a row a wait rides out (a broker restarting) before it gives up
RESUME_TRIES = 3

ProgressCallback = Callable[[JobProgress], Any]


class BasicClient:
    """Submit, follow, wait, collect. ``timeout`` bounds each call to the broker."""

    def __init__(
        self,
        endpoint: str = DEFAULT_CLIENT,
        *,
        timeout: float = 10.0,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        self.client = Client(endpoint, timeout=timeout, context=context)

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    # -------------------------------------------------------------- one job

    def submit(
        self,
        what: IOType | JobRequirements,
        data: bytes | None = None,
        *,
        files: Iterable[files.PathLike] | None = None,
        args: Iterable[str] | None = None,
        max_retries: int | None = None,
        time_limit: float | None = None,
        queue_time_limit: float | None = None,
        **contents: bytes,
    ) -> Job:
        """Queue a job for any worker that serves ``what``; ``data`` is its main content.

        With ``files`` (paths or FileHandles) and ``args`` it is a JobFileRequest instead:
        the worker gets each file as a local path (docs/files.md). ``max_retries``,
        ``time_limit`` and ``queue_time_limit`` are per-job limits (see ``remus.client.limits``).
        """
        return self.client.submit_job(
            _submission(what, data, files, args, contents),
            max_retries=max_retries,
            time_limit=time_limit,
            queue_time_limit=queue_time_limit,
        )

    def wait(
        self,
        job: Job,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobResult:
        """Wait for the job's result, calling ``on_progress`` once for every update, in order.

        Raises JobFailedError (JobTerminatedError, JobExpiredError) if it ends without one,
        TimeoutError if ``timeout`` seconds pass first (the job keeps running).
        """
        return self._follow(None, job.id, timeout, on_progress)

    def run(
        self,
        what: IOType | JobRequirements,
        data: bytes | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        files: Iterable[files.PathLike] | None = None,
        args: Iterable[str] | None = None,
        max_retries: int | None = None,
        time_limit: float | None = None,
        queue_time_limit: float | None = None,
        release: bool = False,
        **contents: bytes,
    ) -> JobResult:
        """Submit and wait, in one round trip: the wait is sent right behind the submission.
        ``files`` and ``args`` make it a JobFileRequest, limits as in :meth:`submit`.

        ``release=True`` lets the broker forget the job as soon as its result is on its way
        here (its status then reads INVALID): for big one-shot results the broker need not
        keep for ``result_ttl``."""
        sub = _submission(what, data, files, args, contents)
        c = self.client
        entry = c.entry(sub)
        # follow: the broker answers the submit like a held progress request, result included,
        # so a quick job costs one message each way
        hold = HOLD if timeout is None else min(HOLD, timeout)
        opts = {
            "follow": hold,
            "release": release,
            "host": c.host,
            **limits(max_retries, time_limit, queue_time_limit),
        }
        rid = c.send(p.SubmitRequest, [entry], opts)
        job_id = entry.id
        del entry  # inlined file bytes are ZeroMQ's now: freed once sent, not held for the wait
        return self._follow(rid, job_id, timeout, on_progress, hold, release=release)

    def _follow(
        self,
        rid: int | None,
        job_id: str,
        timeout: float | None,
        on_progress: ProgressCallback | None,
        hold: float = 0.0,
        *,
        release: bool = False,
    ) -> JobResult:
        """Follow a job to its end. ``rid``: a progress request (or following submit) already
        sent with ``hold``; None to start with a fresh progress request."""
        c = self.client
        deadline = None if timeout is None else time.monotonic() + timeout
        since = 0
        silent = 0
        while True:
            if rid is None:
                left = HOLD if deadline is None else deadline - time.monotonic()
                hold = max(0.0, min(HOLD, left))
                rid = c.send(p.ProgressRequest, job_id, since, hold, True, release)
            try:
                reply = c.receive(rid, c.timeout + hold)
            except TimeoutError:
                # A broker that restarts (from its journal) comes back on the same endpoint and
                # still knows the job: ask again, a few times, before giving up on it.
                silent += 1
                if silent > RESUME_TRIES or (deadline is not None and time.monotonic() >= deadline):
                    raise
                log.warning("broker at %s silent; asking again about job %s", c.endpoint, job_id)
                rid = None
                continue
            rid = None
            silent = 0
            data = reply.data
            if data.get("dropped"):
                log.warning(
                    "job %s: %d progress updates were dropped by the broker's history bound",
                    job_id,
                    data["dropped"],
                )
            for seq, value, message in data["updates"]:
                since = seq
                if on_progress is not None:
                    on_progress(JobProgress(value, message, seq))
            status = Status(data["status"])
            if status.done and "reason" in data:
                if status is Status.FINISHED:
                    if "result" in data:
                        blobs = iter(reply.frames)
                        result = as_bytes(p.take(data["result"], blobs, job_id))
                        if "files" in data:
                            fs = p.take_files(data["files"], blobs, f"result of {job_id}")
                            return files.result_from_wire(job_id, result, fs, c.host)
                        return JobResult(job_id, result)
                    return c.retrieve_result(job_id)
                raise job_error(job_id, status, data.get("reason", ""), data.get("traceback", ""))
            if status is Status.INVALID:
                raise job_error(job_id, status, "")
            if deadline is not None and time.monotonic() >= deadline and not data["updates"]:
                raise TimeoutError(
                    f"job {job_id} did not finish within {timeout:.3g} s (it is {status.name})",
                    endpoint=c.endpoint,
                )

    # -------------------------------------------------------------- many jobs

    def submit_many(self, submissions: Iterable[Submission], **limits: Any) -> list[Job]:
        """Queue many jobs in batches, without a round trip per job (limits as in submit)."""
        return self.client.submit_jobs(submissions, **limits)

    def as_completed(
        self,
        jobs: Iterable[Job],
        timeout: float | None = None,
        *,
        errors: Literal["raise", "yield"] = "raise",
    ) -> Iterator[Any]:
        """Yield each job's JobResult as it finishes, in the order they finish.

        A job that fails raises its JobFailedError (``errors="raise"``) or is yielded as that
        exception (``errors="yield"``) so the rest can still be collected. Results come in
        batches: one request brings every result ready by then.
        """
        c = self.client
        pending = dict.fromkeys(j.id for j in jobs)  # in submission order, not yet yielded
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = ""
        silent = 0
        while pending:
            try:
                if not watch:
                    # register the watch list in chunks, collecting what is already done
                    watch = secrets.token_hex(6)
                    ids = list(pending)
                    for start in range(0, len(ids), BATCH_JOBS * 10):
                        chunk = ids[start : start + BATCH_JOBS * 10]
                        reply = c.call(p.CollectRequest, watch, chunk, 0.0)
                        yield from self._yield_results(reply, errors, c.host, pending)
                    continue
                left = HOLD if deadline is None else deadline - time.monotonic()
                hold = max(0.0, min(HOLD, left))
                reply = c.call(p.CollectRequest, watch, (), hold, timeout=c.timeout + hold)
            except TimeoutError:
                # a restarted broker lost the watch list (but, with a journal, not the jobs):
                # ask again a few times, registering the jobs still pending anew
                silent += 1
                if silent > RESUME_TRIES or (deadline is not None and time.monotonic() >= deadline):
                    raise
                log.warning(
                    "broker at %s silent; asking again for %d results", c.endpoint, len(pending)
                )
                watch = ""
                continue
            silent = 0
            yield from self._yield_results(reply, errors, c.host, pending)
            if pending and not reply.data["remaining"]:
                watch = ""  # a broker that restarted never heard of this watch list: register again
            if pending and deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(pending)} jobs did not finish within {timeout:.3g} s",
                    endpoint=c.endpoint,
                )

    @staticmethod
    def _yield_results(
        reply: p.Reply, errors: str, host: str, pending: dict[str, None]
    ) -> Iterator[Any]:
        """Each result in the reply not yielded before (a re-registered watch list can bring
        one twice), raising or yielding failures as ``errors`` says."""
        for result in results_of(reply, reply.data["results"], host=host):
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
    data: bytes | None,
    file_list: Iterable[files.PathLike] | None,
    args: Iterable[str] | None,
    contents: dict[str, bytes],
) -> Submission:
    if file_list is None and args is None:
        return JobSubmission.of(what, data, **contents)
    if data is not None or contents:
        raise TypeError("a job takes data and contents, or files and args, not both")
    return JobFileRequest(
        JobRequirements.of(what),
        [files.handle(f) for f in file_list or ()],
        list(args or ()),
    )
