"""Group commit (issue 15): the journal's log and folds, the core thread's held replies, and a
broker SIGKILLed right after it acknowledged things.

- The journal appends each write to its log and writes its tables later, many batches at a
  time, each job's changes folded into their net effect. Whatever the folds' timing (after
  each write, at random, in the background, never until the load), what a journal loads is
  what applying the batches one after another gives: a plain model of the tables checks it.
- The log a killed writer left is folded when the journal is opened again.
- ``GroupCommit`` holds each pass's outbox until its batch is durable, sends them in pass
  order, and never sends one whose write failed.
- A real ``remus server --journal`` (both ``--journal-sync`` modes), SIGKILLed right after
  clients were told their jobs were accepted and their results were in, loses none of them.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import wait_for
from helpers_e2e import ECHO_WORKER, launch_cli_server, restart_cli_server, sigkill

from remus import IOType, JobRequirements, JobSubmission, Status
from remus.errors import ConfigError
from remus.server import journal as journal_module
from remus.server import journal_apply
from remus.server.group_commit import GroupCommit
from remus.server.journal import Journal, JournalBatch, JournalError

pytestmark = pytest.mark.timeout(120)

BARE = JobRequirements(IOType("A", "B")).to_wire()
FINAL = (int(Status.FINISHED), int(Status.FAILED), int(Status.EXPIRED), int(Status.TERMINATED))


# ============================================================================ a plain model


class Model:
    """The tables a journal should hold, by applying batches one after another, each in the
    order of its fields (submitted, checkpoints, status, results, progress, forgotten)."""

    def __init__(self, progress_limit: int | None = None) -> None:
        self.limit = progress_limit
        self.jobs: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, list[bytes]] = {}
        self.progress: dict[str, dict[int, tuple[int | None, str]]] = {}
        self.checkpoints: dict[str, bytes] = {}

    def apply(self, batch: JournalBatch) -> None:
        for job_id, reqs, keys, values, order, _, options in batch.submitted:
            self.jobs[job_id] = dict(
                order=order, keys=tuple(keys), options=options, reqs=reqs,
                status=int(Status.QUEUED), reason="", traceback="", attempt=1, worker="",
                result=None,
            )  # fmt: skip
            self.contents[job_id] = [bytes(v) for v in values]
        for job_id, blob in batch.checkpoints:
            self.checkpoints[job_id] = bytes(blob)
        for job_id, status, reason, tb, attempt, worker in batch.status:
            job = self.jobs.get(job_id)
            if job is not None:
                job.update(status=status, reason=reason, traceback=tb, attempt=attempt)
                job["worker"] = worker
            if status in FINAL:
                self.contents.pop(job_id, None)
                self.checkpoints.pop(job_id, None)
        for job_id, blob in batch.results:
            if job_id in self.jobs:
                self.jobs[job_id]["result"] = bytes(blob)
        last: dict[str, int] = {}
        for job_id, seq, value, message in batch.progress:
            self.progress.setdefault(job_id, {})[seq] = (value, message)
            last[job_id] = max(seq, last.get(job_id, 0))
        if self.limit is not None:
            for job_id, seq in last.items():
                kept = self.progress[job_id]
                for old in [s for s in kept if s <= seq - self.limit]:
                    del kept[old]
        for job_id in batch.forgotten:
            self.jobs.pop(job_id, None)
            self.contents.pop(job_id, None)
            self.progress.pop(job_id, None)
            self.checkpoints.pop(job_id, None)

    def expected(self) -> list[tuple[Any, ...]]:
        out = []
        for job_id, job in sorted(self.jobs.items(), key=lambda kv: kv[1]["order"]):
            progress = sorted((s, *v) for s, v in self.progress.get(job_id, {}).items())
            out.append(
                (job_id, job["order"], job["keys"], job["options"], job["status"], job["reason"],
                 job["traceback"], job["attempt"], job["worker"], job["result"],
                 self.contents.get(job_id, []), progress, self.checkpoints.get(job_id))
            )  # fmt: skip
        return out


def loaded(journal: Journal) -> list[tuple[Any, ...]]:
    return [
        (j.id, j.order, j.keys, j.options, int(j.status), j.reason, j.traceback, j.attempt,
         j.worker, j.result, j.values, [tuple(p) for p in j.progress], j.checkpoint)
        for j in journal.load()
    ]  # fmt: skip


# ============================================================================ random lives


def lives(rng: random.Random, jobs: int) -> Iterator[JournalBatch]:
    """Batches of many jobs' lives, interleaved: submitted (maybe WAITING first), checkpoints
    and progress, dispatched, requeued, ended (a result with FINISHED), forgotten, and now
    and then submitted again under the same id once forgotten."""
    order = 0
    plans: dict[str, list[tuple[str, Any]]] = {}
    for n in range(jobs):
        plans[f"job-{n:x}"] = _life(rng)
    pending = dict(plans)
    while pending:
        batch = JournalBatch()
        for job_id in rng.sample(sorted(pending), k=min(len(pending), rng.randint(1, 12))):
            kind, arg = pending[job_id].pop(0)
            if kind == "submit":
                order += 1
                values = [b"v%d-%s" % (i, job_id.encode()) for i in range(arg)]
                opts = {"priority": order % 3} if order % 4 == 0 else {}
                batch.submitted.append((job_id, BARE, ("data", "extra")[:arg] or ("data",),
                                        values, order, 1e9 + order, opts))  # fmt: skip
            elif kind == "status":
                batch.status.append((job_id, arg, f"why {arg}", "", 1 + order % 2, "w@h:1"))
                if arg == int(Status.FINISHED):
                    batch.results.append((job_id, memoryview(b"result of " + job_id.encode())))
            elif kind == "checkpoint":
                batch.checkpoints.append((job_id, b"cp %d" % arg))
            elif kind == "progress":
                batch.progress.append((job_id, arg, arg % 101, f"p{arg}"))
            elif kind == "forget":
                batch.forgotten.append(job_id)
            if not pending[job_id]:
                del pending[job_id]
        yield batch


def _life(rng: random.Random) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    for _ in range(2 if rng.random() < 0.1 else 1):  # (the second life after a forget)
        steps.append(("submit", rng.choice((0, 1, 1, 2))))
        if rng.random() < 0.2:
            steps += [("status", 7), ("status", 1)]  # WAITING, then QUEUED
        seq = 0
        for _ in range(rng.choice((0, 0, 1, 3))):
            seq += 1
            steps.append(("progress", seq))
        steps.append(("status", int(Status.IN_PROGRESS)))
        if rng.random() < 0.2:
            steps += [("status", int(Status.QUEUED)), ("status", int(Status.IN_PROGRESS))]
        if rng.random() < 0.3:
            steps.append(("checkpoint", rng.randint(1, 9)))
        for _ in range(rng.choice((0, 1))):
            seq += 1
            steps.append(("progress", seq))
        if rng.random() < 0.85:
            steps.append(("status", rng.choice(FINAL[:1] * 5 + FINAL)))
            if rng.random() < 0.1:
                steps.append(("checkpoint", 99))  # (late: after the end)
            if rng.random() < 0.5:
                steps.append(("forget", None))
        if steps[-1][0] != "forget":
            break
    return steps


@pytest.fixture
def small_folds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folds every few hundred rows, so that a test's writes span many."""
    monkeypatch.setattr(journal_module, "FOLD_ROWS", 150)
    monkeypatch.setattr(journal_module, "FOLD_ROWS_MAX", 600)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("how", ["one-fold", "fold-each", "random-folds", "background"])
def test_folds_load_what_the_batches_say_one_after_another(
    tmp_path: Path, small_folds: None, seed: int, how: str
) -> None:
    rng = random.Random(seed)
    model = Model(progress_limit=2)
    journal = Journal(tmp_path / "remus.db", progress_limit=2)
    try:
        if how == "one-fold":
            journal_module.FOLD_ROWS = 10**9  # (only the load folds)
        if how == "background":
            journal.start_folding()
        batches = list(lives(rng, 300))
        for i in range(0, len(batches), 3):
            group = batches[i : i + 3]
            for batch in group:
                model.apply(batch)
            journal.write_many(group)
            if how == "fold-each" or (how == "random-folds" and rng.random() < 0.2):
                journal.fold()
        if how == "background":
            journal.stop_folding()
            assert journal.folds > 1
        assert loaded(journal) == model.expected()
    finally:
        journal.close()
    with Journal(tmp_path / "remus.db", progress_limit=2) as again:
        assert loaded(again) == model.expected()


def test_a_submission_of_a_job_the_journal_holds_is_refused_whole(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "remus.db")
    try:
        first = JournalBatch(submitted=[("a", BARE, ("data",), [b"1"], 1, 0.0, {})])
        journal.write(first)
        again = JournalBatch(submitted=[("b", BARE, ("data",), [b"2"], 2, 0.0, {})] * 1)
        again.submitted.append(("a", BARE, ("data",), [b"3"], 3, 0.0, {}))
        with pytest.raises(JournalError, match="job a is already in it"):
            journal.write(again)  # (a is in the log, not folded yet)
        journal.fold()
        with pytest.raises(JournalError, match="job a is already in it"):
            journal.write(again)  # (a is in the tables)
        assert [j.id for j in journal.load()] == ["a"]
    finally:
        journal.close()


# ============================================================================ the log across a kill

WRITER = textwrap.dedent(
    """
    import sys, time
    from remus.server import journal as jm
    from remus.server.journal import Journal, JournalBatch
    from remus.types import IOType, JobRequirements, Status
    REQS = JobRequirements(IOType("A", "B")).to_wire()
    jm.FOLD_ROWS, jm.FOLD_AGE, jm.FOLD_ROWS_MAX = 400, 0.05, 1600
    journal = Journal(sys.argv[1], synchronous=sys.argv[2])
    journal.start_folding()
    n = 0
    while True:
        batch = JournalBatch()
        for _ in range(25):
            n += 1
            batch.submitted.append((f"j{n}", REQS, ("data",), [b"x" * 50], n, 0.0, {}))
            if n > 1:
                batch.status.append((f"j{n - 1}", int(Status.FINISHED), "", "", 1, "w"))
                batch.results.append((f"j{n - 1}", b"result %d" % (n - 1)))
        journal.write(batch)
        print(n, flush=True)
    """
)


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_a_writer_killed_while_it_folds_loses_nothing_it_wrote(
    make_process: Callable[..., subprocess.Popen[str]], tmp_path: Path, sync: str
) -> None:
    """A process writes (its folds run in the background) until it is SIGKILLed: every batch
    it saw written is there after a reopen (log rows folded then), whole batches only."""
    path = tmp_path / "remus.db"
    proc = make_process(["-c", WRITER, str(path), sync], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    written = 0
    while written < 3000:
        line = proc.stdout.readline()
        assert line, "the writer died on its own"
        written = int(line)
    proc.send_signal(signal.SIGKILL)
    for line in proc.stdout:  # batches written between the last line read and the kill
        written = int(line)
    assert proc.wait(10) == -signal.SIGKILL
    assert Path(str(path) + "-log").exists()

    with Journal(path) as journal:
        jobs = journal.load()
    last = jobs[-1].order
    assert last >= written and last % 25 == 0  # whole batches only
    assert [j.order for j in jobs] == list(range(1, last + 1))
    for job in jobs[:-1]:
        assert (job.status, job.result, job.values) == (
            Status.FINISHED,
            b"result %d" % job.order,
            [],
        )
    assert (jobs[-1].status, jobs[-1].values) == (Status.QUEUED, [b"x" * 50])


def test_a_version_1_journal_is_upgraded_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    with conn:
        for statement in journal_apply.SCHEMA.split(";"):
            if statement.strip() and "checkpoints" not in statement:  # (version 1 had none)
                conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?)",
            [("application", "remus-journal"), ("schema_version", 1)],
        )
        conn.execute(
            "INSERT INTO jobs (id, ord, submitted_at, requirements, keys, options, status,"
            " changed_at) VALUES ('old', 1, 0, ?, ?, NULL, 1, 0)",
            (journal_module._pack(BARE), journal_module._pack(["data"])),
        )
        conn.execute("INSERT INTO contents (job_id, idx, value) VALUES ('old', 0, x'01')")
    conn.close()
    with Journal(path) as journal:
        assert [(j.id, j.values) for j in journal.load()] == [("old", [b"\x01"])]
        journal.write(JournalBatch(submitted=[("new", BARE, ("data",), [b"2"], 2, 0.0, {})]))
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    conn.close()
    assert version == (journal_module.SCHEMA_VERSION,)
    with Journal(path) as journal:
        assert [j.id for j in journal.load()] == ["old", "new"]


def test_the_log_of_another_journal_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path / "a.db").close()
    Journal(tmp_path / "b.db").close()
    (tmp_path / "b.db-log").replace(tmp_path / "a.db-log")
    with pytest.raises(ConfigError, match="is not the log of the journal"):
        Journal(tmp_path / "a.db")


# ============================================================================ held replies


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()


def wait_committed(commits: GroupCommit, timeout: float = 10.0) -> list[Any]:
    """What the writer released, once it says something."""
    assert commits.pipe.poll(int(timeout * 1000)), "the writer said nothing"
    return commits.committed()


def submit(job_id: str) -> JournalBatch:
    return JournalBatch(submitted=[(job_id, BARE, ("data",), [b"x"], 1, 0.0, {})])


def test_outboxes_are_held_until_their_batch_is_durable_and_leave_in_pass_order(
    tmp_path: Path, context: zmq.Context[Any]
) -> None:
    journal = Journal(tmp_path / "remus.db")
    commits = GroupCommit(context, journal, "inproc://test-group-commit", threaded=True)
    try:
        commits.start(5.0)
        assert commits.after_pass(submit("a"), "out 1") == []  # (its batch is not durable yet)
        assert commits.after_pass(None, "out 2") == []  # (it may tell of pass 1: it waits)
        released: list[Any] = []
        wait_for(lambda: released.extend(wait_committed(commits)) or len(released) == 2)
        assert released == ["out 1", "out 2"]
        assert commits.after_pass(None, "out 3") == ["out 3"]  # (nothing waits: at once)
        assert commits.finish(5.0) == []
    finally:
        commits.close(5.0)
        journal.close()
    with Journal(tmp_path / "remus.db") as again:
        assert [j.id for j in again.load()] == ["a"]


def test_a_failed_write_sends_nothing_held_and_says_why(
    tmp_path: Path, context: zmq.Context[Any]
) -> None:
    journal = Journal(tmp_path / "remus.db")
    journal.write(submit("a"))
    commits = GroupCommit(context, journal, "inproc://test-group-commit-fail", threaded=True)
    try:
        commits.start(5.0)
        assert commits.after_pass(submit("a"), "accepted a again") == []  # (refused: a is in)
        assert commits.after_pass(None, "later") == []
        with pytest.raises(JournalError, match="is already in it"):
            wait_committed(commits)
        with pytest.raises(JournalError, match="write is not sent"):
            commits.after_pass(None, "after")
        with pytest.raises(JournalError):
            commits.finish(1.0)
    finally:
        commits.close(5.0)
        journal.close()


def test_inline_commits_send_each_pass_once_written(
    tmp_path: Path, context: zmq.Context[Any]
) -> None:
    journal = Journal(tmp_path / "remus.db")
    commits = GroupCommit(context, journal, "inproc://test-group-commit-inline", threaded=False)
    try:
        commits.start(5.0)
        assert commits.after_pass(submit("a"), "out 1") == ["out 1"]
        with pytest.raises(JournalError, match="is already in it"):
            commits.after_pass(submit("a"), "never sent")
    finally:
        commits.close(5.0)
        journal.close()


# ============================================================================ a real broker, killed

EDGES = IOType("Text", "Echo")


@pytest.mark.parametrize("sync", ["normal", "full"])
def test_a_broker_killed_right_after_acknowledging_loses_nothing_it_acknowledged(
    tmp_path: Path,
    make_process: Callable[..., subprocess.Popen[str]],
    make_client: Callable[..., Any],
    sync: str,
) -> None:
    """Clients submit batch after batch while a worker process runs them; the moment the
    last submit is acknowledged (and the results seen so far are in), the broker is
    SIGKILLed. Started again on its journal, it has every job it accepted, and every result
    a client saw is there, the same bytes."""
    journal = tmp_path / "remus.db"
    options = ("--journal", str(journal), "--journal-sync", sync)
    broker, ports = launch_cli_server(make_process, *options)
    assert ports is not None
    worker = make_process([ECHO_WORKER, ports.worker, "--heartbeat", "0.1"])
    c = make_client(ports.client, timeout=10.0)
    wait_for(lambda: c.can_mesh(EDGES), timeout=20)
    accepted = []
    for round_ in range(20):
        subs = [JobSubmission.of(EDGES, b"%d-%d" % (round_, i)) for i in range(50)]
        accepted += c.submit_jobs(subs)  # each returns once the broker acknowledged it
    # results the broker said it holds
    finished = [s.job_id for s in c.job_statuses(accepted) if s.status is Status.FINISHED]
    assert finished, "the worker finished nothing before the kill: nothing was checked"
    seen = {job_id: bytes(c.retrieve_result(job_id).data) for job_id in finished[:200]}
    sigkill(broker)
    sigkill(worker)  # (else it hands its unacknowledged results in again after the restart)

    broker = restart_cli_server(make_process, ports, *options)
    statuses = c.job_statuses(accepted)
    assert Status.INVALID not in {s.status for s in statuses}, "an accepted job was lost"
    for job_id in finished:
        assert c.job_status(job_id).status is Status.FINISHED
    for job_id, data in seen.items():
        assert bytes(c.retrieve_result(job_id).data) == data
    broker.terminate()
    assert broker.wait(10) == 0
