"""What the core hands the journal: one :class:`JournalBatch` per loop pass, and what the
journal hands back after a restart: a :class:`JournaledJob` per job it remembers.
(:mod:`remus.server.journal` re-exports them.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from remus.errors import RemusError
from remus.types import Buffer, JobRequirements, Status

#: job id, JobRequirements.to_wire(), content keys, content values, order, submitted_at
#: (wall clock), options (msgpack-able; empty for none)
Submitted = tuple[str, list[Any], tuple[str, ...], Sequence[Buffer], int, float, dict[str, Any]]
#: job id, status, reason, traceback, attempt, worker name
StatusChange = tuple[str, int, str, str, int, str]
#: job id, result bytes (or any buffer: memoryview, zmq.Frame)
Result = tuple[str, Buffer]
#: job id, a file result's file set (recovery.saved_files, msgpack-packed)
ResultFiles = tuple[str, Buffer]
#: job id, seq, value (0-100 or None), message
Progress = tuple[str, int, int | None, str]
#: job id, its latest checkpoint
Checkpoint = tuple[str, Buffer]


@dataclass(slots=True)
class JournalBatch:
    """What happened during one loop pass. Rows are applied in this order: submitted,
    checkpoints, status, results, progress, forgotten; each list in its own order."""

    submitted: list[Submitted] = field(default_factory=list)
    status: list[StatusChange] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)
    #: file results' file sets, applied with the results
    result_files: list[ResultFiles] = field(default_factory=list)
    #: worker routing id (hex) -> the highest report seq applied from it (0: the worker is
    #: gone), so that a restarted broker knows a report it applied before from one it has not
    acks: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.submitted
            or self.status
            or self.results
            or self.progress
            or self.forgotten
            or self.checkpoints
            or self.result_files
            or self.acks
        )

    def clear(self) -> None:
        self.submitted.clear()
        self.status.clear()
        self.results.clear()
        self.progress.clear()
        self.forgotten.clear()
        self.checkpoints.clear()
        self.result_files.clear()
        self.acks.clear()


@dataclass(slots=True)
class JournaledJob:
    """One job as the journal remembers it. ``values`` is empty once the job is over;
    ``changed_at`` is the wall-clock time of its last status change (or of its submission)."""

    id: str
    requirements: JobRequirements
    keys: tuple[str, ...]
    values: list[bytes]
    order: int
    submitted_at: float
    options: dict[str, Any]
    status: Status
    reason: str
    traceback: str
    attempt: int
    worker: str
    result: bytes | None
    progress: list[tuple[int, int | None, str]]
    changed_at: float
    #: the latest checkpoint its handler saved, None if none
    checkpoint: bytes | None = None
    #: a file result's file set (msgpack of recovery.saved_files), None if none
    result_files: bytes | None = None


class JournalError(RemusError):
    """The journal could not be written or read (disk full, I/O error, closed journal)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"journal {path}: {problem}")
        self.path = path
        self.problem = problem
