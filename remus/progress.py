"""Ready-made progress bars for scripts (rich, drawn on stderr).

One job: a :class:`ProgressBar` is an ``on_progress`` callback::

    from remus.progress import ProgressBar

    with ProgressBar("meshing") as bar:
        result = c.wait(job, on_progress=bar)           # or c.run(io, data, on_progress=bar)

It shows the worker's latest value (0–100; a moving bar while the worker sends none) and
message, and the time since it started; it is left at 100 % when the block ends without an
error.

Many jobs: a :class:`BatchBar` counts them as they finish::

    from remus.progress import BatchBar

    jobs = c.submit_many(JobSubmission.of(io, d) for d in inputs)
    with BatchBar(len(jobs), "meshes") as bar:
        for result in bar.track(c.as_completed(jobs, errors="yield")):
            ...                                           # failures counted on the bar too

On a terminal they redraw in place; piped, rich prints them once when they stop. Pass
``console=rich.console.Console(...)`` to draw them elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from remus.types import JobProgress

T = TypeVar("T")


class _Bar:
    def __init__(self, console: Console | None, *columns: Any) -> None:
        self._progress = Progress(
            *columns, console=console or Console(stderr=True), transient=False
        )
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._progress.start()
            self._started = True

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProgressBar(_Bar):
    """One job's progress: call it with each :class:`~remus.JobProgress` (``on_progress=bar``)."""

    def __init__(self, description: str = "job", *, console: Console | None = None) -> None:
        super().__init__(
            console,
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[message]}"),
        )
        self._task = self._progress.add_task(description, total=None, message="")
        self.last: JobProgress | None = None

    def __call__(self, update: JobProgress) -> None:
        self.start()
        self.last = update
        if update.value is None:
            self._progress.update(self._task, message=update.message)
        else:
            value = min(100, max(0, update.value))
            self._progress.update(self._task, total=100, completed=value, message=update.message)

    def __enter__(self) -> ProgressBar:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self._progress.update(self._task, total=100, completed=100)
        self.close()


class BatchBar(_Bar):
    """Many jobs: ``bar.track(c.as_completed(jobs))`` yields what it yields and counts it;
    an exception yielded (``errors="yield"``) counts as failed."""

    def __init__(
        self, total: int, description: str = "jobs", *, console: Console | None = None
    ) -> None:
        super().__init__(
            console,
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[failed]}"),
        )
        self._task = self._progress.add_task(description, total=total, failed="")
        self.failed = 0

    def advance(self, failed: bool = False) -> None:
        """Count one job as done (``failed``: ended without a result)."""
        self.start()
        if failed:
            self.failed += 1
        shown = f"{self.failed} failed" if self.failed else ""
        self._progress.update(self._task, advance=1, failed=shown)

    def track(self, results: Iterable[T]) -> Iterator[T]:
        for result in results:
            self.advance(isinstance(result, BaseException))
            yield result

    def __enter__(self) -> BatchBar:
        self.start()
        return self
