"""Workflows on the client side: a job submitted after others, a whole graph in one call,
groups of jobs followed as one.

A :class:`Step` is a submission with the jobs it must wait for. The broker holds it WAITING
until they have all FINISHED, then hands its handler their results (``job.inputs_from``); if
one of them fails, it fails at once, and so does everything downstream (docs/protocol.md,
"Workflows").

:func:`graph_order` turns a mapping of named steps, which name each other, into the order a
submit needs (every step after the steps it waits for), refusing an unknown name or a cycle
before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from remus.files import JobFileRequest
from remus.types import Job, JobSubmission, Status

if TYPE_CHECKING:
    from remus.client.basic import BasicClient

Submission = JobSubmission | JobFileRequest


@dataclass(frozen=True)
class Step:
    """A submission and the jobs it runs after: existing ``Job``s or their ids, or, inside
    ``BasicClient.submit_graph``, the names of other steps of the same graph."""

    submission: Submission
    after: Sequence[Job | str] = field(default=())
    #: the job's id (None: the client picks one, as for any submission)
    id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.after, (str, Job)):
            object.__setattr__(self, "after", (self.after,))
        object.__setattr__(self, "after", tuple(self.after))


def job_ids(after: Sequence[Job | str]) -> tuple[str, ...]:
    return tuple(a if isinstance(a, str) else a.id for a in after)


def graph_order(steps: Mapping[str, Any]) -> list[str]:
    """The names of ``steps`` (each a Step or a plain submission) in an order where every
    step comes after the steps of the graph it names; a name that is neither a step nor an
    existing job's id is kept as such (the broker checks it). ValueError for a cycle."""
    after = {
        name: [a for a in job_ids(s.after) if a in steps] if isinstance(s, Step) else []
        for name, s in steps.items()
    }
    order: list[str] = []
    state: dict[str, int] = {}  # 1: being visited, 2: placed
    for start in steps:
        if state.get(start) == 2:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            name, i = stack.pop()
            if i == 0:
                if state.get(name) == 2:
                    continue
                if state.get(name) == 1:
                    cycle = [*path[path.index(name) :], name]
                    raise ValueError(
                        f"the steps wait for each other in a cycle: {' -> '.join(cycle)}"
                    )
                state[name] = 1
                path.append(name)
            preds = after[name]
            if i < len(preds):
                stack.append((name, i + 1))
                stack.append((preds[i], 0))
                continue
            state[name] = 2
            path.pop()
            order.append(name)
    return order


@dataclass(frozen=True)
class GroupStatus:
    """A group's jobs by status, as one status: ``done`` once every job is over."""

    name: str
    counts: dict[Status, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> bool:
        return all(s.done for s, n in self.counts.items() if n)

    @property
    def finished(self) -> int:
        return self.counts.get(Status.FINISHED, 0)

    def __str__(self) -> str:
        parts = ", ".join(f"{n} {s.name}" for s, n in sorted(self.counts.items()) if n)
        return f"group {self.name}: {parts or 'no jobs'}{' (done)' if self.done else ''}"


class Group:
    """Jobs submitted together (``BasicClient.submit_group``), followed and stopped as one."""

    def __init__(self, client: BasicClient, name: str, jobs: list[Job]) -> None:
        self.client = client
        self.name = name
        #: the group's jobs, in submission order
        self.jobs = jobs

    def status(self, *, timeout: float | None = None) -> GroupStatus:
        """How many of its jobs are in each status (one request)."""
        counts: dict[Status, int] = {}
        for st in self.client.client.job_statuses(self.jobs, timeout=timeout):
            counts[st.status] = counts.get(st.status, 0) + 1
        return GroupStatus(self.name, counts)

    def as_completed(
        self,
        timeout: float | None = None,
        errors: Literal["raise", "yield"] = "raise",
        on_progress: Any = None,
    ) -> Iterator[Any]:
        """Each job's result as it finishes (as ``BasicClient.as_completed``)."""
        return self.client.as_completed(
            self.jobs, timeout=timeout, errors=errors, on_progress=on_progress
        )

    def wait(
        self, timeout: float | None = None, errors: Literal["raise", "yield"] = "raise"
    ) -> list[Any]:
        """Every job's result, in submission order, once all are over. A failed job raises
        its error (``errors="yield"``: its error takes its place in the list)."""
        got = {getattr(r, "job_id", None): r for r in self.as_completed(timeout, errors=errors)}
        return [got[j.id] for j in self.jobs]

    def terminate(self, *, timeout: float | None = None) -> GroupStatus:
        """Terminate every job of the group not over yet; the group's status after."""
        self.client.client.terminate_many(self.jobs, timeout=timeout)
        return self.status(timeout=timeout)

    def __len__(self) -> int:
        return len(self.jobs)

    def __repr__(self) -> str:
        return f"<Group {self.name} of {len(self.jobs)} jobs>"
