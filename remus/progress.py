"""Ready-made progress bars for scripts (rich, drawn on stderr).

One job: a :class:`ProgressBar` is an ``on_progress`` callback::

    from remus.progress import ProgressBar

    with ProgressBar("meshing") as bar:
        result = c.wait(job, on_progress=bar)           # or c.run(io, data, on_progress=bar)

It shows the worker's latest value (0–100; a moving bar while the worker sends none) and
message, and the time since it started; it is left at 100 % when the block ends without an
error.

Many jobs: a :class:`BatchBar` counts them as they finish and, given their progress, shows a
row for each job that runs::

    from remus.progress import BatchBar

    jobs = c.submit_many(JobSubmission.of(io, d) for d in inputs)
    with BatchBar(len(jobs), "meshes") as bar:
        for result in bar.track(c.as_completed(jobs, errors="yield", on_progress=bar.progress)):
            ...                                           # failures counted on the bar too

On a terminal they redraw in place; piped, rich prints them once when they stop. Pass
``console=rich.console.Console(...)`` to draw them elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from remus.types import Job, JobProgress

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
    an exception yielded (``errors="yield"``) counts as failed.

    ``on_progress=bar.progress`` (``as_completed``'s) also shows a row per running job, its
    latest value and message, until its result is counted: at most ``rows`` at a time (the
    others wait for a free row). A row is named by ``labels[job.id]``, else the job id.
    """

    def __init__(
        self,
        total: int,
        description: str = "jobs",
        *,
        labels: Mapping[str, str] | None = None,
        rows: int = 10,
        console: Console | None = None,
    ) -> None:
        super().__init__(
            console,
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}", justify="right"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
        )
        self._total = total
        self._task = self._progress.add_task(description, total=total, count=f"0/{total}", note="")
        self.done = 0
        self.failed = 0
        self._labels = labels or {}
        self._max_rows = rows
        #: running jobs with a row, and those waiting for one (with their latest update)
        self._rows: dict[str, TaskID] = {}
        self._waiting: dict[str, JobProgress] = {}

    def advance(self, failed: bool = False, job_id: str | None = None) -> None:
        """Count one job as done (``failed``: ended without a result); ``job_id``: its row
        goes."""
        self.start()
        self.done += 1
        if failed:
            self.failed += 1
        note = f"{self.failed} failed" if self.failed else ""
        count = f"{self.done}/{self._total}"
        self._progress.update(self._task, advance=1, count=count, note=note)
        if job_id is not None:
            self._waiting.pop(job_id, None)
            row = self._rows.pop(job_id, None)
            if row is not None:
                self._progress.remove_task(row)
                if self._waiting:  # the longest waiting job gets the row
                    next_id = next(iter(self._waiting))
                    self._show(next_id, self._waiting.pop(next_id))

    def progress(self, job: Job, update: JobProgress) -> None:
        """One job's progress update: ``as_completed(..., on_progress=bar.progress)``."""
        self.start()
        if job.id in self._rows or len(self._rows) < self._max_rows:
            self._show(job.id, update)
        else:
            before = self._waiting.get(job.id)
            if update.value is None and before is not None:  # keep the value it had
                update = JobProgress(before.value, update.message, update.seq)
            self._waiting[job.id] = update

    def _show(self, job_id: str, update: JobProgress) -> None:
        shown: dict[str, Any] = {"note": update.message}
        if update.value is not None:  # else the row keeps its value (a moving bar if none yet)
            value = min(100, max(0, update.value))
            shown.update(total=100, completed=value, count=f"{value}%")
        row = self._rows.get(job_id)
        if row is None:
            label = "  " + self._labels.get(job_id, job_id)
            self._rows[job_id] = self._progress.add_task(
                label, **{"total": None, "count": ""} | shown
            )
        else:
            self._progress.update(row, **shown)

    def track(self, results: Iterable[T]) -> Iterator[T]:
        for result in results:
            job_id = getattr(result, "job_id", None)
            self.advance(isinstance(result, BaseException), job_id)
            yield result

    def __enter__(self) -> BatchBar:
        self.start()
        return self
