"""``Worker``: turn any function or program into a remus worker.

::

    with Worker(IOType("Edges", "Mesh2D"), endpoint=sys.argv[1]) as w:
        w.run(lambda job: mesh(job["data"]))

or step by step with ``get_job`` / ``send_progress`` / ``return_result``. Every method may be
called from any thread; the socket itself lives in a background thread that also heartbeats.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import secrets
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from remus.errors import FileError
from remus.files import PathLike, Scratch, materialize, result_files
from remus.hostid import host_id
from remus.server.config import check_endpoint, endpoint_from_env
from remus.types import IOType, JobRequirements
from remus.usage import JobMeter
from remus.worker.connection import Connection
from remus.worker.job import INVALID, Job

log = logging.getLogger(__name__)

#: a job with more content bytes than this reports "started" at once, not lazily
BIG_INPUT = 1 << 20

#: a handler returns the result's bytes (str: UTF-8; None: empty), or a list of files
Handler = Callable[[Job], "bytes | bytearray | memoryview | str | list[Any] | None"]


class Worker:
    """A worker for one kind of job, connected to ``endpoint`` (else ``$REMUS_WORKER``, else
    ``tcp://127.0.0.1:50510``). ``heartbeat_interval`` (s) is declared to the broker, which
    declares the worker lost after a few silent intervals."""

    def __init__(
        self,
        requirements: JobRequirements | IOType,
        endpoint: str | None = None,
        *,
        heartbeat_interval: float = 1.0,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        endpoint = check_endpoint(endpoint_from_env(endpoint, "worker"), "worker")
        if not 0.001 <= heartbeat_interval <= 3600:
            raise ValueError("heartbeat_interval must be between 0.001 and 3600 seconds")
        self.requirements = JobRequirements.of(requirements)
        self.endpoint = endpoint
        self.identity = b"w-" + secrets.token_bytes(8)
        self._conn = Connection(
            context or zmq.Context.instance(),
            endpoint,
            self.requirements,
            heartbeat_interval,
            self.identity,
        )
        self._conn.start()
        self._closed = False
        #: this worker's host id: file results go as paths only to a submitter on it
        self.host = host_id()
        #: private folders of the file jobs handed out and not yet ended
        self._scratches: dict[str, Scratch] = {}
        self.jobs_done = 0
        #: what each job run by ``run`` uses, sent with its result
        self._meter = JobMeter()

    # -------------------------------------------------------------- taking jobs

    def ask_for_jobs(self, n: int = 1, *, _wake: bool = True) -> None:
        """Ask the broker for ``n`` more jobs (credit). Several at once is what makes small
        jobs fast: the broker sends as many as you have credit for in one message."""
        if n < 1:
            raise ValueError("ask for at least one job")
        self._conn.requested += n
        self._conn.post("credit", n, wake=_wake)

    def pending_job_count(self) -> int:
        """Jobs received and not yet taken with get_job."""
        return self._conn.inbox.qsize()

    def take_pending_job(self) -> Job:
        """A job already received, without waiting; an invalid job if there is none."""
        return self._take(block=False, timeout=None)

    def get_job(self, timeout: float | None = None) -> Job:
        """The next job, waiting up to ``timeout`` seconds (None: until one comes).

        Asks the broker for one if nothing is asked for yet. Returns an invalid (falsy) job on
        timeout or when the broker tells the worker to exit (then ``should_terminate`` is True).
        """
        conn = self._conn
        if conn.inbox.empty() and conn.requested <= conn.received:
            self.ask_for_jobs(1)
        return self._take(block=True, timeout=timeout)

    def _take(self, *, block: bool, timeout: float | None) -> Job:
        while True:
            if self.should_terminate:
                return INVALID
            try:
                job = self._conn.inbox.get(block=block, timeout=timeout)
            except queue.Empty:
                return INVALID
            if job is None:  # shutdown
                self._conn.inbox.put(None)  # for any other thread waiting
                return INVALID
            # "started" rides along with the job's first progress or its result, or goes with
            # the next heartbeat: a quick job costs one message, not two (a worker that dies
            # before saying so has its oldest job counted as an attempt by the broker). A file
            # job's or a big job's goes now, so the broker can let go of its input meanwhile.
            big = sum(job.contents.size(k) for k in job.contents) > BIG_INPUT
            self._conn.post("started", job.id, wake=big or job.wire_files is not None)
            if job.wire_files is None:
                return job
            try:
                return self._with_files(job)
            except FileError as e:
                log.warning("job %s failed: %s", job.id, e)
                self.send_failure(job, f"the worker cannot take the job's files: {e}")
                self.ask_for_jobs(1)  # in place of the job that failed; take the next one

    def _with_files(self, job: Job) -> Job:
        """The job with its inputs at local paths (inline ones written to its folder)."""
        fs = job.wire_files
        scratch = Scratch(job.id)
        try:
            local = materialize(fs, self.host, scratch)
        except BaseException:
            scratch.remove()
            raise
        self._scratches[job.id] = scratch
        return dataclasses.replace(
            job, files=local, args=tuple(fs.args), origin=fs.host, scratch=scratch, wire_files=None
        )

    def _end(self, job: Job) -> None:
        """The job is over here: remove its private folder."""
        scratch = self._scratches.pop(job.id, None)
        if scratch is not None:
            scratch.remove()

    # -------------------------------------------------------------- reporting

    def send_progress(self, job: Job, value: int | None = None, message: str = "") -> None:
        """Report progress: ``value`` 0–100 (or None for a message only). Every update reaches
        the broker, in order; none is coalesced or dropped."""
        if value is not None:
            value = max(0, min(100, int(value)))
        self._conn.post("progress", job.id, value, str(message))

    def return_result(
        self,
        job: Job,
        data: bytes | bytearray | memoryview | str = b"",
        *,
        files: Iterable[PathLike] | None = None,
    ) -> None:
        """Hand in the job's result. A str is sent as UTF-8.

        ``files`` (paths or FileHandles) make it a file result: paths for a submitter on this
        host, bytes for one elsewhere (or not known), and always bytes for a file inside
        ``job.workdir``, which is removed now. A file that cannot be read fails the job with
        the reason, and raises FileError."""
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a result must be bytes or str, got {type(data).__name__}")
        if files is None:
            self._conn.post("result", job.id, data)
        else:
            inline = not job.origin or job.origin != self.host
            try:
                fs = result_files(files, inline=inline, scratch=self._scratches.get(job.id))
            except FileError as e:
                self.send_failure(job, f"result file {e}")
                raise
            self._conn.post("result", job.id, data, fs)
        self._end(job)

    def send_failure(self, job: Job, reason: str, traceback_text: str = "") -> None:
        """Report that the job failed; the client's retrieve_result raises with this reason."""
        self._conn.post("failure", job.id, str(reason), traceback_text)
        self._end(job)

    def job_should_be_terminated(self, job: Job) -> bool:
        """True once a client terminated this job (or the broker gave up on it)."""
        return job.id in self._conn.cancelled

    @property
    def connected(self) -> bool:
        """True once the broker has answered, until it falls silent for three heartbeats."""
        return self._conn.connected.is_set()

    @property
    def should_terminate(self) -> bool:
        """True once the broker told this worker to exit (it is stopping), or the worker
        stopped by itself for an :attr:`error`."""
        return self._conn.shutdown.is_set()

    @property
    def error(self) -> Exception | None:
        """Why the worker stopped by itself, if it did: a WrongEndpointError when its endpoint
        is a broker's client endpoint. A worker program should then exit non-zero."""
        return self._conn.error

    # -------------------------------------------------------------- the common case

    def run(
        self,
        handler: Handler,
        *,
        prefetch: int = 1,
        max_jobs: int | None = None,
        idle_timeout: float | None = None,
    ) -> int:
        """Take jobs and call ``handler(job)`` on each until the broker says exit.

        The handler's return value (bytes, or str as UTF-8, or None for empty) is the result,
        or a list of files (paths or FileHandles) for a file result; an exception fails the
        job with its message and traceback. ``prefetch`` jobs are asked
        for at once (raise it for many small jobs). Returns after ``max_jobs`` jobs, after
        ``idle_timeout`` seconds without one, or when the broker stops. Returns the job count.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.ask_for_jobs(prefetch)
        done = 0
        idle_since = time.monotonic()
        while not self.should_terminate and (max_jobs is None or done < max_jobs):
            wait = (
                1.0
                if idle_timeout is None
                else max(0.0, idle_timeout - (time.monotonic() - idle_since))
            )
            job = self._take(block=True, timeout=wait)
            if not job:
                if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                    log.info("no job for %.1f s; worker exits", idle_timeout)
                    break
                continue
            done += 1
            if max_jobs is None or done + self._conn.inbox.qsize() < max_jobs:
                # the replacement credit travels in the same report as this job's result
                self.ask_for_jobs(1, _wake=False)
            self._handle(handler, job)
            idle_since = time.monotonic()
        self.jobs_done += done
        return done

    def _handle(self, handler: Handler, job: Job) -> None:
        log.info("job %s taken (%s)", job.id, self.requirements.io_type)
        meter = self._meter
        meter.start()
        try:
            result = handler(job)
        except Exception as e:
            self._used(job, meter)
            log.warning("job %s failed: %s: %s", job.id, type(e).__name__, e)
            self.send_failure(job, f"{type(e).__name__}: {e}", traceback.format_exc())
            return
        seconds = self._used(job, meter)
        if self.job_should_be_terminated(job):
            # the broker has already closed this job: no broker will take its result
            log.warning(
                "job %s was cancelled while it ran (terminated, or over its time limit): "
                "its result is dropped",
                job.id,
            )
            self._end(job)
            return
        if isinstance(result, (list, tuple)):
            try:
                self.return_result(job, files=result)
            except FileError as e:
                log.info("job %s failed: result file %s", job.id, e)
                return
        else:
            self.return_result(job, b"" if result is None else result)
        log.info("job %s finished (%.3f s of CPU)", job.id, seconds)

    def _used(self, job: Job, meter: JobMeter) -> float:
        """Send what the job used, to ride with its result; its CPU seconds."""
        peak, cpu = meter.stop()
        self._conn.post("used", job.id, peak, cpu, wake=False)
        return cpu

    # -------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Say goodbye to the broker (its unstarted jobs go back to the queue) and stop."""
        if not self._closed:
            self._closed = True
            self._conn.close()
            for job_id in list(self._scratches):
                self._scratches.pop(job_id).remove()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("stopping" if self.should_terminate else "running")
        return (
            f"<Worker {state} {self.requirements.io_type} {self.endpoint} "
            f"pending={self.pending_job_count()} done={self.jobs_done}>"
        )
