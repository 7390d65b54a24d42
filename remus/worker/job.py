"""A job as a worker sees it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from remus.types import DEFAULT_KEY, IOType, JobRequirements


@dataclass(frozen=True, slots=True)
class Job:
    """``job.id``, ``job.requirements``, ``job["data"]`` (or any content key), ``job.valid``.

    ``Worker.get_job`` returns an invalid job (falsy) when it times out or the broker tells the
    worker to exit, so ``if not job: ...`` covers both.
    """

    id: str = ""
    requirements: JobRequirements | None = None
    contents: Mapping[str, bytes] = field(default_factory=dict)

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

    def get(self, key: str = DEFAULT_KEY, default: bytes | None = None) -> bytes | None:
        return self.contents.get(key, default)

    @property
    def io_type(self) -> IOType | None:
        return self.requirements.io_type if self.requirements else None

    def __repr__(self) -> str:
        if not self.valid:
            return "Job(invalid)"
        sizes = ", ".join(f"{k}: {len(v)} B" for k, v in self.contents.items())
        return f"Job({self.id} {self.io_type} {{{sizes}}})"


INVALID = Job()
