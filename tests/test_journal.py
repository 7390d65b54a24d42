"""The durable journal (remus.server.journal): what is written comes back, across a reopen and a
SIGKILL, and nothing more than the broker needs stays in the file.

``python tests/test_journal.py`` prints the jobs/s the journal sustains on this machine.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remus.errors import ConfigError
from remus.server.journal import SCHEMA_VERSION, Journal, JournalBatch, JournalError
from remus.types import IOType, JobRequirements, Status

REQS = JobRequirements(IOType("Edges", "Mesh2D"), "mesher", {"q": [1, 2]}, b"\x00file", "JSON")
BARE = JobRequirements(IOType("A", "B"))


def submitted(
    job_id: str,
    order: int,
    values: list[Any] | None = None,
    *,
    reqs: JobRequirements = BARE,
    keys: tuple[str, ...] = ("data",),
    options: dict[str, Any] | None = None,
) -> Any:
    values = [f"content of {job_id}".encode()] if values is None else values
    return (job_id, reqs.to_wire(), keys, values, order, 1_700_000_000.0 + order, options or {})


@pytest.fixture
def open_journal(tmp_path: Path) -> Iterator[Callable[..., Journal]]:
    """Journals on ``tmp_path/remus.db`` (or a given path), closed at the end."""
    made: list[Journal] = []

    def make(path: Path | None = None, **kwargs: Any) -> Journal:
        journal = Journal(path or tmp_path / "remus.db", **kwargs)
        made.append(journal)
        return journal

    yield make
    for journal in made:
        journal.close()


def by_id(journal: Journal) -> dict[str, Any]:
    return {job.id: job for job in journal.load()}


def count_rows(path: Path, table: str) -> int:
    """Rows in a table of a closed journal, read with plain sqlite3."""
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


# ------------------------------------------------------------------ round trips


def test_every_field_round_trips(open_journal: Callable[..., Journal], tmp_path: Path) -> None:
    journal = open_journal()
    options = {"run_limit": 2.5, "queue_limit": None, "nested": {"a": [1, "b"]}}
    journal.write(
        JournalBatch(
            submitted=[
                submitted("a", 1, [b"one", b"two"], reqs=REQS, keys=("x", "y"), options=options),
                submitted("b", 2),
                submitted("c", 3, []),
                submitted("d", 4),
            ]
        )
    )
    journal.write(
        JournalBatch(
            status=[
                ("a", Status.IN_PROGRESS, "", "", 1, "mesher@host:1"),
                ("b", int(Status.IN_PROGRESS), "", "", 1, "w@h:2"),
                ("d", Status.IN_PROGRESS, "", "", 1, "w@h:2"),
            ],
            progress=[("a", 1, 10, "meshing"), ("a", 2, None, "still"), ("b", 1, 50, "")],
        )
    )
    journal.write(
        JournalBatch(
            status=[
                ("b", Status.FINISHED, "", "", 1, "w@h:2"),
                ("d", Status.FAILED, "boom", "Traceback ...\nValueError: boom", 2, "w@h:3"),
            ],
            results=[("b", b"result of b")],
        )
    )
    journal.close()
    jobs = by_id(open_journal(tmp_path / "remus.db"))

    a = jobs["a"]
    assert a.requirements == REQS and a.requirements.tag == {"q": [1, 2]}
    assert a.keys == ("x", "y") and a.values == [b"one", b"two"]
    assert (a.order, a.submitted_at, a.options) == (1, 1_700_000_001.0, options)
    assert (a.status, a.attempt, a.worker, a.result) == (
        Status.IN_PROGRESS,
        1,
        "mesher@host:1",
        None,
    )
    assert a.progress == [(1, 10, "meshing"), (2, None, "still")]
    assert abs(a.changed_at - time.time()) < 60

    b = jobs["b"]
    assert (b.status, b.result, b.values, b.progress) == (
        Status.FINISHED,
        b"result of b",
        [],
        [(1, 50, "")],
    )
    c = jobs["c"]
    assert (c.status, c.values, c.options, c.attempt, c.worker) == (Status.QUEUED, [], {}, 1, "")
    d = jobs["d"]
    assert (d.status, d.reason, d.attempt, d.worker) == (Status.FAILED, "boom", 2, "w@h:3")
    assert d.traceback.endswith("ValueError: boom") and d.result is None
    assert isinstance(d.status, Status)


def test_load_is_in_submission_order(open_journal: Callable[..., Journal]) -> None:
    journal = open_journal()
    journal.write(JournalBatch(submitted=[submitted("z", 3), submitted("y", 1)]))
    journal.write(JournalBatch(submitted=[submitted("x", 2)]))
    assert [job.id for job in journal.load()] == ["y", "x", "z"]


def test_batches_accumulate_across_reopen(
    open_journal: Callable[..., Journal], tmp_path: Path
) -> None:
    path = tmp_path / "remus.db"
    with Journal(path) as journal:
        journal.write(JournalBatch(submitted=[submitted("a", 1), submitted("b", 2)]))
    with Journal(path) as journal:
        assert [j.id for j in journal.load()] == ["a", "b"]
        # a requeue after a restart: back to QUEUED, one more attempt
        journal.write(
            JournalBatch(
                submitted=[submitted("c", 3)],
                status=[("a", Status.QUEUED, "", "", 2, "")],
            )
        )
    jobs = by_id(open_journal(path))
    assert list(jobs) == ["a", "b", "c"]
    assert (jobs["a"].status, jobs["a"].attempt, jobs["a"].values) == (
        Status.QUEUED,
        2,
        [b"content of a"],
    )


def test_an_empty_batch_writes_nothing(open_journal: Callable[..., Journal]) -> None:
    journal = open_journal()
    batch = JournalBatch()
    assert not batch
    journal.write(batch)
    assert journal.batches == 0
    batch.forgotten.append("x")
    assert batch
    batch.clear()
    assert not batch


def test_buffers_are_accepted_as_values_and_results(open_journal: Callable[..., Journal]) -> None:
    zmq = pytest.importorskip("zmq")
    journal = open_journal()
    backing = bytearray(b"__view__")
    values = [memoryview(backing)[2:6], bytearray(b"array"), zmq.Frame(b"frame"), b"bytes"]
    journal.write(JournalBatch(submitted=[submitted("a", 1, values, keys=("m", "b", "f", "y"))]))
    journal.write(
        JournalBatch(
            submitted=[submitted("r1", 2), submitted("r2", 3)],
            status=[
                ("r1", Status.FINISHED, "", "", 1, "w"),
                ("r2", Status.FINISHED, "", "", 1, "w"),
            ],
            results=[("r1", memoryview(b"viewed result")), ("r2", zmq.Frame(b"frame result"))],
        )
    )
    jobs = by_id(journal)
    assert jobs["a"].values == [b"view", b"array", b"frame", b"bytes"]
    assert all(type(v) is bytes for v in jobs["a"].values)
    assert (jobs["r1"].result, jobs["r2"].result) == (b"viewed result", b"frame result")


def test_a_64_mib_blob_round_trips(open_journal: Callable[..., Journal], tmp_path: Path) -> None:
    big = bytes(range(256)) * (64 * 1024 * 1024 // 256)
    journal = open_journal()
    journal.write(JournalBatch(submitted=[submitted("big", 1, [memoryview(big)])]))
    journal.write(
        JournalBatch(
            submitted=[submitted("out", 2)],
            status=[("out", Status.FINISHED, "", "", 1, "w")],
            results=[("out", memoryview(big))],
        )
    )
    journal.close()
    jobs = by_id(open_journal(tmp_path / "remus.db"))
    assert jobs["big"].values[0] == big
    assert jobs["out"].result == big


# ------------------------------------------------------------------ what goes away


def test_contents_are_deleted_when_a_job_ends(
    open_journal: Callable[..., Journal], tmp_path: Path
) -> None:
    journal = open_journal()
    ids = ["fin", "fail", "exp", "term", "run", "queued"]
    journal.write(
        JournalBatch(submitted=[submitted(i, n, [b"x" * 100, b"y"]) for n, i in enumerate(ids)])
    )
    journal.write(
        JournalBatch(
            status=[
                ("fin", Status.FINISHED, "", "", 1, "w"),
                ("fail", Status.FAILED, "r", "", 1, "w"),
                ("exp", Status.EXPIRED, "r", "", 1, "w"),
                ("term", Status.TERMINATED, "r", "", 1, "w"),
                ("run", Status.IN_PROGRESS, "", "", 1, "w"),
            ]
        )
    )
    jobs = by_id(journal)
    assert {i: len(jobs[i].values) for i in ids} == {
        "fin": 0, "fail": 0, "exp": 0, "term": 0, "run": 2, "queued": 2,
    }  # fmt: skip
    journal.close()
    assert count_rows(tmp_path / "remus.db", "contents") == 4  # a running job keeps its inputs


def test_forgotten_jobs_disappear(open_journal: Callable[..., Journal], tmp_path: Path) -> None:
    journal = open_journal()
    journal.write(JournalBatch(submitted=[submitted("a", 1), submitted("b", 2)]))
    journal.write(
        JournalBatch(
            status=[("a", Status.FINISHED, "", "", 1, "w")],
            results=[("a", b"r")],
            progress=[("a", 1, 1, "m"), ("b", 1, 1, "m")],
        )
    )
    journal.write(JournalBatch(forgotten=["a", "never-known"]))
    assert [j.id for j in journal.load()] == ["b"]
    journal.close()
    path = tmp_path / "remus.db"
    assert [count_rows(path, t) for t in ("jobs", "contents", "progress")] == [1, 1, 1]


def test_progress_history_is_trimmed_to_its_limit(open_journal: Callable[..., Journal]) -> None:
    journal = open_journal(progress_limit=3)
    journal.write(JournalBatch(submitted=[submitted("a", 1)]))
    for seq in range(1, 6):
        journal.write(JournalBatch(progress=[("a", seq, seq * 10, f"step {seq}")]))
    journal.write(JournalBatch(progress=[("a", s, None, "") for s in (6, 7)]))
    assert [u[0] for u in journal.load()[0].progress] == [5, 6, 7]


def test_the_file_shrinks_after_big_contents_go(
    open_journal: Callable[..., Journal], tmp_path: Path
) -> None:
    path = tmp_path / "remus.db"
    journal = open_journal(path)
    journal.write(JournalBatch(submitted=[submitted("a", 1, [bytes(32 * 1024 * 1024)])]))
    journal.write(JournalBatch(status=[("a", Status.TERMINATED, "", "", 1, "")]))
    journal.close()
    assert path.stat().st_size < 4 * 1024 * 1024


# ------------------------------------------------------------------ crashes


CHILD = textwrap.dedent(
    """
    import sys
    from remus.server.journal import Journal, JournalBatch
    from remus.types import IOType, JobRequirements, Status

    reqs = JobRequirements(IOType("A", "B")).to_wire()
    journal = Journal(sys.argv[1])
    n = 0
    while True:
        batch = JournalBatch()
        for _ in range(50):
            n += 1
            batch.submitted.append((f"j{n}", reqs, ("data",), [b"x" * 100], n, 0.0, {}))
            if n > 1:
                batch.status.append((f"j{n - 1}", Status.FINISHED, "", "", 1, "w"))
                batch.results.append((f"j{n - 1}", b"result %d" % (n - 1)))
        journal.write(batch)
        print(n, flush=True)
    """
)


def test_sigkill_loses_nothing_written(
    make_process: Callable[..., subprocess.Popen[str]],
    open_journal: Callable[..., Journal],
    tmp_path: Path,
) -> None:
    """A process writes batches until it is killed mid-stream: every batch it saw committed
    is there after a reopen, and the batch cut short is there whole or not at all."""
    path = tmp_path / "remus.db"
    proc = make_process(["-c", CHILD, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    committed = 0
    while committed < 2000:
        line = proc.stdout.readline()
        assert line, "the writer died on its own"
        committed = int(line)
    proc.send_signal(signal.SIGKILL)
    for line in proc.stdout:  # batches committed between the last line read and the kill
        committed = int(line)
    assert proc.wait(10) == -signal.SIGKILL

    jobs = open_journal(path).load()
    last = jobs[-1].order
    assert last >= committed and last % 50 == 0  # whole batches only
    assert [j.order for j in jobs] == list(range(1, last + 1))
    for job in jobs[:-1]:
        assert (job.status, job.result, job.values) == (
            Status.FINISHED,
            b"result %d" % job.order,
            [],
        )
    assert (jobs[-1].status, jobs[-1].values) == (Status.QUEUED, [b"x" * 100])


# ------------------------------------------------------------------ refusals


def test_an_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "remus.db"
    Journal(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE name = 'schema_version'", (SCHEMA_VERSION + 1,)
        )
    conn.close()
    with pytest.raises(ConfigError, match="schema version") as info:
        Journal(path)
    assert str(path) in str(info.value)


def test_another_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE things (x)")
    conn.close()
    with pytest.raises(ConfigError, match="not a remus journal"):
        Journal(path)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database at all, just some text that fills a header " * 10)
    with pytest.raises(ConfigError, match="not an SQLite file") as info:
        Journal(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("where", ["missing/remus.db", "."])
def test_an_unopenable_path_is_a_config_error(tmp_path: Path, where: str) -> None:
    path = tmp_path / where
    with pytest.raises(ConfigError, match="folder that exists") as info:
        Journal(path)
    assert str(path) in str(info.value)


def test_a_journal_in_use_is_refused(open_journal: Callable[..., Journal], tmp_path: Path) -> None:
    path = tmp_path / "remus.db"
    Journal(path).close()
    first = open_journal(path)  # an existing file: the lock is taken at open, not at a write
    with pytest.raises(ConfigError, match="using it"):
        Journal(path)
    first.close()
    open_journal(path).write(JournalBatch(submitted=[submitted("a", 1)]))


def test_a_failed_batch_writes_nothing(open_journal: Callable[..., Journal]) -> None:
    journal = open_journal()
    journal.write(JournalBatch(submitted=[submitted("a", 1)]))
    with pytest.raises(JournalError, match="cannot write a batch"):
        journal.write(JournalBatch(submitted=[submitted("b", 2), submitted("a", 3)]))
    assert [j.id for j in journal.load()] == ["a"]
    journal.close()
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.load()


# ------------------------------------------------------------------ throughput


def measure(path: Path, jobs: int, batch_size: int = 500, size: int = 100) -> float:
    """Jobs/s through the journal: each job submitted in one batch, finished with a result in
    the next (the pattern of a busy broker with fast workers)."""
    reqs = BARE.to_wire()
    content = b"c" * size
    batches = []
    for start in range(0, jobs, batch_size):
        ids = [f"5f3a9c01d2e4-{start + i + 1:x}" for i in range(batch_size)]  # as Client makes
        batches.append(
            (
                JournalBatch(
                    submitted=[
                        (j, reqs, ("data",), [content], start + i, 0.0, {})
                        for i, j in enumerate(ids)
                    ]
                ),
                JournalBatch(
                    status=[(j, Status.FINISHED, "", "", 1, "w@h:1") for j in ids],
                    results=[(j, content) for j in ids],
                ),
            )
        )
    with Journal(path) as journal:
        started = time.perf_counter()
        for submit, finish in batches:
            journal.write(submit)
            journal.write(finish)
        return jobs / (time.perf_counter() - started)


def test_the_journal_keeps_up_with_a_busy_broker(tmp_path: Path) -> None:
    """A floor far below what it does (see ``python tests/test_journal.py``), to catch a
    lost executemany or a commit per row, not to benchmark a shared machine."""
    measure(tmp_path / "warm.db", 1000)
    assert measure(tmp_path / "remus.db", 10_000) > 5_000


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        measure(Path(folder) / "warmup.db", 5_000)
        for n in (20_000, 100_000):
            rates = [measure(Path(folder) / f"r{n}-{k}.db", n) for k in range(3)]
            print(
                f"{n:>7} jobs, batches of 500, 100 B: "
                f"{max(rates):>9,.0f} jobs/s best, {min(rates):>9,.0f} worst",
                file=sys.stdout,
            )
