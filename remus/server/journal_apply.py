"""The journal's tables, and writing a :class:`~remus.server.journal_plan.GroupPlan` into them.

The tables (``jobs``, ``contents``, ``progress``, ``checkpoints``, and ``meta``) are the state a
restarted broker loads; :mod:`remus.server.journal` creates them (:data:`SCHEMA`) and folds
its log into them through a :class:`Tables`. Each kind of row is written with multi-row
statements (one statement, one step for up to :data:`CHUNK` rows): about a quarter less CPU
per row than ``executemany``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack

from remus.server.journal_plan import GroupPlan
from remus.types import Status

#: the journal file's tables (schema version 2; SCHEMA_VERSION in remus.server.journal)
SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    requirements BLOB NOT NULL,
    keys BLOB NOT NULL,
    options BLOB,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    traceback TEXT NOT NULL DEFAULT '',
    attempt INTEGER NOT NULL DEFAULT 1,
    worker TEXT NOT NULL DEFAULT '',
    result BLOB,
    changed_at REAL NOT NULL
);
CREATE TABLE contents (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE progress (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    value INTEGER,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TABLE checkpoints (job_id TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE result_files (job_id TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE worker_acks (worker TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
"""
#: the table of file results' file sets, added within schema version 2 (made at open if missing)
RESULT_FILES_TABLE = (
    "CREATE TABLE IF NOT EXISTS result_files (job_id TEXT PRIMARY KEY, value BLOB NOT NULL)"
)
#: each worker's highest applied report (recovery.Recovery), added within schema version 2
WORKER_ACKS_TABLE = (
    "CREATE TABLE IF NOT EXISTS worker_acks (worker TEXT PRIMARY KEY, seq INTEGER NOT NULL)"
    " WITHOUT ROWID"
)
#: what upgrades a file of schema version 1 (checkpoints came late in version 1)
UPGRADE_1 = (
    "CREATE TABLE IF NOT EXISTS checkpoints (job_id TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "UPDATE meta SET value = 2 WHERE name = 'schema_version'",
)

#: rows per multi-row statement; 13 columns x 64 rows stays under the 999 parameters that
#: SQLite before 3.32 allows
CHUNK = 64
_SIZES = (CHUNK, 16, 4)
#: UPDATE ... FROM came with SQLite 3.33; before it, updates go row by row
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
_QUEUED = int(Status.QUEUED)

# a submission replaces a job of the same id: the broker refuses one before it is journaled,
# and a fold must never fail on a row the log already holds (it would fail at every open)
INSERT_JOB = (
    "INSERT OR REPLACE INTO jobs (id, ord, submitted_at, requirements, keys, options, status,"
    " reason, traceback, attempt, worker, result, changed_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_CONTENT = "INSERT OR REPLACE INTO contents (job_id, idx, value) VALUES (?, ?, ?)"
SAVE_CHECKPOINT = "INSERT OR REPLACE INTO checkpoints (job_id, value) VALUES (?, ?)"
SAVE_RESULT_FILES = "INSERT OR REPLACE INTO result_files (job_id, value) VALUES (?, ?)"
INSERT_PROGRESS = (
    "INSERT OR REPLACE INTO progress (job_id, seq, value, message) VALUES (?, ?, ?, ?)"
)
# rows are bound as the plan gives them: ?1 is the job id
UPDATE_STATUS = (
    "UPDATE jobs SET status = ?2, reason = ?3, traceback = ?4, attempt = ?5, worker = ?6,"
    " changed_at = ?7 WHERE id = ?1"
)
UPDATE_STATUS_RESULT = (
    "UPDATE jobs SET status = ?2, reason = ?3, traceback = ?4, attempt = ?5, worker = ?6,"
    " changed_at = ?7, result = ?8 WHERE id = ?1"
)
UPDATE_RESULT = "UPDATE jobs SET result = ?2 WHERE id = ?1"
TRIM_PROGRESS = "DELETE FROM progress WHERE job_id = ? AND seq <= ?"
DELETE_JOB = "DELETE FROM jobs WHERE id = ?"
DELETE_CONTENTS = "DELETE FROM contents WHERE job_id = ?"
DELETE_PROGRESS = "DELETE FROM progress WHERE job_id = ?"
DELETE_CHECKPOINT = "DELETE FROM checkpoints WHERE job_id = ?"
DELETE_RESULT_FILES = "DELETE FROM result_files WHERE job_id = ?"
SAVE_WORKER_ACK = "INSERT OR REPLACE INTO worker_acks (worker, seq) VALUES (?, ?)"
DELETE_WORKER_ACK = "DELETE FROM worker_acks WHERE worker = ?"


def _values(columns: int, rows: int) -> str:
    one = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([one] * rows)


def _insert_many(one: str, columns: int) -> Callable[[int], str]:
    head = one.split(" VALUES")[0]
    return lambda n: f"{head} VALUES {_values(columns, n)}"


def _update_many(assignments: str, columns: int) -> Callable[[int], str] | None:
    """``UPDATE jobs SET <assignments> FROM (VALUES ...) AS v WHERE jobs.id = v.column1``."""
    if not _UPDATE_FROM:
        return None
    return lambda n: (
        f"UPDATE jobs SET {assignments} FROM (VALUES {_values(columns, n)}) AS v"
        " WHERE jobs.id = v.column1"
    )


def _delete_many(table: str, column: str) -> Callable[[int], str]:
    return lambda n: f"DELETE FROM {table} WHERE {column} IN ({', '.join('?' * n)})"


_STATUS_SET = (
    "status = v.column2, reason = v.column3, traceback = v.column4, attempt = v.column5,"
    " worker = v.column6, changed_at = v.column7"
)
#: a kind of write: its one-row statement, and its multi-row form for n rows (None: none)
Kind = tuple[str, Callable[[int], str] | None]
_INSERT_JOBS: Kind = (INSERT_JOB, _insert_many(INSERT_JOB, 13))
_INSERT_CONTENTS: Kind = (INSERT_CONTENT, _insert_many(INSERT_CONTENT, 3))

_SAVE_CHECKPOINTS: Kind = (SAVE_CHECKPOINT, _insert_many(SAVE_CHECKPOINT, 2))
_SAVE_RESULT_FILES: Kind = (SAVE_RESULT_FILES, _insert_many(SAVE_RESULT_FILES, 2))
_INSERT_PROGRESS: Kind = (INSERT_PROGRESS, _insert_many(INSERT_PROGRESS, 4))
_UPDATE_STATUS: Kind = (UPDATE_STATUS, _update_many(_STATUS_SET, 7))
_UPDATE_STATUS_RESULT: Kind = (
    UPDATE_STATUS_RESULT,
    _update_many(_STATUS_SET + ", result = v.column8", 8),
)
_UPDATE_RESULT: Kind = (UPDATE_RESULT, _update_many("result = v.column2", 2))
_DELETE_JOBS: Kind = (DELETE_JOB, _delete_many("jobs", "id"))
_DELETE_CONTENTS: Kind = (DELETE_CONTENTS, _delete_many("contents", "job_id"))
_DELETE_PROGRESS: Kind = (DELETE_PROGRESS, _delete_many("progress", "job_id"))
_DELETE_CHECKPOINTS: Kind = (DELETE_CHECKPOINT, _delete_many("checkpoints", "job_id"))
_DELETE_RESULT_FILES: Kind = (DELETE_RESULT_FILES, _delete_many("result_files", "job_id"))
#: kinds that delete rows (the file may then shrink)
_FREEING = frozenset({"ended", "forget"})


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


class Tables:
    """Writes plans into the tables of one journal connection, and keeps what that needs:
    the sets of jobs that have checkpoint and progress rows (only theirs are deleted when
    they end or go), the multi-row statements made so far, packed content keys."""

    def __init__(self, progress_limit: int | None) -> None:
        self.progress_limit = progress_limit
        self.checkpointed: set[str] = set()
        self.with_progress: set[str] = set()
        self._statements: dict[tuple[Any, int], str] = {}
        self._packed_keys: dict[tuple[str, ...], bytes] = {}
        #: the statements of each kind of row a plan yields (GroupPlan.rows)
        self._kinds: dict[str, tuple[Kind, ...]] = {
            "insert": (_INSERT_JOBS,),
            "content": (_INSERT_CONTENTS,),
            "checkpoint": (_SAVE_CHECKPOINTS,),
            "result_files": (_SAVE_RESULT_FILES,),
            "status": (_UPDATE_STATUS,),
            "status_result": (_UPDATE_STATUS_RESULT,),
            "result": (_UPDATE_RESULT,),
            "ended": (_DELETE_CONTENTS,),
            "drop_checkpoint": (_DELETE_CHECKPOINTS,),
            "forget": (_DELETE_JOBS, _DELETE_CONTENTS, _DELETE_RESULT_FILES),
            "forget_progress": (_DELETE_PROGRESS,),
            "forget_checkpoint": (_DELETE_CHECKPOINTS,),
        }

    def read_tracked(self, conn: sqlite3.Connection) -> None:
        """Read the tracked sets from the file (at open, and after a failed write); in place,
        as plans hold them."""
        self.checkpointed.clear()
        self.checkpointed.update(r[0] for r in conn.execute("SELECT job_id FROM checkpoints"))
        self.with_progress.clear()
        self.with_progress.update(
            r[0] for r in conn.execute("SELECT DISTINCT job_id FROM progress")
        )

    def plan(self) -> GroupPlan:
        return GroupPlan(self.checkpointed, self.with_progress)

    def write(self, conn: sqlite3.Connection, plan: GroupPlan) -> bool:
        """A plan's statements, inside the caller's transaction; whether anything was
        deleted. Rows go out CHUNK at a time as the plan yields them, so that the Python of a
        big fold runs in short stretches between statements (each releases the GIL), never
        keeping the core thread waiting long. The tracked sets are updated as if the
        transaction commits (a caller whose transaction fails reads them again)."""
        kinds = self._kinds
        buffers: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in kinds}
        saved: list[str] = []
        dropped: list[str] = []
        gone: list[str] = []
        freed = False
        for kind, row in plan.rows():
            rows = buffers[kind]
            rows.append(row)
            if kind == "checkpoint":
                saved.append(row[0])
            elif kind == "drop_checkpoint":
                dropped.append(row[0])
            elif kind == "forget":
                gone.append(row[0])
            if len(rows) >= CHUNK:
                self._flush(conn, kind, rows)
                freed = freed or kind in _FREEING
        for kind, rows in buffers.items():
            if rows:
                self._flush(conn, kind, rows)
                freed = freed or kind in _FREEING
        progress = plan.progress()
        if progress:
            self._bulk(conn, _INSERT_PROGRESS, progress)
            self._trim(conn, progress)
        if plan.acks:
            conn.executemany(SAVE_WORKER_ACK, [row for row in plan.acks.items() if row[1]])
            conn.executemany(DELETE_WORKER_ACK, [(n,) for n, seq in plan.acks.items() if not seq])
        self.with_progress.update(row[0] for row in progress)
        self.with_progress.difference_update(gone)
        self.checkpointed.update(saved)
        self.checkpointed.difference_update(dropped)
        self.checkpointed.difference_update(gone)
        return freed

    def _flush(self, conn: sqlite3.Connection, kind: str, rows: list[tuple[Any, ...]]) -> None:
        """Write a buffer of rows of one kind, and empty it."""
        if kind == "insert":
            rows[:] = self._job_rows(rows)
        for statements in self._kinds[kind]:
            self._bulk(conn, statements, rows)
        rows.clear()

    def _trim(self, conn: sqlite3.Connection, progress: list[tuple[Any, ...]]) -> None:
        """Keep the newest ``progress_limit`` updates of each job that got some."""
        if self.progress_limit is None:
            return
        last: dict[str, int] = {}
        for job_id, seq, _, _ in progress:
            last[job_id] = max(seq, last.get(job_id, 0))
        limit = self.progress_limit
        trims = [(j, s - limit) for j, s in last.items() if s > limit]
        if trims:
            conn.executemany(TRIM_PROGRESS, trims)

    def _bulk(self, conn: sqlite3.Connection, kind: Kind, rows: Sequence[Sequence[Any]]) -> None:
        """Run ``kind`` for every row: chunks of CHUNK, 16 and 4 rows as one statement each,
        what is left row by row."""
        one, many = kind
        done = 0
        if many is not None:
            statements = self._statements
            left = len(rows)
            for size in _SIZES:
                while left - done >= size:
                    sql = statements.get((many, size))
                    if sql is None:
                        sql = statements[(many, size)] = many(size)
                    conn.execute(sql, [value for row in rows[done : done + size] for value in row])
                    done += size
        if done < len(rows):
            conn.executemany(one, rows[done:])

    def _job_rows(self, inserts: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Full job rows: a queued job last changed when it was submitted."""
        return list(self._job_row_iter(inserts))

    def _job_row_iter(self, inserts: list[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        packed_keys = self._packed_keys
        for (job_id, reqs, keys, _, order, submitted_at, options), status, at, result in inserts:
            packed = packed_keys.get(keys)
            if packed is None:
                if len(packed_keys) > 1024:  # keys are usually a few shared tuples
                    packed_keys.clear()
                packed = packed_keys[keys] = pack(list(keys))
            head = (
                job_id,
                order,
                submitted_at,
                pack(reqs),
                packed,
                pack(options) if options else None,
            )
            if status is None:
                yield (*head, _QUEUED, "", "", 1, "", result, submitted_at)
            else:
                yield (*head, *status[1:], result, at)
