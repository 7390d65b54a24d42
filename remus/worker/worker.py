"""``Worker``: turn any function or program into a remus worker.

::

    with Worker(IOType("Edges", "Mesh2D"), endpoint=sys.argv[1]) as w:
        w.run(lambda job: mesh(job["data"]))

or step by step with ``get_job`` / ``send_progress`` / ``return_result``. Every method may be
called from any thread; the socket itself lives in a background thread that also heartbeats.

``Worker(..., slots=4)`` runs up to four jobs at once: ``run`` calls the handler on a pool of
threads (or processes, ``pool="process"``; see ``remus.worker.runner``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import zmq

from remus import protocol as p
from remus import transfer
from remus.client.client import Client
from remus.errors import FileError
from remus.files import PathLike, Scratch, materialize, result_files
from remus.hostid import host_id
from remus.security import KeyArg, SecretArg, peer_keys
from remus.server.config import check_endpoint, endpoint_from_env
from remus.types import IOType, JobRequirements
from remus.worker.connection import Connection
from remus.worker.job import INVALID, Job
from remus.worker.jobstate import Hub

if TYPE_CHECKING:
    from remus.client.basic import BasicClient

log = logging.getLogger(__name__)

#: a job with more content bytes than this reports "started" at once, not lazily
BIG_INPUT = 1 << 20

#: a handler returns the result's bytes (str: UTF-8; None: empty), or a list of files
Handler = Callable[[Job], "bytes | bytearray | memoryview | str | list[Any] | None"]

#: the most jobs one worker runs at once (the broker's limit too)
MAX_SLOTS = 1024


def slots_from_env() -> int:
    """``$REMUS_SLOTS`` (what a worker file's ``"Slots"`` says), else 1."""
    raw = os.environ.get("REMUS_SLOTS", "").strip()
    if not raw:
        return 1
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"REMUS_SLOTS={raw!r} is not a whole number of slots") from None


def check_slots(slots: int) -> int:
    if isinstance(slots, bool) or not isinstance(slots, int):
        raise TypeError(f"slots must be an int, got {type(slots).__name__} {slots!r}")
    if not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"slots must be between 1 and {MAX_SLOTS}, got {slots}")
    return slots


class Worker:
    """A worker for one kind of job, connected to ``endpoint`` (else ``$REMUS_WORKER``, else
    ``tcp://127.0.0.1:50510``). ``heartbeat_interval`` (s) is declared to the broker, which
    declares the worker lost after a few silent intervals.

    ``slots`` (1–1024) is how many jobs it runs at once, declared to the broker (``run`` runs
    that many handlers concurrently); by default ``$REMUS_SLOTS`` (a worker file's ``"Slots"``,
    set by the broker that spawns it), else 1. ``client_endpoint`` is where its jobs submit
    assistants; by default the client endpoint the broker names when the worker registers (a
    wildcard host there, such as ``0.0.0.0``, means the host of ``endpoint``)."""

    def __init__(
        self,
        requirements: JobRequirements | IOType,
        endpoint: str | None = None,
        *,
        heartbeat_interval: float = 1.0,
        context: zmq.Context[Any] | None = None,
        slots: int | None = None,
        client_endpoint: str | None = None,
        server_key: KeyArg | bytes = None,
        secret_key: SecretArg = None,
    ) -> None:
        endpoint = check_endpoint(endpoint_from_env(endpoint, "worker"), "worker")
        #: secure mode: this worker's keys and the broker's (None: plain mode)
        self.keys = peer_keys(server_key, secret_key)
        if not 0.001 <= heartbeat_interval <= 3600:
            raise ValueError("heartbeat_interval must be between 0.001 and 3600 seconds")
        slots = check_slots(slots if slots is not None else slots_from_env())
        if client_endpoint is not None:
            check_endpoint(client_endpoint, "client")
        self.requirements = JobRequirements.of(requirements)
        self.endpoint = endpoint
        self.identity = b"w-" + secrets.token_bytes(14)
        self._context = context or zmq.Context.instance()
        self._client_endpoint = client_endpoint
        #: the assistants' clients, one per thread that asked (a socket belongs to one thread)
        self._clients: dict[int, BasicClient] = {}
        #: per thread, a connection for file chunks (remus.transfer)
        self._transfers: dict[int, Client] = {}
        self._clients_lock = threading.Lock()
        self._hub = Hub(f"remus-controls-{self.identity.hex()[4:12]}", self._assistant_client)
        self._conn = Connection(
            self._context,
            endpoint,
            self.requirements,
            heartbeat_interval,
            self.identity,
            slots=slots,
            hub=self._hub,
            keys=self.keys,
        )
        self._hub.post = self._conn.post
        self._conn.start()
        self._closed = False
        #: this worker's host id: file results go as paths only to a submitter on it
        self.host = host_id()
        #: private folders of the file jobs handed out and not yet ended
        self._scratches: dict[str, Scratch] = {}
        self.jobs_done = 0

    @property
    def slots(self) -> int:
        """How many jobs this worker runs at once (as declared to the broker)."""
        return self._conn.slots

    def _declare_slots(self, slots: int) -> None:
        """Declare another slot count to the broker (it registers again)."""
        check_slots(slots)
        if slots != self._conn.slots:
            self._conn.post("slots", slots)

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
            job = self._take_raw(block=block, timeout=timeout)
            if not job:
                return job
            try:
                return self._begin(job)
            except FileError as e:
                log.warning("job %s failed: %s", job.id, e)
                last = job.package is None or job.package[1] == job.package[2] - 1
                self.send_failure(job, f"the worker cannot take the job's files: {e}")
                if last:  # in place of the job that failed (a package's: of the package)
                    self.ask_for_jobs(1)

    def _take_raw(self, *, block: bool, timeout: float | None) -> Job:
        """The next job received, not started yet (see :meth:`_begin`); invalid if none."""
        if self.should_terminate:
            return INVALID
        try:
            job = self._conn.inbox.get(block=block, timeout=timeout)
        except queue.Empty:
            return INVALID
        if job is None:  # shutdown
            self._conn.inbox.put(None)  # for any other thread waiting
            return INVALID
        return job

    def _begin(self, job: Job) -> Job:
        """The job, about to run here: said started, its files at local paths (FileError if
        they cannot be). A job cancelled meanwhile is returned as it is: the caller says it
        stopped."""
        # "started" rides along with the job's first progress or its result, or goes with
        # the next heartbeat: a quick job costs one message, not two (a worker that dies
        # before saying so has its oldest job counted as an attempt by the broker). A file
        # job's or a big job's goes now, so the broker can let go of its input meanwhile.
        if job.cancelled:
            return job
        big = job.contents.total_size() > BIG_INPUT
        self._conn.post("started", job.id, wake=big or job.wire_files is not None)
        if job.wire_files is None:
            return job
        return self._with_files(job)

    def _with_files(self, job: Job) -> Job:
        """The job with its inputs at local paths (inline ones written to its folder)."""
        fs = job.wire_files
        scratch = Scratch(job.id)
        try:
            local = materialize(fs, self.host, scratch, self._fetch)
        except BaseException:
            scratch.remove()
            raise
        self._scratches[job.id] = scratch
        return dataclasses.replace(
            job, files=local, args=tuple(fs.args), origin=fs.host, scratch=scratch, wire_files=None
        )

    def _end(self, job: Job) -> None:
        """The job is over here: remove its private folder, forget its run."""
        scratch = self._scratches.pop(job.id, None)
        if scratch is not None:
            scratch.remove()
        self._conn.forget(job)

    # -------------------------------------------------------------- reporting

    def send_progress(self, job: Job, value: int | None = None, message: str = "") -> None:
        """Report progress: ``value`` 0–100 (or None for a message only). Every update reaches
        the broker, in order; none is coalesced or dropped."""
        state = job.state
        if state is not None and state.reason is not None:
            return  # a cancelled run: nobody takes its progress any more
        if value is not None and (type(value) is not int or not 0 <= value <= 100):
            value = max(0, min(100, int(value)))  # (a handler may call this very often)
        self._conn.post(
            "progress", job.id, value, message if type(message) is str else str(message)
        )

    def return_result(
        self,
        job: Job,
        data: bytes | bytearray | memoryview | str = b"",
        *,
        files: Iterable[PathLike] | None = None,
        _wake: bool = True,
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
            self._conn.post("result", job.id, data, wake=_wake)
        else:
            inline = not job.origin or job.origin != self.host
            try:
                fs = result_files(
                    files,
                    inline=inline,
                    scratch=self._scratches.get(job.id),
                    upload=self._upload,
                )
            except FileError as e:
                self.send_failure(job, f"result file {e}")
                raise
            self._conn.post("result", job.id, data, fs, wake=_wake)
        self._end(job)

    def send_failure(
        self, job: Job, reason: str, traceback_text: str = "", *, _wake: bool = True
    ) -> None:
        """Report that the job failed; the client's retrieve_result raises with this reason."""
        self._conn.post("failure", job.id, str(reason), traceback_text, wake=_wake)
        self._end(job)

    def send_stopped(self, job: Job, *, _wake: bool = True) -> None:
        """Say that the job's handler stopped after the broker cancelled it (``job.cancelled``):
        no result follows. The broker stops counting down the grace after which it would kill a
        spawned worker that ignores a cancel. ``run`` does this by itself."""
        self._conn.post("stopped", job.id, wake=_wake)
        self._end(job)

    def job_should_be_terminated(self, job: Job) -> bool:
        """True once the broker cancelled this job: a client terminated it, it ran over its
        time limit, it was preempted, or its parent ended (``job.cancel_reason`` says which)."""
        if job.state is not None:
            return job.cancelled
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
        slots: int | None = None,
        prefetch: int | Literal["auto"] = "auto",
        pool: Literal["thread", "process"] = "thread",
        max_jobs: int | None = None,
        idle_timeout: float | None = None,
    ) -> int:
        """Take jobs and call ``handler(job)`` on each until the broker says exit.

        The handler's return value (bytes, or str as UTF-8, or None for empty) is the result,
        or a list of files (paths or FileHandles) for a file result; an exception fails the
        job with its message and traceback. A job the broker cancelled (``job.cancelled``)
        whose handler then returns or raises is reported stopped instead.

        Up to ``slots`` handlers run at once (default: the worker's ``slots``; another number
        is declared to the broker first), on a pool of threads (with one slot: on the calling
        thread, as ever), or of processes with ``pool="process"`` for CPU-bound pure-Python
        handlers (see ``remus.worker.runner``: the handler must be picklable and gets a
        :class:`~remus.worker.runner.ProcessJob`, which cannot send progress, checkpoints or
        assistants). Each handler's thread must be able to run alongside the others: share
        nothing unlocked between them.

        The worker asks for its free slots plus ``prefetch`` jobs, and for one more each time
        a job ends (in the same message as its result). A prefetch keeps jobs waiting here so
        that a slot that frees starts the next job at once; their time limits count meanwhile.
        ``prefetch="auto"``, the default, sets it from how long the handlers take: none while
        jobs take longer than a round trip to the broker (about 2 ms: one job at a time per
        slot, the next asked for with the result of the last, so no job waits here while
        another worker is free), and for tiny jobs about 2 ms of their work, up to 64 jobs,
        whose round trips would otherwise cost more than the jobs. ``prefetch=0`` is one at a
        time whatever the jobs take.

        The jobs of a work package (submitted with ``package_size``) come on one credit and
        run one after the other in one slot; their ends are reported together, with the one
        credit the package gives back (``prefetch="auto"`` counts the package as one job).

        Returns after ``max_jobs`` jobs, after ``idle_timeout`` seconds with no job running or
        arriving, or when the broker stops, once the running handlers have returned. Returns
        the job count.
        """
        from remus.worker.runner import Runner

        if slots is not None:
            self._declare_slots(slots)
        if prefetch != "auto" and (
            isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0
        ):
            raise ValueError(f"prefetch must be 'auto' or an int of 0 or more, got {prefetch!r}")
        if max_jobs is not None and max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        runner = Runner(
            self,
            handler,
            slots=slots or self._conn.slots,
            prefetch=prefetch,
            pool=pool,
            max_jobs=max_jobs,
            idle_timeout=idle_timeout,
        )
        done = runner.run()
        self.jobs_done += done
        return done

    # -------------------------------------------------------------- assistants

    def _assistant_client(self) -> BasicClient:
        """The calling thread's client of the broker's client endpoint (made on first use)."""
        from remus.client.basic import BasicClient

        me = threading.get_ident()
        with self._clients_lock:
            client = self._clients.get(me)
            if client is None:
                if self._closed:
                    raise RuntimeError("this worker is closed")
                endpoint = self._client_endpoint or self._conn.client_endpoint
                if not endpoint:
                    raise RuntimeError(
                        f"the broker at {self.endpoint} has not named its client endpoint "
                        "(where assistants are submitted): pass Worker(client_endpoint=...)"
                    )
                keys = self.keys
                client = self._clients[me] = BasicClient(
                    endpoint,
                    context=self._context,
                    server_key=keys.server if keys is not None else None,
                    secret_key=keys.own if keys is not None else None,
                )
        return client

    # -------------------------------------------------------------- large files

    def _transfer_client(self) -> Client:
        """The calling thread's connection for file chunks (``put``/``get`` on the worker
        endpoint, beside the worker's own socket; made on first use)."""
        me = threading.get_ident()
        with self._clients_lock:
            client = self._transfers.get(me)
            if client is None:
                if self._closed:
                    raise RuntimeError("this worker is closed")
                keys = self.keys
                client = self._transfers[me] = Client(
                    self.endpoint,
                    context=self._context,
                    server_key=keys.server if keys is not None else None,
                    secret_key=keys.own if keys is not None else False,
                )
        return client

    def _fetch(self, ref: p.BlobRef, target: str) -> None:
        transfer.download(self._transfer_client(), ref, target, private=True)

    def _upload(self, path: str, fd: int, size: int) -> p.BlobRef:
        return transfer.upload(self._transfer_client(), path, fd, size)

    # -------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Say goodbye to the broker (its unstarted jobs go back to the queue) and stop."""
        if not self._closed:
            self._closed = True
            self._conn.close()
            # a run() or get_job() waiting in another thread returns (should_terminate is true)
            self._conn.shutdown.set()
            self._conn.inbox.put(None)
            self._hub.dispatcher.close()
            with self._clients_lock:
                clients, self._clients = list(self._clients.values()), {}
                transfers, self._transfers = list(self._transfers.values()), {}
            for client in clients:
                client.close()
            for conn in transfers:
                conn.close()
            for job_id in list(self._scratches):
                self._scratches.pop(job_id).remove()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("stopping" if self.should_terminate else "running")
        return (
            f"<Worker {state} {self.requirements.io_type} {self.endpoint} slots={self.slots} "
            f"pending={self.pending_job_count()} done={self.jobs_done}>"
        )
