"""The public vocabulary shared by clients, workers and the broker.

These are plain values: frozen where they are keys, cheap to build, and each knows how to
turn itself into the msgpack-able lists that travel on the wire (``to_wire``/``from_wire``).
The wire layout of every message is in :mod:`remus.protocol`.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_KEY = "data"


class Status(enum.IntEnum):
    """Where a job is in its life. ``INVALID`` is the answer for an id the broker does not know."""

    INVALID = 0
    QUEUED = 1
    IN_PROGRESS = 2
    FINISHED = 3
    FAILED = 4
    EXPIRED = 5
    TERMINATED = 6
    #: held until the jobs it was submitted ``after`` have FINISHED (then QUEUED)
    WAITING = 7

    @property
    def done(self) -> bool:
        """True once the job can no longer change (finished, failed, expired, terminated)."""
        return Status.FINISHED <= self <= Status.TERMINATED

    @property
    def good(self) -> bool:
        return self is Status.FINISHED


@dataclass(frozen=True, slots=True)
class IOType:
    """What a worker turns into what, e.g. ``IOType("Edges", "Mesh2D")``."""

    input: str
    output: str

    def __post_init__(self) -> None:
        if not isinstance(self.input, str) or not isinstance(self.output, str):
            raise TypeError(f"IOType takes two strings, got {self.input!r}, {self.output!r}")
        if not self.input or not self.output:
            raise ValueError("IOType needs a non-empty input and output type")

    def __str__(self) -> str:
        return f"{self.input}->{self.output}"

    def to_wire(self) -> list[str]:
        return [self.input, self.output]

    @classmethod
    def from_wire(cls, raw: Any) -> IOType:
        inp, out = raw
        return cls(inp, out)


@dataclass(frozen=True, slots=True, eq=False)
class JobRequirements:
    """What a job needs of a worker, and what a worker offers.

    A job matches a worker when the io types are equal, and, where the job names them, the
    worker name and the tag are equal too. ``content`` is optional requirement content (a
    worker file's ``File``), with its ``content_format`` (USER, JSON, XML or BSON).
    """

    io_type: IOType
    worker_name: str = ""
    tag: Any = None
    content: bytes = b""
    content_format: str = "USER"
    _key: tuple[Any, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.io_type, IOType):
            raise TypeError(f"JobRequirements.io_type must be an IOType, got {self.io_type!r}")
        if not isinstance(self.worker_name, str):
            raise TypeError(f"worker_name must be a str, got {self.worker_name!r}")
        if not isinstance(self.content, bytes):
            raise TypeError("requirement content must be bytes")
        if not isinstance(self.content_format, str):
            raise TypeError(f"content_format must be a str, got {self.content_format!r}")
        object.__setattr__(
            self,
            "_key",
            (self.io_type, self.worker_name, tag_key(self.tag), self.content, self.content_format),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobRequirements):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @classmethod
    def of(cls, value: IOType | JobRequirements) -> JobRequirements:
        """Requirements from an io type (any worker of that type) or as given."""
        if isinstance(value, JobRequirements):
            return value
        if isinstance(value, IOType):
            return cls(value)
        raise TypeError(f"expected an IOType or JobRequirements, got {type(value).__name__}")

    def to_wire(self) -> list[Any]:
        return [
            self.io_type.input,
            self.io_type.output,
            self.worker_name,
            self.tag,
            self.content,
            self.content_format,
        ]

    @classmethod
    def from_wire(cls, raw: Any) -> JobRequirements:
        inp, out, name, tag, content, fmt = raw
        return cls(IOType(inp, out), name, tag, content, fmt)


def matches(job: JobRequirements, worker: JobRequirements) -> bool:
    """The matching rule, as Remus's: same io type; the job's worker name and tag, where set, equal.

    A job built from a bare :class:`IOType` is served by any worker of that io type.
    """
    return (
        job.io_type == worker.io_type
        and (not job.worker_name or job.worker_name == worker.worker_name)
        and (job.tag is None or tag_key(job.tag) == tag_key(worker.tag))
    )


def describe(reqs: JobRequirements) -> str:
    """Requirements in words, for messages: ``Edges->Mesh2D named 'm' tagged {...}``."""
    name = f" named {reqs.worker_name!r}" if reqs.worker_name else ""
    tag = f" tagged {reqs.tag!r}" if reqs.tag is not None else ""
    return f"{reqs.io_type}{name}{tag}"


def tag_key(tag: Any) -> str | None:
    """A tag (any JSON-able value) as a canonical, hashable string; None stays None."""
    if tag is None:
        return None
    return json.dumps(tag, sort_keys=True, separators=(",", ":"), default=repr)


#: bytes, or a view of them that was never copied (a large file received as a ZeroMQ frame)
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class FileHandle:
    """A file that travels with a job or a result.

    ``path`` is made absolute against the current directory when the handle is built; ``mode``
    is ``"r"`` (text) or ``"rb"`` (binary): how the receiver should open it (the bytes travel
    unchanged either way); ``data`` holds the bytes when they travel inline (a str is encoded
    as UTF-8). A handle is path-like: ``open(handle, handle.mode)``. See docs/files.md.
    """

    path: str
    mode: str = "rb"
    data: Buffer | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("r", "rb"):
            raise ValueError(f"FileHandle mode must be 'r' or 'rb', got {self.mode!r}")
        object.__setattr__(self, "path", os.path.abspath(os.fspath(self.path)))
        if isinstance(self.data, str):
            object.__setattr__(self, "data", self.data.encode())
        elif isinstance(self.data, memoryview) and (self.data.format != "B" or self.data.ndim != 1):
            object.__setattr__(self, "data", self.data.cast("B"))  # lengths count bytes
        elif self.data is not None and not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise TypeError(f"FileHandle data must be bytes, got {type(self.data).__name__}")

    def __fspath__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        inline = "" if self.data is None else f", <{len(self.data)} bytes>"
        return f"FileHandle({self.path!r}, {self.mode!r}{inline})"


@dataclass(frozen=True, slots=True)
class JobSubmission:
    """Requirements plus named contents; ``"data"`` is the default key. A str content is
    sent as its UTF-8 bytes."""

    requirements: JobRequirements
    contents: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "requirements", JobRequirements.of(self.requirements))
        if any(isinstance(v, str) for v in self.contents.values()):
            text: Any = self.contents
            object.__setattr__(
                self,
                "contents",
                {k: v.encode() if isinstance(v, str) else v for k, v in text.items()},
            )
        for key, value in self.contents.items():
            if not isinstance(key, str):
                raise TypeError(f"content keys must be str, got {key!r}")
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise TypeError(f"content {key!r} must be bytes or str, got {type(value).__name__}")

    @classmethod
    def of(
        cls,
        requirements: IOType | JobRequirements,
        data: bytes | str | None = None,
        **contents: bytes | str,
    ) -> JobSubmission:
        if data is not None:
            contents = {DEFAULT_KEY: data, **contents}
        raw: Any = contents  # str values become bytes in __post_init__
        return cls(JobRequirements.of(requirements), raw)


@dataclass(frozen=True, slots=True)
class Job:
    """A submitted job, as the client knows it: its id and requirements."""

    id: str
    requirements: JobRequirements

    def __str__(self) -> str:
        return f"Job({self.id} {self.requirements.io_type})"


@dataclass(frozen=True, slots=True)
class JobProgress:
    """One progress update: ``value`` 0–100 or None, a message, its sequence number (1, 2, …)."""

    value: int | None = None
    message: str = ""
    seq: int = 0


_new = object.__new__
# (the slots' member descriptors)
_set_value = JobProgress.__dict__["value"].__set__
_set_message = JobProgress.__dict__["message"].__set__
_set_seq = JobProgress.__dict__["seq"].__set__


def progress_update(value: int | None, message: str, seq: int) -> JobProgress:
    """``JobProgress(value, message, seq)`` at half the cost, for the loops that hand a fast
    job's updates over by the thousand: it fills the slots directly, where a frozen
    dataclass's ``__init__`` goes through ``object.__setattr__`` for each field."""
    update = _new(JobProgress)
    _set_value(update, value)
    _set_message(update, message)
    _set_seq(update, seq)
    return update


@dataclass(frozen=True, slots=True)
class JobStatus:
    job_id: str
    status: Status
    progress: JobProgress | None = None
    reason: str = ""
    #: 1 for the first run; more once the job was requeued after losing its worker
    attempt: int = 1
    #: the worker that holds it (name@host:pid), "" while none does
    worker: str = ""
    #: for an assistant job, the id of the job that submitted it ("" for any other job)
    parent: str = ""
    #: the ids of the assistant jobs this job submitted, in order
    assistants: tuple[str, ...] = ()
    #: one line per preemption or requeue, oldest first
    history: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.status.done

    def __str__(self) -> str:
        text = f"{self.job_id}: {self.status.name}"
        if self.progress is not None:
            text += f" {self.progress.value}% {self.progress.message}".rstrip()
        return text


@dataclass(frozen=True, slots=True)
class JobResult:
    """A finished job's output bytes (files come as :class:`JobFileResult`, see remus.files).

    ``peak_rss`` (bytes) and ``cpu`` (seconds) say what the job used, as its worker measured
    them (the process's peak while the job ran; the CPU time of the thread that ran the
    handler), or None if the worker did not say (a worker that does not use ``Worker.run``)."""

    job_id: str
    #: the output: ``bytes``, or for a result over 1 MiB a read-only ``memoryview`` of the
    #: message it came in, without a copy (``bytes(result.data)`` makes one when needed)
    data: bytes | memoryview = b""
    peak_rss: int | None = field(default=None, kw_only=True)
    cpu: float | None = field(default=None, kw_only=True)
