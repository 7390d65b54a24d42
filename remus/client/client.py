"""``Client``: every broker request as one method, each with a timeout.

One DEALER socket, one request id per request. Replies are matched to requests by id, so a
reply that arrives after its request timed out is dropped instead of answering the next call,
and several requests can be in flight at once (``submit_jobs`` pipelines its batches).
A Client belongs to the thread that made it; make one per thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import zmq

from remus import files, transfer, wire
from remus import protocol as p
from remus.client import workflow
from remus.client.workflow import Step
from remus.errors import (
    BrokerStoppedError,
    BusyError,
    FileError,
    ForbiddenError,
    JobExpiredError,
    JobFailedError,
    JobNotFinishedError,
    JobNotRunningError,
    JobTerminatedError,
    NoWorkerError,
    ProtocolError,
    RemusError,
    ServerError,
    TimeoutError,
    UnknownJobError,
    WrongEndpointError,
)
from remus.files import JobFileRequest
from remus.hostid import host_id
from remus.introspect import BrokerStats, JobInfo, WorkerInfo
from remus.security import HandshakeWatch, KeyArg, SecretArg, peer_keys
from remus.server.config import check_endpoint, endpoint_from_env
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

log = logging.getLogger(__name__)

#: a submit message carries at most this many jobs ...
BATCH_JOBS = 1000
#: ... or about this many content bytes
BATCH_BYTES = 32 * 1024 * 1024
#: submit batches in flight at once
WINDOW = 8
#: the most job records one ``jobs()`` call returns (the broker caps it there too)
MAX_JOBS_LISTED = 10_000

#: a reply held for a call with a timeout is due this much (at most half the timeout) before it
REPLY_MARGIN = 0.25

#: what submit_job and submit_jobs take (a Step: a submission with the jobs it runs after)
Submission = JobSubmission | JobFileRequest | Step


def _no_worker(msg: p.Error) -> ServerError:
    data = msg.data or {}
    reqs = data.get("requirements")
    serves = data.get("serves")
    return NoWorkerError(
        msg.message,
        requirements=reqs if isinstance(reqs, str) else "",
        serves=[s for s in serves if isinstance(s, str)] if isinstance(serves, list) else None,
    )


def _stopped(msg: p.Error) -> ServerError:
    error = BrokerStoppedError(msg.message)
    error.code = msg.code  # "broker-stopping" or "broker-stopping-journaled"
    return error


def _job_of(msg: p.Error) -> str:
    """The job an error is about, if the broker named it in ``data`` (else the caller, who
    knows which job it asked about, fills it in: see :func:`about_job`)."""
    job_id = (msg.data or {}).get("id")
    return job_id if isinstance(job_id, str) else ""


#: error code from the broker -> the exception raised for it (any other code: ServerError)
ERRORS: dict[str, Callable[[p.Error], RemusError]] = {
    "busy": lambda msg: BusyError(msg.message),
    "no-worker": _no_worker,
    "broker-stopping": _stopped,
    "broker-stopping-journaled": _stopped,
    "wrong-endpoint": lambda msg: WrongEndpointError(msg.message),
    "forbidden": lambda msg: ForbiddenError(msg.message),
    "unknown-job": lambda msg: UnknownJobError(_job_of(msg), msg.message),
    "job-not-running": lambda msg: JobNotRunningError(msg.message, job_id=_job_of(msg)),
}
#: the code of a stopping broker whose journal keeps the job (a wait may ride out the restart)
JOURNALED = "broker-stopping-journaled"


def server_error(msg: p.Error) -> RemusError:
    """The exception that stands for an error message from the broker."""
    make = ERRORS.get(msg.code)
    return make(msg) if make is not None else ServerError(msg.message, code=msg.code)


def job_error(job_id: str, status: Status, reason: str, traceback: str = "") -> Exception:
    """The exception that stands for a job that will never have a result."""
    if status is Status.INVALID:
        return UnknownJobError(job_id)
    if status is Status.TERMINATED:
        return JobTerminatedError(job_id, reason or "terminated", traceback, status=status)
    if status is Status.EXPIRED:
        return JobExpiredError(job_id, reason or "expired", traceback, status=status)
    if status is Status.FAILED:
        return JobFailedError(job_id, reason, traceback, status=status)
    return JobNotFinishedError(job_id, status.name)


def _text(row: list[Any], at: int) -> str:
    return row[at] if len(row) > at and isinstance(row[at], str) else ""


def _texts(row: list[Any], at: int) -> tuple[str, ...]:
    raw = row[at] if len(row) > at and isinstance(row[at], list) else ()
    return tuple(x for x in raw if isinstance(x, str))


def _status(row: list[Any]) -> JobStatus:
    """A status row: [id, status, value, message, seq, reason, attempt, worker, parent,
    assistants, history] (a broker from before scheduling sends the first eight)."""
    job_id, status, value, message, seq, reason, attempt = row[:7]
    progress = JobProgress(value, message, seq) if seq else None
    return JobStatus(
        job_id,
        Status(status),
        progress,
        reason,
        attempt or 1,
        worker=_text(row, 7),
        parent=_text(row, 8),
        assistants=_texts(row, 9),
        history=_texts(row, 10),
    )


def limits(
    max_retries: int | None = None,
    time_limit: float | None = None,
    queue_time_limit: float | None = None,
    wait_for_worker: bool = False,
    retries_on_error: int | None = None,
) -> dict[str, Any]:
    """Submit options for per-job limits (None: the broker's default or no limit).

    ``max_retries``: times the job runs again if its worker is lost (then FAILED with the
    evidence); ``time_limit``: seconds it may run once a worker has it (then FAILED, "time
    limit"); ``queue_time_limit``: seconds it may wait for a worker (then EXPIRED);
    ``wait_for_worker``: queue the job even if no connected worker and no worker file can serve
    it yet (otherwise the broker refuses it with NoWorkerError); ``retries_on_error``: times the
    job runs again when its handler raised (default 0)."""
    opts: dict[str, Any] = {}
    if max_retries is not None:
        opts["max_retries"] = int(max_retries)
    if time_limit is not None:
        opts["time_limit"] = float(time_limit)
    if queue_time_limit is not None:
        opts["queue_time_limit"] = float(queue_time_limit)
    if wait_for_worker:
        opts["wait_for_worker"] = True
    if retries_on_error is not None:
        opts["retries_on_error"] = int(retries_on_error)
    return opts


def scheduling(
    priority: int = 0, protected: bool = True, parent: Job | str | None = None
) -> dict[str, Any]:
    """Submit options for where a job stands in the queue, checked here (TypeError,
    ValueError) so a bad value never reaches the broker.

    ``priority``: an int within ±2**30, higher first (default 0); among the jobs a worker
    could take, the broker dispatches protected jobs first, then by priority, then in
    submission order. ``protected=False`` makes a spare-capacity job: it runs only in slots
    no protected job wants, and is preempted (cancelled, queued again without counting an
    attempt) when a protected job needs its slot. ``parent`` (a Job or a job id) is for
    assistants: the job that submits them, which must be running (``job.submit_assistant``
    in a worker uses it; an assistant ends when its parent ends)."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int, got {type(priority).__name__} {priority!r}")
    if not -p.MAX_PRIORITY <= priority <= p.MAX_PRIORITY:
        raise ValueError(f"priority {priority} is out of range: use -2**30 to 2**30")
    if not isinstance(protected, bool):
        raise TypeError(f"protected must be True or False, got {protected!r}")
    opts: dict[str, Any] = {}
    if priority:
        opts["priority"] = priority
    if not protected:
        opts["protected"] = False
    if parent is not None:
        if isinstance(parent, Job):
            parent = parent.id
        if not isinstance(parent, str) or not parent:
            raise TypeError(f"parent must be a Job or a job id, got {parent!r}")
        opts["parent"] = parent
    return opts


def about_job(error: Exception, job_id: str) -> None:
    """Name ``job_id`` in an UnknownJobError or JobNotRunningError that came without it (the
    broker's words already do)."""
    if isinstance(error, (UnknownJobError, JobNotRunningError)) and not error.job_id:
        error.job_id = job_id


def _package_size(size: int, protected: bool) -> int:
    """``package_size``, checked before anything is sent."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"package_size must be an int, got {type(size).__name__} {size!r}")
    if not p.MIN_PACKAGE <= size <= p.MAX_PACKAGE:
        raise ValueError(
            f"package_size must be {p.MIN_PACKAGE}-{p.MAX_PACKAGE} jobs per package, got {size}"
        )
    if not protected:
        raise ValueError(
            "package_size needs protected jobs: spare-capacity jobs (protected=False) are "
            "preempted one by one; submit them without package_size"
        )
    return size


def _deadline(timeout: float | None) -> float | None:
    if timeout is not None and not timeout > 0:
        raise ValueError("timeout must be positive")
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline, the client's timeout applies)."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class Client:
    """Talks to a broker's client endpoint: ``endpoint``, else ``$REMUS_CLIENT``, else
    ``tcp://127.0.0.1:50505``.

    ``timeout`` (seconds) is how long the broker may take to answer: a call whose answer does
    not come within it raises TimeoutError naming the endpoint. Every method also takes a
    per-call ``timeout=`` that replaces it for that call (for ``submit_jobs``: the whole call).
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
        endpoint = check_endpoint(endpoint_from_env(endpoint, "client"), "client")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        #: secure mode: this client's keys and the broker's (None: plain mode)
        self.keys = peer_keys(server_key, secret_key)
        self.endpoint = endpoint
        self.timeout = timeout
        self._context = context or zmq.Context.instance()
        self._sock: zmq.Socket[Any] | None = self._context.socket(zmq.DEALER)
        self._sock.linger = 0
        self._sock.sndhwm = self._sock.rcvhwm = 0
        self._handshake: HandshakeWatch | None = None
        if self.keys is not None:
            self.keys.apply(self._sock)
            self._handshake = HandshakeWatch(self._sock)
        self._sock.connect(endpoint)
        self._poller = zmq.Poller()  # kept: Socket.poll builds one per call
        self._poller.register(self._sock, zmq.POLLIN)
        self._rids = itertools.count(1)
        self._prefix = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._early: dict[int, p.Message] = {}
        self._pending: set[int] = set()
        self.calls = 0
        #: this client's host id, sent with every submit (docs/files.md)
        self.host = host_id()
        self._broker: dict[str, Any] | None = None

    # -------------------------------------------------------------- plumbing

    def new_job_id(self) -> str:
        """Job ids are chosen by the client: unique per client, so a submit can be pipelined."""
        return f"{self._prefix}-{next(self._ids):x}"

    def send(self, make: Any, *args: Any) -> int:
        """Send ``make(rid, *args)`` without waiting; returns the rid to :meth:`receive` with."""
        if self._sock is None:
            raise RuntimeError("this Client is closed")
        rid = next(self._rids)
        frames = p.encode(make(rid, *args))
        try:
            wire.send(self._sock, frames, wire.NOBLOCK)
        except zmq.Again:
            # no connection to queue on: a secure broker refused ours (it is not retried)
            if not self._sock.poll(int(self.timeout * 1000), zmq.POLLOUT):
                raise TimeoutError(
                    f"cannot send to the broker at {self.endpoint}: {self.why_silent()}",
                    endpoint=self.endpoint,
                ) from None
            wire.send(self._sock, frames)
        self._pending.add(rid)
        self.calls += 1
        return rid

    def receive(self, rid: int, timeout: float | None = None) -> p.Reply:
        """The reply to request ``rid``, waiting up to ``timeout`` seconds (None: the client's
        timeout); raises the broker's refusal as an exception (see ERRORS)."""
        wait = self.timeout if timeout is None else timeout
        got = self.reply_to_any((rid,), time.monotonic() + wait)
        if got is None:
            self.forget((rid,))
            raise TimeoutError(
                f"the broker at {self.endpoint} did not answer within {wait:.3g} s; "
                + self.why_silent(),
                endpoint=self.endpoint,
            )
        return got[1]

    def _readable(self, seconds: float) -> bool:
        """Whether a message from the broker is there, or arrives within ``seconds``."""
        assert self._sock is not None
        return wire.readable(self._sock) or bool(self._poller.poll(max(1, int(seconds * 1000))))

    def reply_to_any(self, rids: Collection[int], deadline: float) -> tuple[int, p.Reply] | None:
        """The first reply to any of ``rids`` (sent, not yet answered) that arrives before the
        monotonic ``deadline``, as (rid, reply); None if none does. An error reply is raised as
        its exception (see ERRORS); its rid is then answered."""
        if self._sock is None:
            raise RuntimeError("this Client is closed")
        while True:
            for rid in rids:
                if rid in self._early:
                    msg = self._early.pop(rid)
                    self._pending.discard(rid)
                    if isinstance(msg, p.Reply):
                        return rid, msg
                    if isinstance(msg, p.Error):
                        raise server_error(msg)
                    raise ProtocolError(f"unexpected {type(msg).__name__} from the broker")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not self._readable(remaining):
                continue
            frames = wire.recv(self._sock)
            try:
                msg = p.decode(frames, p.BROKER_TO_CLIENT)
            except ProtocolError as e:
                log.warning("dropped an unreadable message from the broker: %s", e)
                continue
            got = getattr(msg, "rid", -1)
            if got in self._pending:
                self._early[got] = msg
            elif got == -1 and isinstance(msg, p.Error):
                raise server_error(msg)
            # else: the late reply to a request given up on

    def upload(self, path: str, fd: int, size: int) -> p.BlobRef:
        """Upload the open file ``fd`` to the broker's spool in chunks (remus.transfer)."""
        return transfer.upload(self, path, fd, size)

    def fetch(self, ref: p.BlobRef, target: str) -> None:
        """Download a spooled file to ``target``, checked against its SHA-256 (remus.transfer)."""
        transfer.download(self, ref, target)

    def forget(self, rids: Iterable[int]) -> None:
        """Give up on these requests: a late reply to one is dropped when it comes."""
        for rid in rids:
            self._pending.discard(rid)
            self._early.pop(rid, None)

    def call(self, make: Any, *args: Any, timeout: float | None = None) -> p.Reply:
        return self.receive(self.send(make, *args), timeout)

    # -------------------------------------------------------------- what the broker offers

    def broker_info(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The broker's ``host`` id and ``max_message_bytes``: asked once, on the first file
        request (one round trip), then kept."""
        if self._broker is None:
            data = self.call(p.HelloRequest, timeout=timeout).data
            if not isinstance(data, dict) or type(data.get("host")) is not str:
                raise ProtocolError(f"the broker's hello reply is malformed: {data!r}")
            self._broker = data
        return self._broker

    def supported_io_types(self, *, timeout: float | None = None) -> set[IOType]:
        """Every io type a connected worker or the broker's factory can serve."""
        return {IOType.from_wire(t) for t in self.call(p.IoTypesRequest, timeout=timeout).data}

    def can_mesh(self, what: IOType | JobRequirements, *, timeout: float | None = None) -> bool:
        """Whether a job with these requirements could run (a worker or a worker file for it)."""
        return bool(self.call(p.CanMeshRequest, JobRequirements.of(what), timeout=timeout).data)

    def retrieve_requirements(
        self, io_type: IOType, *, timeout: float | None = None
    ) -> list[JobRequirements]:
        """The requirements of every worker (connected or in the factory) for ``io_type``."""
        reply = self.call(p.RequirementsRequest, io_type, timeout=timeout)
        return [JobRequirements.from_wire(r) for r in reply.data]

    # -------------------------------------------------------------- jobs

    def entry(self, sub: Submission | Step, *, timeout: float | None = None) -> p.SubmittedJob:
        """The wire form of a submission, with a fresh job id (a Step: with what it waits for,
        and its own id if it has one). A file request's files are read here when the broker
        is on another host (FileError if one cannot be)."""
        if isinstance(sub, Step):
            entry = self.entry(sub.submission, timeout=timeout)
            return dataclasses.replace(
                entry, id=sub.id or entry.id, after=workflow.job_ids(sub.after)
            )
        if isinstance(sub, JobFileRequest):
            fs = p.FileSet((), sub.args)
            if sub.files:
                broker = self.broker_info(timeout=timeout)
                # room for the message's body besides the file bytes
                limit = int(broker.get("max_message_bytes", files.MAX_FILE_BYTES)) - 64 * 1024
                inline = broker["host"] != self.host
                fs = files.request_files(sub, inline=inline, limit=limit, upload=self.upload)
            return p.SubmittedJob(self.new_job_id(), sub.requirements, files=fs)
        contents = sub.contents
        return p.SubmittedJob(
            self.new_job_id(), sub.requirements, tuple(contents), list(contents.values())
        )

    def submit_job(
        self, submission: Submission, *, timeout: float | None = None, **limits: Any
    ) -> Job:
        """Queue one job (a JobSubmission or a JobFileRequest); returns it once the broker
        has accepted it. A file that cannot be read raises FileError before anything is sent.
        ``limits`` as in :meth:`submit_jobs`."""
        return self.submit_jobs([submission], timeout=timeout, **limits)[0]

    def submit_jobs(
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
        """Queue many jobs, in batches, several batches in flight: no round trip per job.
        ``group`` names the group they belong to (``BasicClient.submit_group``).
        ``package_size`` (2-1000) hands them to workers in work packages of that many: each
        package on one credit, run in one slot, one message each way (docs/protocol.md,
        "Work packages"; for many tiny jobs).

        The options are per-job limits (see ``remus.client.limits``) and the jobs' place in
        the queue: ``priority``, ``protected`` and, for assistants only, ``parent`` (see
        ``remus.client.scheduling``; a parent the broker does not know raises UnknownJobError,
        one that is over JobNotRunningError). A job no connected worker and no worker file can
        serve is refused with NoWorkerError unless ``wait_for_worker``. ``timeout`` bounds the
        whole call (None: the client's timeout for each batch's answer). A file that cannot be
        read raises FileError; batches sent before it stay queued."""
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
            return self._submit_jobs(submissions, opts, timeout)
        except (UnknownJobError, JobNotRunningError) as e:
            about_job(e, opts.get("parent", ""))
            raise

    def _submit_jobs(
        self, submissions: Iterable[Submission], opts: dict[str, Any], timeout: float | None
    ) -> list[Job]:
        deadline = _deadline(timeout)
        jobs: list[Job] = []
        in_flight: list[int] = []
        # the broker packs each batch on its own: a batch holds whole packages
        package = opts.get("package_size", 1)
        most = max(package, BATCH_JOBS - BATCH_JOBS % package)
        batch: list[p.SubmittedJob] = []
        size = 0

        def flush() -> None:
            nonlocal batch, size
            if len(in_flight) >= WINDOW:
                self.receive(in_flight.pop(0), _left(deadline))
            jobs.extend(Job(e.id, e.requirements) for e in batch)
            in_flight.append(self.send(p.SubmitRequest, batch, opts))
            batch, size = [], 0

        try:
            for sub in submissions:
                if not isinstance(sub, (JobSubmission, JobFileRequest, Step)):
                    raise TypeError(
                        "submit_jobs takes JobSubmission, JobFileRequest or Step objects, "
                        f"got {type(sub).__name__}"
                    )
                entry = self.entry(sub, timeout=_left(deadline))
                entry_size = sum(len(v) for v in entry.values)
                if entry.files is not None:
                    entry_size += files.inline_size(entry.files)
                if batch and size + entry_size > BATCH_BYTES:
                    flush()  # a big job travels on its own, not on top of a full batch
                batch.append(entry)
                size += entry_size
                if len(batch) >= most or size >= BATCH_BYTES:
                    flush()
            if batch:
                flush()
            while in_flight:
                self.receive(in_flight.pop(0), _left(deadline))
        except TimeoutError:
            if timeout is None:
                raise
            raise TimeoutError(
                f"the broker at {self.endpoint} did not accept the jobs within {timeout:.3g} s; "
                "is it running?",
                endpoint=self.endpoint,
            ) from None
        finally:
            self.forget(in_flight)  # after an error: late answers to the other batches dropped
        return jobs

    def job_status(self, job: Job | str, *, timeout: float | None = None) -> JobStatus:
        """Where the job is; an unknown id has status INVALID."""
        return _status(self.call(p.StatusRequest, [_id(job)], timeout=timeout).data[0])

    def job_statuses(
        self, jobs: Iterable[Job | str], *, timeout: float | None = None
    ) -> list[JobStatus]:
        reply = self.call(p.StatusRequest, [_id(j) for j in jobs], timeout=timeout)
        return [_status(row) for row in reply.data]

    def job_progress(
        self,
        job: Job | str,
        since: int = 0,
        *,
        wait: float = 0.0,
        timeout: float | None = None,
    ) -> list[JobProgress]:
        """Every progress update after number ``since``, in order.

        With ``wait``, the broker holds the answer until there is something new or the job ends
        (at most ``wait`` s). ``timeout`` bounds the whole call, the hold included (None: the
        client's timeout after the hold)."""
        if timeout is None:
            budget = self.timeout + wait
        else:
            budget = timeout
            wait = min(wait, max(0.0, timeout - min(REPLY_MARGIN, timeout / 2)))
        reply = self.call(p.ProgressRequest, _id(job), since, wait, False, timeout=budget)
        return [JobProgress(v, m, s) for s, v, m in reply.data["updates"]]

    def retrieve_result(self, job: Job | str, *, timeout: float | None = None) -> JobResult:
        """The job's result. Raises JobFailedError (and subclasses), JobNotFinishedError or
        UnknownJobError when there is none."""
        reply = self.call(p.ResultRequest, [_id(job)], timeout=timeout)
        (result,) = results_of(reply, host=self.host, fetch=self.fetch)
        if isinstance(result, Exception):
            raise result
        return result

    def terminate(self, job: Job | str, *, timeout: float | None = None) -> JobStatus:
        """Stop a job: a queued job never runs, a running one's worker is told to stop and its
        late result is dropped. Terminating a finished job changes nothing."""
        return _status(self.call(p.TerminateRequest, [_id(job)], timeout=timeout).data[0])

    def terminate_many(
        self, jobs: Iterable[Job | str], *, timeout: float | None = None
    ) -> list[JobStatus]:
        """Terminate many jobs, in one request per thousand."""
        ids = [_id(j) for j in jobs]
        rows: list[Any] = []
        for at in range(0, len(ids), BATCH_JOBS):
            reply = self.call(p.TerminateRequest, ids[at : at + BATCH_JOBS], timeout=timeout)
            rows.extend(reply.data)
        return [_status(row) for row in rows]

    def send_control(
        self, job: Job | str, data: bytes | str, *, timeout: float | None = None
    ) -> int:
        """Send a running or queued job a control message (bytes, or str sent as UTF-8);
        returns its number among the job's messages (1, 2, ...).

        The broker passes it to the worker that holds the job, in order (a queued job gets
        its messages when it starts; a job that runs again gets all of them again); the
        handler reads them with ``job.control_messages()``. Raises UnknownJobError for a job
        the broker does not know, JobNotRunningError for one that is over: a message is
        never dropped silently."""
        job_id = _id(job)
        try:
            reply = self.call(p.ControlRequest, job_id, control_bytes(data), timeout=timeout)
        except UnknownJobError:
            raise UnknownJobError(job_id) from None
        except JobNotRunningError as e:
            about_job(e, job_id)
            raise
        return control_seq(reply)

    # -------------------------------------------------------------- inside the broker

    def workers(self, timeout: float | None = None) -> list[WorkerInfo]:
        """One record per connected worker: what it serves, what it holds, when it was heard."""
        data = self.call(p.WorkersRequest, timeout=timeout).data
        return _records(data, WorkerInfo.from_wire, "workers")

    def jobs(
        self,
        status: Status | None = None,
        io_type: IOType | None = None,
        limit: int = 100,
        timeout: float | None = None,
    ) -> list[JobInfo]:
        """The jobs the broker holds, newest first: only those with ``status`` and of
        ``io_type`` if given, at most ``limit`` (up to 10,000)."""
        limit = listing_limit(status, io_type, limit)
        data = self.call(p.ListJobsRequest, status, io_type, limit, timeout=timeout).data
        return _records(data, JobInfo.from_wire, "list_jobs")

    def stats(self, timeout: float | None = None) -> BrokerStats:
        """The broker's version, uptime, endpoints, job and worker counts, rates and limits."""
        return stats_of(self.call(p.StatsRequest, timeout=timeout).data)

    # -------------------------------------------------------------- lifetime

    def why_silent(self) -> str:
        """What a timeout message says about a silent broker: a refused key if the CURVE
        handshake failed, else the likely causes."""
        failed = self._handshake.failure() if self._handshake is not None else ""
        if failed:
            return failed
        if self.keys is None:
            return "is it running? (a broker in secure mode needs server_key= and secret_key=)"
        return "is it running?"

    def close(self) -> None:
        if self._sock is not None:
            if self._handshake is not None:
                self._handshake.close(self._sock)
            self._sock.close(0)
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "open"
        return f"<Client {state} {self.endpoint} calls={self.calls}>"


def _records(data: Any, make: Callable[[Any], Any], what: str) -> list[Any]:
    """Records from a reply that is a list of maps (ProtocolError if it is not)."""
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ProtocolError(f"the broker's {what} reply is not a list of maps: {data!r:.200}")
    try:
        return [make(r) for r in data]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProtocolError(f"the broker's {what} reply is malformed: {e!r}") from e


def _id(job: Job | str) -> str:
    return job if isinstance(job, str) else job.id


def control_bytes(data: bytes | str) -> bytes | bytearray | memoryview:
    """A control message as it is sent: bytes, or str as UTF-8 (TypeError for anything else)."""
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a control message is bytes or str, got {type(data).__name__}")
    return data


def control_seq(reply: p.Reply) -> int:
    """The message number the broker answered a control message with."""
    seq = reply.data
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ProtocolError(f"the broker's control reply is not a message number: {seq!r}")
    return seq


def listing_limit(status: Status | None, io_type: IOType | None, limit: int) -> int:
    """Check a ``jobs()`` query here (TypeError, ValueError), so a bad one never reaches the
    broker; returns the limit the broker is asked for."""
    if status is not None and not isinstance(status, Status):
        raise TypeError(f"status must be a remus.Status, got {status!r}")
    if status is Status.INVALID:
        raise ValueError("no job has status INVALID (it is the answer for an unknown id)")
    if io_type is not None and not isinstance(io_type, IOType):
        raise TypeError(f"io_type must be a remus.IOType, got {io_type!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
    return min(limit, MAX_JOBS_LISTED)


def stats_of(data: Any) -> BrokerStats:
    """The broker's stats reply as a record (ProtocolError if it is not one)."""
    if not isinstance(data, dict):
        raise ProtocolError(f"the broker's stats reply is not a map: {data!r:.200}")
    try:
        return BrokerStats.from_wire(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ProtocolError(f"the broker's stats reply is malformed: {e!r}") from e


#: a result larger than this comes as a memoryview of the message's frame, not a bytes copy
ZERO_COPY_FROM = 1 << 20


def as_bytes(frame: Any) -> bytes | memoryview:
    """A result's bytes: ``bytes`` when small, else a read-only ``memoryview`` straight over
    the ZeroMQ frame it came in (no copy; the frame lives as long as the view)."""
    if isinstance(frame, bytes):
        return frame
    return frame.buffer.toreadonly() if len(frame) > ZERO_COPY_FROM else frame.bytes


def used_fields(raw: Any) -> dict[str, Any]:
    """A result row's [peak_rss, cpu_seconds] as JobResult fields (none if malformed)."""
    if isinstance(raw, list) and len(raw) == 2:
        return {"peak_rss": raw[0], "cpu": raw[1]}
    return {}


def followed_result(
    reply: p.Reply, job_id: str, *, host: str = "", fetch: files.Fetch | None = None
) -> JobResult | None:
    """The result that a progress reply asked ``with_result`` carries once its job FINISHED
    (a JobFileResult for a client on ``host``; spooled files fetched with ``fetch``); None if
    it carries none (then ask for it)."""
    data = reply.data
    if "result" not in data:
        return None
    blobs = iter(reply.frames)
    result = as_bytes(p.take(data["result"], blobs, job_id))
    used = used_fields(data.get("used"))
    if "files" in data:
        fs = p.take_files(data["files"], blobs, f"result of {job_id}")
        return files.result_from_wire(job_id, result, fs, host, fetch=fetch, **used)
    return JobResult(job_id, result, **used)


def results_of(
    reply: p.Reply,
    rows: list[Any] | None = None,
    *,
    host: str = "",
    fetch: files.Fetch | None = None,
) -> list[JobResult | Exception]:
    """Turn result rows (and their frames) into JobResults, or the exception for each job that
    has none. ``retrieve_result`` raises the exception; ``as_completed`` may yield it.
    A row with files becomes a JobFileResult for a client on ``host`` (spooled files fetched
    with ``fetch``)."""
    out: list[JobResult | Exception] = []
    frames = iter(reply.frames)
    for job_id, status, reason, tb, slot, *more in rows if rows is not None else reply.data:
        st = Status(status)
        if st is not Status.FINISHED:
            out.append(job_error(job_id, st, reason, tb))
            continue
        data = as_bytes(p.take(slot, frames, job_id))
        used = used_fields(more[1]) if len(more) > 1 else {}
        if not more or more[0] is None:
            out.append(JobResult(job_id, data, **used))
            continue
        fs = p.take_files(more[0], frames, f"result of {job_id}")
        try:
            out.append(files.result_from_wire(job_id, data, fs, host, fetch=fetch, **used))
        except FileError as e:
            out.append(e)
    return out
