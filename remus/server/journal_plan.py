"""How many journal batches become the fewest rows to write.

Writing each pass's :class:`~remus.server.journal.JournalBatch` row by row costs a statement
per row: a job takes an insert (and one per content), an update when it is dispatched, an
update when it ends, another for its result, deletes for its contents and checkpoint, and four
more deletes when it is forgotten; SQLite spends 2-4 µs on each. The journal appends batches
to its log as they come and writes the tables later, for many batches at once (a *fold*, see
:mod:`remus.server.journal`). A :class:`GroupPlan` first reduces those batches to each job's
net effect:

- a status change overwrites every status column, so only a job's last one is written, and its
  result goes in the same update (or in the insert, for a job submitted in the same plan);
- a job submitted and ended in the plan is inserted ended, without its contents; one submitted
  and forgotten in the plan is not written at all;
- checkpoint and progress rows are deleted only for jobs that have some (the journal keeps the
  set of those jobs).

The net effect is the same as applying the batches one after another;
``tests/test_journal_group.py`` checks it against a model that does just that. A batch that
does not fit the order of a job's life (anything about a job after it was forgotten in the
plan, a job submitted twice) is refused by :meth:`GroupPlan.add`: the journal writes the plan
so far, then starts a new one.

Pure Python, no SQL: :mod:`remus.server.journal_apply` turns a plan's rows into statements.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remus.types import Status

if TYPE_CHECKING:
    from remus.server.journal_batch import JournalBatch, StatusChange, Submitted
    from remus.types import Buffer

#: the final statuses (Status.done) lie from here to there; WAITING lies past them
_FINAL, _LAST = int(Status.FINISHED), int(Status.TERMINATED)


@dataclass(slots=True)
class _Net:
    """What the plan does to one job so far."""

    #: its submission, if it was submitted in this plan
    new: Submitted | None = None
    #: its last status change in the plan, and the wall-clock time of the batch that made it
    status: StatusChange | None = None
    changed_at: float = 0.0
    #: a final status came (its contents and checkpoint go)
    ended: bool = False
    #: its last result in the plan (``has_result``: there was one)
    result: Buffer | None = None
    has_result: bool = False
    #: its last checkpoint, if one came after any final status (it is then kept)
    checkpoint: Buffer | None = None
    has_checkpoint: bool = False
    #: its file result's file set, if one came
    files: Buffer | None = None
    forgotten: bool = False


def _forgotten(net: _Net | None) -> bool:
    return net is not None and net.forgotten


@dataclass(slots=True)
class GroupPlan:
    """The net effect of batches applied in order; :meth:`add` each, then read the rows.

    ``checkpointed`` and ``with_progress`` are the journal's sets of jobs that have checkpoint
    and progress rows in the file (read when the rows are, never changed here)."""

    checkpointed: set[str]
    with_progress: set[str]
    _jobs: dict[str, _Net] = field(default_factory=dict)
    _progress: list[tuple[str, int, int | None, str]] = field(default_factory=list)
    #: worker routing id -> the highest report seq applied from it, the latest (0: gone)
    acks: dict[str, int] = field(default_factory=dict)
    #: batches added
    batches: int = 0

    def __bool__(self) -> bool:
        return self.batches > 0

    def add(self, batch: JournalBatch, at: float) -> bool:
        """Fold ``batch``, made at wall-clock time ``at``, in; False (and nothing folded) if
        it does not fit the plan: write the plan, then add the batch to a new one."""
        if not self._fits(batch):
            return False
        jobs = self._jobs
        for sub in batch.submitted:
            jobs[sub[0]] = _Net(new=sub)
        for job_id, blob in batch.checkpoints:
            net = jobs.get(job_id) or jobs.setdefault(job_id, _Net())
            net.checkpoint, net.has_checkpoint = blob, True
        for row in batch.status:
            net = jobs.get(row[0]) or jobs.setdefault(row[0], _Net())
            net.status, net.changed_at = row, at
            if _FINAL <= row[1] <= _LAST:
                net.ended = True
                net.checkpoint, net.has_checkpoint = None, False  # (applied before: dropped)
        for job_id, blob in batch.results:
            net = jobs.get(job_id) or jobs.setdefault(job_id, _Net())
            net.result, net.has_result = blob, True
        for job_id, files in batch.result_files:
            (jobs.get(job_id) or jobs.setdefault(job_id, _Net())).files = files
        if batch.progress:
            self._progress.extend(batch.progress)
        if batch.acks:
            self.acks.update(batch.acks)
        for job_id in batch.forgotten:
            (jobs.get(job_id) or jobs.setdefault(job_id, _Net())).forgotten = True
        self.batches += 1
        return True

    def _fits(self, batch: JournalBatch) -> bool:
        """Whether every row of ``batch`` comes where a job's life allows: a submission for
        a job the plan has not seen (once), nothing for a job it has seen forgotten."""
        jobs = self._jobs
        seen: set[str] = set()
        for sub in batch.submitted:
            if sub[0] in jobs or sub[0] in seen:
                return False
            seen.add(sub[0])
        if not jobs:
            return True
        every: tuple[list[Any], ...] = (
            batch.checkpoints,
            batch.status,
            batch.results,
            batch.progress,
            batch.result_files,
        )
        for rows in every:
            for row in rows:
                if _forgotten(jobs.get(row[0])):
                    return False
        return not any(_forgotten(jobs.get(job_id)) for job_id in batch.forgotten)

    # ------------------------------------------------------------------ the rows to write

    def rows(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """Every row to write, as (kind, row), in one pass over the plan's jobs; the kinds
        of one job come in the order they must be applied in (a job's rows of different
        kinds never depend on each other's order otherwise):

        - ``insert`` (submission, last status change or None, its time, result or None) and
          ``content`` (id, index, value): a job submitted in the plan (no contents once it
          ended);
        - ``checkpoint`` (id, value): its last checkpoint, if no final status came after;
        - ``result_files`` (id, value): its file result's file set;
        - ``status`` (id, status, reason, traceback, attempt, worker, changed_at),
          ``status_result`` (the same, then the result), ``result`` (id, result): a job
          already in the file;
        - ``ended`` (id,): such a job ended (its contents go); ``drop_checkpoint`` (id,): and
          its checkpoint;
        - ``forget`` (id,): a job already in the file is forgotten (row and contents go), and
          ``forget_progress`` / ``forget_checkpoint`` (id,) if it has those.

        Progress rows come from :meth:`progress`, to write after these."""
        checkpointed = self.checkpointed
        for job_id, net in self._jobs.items():
            if net.forgotten:
                if net.new is None:
                    yield "forget", (job_id,)
                    if job_id in self.with_progress:
                        yield "forget_progress", (job_id,)
                    if job_id in checkpointed:
                        yield "forget_checkpoint", (job_id,)
                continue  # (submitted and forgotten in the plan: nothing to write)
            new = net.new
            if new is not None:
                yield "insert", (new, net.status, net.changed_at, net.result)
                if not net.ended:
                    for idx, value in enumerate(new[3]):
                        yield "content", (job_id, idx, value)
            if net.has_checkpoint:
                yield "checkpoint", (job_id, net.checkpoint)
            if net.files is not None:
                yield "result_files", (job_id, net.files)
            if new is not None:
                continue
            if net.status is None:
                if net.has_result:
                    yield "result", (job_id, net.result)
            elif net.has_result:
                yield "status_result", (*net.status, net.changed_at, net.result)
            else:
                yield "status", (*net.status, net.changed_at)
            if net.ended:
                yield "ended", (job_id,)
                if not net.has_checkpoint and job_id in checkpointed:
                    yield "drop_checkpoint", (job_id,)

    def progress(self) -> list[tuple[str, int, int | None, str]]:
        """Progress rows, in order, of jobs still remembered at the end of the plan."""
        jobs = self._jobs
        return [row for row in self._progress if not _forgotten(jobs.get(row[0]))]
