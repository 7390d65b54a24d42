"""The broker's durable journal: what it must not forget when it is killed, in SQLite.

The core gathers what happened during one loop pass into a :class:`JournalBatch` and calls
:meth:`Journal.write` once, *before* it sends the pass's replies: a job is in the journal before
its client is told it was accepted, a result is in it before its worker is told it was received.
After a restart, :meth:`Journal.load` hands back every job that was not forgotten, in submission
order, for the core to rebuild its state from.

The log and the fold
--------------------
The state a restart loads is in the tables of the journal file (``jobs``, ``contents``,
``progress``, ``checkpoints``). Writing each batch into them as it comes costs a statement per
job and change, 2-4 µs each: a tiny job took about ten, and the broker half its time. So a
write *appends* the batch, as one msgpack row, to the journal's log, a second SQLite file
beside it (``PATH-log``, :mod:`remus.server.journal_log`), and commits: that commit is what
makes the batch durable. The tables are written later, many batches at a time (a *fold*):
each job's changes are reduced to their net effect (:mod:`remus.server.journal_plan`: a job
submitted, run and finished between two folds is one insert), written with multi-row
statements (:mod:`remus.server.journal_apply`), and the last log row they cover is recorded in
the same transaction (``meta.folded``); the log rows up to it are deleted at the next append.
Opening a journal folds whatever log rows a killed broker left past ``folded``.

A fold starts when the log holds :data:`FOLD_ROWS` rows or its oldest row is :data:`FOLD_AGE`
seconds old, and before :meth:`Journal.load` and :meth:`Journal.close`. In the broker, folds
run in a process of their own (:meth:`Journal.start_folding`, :mod:`remus.server.journal_fold`)
that holds the journal file and reads the log file itself: the broker's process only encodes
and appends, and neither a fold's Python (which would hold the GIL the core thread needs) nor
its SQLite work slows the core thread. A fold that fails stops the broker at its next write.
A content or result is written twice (into the log, then into the tables) and copied once
into its log row's body.

Durability, and its limit
-------------------------
Both files are in WAL mode with ``synchronous=NORMAL`` by default. A commit appends the
transaction's pages and a commit frame to the ``-wal`` file with ``write(2)`` before
:meth:`Journal.write` returns; from then on the bytes are in the operating system's page cache,
which belongs to the kernel, not to the broker. A SIGKILL (or a crash, or an OOM kill) of the
broker therefore loses nothing committed: the next open replays the WAL. A transaction cut
short by the kill has no commit frame and is ignored as a whole, so a batch is in the journal
entirely or not at all. ``NORMAL`` only skips the ``fsync`` at each commit (WAL frames are
synced at checkpoints), which is what makes small batches cheap. The price: a power loss or a
kernel crash may lose the last transactions before the latest checkpoint (the file stays
consistent; it is the most recent batches that may be missing). ``synchronous="full"``
(``remus server --journal-sync full``) also syncs the WAL at every commit, so a commit survives
a power loss too, at the cost of one ``fsync`` per commit; the broker's group commit
(:mod:`remus.server.group_commit`) shares that cost among every pass that waited for it.
The tables' own commits (folds) use the same mode, and a log row is deleted only once the
fold that holds it has committed, so no mode loses more than it says.

The journal file is opened in exclusive locking mode: one broker per journal. A second process
(or a second :class:`Journal` in this one) that opens it while it is in use gets a ConfigError
(after :data:`LOCK_WAIT` seconds: the folding process of a broker just killed may take a
moment to go).

The journal is not thread-safe: one thread uses it at a time (the core thread; with
``"full"``, the broker's journal writer thread once the broker runs), and while folds run in
the background (:meth:`Journal.start_folding`) the journal file belongs to the folding
process.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import msgpack

from remus.errors import ConfigError
from remus.server.journal_apply import (
    RESULT_FILES_TABLE,
    SCHEMA,
    UPGRADE_1,
    WORKER_ACKS_TABLE,
    Tables,
)
from remus.server.journal_batch import (
    Checkpoint,
    JournalBatch,
    JournaledJob,
    JournalError,
    Progress,
    Result,
    StatusChange,
    Submitted,
)
from remus.server.journal_fold import FoldError, FoldProcess
from remus.server.journal_log import LogStore, decode, encode, new_journal_id
from remus.types import JobRequirements, Status

__all__ = [
    "Checkpoint",
    "Journal",
    "JournalBatch",
    "JournalError",
    "JournaledJob",
    "Progress",
    "Result",
    "StatusChange",
    "Submitted",
]

log = logging.getLogger(__name__)

#: bump when the tables change; a file of another version is refused, never guessed at
#: (2: ``meta.journal`` and ``meta.folded``, and the log file; version 1 is upgraded at open)
SCHEMA_VERSION = 2
#: what the meta table says this file is, so that some other SQLite file is not taken for one
APPLICATION = "remus-journal"
#: free pages (4 KiB each) tolerated before the file is shrunk after contents are deleted
VACUUM_THRESHOLD_PAGES = 4096
#: the WAL file is truncated back to this after a checkpoint (a big blob grows it)
WAL_SIZE_LIMIT = 64 * 1024 * 1024
#: ``synchronous`` values a journal takes: "normal" survives a kill of the broker, "full" a
#: power loss as well (one fsync per commit)
SYNC_MODES = ("normal", "full")
#: a fold starts once the log holds this many rows not folded (a job takes about four:
#: submitted, dispatched, ended, result) ...
FOLD_ROWS = 100_000
#: ... or once its oldest row is this many seconds old (the longer, the more of a job's
#: changes fold into one write)
FOLD_AGE = 1.0
#: while a fold runs in the background, appends wait for it past this many rows not folded
#: (this bounds the folding process's memory, and the time a restart takes to fold them)
FOLD_ROWS_MAX = 4 * FOLD_ROWS
#: ids per query when a write's new jobs are looked for in the tables
CHECK_CHUNK = 500
#: seconds the journal file's lock is waited for when it is opened
LOCK_WAIT = 2.0


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class Journal:
    """A SQLite journal of the broker's jobs. ``Journal(path)`` opens or creates it (and its
    log, ``path + "-log"``), folding what the log holds past the tables.

    ``progress_limit`` keeps at most that many progress updates per job (the newest), like
    ``ServerConfig.max_progress_history``; None keeps them all. ``synchronous`` is one of
    :data:`SYNC_MODES` (see "Durability, and its limit" above).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        progress_limit: int | None = None,
        synchronous: str = "normal",
    ) -> None:
        self.path = os.fspath(path)
        if progress_limit is not None and progress_limit < 1:
            raise ConfigError("Journal progress_limit must be at least 1, or None to keep all")
        if synchronous not in SYNC_MODES:
            raise ConfigError(
                f"journal synchronous mode {synchronous!r} is not one of {', '.join(SYNC_MODES)}"
            )
        self.progress_limit = progress_limit
        self.synchronous = synchronous
        self.batches = 0
        self.jobs_written = 0
        #: folds of the log into the tables so far
        self.folds = 0
        self._tables = Tables(progress_limit)
        #: the last log row written, the last the tables hold, the last deleted from the log
        self._seq = 0
        self._folded = 0
        self._dropped = 0
        #: the last row a fold under way will hold (None: none under way)
        self._in_flight: int | None = None
        #: rows written since the last fold started, and when (monotonic) the first came
        self._pending_rows = 0
        self._pending_since = 0.0
        #: what the log says of jobs it submitted or forgot (id -> held; False: forgotten),
        #: since the last fold started, and in the fold under way
        self._pending_ids: dict[str, bool] = {}
        self._sealed_ids: dict[str, bool] = {}
        self._process: FoldProcess | None = None
        self._journal_id = ""
        self._log: LogStore | None = None
        self._conn: sqlite3.Connection | None = None
        self._conn = self._open_tables()
        try:
            self._log = LogStore(self.path, synchronous, self._journal_id)
            self._seq = max(self._folded, self._log.last_seq())
            if self._seq > self._folded:
                log.info("journal %s: folding the log the last broker left", self.path)
                self.fold_through(self._seq)
        except BaseException as e:
            self._close_files()
            if isinstance(e, JournalError):
                raise ConfigError(str(e)) from None
            raise
        #: the largest content value or result SQLite stores (SQLITE_LIMIT_LENGTH); the core
        #: must refuse larger ones before accepting them: one too big fails its whole batch
        self.max_blob = self._conn.getlimit(sqlite3.SQLITE_LIMIT_LENGTH)

    # ------------------------------------------------------------------ lifetime

    def _open_tables(self) -> sqlite3.Connection:
        where = self.path
        try:
            # a journal in use by another broker is refused once LOCK_WAIT is over (not at
            # once: the folding process of a broker just killed may still be going)
            conn = sqlite3.connect(
                where, timeout=LOCK_WAIT, isolation_level=None, check_same_thread=False
            )
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
        """Lock, create or check the file; read its journal id, ``folded``, tracked sets."""
        # exclusive locking before WAL: no shared-memory index, and one process per journal
        conn.execute("PRAGMA locking_mode = EXCLUSIVE")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes on a new, empty file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise ConfigError(
                f"the journal {self.path} cannot use WAL mode (SQLite chose {mode!r}); "
                "give a path on a local file system"
            )
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        conn.execute("BEGIN EXCLUSIVE")  # takes the lock now, not at the first write
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [("application", APPLICATION), ("schema_version", SCHEMA_VERSION)],
                )
                log.info("created the journal %s", self.path)
            else:
                self._check_meta(conn, tables)
            meta = dict(conn.execute("SELECT name, value FROM meta"))
            if "journal" not in meta:  # (new, or upgraded from version 1)
                meta.update(journal=new_journal_id(), folded=0)
                conn.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [("journal", meta["journal"]), ("folded", 0)],
                )
            conn.execute(RESULT_FILES_TABLE)  # (a file from before file results were kept)
            conn.execute(WORKER_ACKS_TABLE)  # (or before workers' acks were)
            self._journal_id = str(meta["journal"])
            self._folded = int(meta["folded"])
            self._tables.read_tracked(conn)
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
        if version == 1:
            for statement in UPGRADE_1:
                conn.execute(statement)
            log.info("journal %s: upgraded from schema version 1 to %d", self.path, SCHEMA_VERSION)
            return
        if version != SCHEMA_VERSION:
            raise ConfigError(
                f"the journal {self.path} has schema version {version!r}, and this remus "
                f"reads version {SCHEMA_VERSION} only; open it with the remus that wrote it, "
                "or give a new path"
            )

    def close(self, *, fold: bool = True) -> None:
        """Stop folding in the background, fold the log (unless ``fold=False``), checkpoint
        and close both files. Idempotent. A fold that fails is logged: the next open folds
        the log again."""
        if self._log is None:
            return
        try:
            self.stop_folding()
            if fold:
                self.fold()
        except JournalError as e:
            log.warning("%s; the next open folds its log", e)
        self._close_files()

    def _close_files(self) -> None:
        log_store, self._log = self._log, None
        conn, self._conn = self._conn, None
        if log_store is not None:
            log_store.close()
        if conn is not None:
            conn.close()

    @property
    def closed(self) -> bool:
        return self._log is None

    @property
    def folded(self) -> int:
        """The last log row the tables hold."""
        return self._folded

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._log is None else "open"
        return (
            f"<Journal {self.path} {state} batches={self.batches} jobs={self.jobs_written} "
            f"folds={self.folds} unfolded={self._seq - self._folded}>"
        )

    def _connection(self) -> sqlite3.Connection:
        if self._log is None:
            raise JournalError(self.path, "the journal is closed")
        if self._conn is None:
            raise JournalError(self.path, "its tables belong to its folding process now")
        return self._conn

    def _log_store(self) -> LogStore:
        if self._log is None:
            raise JournalError(self.path, "the journal is closed")
        return self._log

    # ------------------------------------------------------------------ folding in the background

    def start_folding(self) -> None:
        """Fold in a process of its own from now on (:mod:`remus.server.journal_fold`): the
        journal file's lock and tables are that process's until :meth:`stop_folding`, and
        this journal only appends to the log. Raises JournalError if it does not start."""
        if self._process is not None or os.name != "posix":
            return  # (elsewhere, folds stay in the writing thread: no select() on pipes)
        self._connection()
        self._conn.close()  # type: ignore[union-attr]  # (its lock: the process takes it)
        self._conn = None
        try:
            self._process = FoldProcess(self.path, self.synchronous, self.progress_limit)
        except FoldError as e:
            self._conn = self._open_tables()
            raise JournalError(self.path, f"cannot fold in the background: {e}") from None
        self._folded = max(self._folded, self._process.folded_at_start)

    def stop_folding(self) -> None:
        """End the folding process (it finishes the fold under way) and take the tables back.
        Idempotent. Raises JournalError if a fold failed."""
        process, self._process = self._process, None
        if process is None:
            return
        done = process.stop(timeout=60.0)
        self._in_flight = None
        self._pending_ids = {**self._sealed_ids, **self._pending_ids}
        self._sealed_ids = {}
        self._conn = self._open_tables()  # (reads folded: what the process last wrote)
        if done is not None and done > self._folded:
            raise JournalError(self.path, f"the tables hold row {self._folded}, not {done}")

    # ------------------------------------------------------------------ writing

    def write(self, batch: JournalBatch) -> None:
        """Write one pass's batch; when this returns, a SIGKILL loses none of it. On failure
        nothing of the batch is written and JournalError is raised (the core must then not
        send the pass's replies)."""
        self.write_many((batch,))

    def write_many(self, batches: Sequence[JournalBatch]) -> None:
        """Write several passes' batches with one commit (a group commit; with
        ``synchronous="full"``, one fsync): the same as writing each in turn. All or
        nothing, as :meth:`write`. Then start a fold if one is due (see :meth:`maintain`)."""
        batches = [b for b in batches if b]
        if not batches:
            return
        log_store = self._log_store()
        at = time.time()
        self._check_new(batches)
        body = encode(batches)
        drop = self._folded if self._folded > self._dropped else 0
        try:
            log_store.append(self._seq + 1, at, body, drop_through=drop)
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot write a batch: {e}") from e
        self._seq += 1
        self._dropped = max(self._dropped, drop)
        if not self._pending_rows:
            self._pending_since = time.monotonic()
        ids = self._pending_ids
        for batch in batches:
            for row in batch.submitted:
                ids[row[0]] = True
            for job_id in batch.forgotten:
                ids[job_id] = False
            self._pending_rows += (
                len(batch.submitted)
                + len(batch.status)
                + len(batch.results)
                + len(batch.progress)
                + len(batch.forgotten)
                + len(batch.checkpoints)
                + len(batch.result_files)
                + len(batch.acks)
            )
        self.batches += len(batches)
        self.jobs_written += sum(len(batch.submitted) for batch in batches)
        self.maintain(time.monotonic())

    def fold_due(self, now: float) -> float | None:
        """Seconds until :meth:`maintain` starts a fold (0: now), None if nothing waits."""
        if not self._pending_rows:
            return None
        if self._in_flight is not None:
            return FOLD_AGE / 10  # (look again: the fold under way may be over by then)
        if self._pending_rows >= FOLD_ROWS:
            return 0.0
        return max(0.0, self._pending_since + FOLD_AGE - now)

    def maintain(self, now: float) -> None:
        """Take the news of the folding process; start a fold if one is due (see
        :data:`FOLD_ROWS` and :data:`FOLD_AGE`): in the background if :meth:`start_folding`
        was called, else here. With a fold under way and :data:`FOLD_ROWS_MAX` rows not
        folded, wait for it. Raises JournalError if a fold failed."""
        self._reap(wait=self._pending_rows >= FOLD_ROWS_MAX)
        due = self.fold_due(now)
        if due is None or due > 0:
            return
        self._seal()

    def fold(self) -> None:
        """Write everything the log holds into the tables now, and wait for it. Raises
        JournalError if that fails."""
        self._reap(wait=True)
        if self._seq > self._folded:
            self._seal()
            self._reap(wait=True)

    def _seal(self) -> None:
        """Start a fold of every row written so far."""
        self._sealed_ids = self._pending_ids
        self._pending_ids = {}
        self._pending_rows = 0
        if self._process is None:
            self.fold_through(self._seq)
            self._sealed_ids = {}
            return
        self._in_flight = self._seq
        try:
            self._process.fold(self._seq)
        except FoldError as e:
            raise JournalError(self.path, f"cannot fold the log into the tables: {e}") from None

    def _reap(self, wait: bool) -> None:
        """What the folding process did: a fold over (its log rows go at the next write),
        or the error that ended it (raised). ``wait``: for the fold under way to end."""
        process = self._process
        while process is not None and self._in_flight is not None:
            try:
                done = process.folded(wait=60.0 if wait else 0.0)
            except FoldError as e:
                raise JournalError(self.path, f"cannot fold the log into the tables: {e}") from None
            if done is None:
                if wait:
                    raise JournalError(self.path, "the folding process said nothing for 60 s")
                return
            self._folded = done
            self.folds += 1
            if done >= self._in_flight:
                self._in_flight = None
                self._sealed_ids = {}

    def fold_through(self, last: int) -> None:
        """Write the log rows up to ``last`` into the tables, and ``meta.folded = last``, in
        one transaction (here, with this journal's connection to the tables)."""
        if last <= self._folded:
            return
        conn = self._connection()
        tables = self._tables
        plans = [tables.plan()]
        try:
            for _, at, body in self._log_store().rows(self._folded, last):
                for batch in decode(body):
                    if not plans[-1].add(batch, at):
                        plans.append(tables.plan())
                        if not plans[-1].add(batch, at):
                            raise ValueError("a job is submitted twice in one batch")
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise JournalError(self.path, f"its log has a row that cannot be read: {e}") from e
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot read its log: {e}") from e
        conn.execute("BEGIN")
        try:
            freed = False
            for plan in plans:
                freed = tables.write(conn, plan) or freed
            conn.execute("UPDATE meta SET value = ? WHERE name = 'folded'", (last,))
            shrink = freed and self._free_pages(conn) > VACUUM_THRESHOLD_PAGES
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            try:
                tables.read_tracked(conn)
            except sqlite3.Error:
                pass  # the error raised below says what is wrong with the file
            if isinstance(e, sqlite3.Error):
                raise JournalError(self.path, f"cannot fold the log into the tables: {e}") from e
            raise
        self._folded = last
        self.folds += 1
        if shrink:
            self._shrink(conn)

    def _check_new(self, batches: list[JournalBatch]) -> None:
        """Refuse (JournalError) a submission of a job the journal holds, before anything is
        written (in the log, it would be written over at the fold). The broker refuses those
        itself; while folds run in the background, only the jobs of the log not folded yet
        are looked at here (the tables belong to the folding process)."""
        word: dict[str, bool] = {}  # these batches' last word on a job: True held, False gone
        unknown: list[str] = []
        for batch in batches:
            for row in batch.submitted:
                job_id = row[0]
                held = word.get(job_id)
                if held is None:
                    held = self._pending_ids.get(job_id)
                    if held is None:
                        held = self._sealed_ids.get(job_id)
                        if held is None:
                            unknown.append(job_id)
                if held:
                    raise JournalError(
                        self.path, f"cannot write a batch: job {job_id} is already in it"
                    )
                word[job_id] = True
            for job_id in batch.forgotten:
                word[job_id] = False
        if self._conn is None or not unknown:
            return
        try:
            for start in range(0, len(unknown), CHECK_CHUNK):
                chunk = unknown[start : start + CHECK_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT id FROM jobs WHERE id IN ({marks})"
                found = self._conn.execute(sql, chunk).fetchone()
                if found is not None:
                    raise JournalError(
                        self.path, f"cannot write a batch: job {found[0]} is already in it"
                    )
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot write a batch: {e}") from e

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

    def worker_acks(self) -> dict[str, int]:
        """Per worker routing id (hex), the highest report seq the broker applied from it, as
        of the last :meth:`load` (which folds the log first)."""
        try:
            return dict(self._connection().execute("SELECT worker, seq FROM worker_acks"))
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot read it: {e}") from e

    def load(self) -> list[JournaledJob]:
        """Every job not forgotten, in submission order (``order``). Folds the log first;
        not while folds run in the background."""
        if self._process is not None:
            raise JournalError(self.path, "load it before start_folding, or after stop_folding")
        self.fold()
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
            files = dict(conn.execute("SELECT job_id, value FROM result_files"))
        except sqlite3.Error as e:
            raise JournalError(self.path, f"cannot read it: {e}") from e
        return [
            replace(job, checkpoint=checkpoints.get(job.id), result_files=files.get(job.id))
            if job.id in checkpoints or job.id in files
            else job
            for job in (_job(row, contents, progress) for row in rows)
        ]


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
