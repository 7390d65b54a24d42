"""The broker's durable journal: what it must not forget when it is killed, in one SQLite file.

The core gathers what happened during one loop pass into a :class:`JournalBatch` and calls
:meth:`Journal.write` once, *before* it sends the pass's replies: a job is in the journal before
its client is told it was accepted, a result is in it before its worker is told it was received.
After a restart, :meth:`Journal.load` hands back every job that was not forgotten, in submission
order, for the core to rebuild its state from.

Durability, and its limit
-------------------------
The file is in WAL mode with ``synchronous=NORMAL``. A commit appends the transaction's pages
and a commit frame to the ``-wal`` file with ``write(2)`` before :meth:`Journal.write` returns;
from then on the bytes are in the operating system's page cache, which belongs to the kernel,
not to the broker. A SIGKILL (or a crash, or an OOM kill) of the broker therefore loses nothing
committed: the next open replays the WAL. A transaction cut short by the kill has no commit
frame and is ignored as a whole, so a batch is in the journal entirely or not at all.
``NORMAL`` only skips the ``fsync`` at each commit (WAL frames are synced at checkpoints), which
is what makes small batches cheap. The price: a power loss or a kernel crash may lose the last
transactions before the latest checkpoint (the file stays consistent; it is the most recent
batches that may be missing). Surviving that needs ``synchronous=FULL`` and is out of scope.

The file is opened in exclusive locking mode: one broker per journal. A second process (or a
second :class:`Journal` in this one) that opens it while it is in use gets a ConfigError.

The journal is not thread-safe: one thread (the core thread) uses it at a time.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from remus.errors import ConfigError, RemusError
from remus.types import Buffer, JobRequirements, Status

log = logging.getLogger(__name__)

#: bump when the tables change; a file of another version is refused, never guessed at
SCHEMA_VERSION = 1
#: what the meta table says this file is, so that some other SQLite file is not taken for one
APPLICATION = "remus-journal"
#: free pages (4 KiB each) tolerated before the file is shrunk after contents are deleted
VACUUM_THRESHOLD_PAGES = 4096
#: the WAL file is truncated back to this after a checkpoint (a big blob grows it)
WAL_SIZE_LIMIT = 64 * 1024 * 1024

#: the final statuses (Status.done) lie from here to there; WAITING lies past them
_FINAL, _LAST = int(Status.FINISHED), int(Status.TERMINATED)

# -------------------------------------------------------------------------- batch rows

#: job id, JobRequirements.to_wire(), content keys, content values, order, submitted_at
#: (wall clock), options (msgpack-able; empty for none)
Submitted = tuple[str, list[Any], tuple[str, ...], Sequence[Buffer], int, float, dict[str, Any]]
#: job id, status, reason, traceback, attempt, worker name
StatusChange = tuple[str, int, str, str, int, str]
#: job id, result bytes (or any buffer: memoryview, zmq.Frame)
Result = tuple[str, Buffer]
#: job id, seq, value (0-100 or None), message
Progress = tuple[str, int, int | None, str]
#: job id, its latest checkpoint
Checkpoint = tuple[str, Buffer]


@dataclass(slots=True)
class JournalBatch:
    """What happened during one loop pass. Rows are applied in the order of these fields
    (submitted, status, results, progress, forgotten), each list in its own order."""

    submitted: list[Submitted] = field(default_factory=list)
    status: list[StatusChange] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    progress: list[Progress] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.submitted
            or self.status
            or self.results
            or self.progress
            or self.forgotten
            or self.checkpoints
        )

    def clear(self) -> None:
        self.submitted.clear()
        self.status.clear()
        self.results.clear()
        self.progress.clear()
        self.forgotten.clear()
        self.checkpoints.clear()


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


class JournalError(RemusError):
    """The journal could not be written or read (disk full, I/O error, closed journal)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"journal {path}: {problem}")
        self.path = path
        self.problem = problem


# -------------------------------------------------------------------------- SQL

_SCHEMA = """
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
"""
#: added to a file of this schema version that lacks it (it came later; nothing else changed)
_CHECKPOINTS = (
    "CREATE TABLE IF NOT EXISTS checkpoints (job_id TEXT PRIMARY KEY, value BLOB NOT NULL)"
)
_SAVE_CHECKPOINT = "INSERT OR REPLACE INTO checkpoints (job_id, value) VALUES (?, ?)"

_NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # unix time, on SQLite before 3.42
_INSERT_JOB = (
    "INSERT INTO jobs (id, ord, submitted_at, requirements, keys, options, status, changed_at)"
    f" VALUES (?, ?, ?, ?, ?, ?, {int(Status.QUEUED)}, ?3)"
)
_INSERT_CONTENT = "INSERT INTO contents (job_id, idx, value) VALUES (?, ?, ?)"
# the batch's tuples are bound as they are: ?1 is the job id
_UPDATE_STATUS = (
    "UPDATE jobs SET status = ?2, reason = ?3, traceback = ?4, attempt = ?5, worker = ?6,"
    f" changed_at = {_NOW} WHERE id = ?1"
)
_DELETE_CONTENTS = "DELETE FROM contents WHERE job_id = ?"
_DELETE_CHECKPOINT = "DELETE FROM checkpoints WHERE job_id = ?"
# a result is written after the pass's status changes, so that no later UPDATE of the row
# in the same batch rewrites a big result (SQLite rewrites the whole record)
_UPDATE_RESULT = "UPDATE jobs SET result = ?2 WHERE id = ?1"
_INSERT_PROGRESS = (
    "INSERT OR REPLACE INTO progress (job_id, seq, value, message) VALUES (?, ?, ?, ?)"
)
_TRIM_PROGRESS = "DELETE FROM progress WHERE job_id = ? AND seq <= ?"
_FORGET = (
    "DELETE FROM jobs WHERE id = ?",
    "DELETE FROM contents WHERE job_id = ?",
    "DELETE FROM progress WHERE job_id = ?",
    "DELETE FROM checkpoints WHERE job_id = ?",
)


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class Journal:
    """A SQLite journal of the broker's jobs. ``Journal(path)`` opens or creates it.

    ``progress_limit`` keeps at most that many progress updates per job (the newest), like
    ``ServerConfig.max_progress_history``; None keeps them all.
    """

    def __init__(self, path: str | os.PathLike[str], *, progress_limit: int | None = None) -> None:
        self.path = os.fspath(path)
        if progress_limit is not None and progress_limit < 1:
            raise ConfigError("Journal progress_limit must be at least 1, or None to keep all")
        self.progress_limit = progress_limit
        self.batches = 0
        self.jobs_written = 0
        self._packed_keys: dict[tuple[str, ...], bytes] = {}
        self._conn: sqlite3.Connection | None = self._open()
        #: the largest content value or result SQLite stores (SQLITE_LIMIT_LENGTH); the core
        #: must refuse larger ones before accepting them: one too big fails its whole batch
        self.max_blob = self._conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)

    # ------------------------------------------------------------------ lifetime

    def _open(self) -> sqlite3.Connection:
        where = self.path
        try:
            # timeout=0: a journal in use by another broker is refused at once, not waited on
            conn = sqlite3.connect(where, timeout=0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise ConfigError(
                f"cannot open the journal {where}: {e}; give a file path in a folder that "
                "exists and that this user may write to"
            ) from None
        try:
            self._setup(conn)
        except ConfigError:
            conn.close()
            raise
        except sqlite3.Error as e:
            conn.close()
            text = str(e)
            if "locked" in text:
                hint = "another broker (or another Journal) is using it; give each its own file"
            elif "not a database" in text:
                hint = "it is not an SQLite file; give a new path or the journal of a broker"
            else:
                hint = "give a file path in a folder that exists and that this user may write to"
            raise ConfigError(f"cannot open the journal {where}: {text}; {hint}") from None
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        # exclusive locking before WAL: no shared-memory index, and one process per journal
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes on a new, empty file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise ConfigError(
                f"the journal {self.path} cannot use WAL mode (SQLite chose {mode!r}); "
                "give a path on a local file system"
            )
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        conn.execute("BEGIN EXCLUSIVE")  # takes the lock now, not at the first write
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [("application", APPLICATION), ("schema_version", SCHEMA_VERSION)],
                )
                log.info("created the journal %s", self.path)
            else:
                self._check_meta(conn, tables)
            conn.execute(_CHECKPOINTS)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _check_meta(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        meta = dict(conn.execute("SELECT name, value FROM meta")) if "meta" in tables else {}
        if meta.get("application") != APPLICATION:
            raise ConfigError(
                f"{self.path} is an SQLite file but not a remus journal; "
                "give a new path (the journal is created there) or the journal of a broker"
            )
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"the journal {self.path} has schema version {version!r}, and this remus "
                f"reads version {SCHEMA_VERSION} only; open it with the remus that wrote it, "
                "or give a new path"
            )

    def close(self) -> None:
        """Checkpoint and close (the ``-wal`` file goes away). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"<Journal {self.path} {state} batches={self.batches} jobs={self.jobs_written}>"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(self.path, "the journal is closed")
        return self._conn

    # ------------------------------------------------------------------ writing

    def write(self, batch: JournalBatch) -> None:
        """Apply one pass's batch in one transaction; when this returns, a SIGKILL loses none
        of it. On failure nothing of the batch is written and JournalError is raised (the
        core must then not send the pass's replies)."""
        if not batch:
            return
        conn = self._connection()
        conn.execute("BEGIN")
        try:
            freed = self._apply(conn, batch)
            shrink = freed and self._free_pages(conn) > VACUUM_THRESHOLD_PAGES
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error):
                raise JournalError(self.path, f"cannot write a batch: {e}") from e
            raise
        self.batches += 1
        self.jobs_written += len(batch.submitted)
        if shrink:
            self._shrink(conn)

    def _apply(self, conn: sqlite3.Connection, batch: JournalBatch) -> bool:
        """The batch's statements; returns whether anything was deleted."""
        if batch.submitted:
            conn.executemany(_INSERT_JOB, self._job_rows(batch.submitted))
            conn.executemany(_INSERT_CONTENT, _content_rows(batch.submitted))
        if batch.checkpoints:  # (before the status changes: a job over drops its own)
            conn.executemany(_SAVE_CHECKPOINT, batch.checkpoints)
        freed = False
        if batch.status:
            conn.executemany(_UPDATE_STATUS, batch.status)
            final = [(row[0],) for row in batch.status if _FINAL <= row[1] <= _LAST]
            if final:
                conn.executemany(_DELETE_CONTENTS, final)
                conn.executemany(_DELETE_CHECKPOINT, final)
                freed = True
        if batch.results:
            conn.executemany(_UPDATE_RESULT, batch.results)
        if batch.progress:
            conn.executemany(_INSERT_PROGRESS, batch.progress)
            if self.progress_limit is not None:
                last: dict[str, int] = {}
                for job_id, seq, _, _ in batch.progress:
                    last[job_id] = max(seq, last.get(job_id, 0))
                limit = self.progress_limit
                conn.executemany(
                    _TRIM_PROGRESS, [(j, s - limit) for j, s in last.items() if s > limit]
                )
        if batch.forgotten:
            ids = [(job_id,) for job_id in batch.forgotten]
            for statement in _FORGET:
                conn.executemany(statement, ids)
            freed = True
        return freed

    def _job_rows(self, submitted: list[Submitted]) -> Iterator[tuple[Any, ...]]:
        packed_keys = self._packed_keys
        for job_id, reqs, keys, _, order, submitted_at, options in submitted:
            packed = packed_keys.get(keys)
            if packed is None:
                if len(packed_keys) > 1024:  # keys are usually a few shared tuples
                    packed_keys.clear()
                packed = packed_keys[keys] = _pack(list(keys))
            yield (
                job_id,
                order,
                submitted_at,
                _pack(reqs),
                packed,
                _pack(options) if options else None,
            )

    @staticmethod
    def _free_pages(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA freelist_count").fetchone()[0])

    def _shrink(self, conn: sqlite3.Connection) -> None:
        """Give free pages back to the file system (auto_vacuum), after the batch's commit:
        it only moves pages, so a kill in the middle loses nothing."""
        try:
            # executescript steps the pragma to the end (execute frees one page per call)
            conn.executescript("PRAGMA incremental_vacuum")
        except sqlite3.Error as e:
            log.warning("journal %s: could not shrink the file: %s", self.path, e)

    # ------------------------------------------------------------------ reading

    def load(self) -> list[JournaledJob]:
        """Every job not forgotten, in submission order (``order``)."""
        conn = self._connection()
        try:
            contents: dict[str, list[bytes]] = {}
            for job_id, value in conn.execute(
                "SELECT job_id, value FROM contents ORDER BY job_id, idx"
            ):
                contents.setdefault(job_id, []).append(value)
            progress: dict[str, list[tuple[int, int | None, str]]] = {}
            for job_id, seq, value, message in conn.execute(
                "SELECT job_id, seq, value, message FROM progress ORDER BY job_id, seq"
            ):
                progress.setdefault(job_id, []).append((seq, value, message))
            rows = conn.execute(
                "SELECT id, requirements, keys, ord, submitted_at, options, status, reason,"
                " traceback, attempt, worker, result, changed_at FROM jobs ORDER BY ord"
            ).fetchall()
            checkpoints = dict(conn.execute("SELECT job_id, value FROM checkpoints"))
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot read it: {e}") from e
        return [
            replace(job, checkpoint=checkpoints.get(job.id)) if job.id in checkpoints else job
            for job in (_job(row, contents, progress) for row in rows)
        ]


def _content_rows(submitted: Iterable[Submitted]) -> Iterator[tuple[str, int, Buffer]]:
    for job_id, _, _, values, *_ in submitted:
        for idx, value in enumerate(values):
            yield (job_id, idx, value)  # a buffer is bound as a BLOB without a copy


def _job(
    row: tuple[Any, ...],
    contents: dict[str, list[bytes]],
    progress: dict[str, list[tuple[int, int | None, str]]],
) -> JournaledJob:
    (job_id, reqs, keys, order, submitted_at, options, status, reason, tb, attempt, worker,
     result, changed_at) = row  # fmt: skip
    return JournaledJob(
        id=job_id,
        requirements=JobRequirements.from_wire(_unpack(reqs)),
        keys=tuple(_unpack(keys)),
        values=contents.get(job_id, []),
        order=order,
        submitted_at=submitted_at,
        options=_unpack(options) if options is not None else {},
        status=Status(status),
        reason=reason,
        traceback=tb,
        attempt=attempt,
        worker=worker,
        result=result,
        progress=progress.get(job_id, []),
        changed_at=changed_at,
    )
