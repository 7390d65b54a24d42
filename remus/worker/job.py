"""A job as a worker sees it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remus.types import DEFAULT_KEY, FileHandle, IOType, JobRequirements, JobResult
from remus.worker.jobstate import ControlCallback, Hub, JobState

if TYPE_CHECKING:
    from remus.client.basic import BasicClient
    from remus.client.client import Submission
    from remus.types import Job as ClientJob


class Contents(Mapping[str, bytes]):
    """A job's contents by key. Large ones arrive as ZeroMQ frames and become bytes (one copy)
    when first read; :meth:`buffer` reads them without any copy."""

    __slots__ = ("_raw",)

    def __init__(self, raw: Mapping[str, Any] | None = None) -> None:
        self._raw: dict[str, Any] = dict(raw or {})

    def __getitem__(self, key: str) -> bytes:
        value = self._raw[key]
        if not isinstance(value, bytes):
            value = self._raw[key] = (
                bytes(value) if isinstance(value, (bytearray, memoryview)) else value.bytes
            )
        return value

    def buffer(self, key: str) -> memoryview:
        value = self._raw[key]
        if isinstance(value, (bytes, bytearray, memoryview)):
            return memoryview(value)
        return value.buffer

    def size(self, key: str) -> int:
        return len(self._raw[key])

    def total_size(self) -> int:
        """Bytes of every content together, without reading any."""
        return sum(map(len, self._raw.values()))

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: <{len(v)} bytes>" for k, v in self._raw.items()) + "}"


def content(job_id: str, contents: Any, key: str) -> bytes:
    """``contents[key]``, or a KeyError that names the job and the keys it has."""
    try:
        value: bytes = contents[key]
        return value
    except KeyError:
        raise KeyError(f"job {job_id} has no content {key!r}; it has {sorted(contents)}") from None


@dataclass(frozen=True, slots=True)
class Job:
    """``job.id``, ``job.requirements``, ``job["data"]`` (or any content key), ``job.valid``.

    ``job[key]`` is bytes; ``job.buffer(key)`` is a read-only memoryview of the same content
    with no copy (for a worker that streams a big input to disk or hands it on).

    A file request's inputs are ``job.files``: each a FileHandle whose path is local, so
    ``open(job.files[0], job.files[0].mode)`` works; its command-line ``job.args``; and
    ``job.workdir``, its private folder (docs/files.md).

    ``Worker.get_job`` returns an invalid job (falsy) when it times out or the broker tells the
    worker to exit, so ``if not job: ...`` covers both.

    While it runs (docs/workers.md, "Slots, cancels, checkpoints, control messages,
    assistants"):

    - ``job.cancelled``, ``job.cancel_reason`` ("terminated", "time limit", "preempted",
      "parent ended") and ``job.preempted``: the broker told the worker to stop this run. A
      handler run by ``Worker.run`` that then returns (or raises) is reported stopped, not
      finished; a preempted job runs again later.
    - ``job.checkpoint(data)`` saves where it is; ``job.last_checkpoint`` is the latest one
      saved by an earlier run of the job (None on its first run).
    - ``job.control_messages()`` and ``job.on_control(callback)``: the messages clients sent it.
    - ``job.submit_assistant(submission)``, ``job.assistants`` and ``job.client``: jobs that
      help it, and the client to wait for them with.
    - ``job.send_progress(value, message)``: as ``Worker.send_progress(job, ...)``.
    - ``job.parent``: the master's id for an assistant (else ""); ``job.protected``: False for
      a spare-capacity job, the first to be preempted.
    - ``job.package``: for a job of a work package, (package id, its place, package size);
      ``Worker.run`` runs a package's jobs one after the other in one slot.
    """

    id: str = ""
    requirements: JobRequirements | None = None
    contents: Contents = field(default_factory=Contents)
    #: a file request's inputs, each at a local path
    files: tuple[FileHandle, ...] = ()
    #: a file request's command-line arguments
    args: tuple[str, ...] = ()
    #: the submitter's host id ("" when not known, as for a data job)
    origin: str = ""
    #: the job's private folder (a remus.files.Scratch), for file requests
    scratch: Any = field(default=None, repr=False, compare=False)
    #: the files as they came off the wire, until the Worker hands the job out (internal)
    wire_files: Any = field(default=None, repr=False, compare=False)
    #: the latest checkpoint an earlier run of this job saved (None: none did)
    last_checkpoint: bytes | None = field(default=None, repr=False)
    #: the master job's id, for an assistant ("" for any other job)
    parent: str = ""
    #: False for a spare-capacity job (submitted with protected=False)
    protected: bool = True
    #: what this run shares with the worker's connection thread (internal)
    state: JobState | None = field(default=None, repr=False, compare=False)
    #: for a job submitted ``after`` others: per predecessor (id, first file, file count)
    linked: tuple[tuple[str, int, int], ...] = field(default=(), repr=False)
    #: for a job of a work package (``package_size``): (the package's id, this job's place
    #: in it from 0, how many jobs of it this worker got); None for a job on its own
    package: tuple[str, int, int] | None = field(default=None, repr=False)
    #: ``linked`` by predecessor id, made on the first ``inputs_from`` (internal)
    _links: dict[str, tuple[int, int]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.contents, Contents):
            object.__setattr__(self, "contents", Contents(self.contents))

    @property
    def valid(self) -> bool:
        return bool(self.id)

    def __bool__(self) -> bool:
        return self.valid

    def __getitem__(self, key: str) -> bytes:
        return content(self.id, self.contents, key)

    def buffer(self, key: str = DEFAULT_KEY) -> memoryview:
        """The content without copying it (valid as long as the job is referenced)."""
        if key not in self.contents:
            self[key]  # raises the helpful KeyError
        return self.contents.buffer(key)

    def get(self, key: str = DEFAULT_KEY, default: bytes | None = None) -> bytes | None:
        return self.contents.get(key, default)

    @property
    def io_type(self) -> IOType | None:
        return self.requirements.io_type if self.requirements else None

    @property
    def paths(self) -> list[str]:
        """The local path of each input file."""
        return [f.path for f in self.files]

    @property
    def after(self) -> tuple[str, ...]:
        """The ids of the jobs this one was submitted after (all FINISHED), in order."""
        return tuple(link[0] for link in self.linked)

    def inputs_from(self, job: str | Any) -> JobResult:
        """The result of a job this one was submitted ``after`` (by its id or its Job): its
        data, and for a file result its files at local paths (a JobFileResult)."""
        from remus.files import JobFileResult

        job_id = job if isinstance(job, str) else job.id
        links = self._links
        if links is None:  # (by id: a reduce reads thousands of them, one lookup each)
            links = {pred: (first, count) for pred, first, count in self.linked}
            object.__setattr__(self, "_links", links)
        if job_id in links:
            first, count = links[job_id]
            data = self.contents.get("@" + job_id, b"") or b""
            if not count:
                return JobResult(job_id, data)
            return JobFileResult(job_id, data, tuple(self.files[first : first + count]))
        raise KeyError(
            f"job {self.id} was not submitted after job {job_id} (it was after: "
            f"{', '.join(self.after) or 'none'})"
        )

    # -------------------------------------------------------------- while it runs

    def _live(self, what: str) -> tuple[JobState, Hub]:
        state = self.state
        if state is None or state.hub is None:
            raise RuntimeError(f"{what}: job {self.id or '(invalid)'} does not come from a worker")
        return state, state.hub

    @property
    def cancelled(self) -> bool:
        """True once the broker told the worker to stop this run (see :attr:`cancel_reason`)."""
        return self.state is not None and self.state.reason is not None

    @property
    def cancel_reason(self) -> str | None:
        """Why this run was cancelled: "terminated" (by a client), "time limit", "preempted"
        (a protected job needs the slot: the job runs again later, its attempt not counted) or
        "parent ended" (an assistant whose master is over); None while it was not."""
        return None if self.state is None else self.state.reason

    @property
    def preempted(self) -> bool:
        """True once this run was cancelled to make room for a protected job."""
        return self.cancel_reason == "preempted"

    def send_progress(self, value: int | None = None, message: str = "") -> None:
        """Report progress (``value`` 0–100 or None), as ``Worker.send_progress(job, ...)``."""
        state, hub = self._live("send_progress")
        if state.reason is not None:
            return  # a cancelled run: nobody takes its progress any more
        if value is not None:
            value = max(0, min(100, int(value)))
        hub.post("progress", self.id, value, str(message))

    def checkpoint(self, data: bytes | bytearray | memoryview) -> None:
        """Save ``data`` as this job's checkpoint: when the job runs again (it was preempted,
        or its worker was lost), the new run finds the latest one in :attr:`last_checkpoint`.

        Checkpoints go with the worker's next report (only the latest of those made in
        between); the broker keeps the latest per job (in its journal when it has one).
        Save them as you go. After a preemption a handler may still save one as it stops: the
        broker keeps it unless the job has already started elsewhere. After any other cancel
        the job is over and a checkpoint is dropped here."""
        state, hub = self._live("checkpoint")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"a checkpoint is bytes, got {type(data).__name__}")
        if state.reason is not None and state.reason != "preempted":
            return
        hub.post("checkpoint", self.id, bytes(data))

    def control_messages(self) -> list[bytes]:
        """The control messages clients sent this job (``Client.send_control``) that arrived
        and were not returned by an earlier call, oldest first. Never waits."""
        return self._live("control_messages")[0].take_controls()

    def on_control(self, callback: ControlCallback) -> None:
        """Call ``callback(data)`` for each control message of this job, in order: at once for
        those already received, then as they arrive. Independent of :meth:`control_messages`
        (each sees every message).

        Callbacks run on the worker's ``remus-controls`` thread, one at a time for all jobs:
        keep them short (set an Event, put into a queue); an exception is logged. None is
        called after the worker closes."""
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        self._live("on_control")[0].on_control(callback)

    @property
    def client(self) -> BasicClient:
        """A BasicClient of the broker this job came from (its client endpoint), for waiting
        on assistants: ``job.client.wait(a)``, ``job.client.as_completed(job.assistants)``.

        It belongs to the calling thread (a ZeroMQ socket must not be shared between threads):
        each handler thread gets its own, kept by the worker for its next jobs and closed with
        it. Use it from the thread that asked for it."""
        return self._live("client")[1].client()

    def submit_assistant(self, submission: Submission, **options: Any) -> ClientJob:
        """Submit an assistant job: it carries this job's id as its parent, and it is
        terminated (reason "parent ended") when this job ends, however it ends.

        ``submission`` is a JobSubmission (or JobFileRequest); ``options`` are those of
        ``Client.submit_jobs``: ``priority``, ``time_limit``, ``max_retries``,
        ``queue_time_limit``, ``wait_for_worker``, ``retries_on_error``, ``timeout`` and
        ``protected``, which defaults to False here (assistants use spare slots, and are the
        first to be preempted). Returns the client-side Job, also kept in :attr:`assistants`.
        Submitted from the calling thread's :attr:`client`."""
        state, hub = self._live("submit_assistant")
        if "parent" in options:
            raise TypeError("an assistant's parent is always the job that submits it")
        options.setdefault("protected", False)
        client = hub.client()
        assistant = client.client.submit_job(submission, parent=self.id, **options)
        state.assistants.append(assistant)
        return assistant

    @property
    def assistants(self) -> list[ClientJob]:
        """The assistants this run submitted, in order (a copy)."""
        return [] if self.state is None else list(self.state.assistants)

    @property
    def workdir(self) -> str:
        """A private folder for this job's own files, made on first use and removed when the
        job ends; result files returned from it are sent as bytes. File requests only."""
        if self.scratch is None:
            raise RuntimeError(f"job {self.id} is not a file request: it has no private folder")
        return str(self.scratch.path)

    def __repr__(self) -> str:
        if not self.valid:
            return "Job(invalid)"
        extra = f" files={self.paths} args={list(self.args)}" if self.files or self.args else ""
        return f"Job({self.id} {self.io_type} {self.contents!r}{extra})"


INVALID = Job()
