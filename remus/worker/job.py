"""A job as a worker sees it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from remus.types import DEFAULT_KEY, FileHandle, IOType, JobRequirements


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

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: <{len(v)} bytes>" for k, v in self._raw.items()) + "}"


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

    def __post_init__(self) -> None:
        if not isinstance(self.contents, Contents):
            object.__setattr__(self, "contents", Contents(self.contents))

    @property
    def valid(self) -> bool:
        return bool(self.id)

    def __bool__(self) -> bool:
        return self.valid

    def __getitem__(self, key: str) -> bytes:
        try:
            return self.contents[key]
        except KeyError:
            raise KeyError(
                f"job {self.id} has no content {key!r}; it has {sorted(self.contents)}"
            ) from None

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
