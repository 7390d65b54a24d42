"""Following many jobs' progress: ``collect`` with ``progress`` (the broker's rules), and
``BasicClient.as_completed(..., on_progress=...)`` with ``remus.progress.BatchBar`` against a
real broker and real workers."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pytest
from conftest import wait_for
from core_helpers import W1, Core, collected, finish, replies
from rich.console import Console

import remus
from remus import IOType, Job, JobProgress, JobRequirements, JobSubmission, Status
from remus import protocol as p
from remus.progress import BatchBar

pytestmark = pytest.mark.timeout(60)

STEPS = IOType("Text", "Steps")


def follow(c: Core, watch: str, add: Sequence[str] = (), wait: float = 0.0) -> int:
    return c.send(p.CollectRequest(c.rid(), watch, list(add), wait, progress=True))


def updates_of(reply: p.Message) -> dict[str, list[list[Any]]]:
    assert isinstance(reply, p.Reply)
    return {job_id: ups for job_id, ups in reply.data.get("progress", [])}


# ============================================================================ the broker's rules


def test_a_watch_list_that_follows_progress_hands_each_update_over_once() -> None:
    c = Core()
    c.register(W1, credit=2)
    c.submit("j1", "j2")
    c.flush()
    c.report(W1, progress=[("j1", 10, "a")])  # before the watch list exists: it comes too
    follow(c, "w", ["j1", "j2"], wait=10.0)
    (reply,) = replies(c.flush())
    assert updates_of(reply) == {"j1": [[1, 10, "a"]]} and collected(reply) == ([], 2)

    rid = follow(c, "w", wait=10.0)
    assert replies(c.flush()) == [], "held until there is news"
    c.report(W1, progress=[("j2", 5, "b"), ("j1", 20, "c"), ("j2", 6, "d")])
    (reply,) = replies(c.flush())
    assert reply.rid == rid, "one reply for every update of the pass"
    assert updates_of(reply) == {"j2": [[1, 5, "b"], [2, 6, "d"]], "j1": [[2, 20, "c"]]}

    follow(c, "w", wait=10.0)
    c.report(W1, progress=[("j1", 30, "e")])
    finish(c, W1, "j1")
    (reply,) = replies(c.flush())
    assert updates_of(reply) == {"j1": [[3, 30, "e"]]}
    assert collected(reply) == (["j1"], 1), "the last updates come with the result"


def test_a_plain_watch_list_is_not_woken_by_progress() -> None:
    c = Core()
    c.register(W1, credit=1)
    c.submit("j1")
    c.flush()
    c.send(p.CollectRequest(c.rid(), "w", ["j1"], 10.0))
    c.report(W1, progress=[("j1", 10, "a")])
    assert replies(c.flush()) == []
    finish(c, W1, "j1")
    (reply,) = replies(c.flush())
    assert "progress" not in reply.data and collected(reply) == (["j1"], 0)


def test_a_result_waits_for_its_updates_past_the_reply_bound() -> None:
    from remus.server import holds

    c = Core()
    c.register(W1, credit=1)
    c.submit("j1")
    c.flush()
    many = holds.MAX_PER_REPLY + 5
    c.report(W1, progress=[("j1", None, f"m{i}") for i in range(many)])
    finish(c, W1, "j1")
    follow(c, "w", ["j1"])
    (reply,) = replies(c.flush())
    assert len(updates_of(reply)["j1"]) == holds.MAX_PER_REPLY
    assert collected(reply) == ([], 1), "no result before its last updates"
    follow(c, "w")
    (reply,) = replies(c.flush())
    assert [u[0] for u in updates_of(reply)["j1"]] == list(range(many - 4, many + 1))
    assert collected(reply) == (["j1"], 0)


# ============================================================================ end to end


class Steps:
    """A handler: five updates (20 % … 100 %), then the data in upper case; ``boom`` fails
    after its first update."""

    def __init__(self) -> None:
        self.worker: Any = None

    def __call__(self, job: Any) -> bytes:
        data = bytes(job["data"])
        for i in range(1, 6):
            self.worker.send_progress(job, i * 20, f"{data.decode()} step {i}")
            if data == b"boom":
                raise ValueError("the input says boom")
        return data.upper()


def start_steps_worker(make_worker: Any, endpoint: str) -> None:
    handler = Steps()  # called only once a job is submitted, after its worker is set
    handler.worker = make_worker(JobRequirements(STEPS), endpoint, run=handler)


def test_as_completed_passes_every_update_in_order_before_each_result(
    server: Any, make_worker: Any, make_client: Any
) -> None:
    for _ in range(2):
        start_steps_worker(make_worker, server.ports.worker)
    bc = make_client(server.ports.client, basic=True, timeout=10)
    inputs = [b"job%d" % i for i in range(12)] + [b"boom"]
    jobs = bc.submit_many(JobSubmission.of(STEPS, d) for d in inputs)
    by_id = {j.id: j for j in jobs}
    events: list[tuple[str, str, Any]] = []

    def on_progress(job: Job, update: JobProgress) -> None:
        assert job is by_id[job.id], "called with the Job it was given"
        events.append(("progress", job.id, update))

    for outcome in bc.as_completed(jobs, timeout=30, errors="yield", on_progress=on_progress):
        events.append(("result", outcome.job_id, outcome))

    for job, data in zip(jobs, inputs, strict=True):
        mine = [(kind, what) for kind, job_id, what in events if job_id == job.id]
        kinds = [kind for kind, _ in mine]
        assert kinds.count("result") == 1 and kinds[-1] == "result", kinds
        updates = [u for kind, u in mine if kind == "progress"]
        count = 1 if data == b"boom" else 5
        assert [(u.seq, u.value, u.message) for u in updates] == [
            (i, i * 20, f"{data.decode()} step {i}") for i in range(1, count + 1)
        ]
        outcome = mine[-1][1]
        if data == b"boom":
            assert isinstance(outcome, remus.JobFailedError) and "boom" in outcome.reason
        else:
            assert outcome.data == data.upper()


def test_updates_of_jobs_already_over_come_in_one_request(
    server: Any, make_worker: Any, make_client: Any
) -> None:
    start_steps_worker(make_worker, server.ports.worker)
    bc = make_client(server.ports.client, basic=True, timeout=10)
    jobs = bc.submit_many(JobSubmission.of(STEPS, b"x%d" % i) for i in range(20))
    wait_for(lambda: all(s.status is Status.FINISHED for s in bc.client.job_statuses(jobs)))
    seen: list[tuple[str, int]] = []
    before = bc.client.calls
    results = list(
        bc.as_completed(jobs, timeout=10, on_progress=lambda j, u: seen.append((j.id, u.seq)))
    )
    assert bc.client.calls - before == 1, "every update and every result in one request"
    assert len(results) == 20
    assert sorted(seen) == sorted((j.id, i) for j in jobs for i in range(1, 6))


def test_batch_bar_shows_a_row_per_running_job(
    server: Any, make_worker: Any, make_client: Any
) -> None:
    start_steps_worker(make_worker, server.ports.worker)
    bc = make_client(server.ports.client, basic=True, timeout=10)
    jobs = bc.submit_many(JobSubmission.of(STEPS, d) for d in (b"a", b"b", b"boom"))
    labels = {j.id: f"label-{i}" for i, j in enumerate(jobs)}
    drawn = io.StringIO()
    shots: list[str] = []

    with BatchBar(len(jobs), "batch", labels=labels, console=Console(file=drawn, width=120)) as bar:

        def on_progress(job: Job, update: JobProgress) -> None:
            bar.progress(job, update)
            shots.append(render(bar))

        got = list(
            bar.track(bc.as_completed(jobs, timeout=20, errors="yield", on_progress=on_progress))
        )
    assert len(got) == 3 and bar.failed == 1
    assert any("label-0" in s and "a step 5" in s and "100%" in s for s in shots), shots
    assert any("label-2" in s and "boom step 1" in s for s in shots), shots
    assert "label-" not in render(bar), "a job's row goes once it is counted"
    assert "batch" in render(bar) and "3/3" in render(bar) and "1 failed" in render(bar)


def render(bar: BatchBar) -> str:
    out = io.StringIO()
    Console(file=out, width=120).print(bar._progress.get_renderable())
    return out.getvalue()


def test_batch_bar_rows_are_bounded_and_handed_on() -> None:
    jobs = [Job(f"j{i}", JobRequirements(STEPS)) for i in range(3)]
    with BatchBar(3, rows=2, console=Console(file=io.StringIO(), width=120)) as bar:
        for i, job in enumerate(jobs):
            bar.progress(job, JobProgress(10 * (i + 1), f"at {i}", 1))
        assert "j0" in render(bar) and "j1" in render(bar) and "j2" not in render(bar)
        bar.progress(jobs[2], JobProgress(55, "later", 2))
        bar.advance(job_id="j0")
        shown = render(bar)
        assert "j0" not in shown and "j2" in shown and "55%" in shown and "later" in shown
        assert "1/3" in shown


def test_a_fast_progress_update_is_the_same_frozen_value_as_a_made_one() -> None:
    import dataclasses

    from remus.types import JobProgress, progress_update

    fast, made = progress_update(40, "meshing", 3), JobProgress(40, "meshing", 3)
    assert fast == made and hash(fast) == hash(made) and repr(fast) == repr(made)
    assert type(fast) is JobProgress
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.value = 50  # type: ignore[misc]


def test_both_clients_hand_over_what_the_history_kept_and_warn_of_the_rest(
    make_server: Any, make_worker: Any, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A job whose updates outran the broker's history bound: a wait hands over the ones
    kept, in order, and says in the log how many went (remus.client.basic.updates_after,
    shared by the sync and the asyncio client)."""
    import asyncio

    from remus.aio import AsyncClient
    from remus.server import ServerConfig

    server = make_server(config=ServerConfig(max_progress_history=2, stop_timeout=1.0))
    start_steps_worker(make_worker, server.ports.worker)
    bc = make_client(server.ports.client, basic=True, timeout=10)
    job = bc.submit(STEPS, b"x")
    wait_for(lambda: bc.client.job_status(job).status is Status.FINISHED)
    seen: list[int] = []
    with caplog.at_level("WARNING", logger="remus.client.basic"):
        assert bc.wait(job, timeout=10, on_progress=lambda u: seen.append(u.seq)).data == b"X"

        async def main() -> list[int]:
            async with AsyncClient(server.ports.client, timeout=10) as c:
                got: list[int] = []
                await c.wait(job, timeout=10, on_progress=lambda u: got.append(u.seq))
                return got

        assert asyncio.run(main()) == [4, 5]
    assert seen == [4, 5]
    said = [r.getMessage() for r in caplog.records if "history bound" in r.getMessage()]
    assert (
        said == [f"job {job.id}: 3 progress updates were dropped by the broker's history bound"] * 2
    )
