"""A job as a worker sees it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from remus.types import DEFAULT_KEY, IOType, JobRequirements


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

    ``Worker.get_job`` returns an invalid job (falsy) when it times out or the broker tells the
    worker to exit, so ``if not job: ...`` covers both.
    """

    id: str = ""
    requirements: JobRequirements | None = None
    contents: Contents = field(default_factory=Contents)

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

    def __repr__(self) -> str:
        if not self.valid:
            return "Job(invalid)"
        return f"Job({self.id} {self.io_type} {self.contents!r})"


INVALID = Job()
