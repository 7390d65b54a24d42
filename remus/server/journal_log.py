"""The journal's log: a second SQLite file beside the journal (``PATH-log``).

One table, ``log(seq, at, body)``: each row a group of batches as msgpack (see
``remus.server.journal``). An append is one small transaction, and its commit is what makes
the batches durable. It is a file of its own, not a table of the journal's, so that appending
and folding (writing the journal's tables from the log) are two SQLite connections with two
write locks: a fold in progress never holds an append up. It is in WAL mode without exclusive
locking, so that the folding process (``remus.server.journal_fold``) reads it while the broker
appends; the journal file's own exclusive lock is what keeps a second broker out.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

import msgpack

from remus.errors import ConfigError
from remus.server.journal_batch import JournalBatch

log = logging.getLogger(__name__)

#: what the log's meta table says it is
LOG_APPLICATION = "remus-journal-log"

_LOG_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE log (seq INTEGER PRIMARY KEY, at REAL NOT NULL, body BLOB NOT NULL)",
)


def new_journal_id() -> str:
    """A random id the journal and its log file share, so that a log is never folded into
    another journal's tables."""
    return secrets.token_hex(8)


class LogStore:
    """The log file of the journal at ``path`` (``path + "-log"``): one connection, used by
    one thread at a time. ``create``: make it if it is missing (the journal's owner does;
    the folding process only reads an existing one)."""

    def __init__(self, path: str, synchronous: str, journal_id: str, *, create: bool = True):
        self.path = path + "-log"
        try:
            conn = sqlite3.connect(
                self.path, timeout=10, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the journal's log {self.path}: {e}") from None
        try:
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise ConfigError(f"the journal's log {self.path} cannot use WAL mode")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            conn.execute("BEGIN IMMEDIATE")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables and create:
                for statement in _LOG_SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [("application", LOG_APPLICATION), ("journal", journal_id)],
                )
            else:
                meta = dict(conn.execute("SELECT name, value FROM meta")) if tables else {}
                if meta.get("application") != LOG_APPLICATION or meta.get("journal") != journal_id:
                    raise ConfigError(
                        f"{self.path} is not the log of the journal {path} (it belongs to "
                        "another journal, or is no journal log): move it away, or give the "
                        "journal it belongs to"
                    )
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            if isinstance(e, sqlite3.Error):
                raise ConfigError(f"cannot open the journal's log {self.path}: {e}") from None
            raise
        self._conn: sqlite3.Connection | None = conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the journal's log is closed")
        return self._conn

    def rows(self, after: int, upto: int | None = None) -> list[tuple[int, float, bytes]]:
        """The rows after ``after`` (up to ``upto``), in order."""
        if upto is None:
            sql, args = "SELECT seq, at, body FROM log WHERE seq > ? ORDER BY seq", (after,)
        else:
            sql = "SELECT seq, at, body FROM log WHERE seq > ? AND seq <= ? ORDER BY seq"
            args = (after, upto)  # type: ignore[assignment]
        return self._connection().execute(sql, args).fetchall()

    def last_seq(self) -> int:
        row = self._connection().execute("SELECT max(seq) FROM log").fetchone()
        return int(row[0] or 0)

    def append(self, seq: int, at: float, body: bytes, drop_through: int = 0) -> None:
        """Add row ``seq`` (one statement, its own transaction): durable when this returns,
        in the sense of the journal's ``synchronous`` mode. First delete the rows up to
        ``drop_through`` (the tables hold them; deleting them twice does no harm)."""
        conn = self._connection()
        if drop_through:
            conn.execute("DELETE FROM log WHERE seq <= ?", (drop_through,))
        conn.execute("INSERT INTO log (seq, at, body) VALUES (?, ?, ?)", (seq, at, body))

    def drop_through(self, seq: int) -> None:
        self._connection().execute("DELETE FROM log WHERE seq <= ?", (seq,))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


# -------------------------------------------------------------------------- log rows


def _as_bytes(value: Any) -> bytes:
    """msgpack's fallback: a buffer it does not know (a zmq.Frame) as bytes."""
    try:
        return bytes(memoryview(value))
    except TypeError:
        raise TypeError(f"cannot journal a {type(value).__name__}: {value!r}") from None


def encode(batches: Sequence[JournalBatch]) -> bytes:
    """A log row's body: the batches' rows as msgpack, in the order a plan takes them."""
    return msgpack.packb(
        [
            [
                b.submitted,
                b.checkpoints,
                b.status,
                b.results,
                b.progress,
                b.forgotten,
                b.result_files,
                list(b.acks.items()),
            ]
            for b in batches
        ],
        use_bin_type=True,
        default=_as_bytes,
    )


def decode(body: bytes) -> list[JournalBatch]:
    """The batches of a log row's body (ValueError, TypeError or msgpack's errors if it is
    not one)."""
    batches = []
    rows = msgpack.unpackb(body, raw=False, strict_map_key=False)
    for submitted, checkpoints, status, results, progress, forgotten, *more in rows:
        # (a log written before file results, or worker acks, were journaled has fewer lists)
        result_files = more[0] if more else []
        acks = dict(more[1]) if len(more) > 1 else {}
        batches.append(
            JournalBatch(
                submitted=[
                    (job_id, reqs, tuple(keys), values, order, at, options)
                    for job_id, reqs, keys, values, order, at, options in submitted
                ],
                status=[tuple(row) for row in status],
                results=[tuple(row) for row in results],
                progress=[tuple(row) for row in progress],
                forgotten=forgotten,
                checkpoints=[tuple(row) for row in checkpoints],
                result_files=[tuple(row) for row in result_files],
                acks=acks,
            )
        )
    return batches
