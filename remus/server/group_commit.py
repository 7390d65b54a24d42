"""Group commit: how the core thread makes each pass's journal batch durable before it sends
the pass's outbox.

The journal's write is an append to its log (see :mod:`remus.server.journal`; the tables are
folded by another process). With ``synchronous="normal"`` that append is a ``write(2)`` of a
few pages, about 0.2 ms, and the core thread makes it itself, then sends (``threaded=False``):
handing the batch to another thread and the outbox back cost a pipelined broker more than the
append (0.73x against 0.90x of the broker without a journal, perf/README.md). With ``"full"``
each append waits for an fsync, and a writer thread does it while the core goes on: the core
hands each pass's batch to the journal writer thread and *holds* that pass's outbox (replies
to clients, jobs and acks to workers, status events: everything); the writer commits every
batch handed over since its last commit in one transaction, then tells the core, over an
inproc PAIR, how many batches are durable; the core sends the held outboxes of those passes,
in the order of the passes. So:

- nothing is sent before the journal write that records it is durable, as before: a pass's
  outbox waits for its own batch and for every earlier one (a reply may tell of state an
  earlier pass changed), and outboxes leave in pass order, so a peer hears things in the
  order they happened;
- under load, the batches of the passes that ran while a commit was in flight go together in
  the next commit: one fsync for many passes, and the fsync, which runs without the GIL,
  overlaps the core's Python;
- a write that fails stops the broker loudly: the writer reports the error, the core raises
  it, and the held outboxes are dropped, never sent.

Like the edge threads, the writer is plumbing: the core thread owns all state; the two share
nothing but the batches handed over (a queue: the core never touches a batch again once
handed) and the counts sent back. The pure :class:`~remus.server.core.BrokerCore` knows none
of this; it fills a batch per pass as before.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

import zmq

from remus.log import name_os_thread
from remus.server.journal import Journal, JournalBatch, JournalError

log = logging.getLogger(__name__)

#: the writer's first word on its pipe: connected, ready for batches
STARTED = b"started"
#: the writer's word before the error's text when a write failed (it then stops)
FAILED = b"failed "
#: what ``close`` puts on the queue: write nothing more, end
_STOP = None


class JournalWriter(threading.Thread):
    """The thread that owns the journal's SQLite connection while the broker runs.

    It takes every batch queued since it last looked, writes them with one
    :meth:`Journal.write_many`, and sends the running count of durable batches (decimal ASCII)
    on its PAIR. The journal's folds run meanwhile on a thread of the journal's own
    (:meth:`Journal.start_folding`), started and stopped here. Its only socket is its end of
    that pipe, made and closed here.
    """

    def __init__(self, context: zmq.Context[Any], journal: Journal, endpoint: str) -> None:
        super().__init__(name="remus-journal", daemon=True)
        self._context = context
        self._journal = journal
        self._endpoint = endpoint
        self._queue: queue.SimpleQueue[JournalBatch | None] = queue.SimpleQueue()
        #: batches written so far, and transactions (commits) they took
        self.written = 0
        self.commits = 0

    def put(self, batch: JournalBatch) -> None:
        """Hand a batch over (the caller must not touch it again)."""
        self._queue.put(batch)

    def stop(self) -> None:
        """Ask the thread to end once every batch handed over before is written."""
        self._queue.put(_STOP)

    def __repr__(self) -> str:
        return f"<JournalWriter written={self.written} commits={self.commits}>"

    def run(self) -> None:
        name_os_thread()
        pipe = self._context.socket(zmq.PAIR)
        pipe.linger = 1000  # (the last count must reach the core, which reads it before closing)
        try:
            pipe.connect(self._endpoint)
            journal = self._journal
            try:
                journal.start_folding()
            except Exception as e:
                pipe.send(FAILED + str(e).encode(errors="replace"))
                return
            pipe.send(STARTED)
            try:
                while True:
                    group, stopping = self._next()
                    if group:
                        journal.write_many(group)
                        self.written += len(group)
                        self.commits += 1
                        pipe.send(b"%d" % self.written)
                    else:
                        journal.maintain(time.monotonic())  # (the log is due for a fold)
                    if stopping:
                        break
                journal.stop_folding()
            except Exception as e:
                log.error("%s; the broker stops, and replies that wait for it are dropped", e)
                pipe.send(FAILED + str(e).encode(errors="replace"))
                try:
                    journal.stop_folding()
                except Exception:
                    pass  # (the error that stopped it was just reported)
        finally:
            pipe.close()

    def _next(self) -> tuple[list[JournalBatch], bool]:
        """Every batch waiting, as one group (waiting for one until the log is due for a
        fold: then none), and whether the stop came after them."""
        due = self._journal.fold_due(time.monotonic())
        try:
            first = self._queue.get(timeout=due) if due is not None else self._queue.get()
        except queue.Empty:
            return [], False
        if first is _STOP:
            return [], True
        group = [first]
        more = self._queue.get_nowait
        while True:
            try:
                batch = more()
            except queue.Empty:
                return group, False
            if batch is _STOP:
                return group, True
            group.append(batch)


class GroupCommit:
    """The core thread's side: hands batches to the writer and holds each pass's outbox until
    every batch up to its pass is durable. Made, used and closed by the core thread; its
    ``pipe`` (the writer's counts) goes in the core's poller.

    ``threaded=False`` writes each pass's batch in the core thread itself and holds nothing
    (the default with ``synchronous="normal"``; see the module's docstring). Either way the
    journal folds in the background from :meth:`start` to :meth:`close`."""

    def __init__(
        self,
        context: zmq.Context[Any],
        journal: Journal,
        endpoint: str,
        *,
        threaded: bool | None = None,
    ) -> None:
        self._journal = journal
        self._journal_path = journal.path
        self.pipe = context.socket(zmq.PAIR)
        self.pipe.linger = 0
        self.pipe.bind(endpoint)
        if threaded is None:
            threaded = journal.synchronous == "full"
        self._writer = JournalWriter(context, journal, endpoint) if threaded else None
        #: (batches that must be durable first, outbox), in pass order
        self._held: deque[tuple[int, Any]] = deque()
        self._handed = 0
        self._durable = 0
        #: why the writer failed (None while it has not): nothing held is sent from then on
        self._failed: str | None = None

    def start(self, timeout: float) -> None:
        """Start the writer; fails loudly if it does not say it started within ``timeout``."""
        if self._writer is None:
            self._journal.start_folding()
            return
        self._writer.start()
        if not self.pipe.poll(int(timeout * 1000)) or self.pipe.recv() != STARTED:
            self._writer.stop()
            raise JournalError(self._journal_path, "its writer thread did not start")

    def __repr__(self) -> str:
        commits = self._writer.commits if self._writer is not None else self._handed
        return (
            f"<GroupCommit handed={self._handed} durable={self._durable} "
            f"held={len(self._held)} commits={commits}>"
        )

    @property
    def held(self) -> int:
        """Outboxes waiting for their batch to be durable."""
        return len(self._held)

    def after_pass(self, batch: JournalBatch | None, out: Any) -> list[Any]:
        """A pass ended with ``batch`` to write (None if it changed nothing durable) and
        ``out`` to send: the outboxes to send now, in order (``out`` alone, or none)."""
        if self._failed is not None:
            raise self._error()
        if self._writer is None:
            if batch is not None:
                self._journal.write(batch)  # (JournalError: the broker stops, nothing sent)
                self._handed += 1
                self._durable = self._handed
            return [out]
        if batch is not None:
            self._handed += 1
            self._writer.put(batch)
        if self._held or self._durable < self._handed:
            self._held.append((self._handed, out))
            return []
        return [out]

    def committed(self) -> list[Any]:
        """Read what the writer said (the pipe is readable): the outboxes now durable, in
        order. Raises JournalError if a write failed (nothing held is ever sent then)."""
        while True:
            try:
                word = self.pipe.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if word.startswith(FAILED):
                self._failed = word[len(FAILED) :].decode(errors="replace")
                self._held.clear()
                raise self._error()
            self._durable = int(word)
        ready = []
        held = self._held
        while held and held[0][0] <= self._durable:
            ready.append(held.popleft()[1])
        return ready

    def finish(self, timeout: float) -> list[Any]:
        """Wait up to ``timeout`` seconds for every batch handed over to be durable: the held
        outboxes, in order. Raises JournalError if a write failed or the time ran out."""
        if self._failed is not None:
            raise self._error()
        deadline = time.monotonic() + timeout
        ready = self.committed()
        while self._durable < self._handed:
            left = deadline - time.monotonic()
            if left <= 0 or not self.pipe.poll(max(1, int(left * 1000))):
                self._held.clear()
                raise JournalError(
                    self._journal_path,
                    f"the last writes were not durable within {timeout:g} s; "
                    "what waited for them was not sent",
                )
            ready += self.committed()
        return ready

    def _error(self) -> JournalError:
        return JournalError(
            self._journal_path,
            f"a write failed ({self._failed}): the broker stops, and what waited for the "
            "write is not sent",
        )

    def close(self, timeout: float) -> None:
        """Stop the writer (after what was handed over) and join it, then close the pipe."""
        writer = self._writer
        if writer is None:
            try:
                self._journal.stop_folding()
            except JournalError as e:
                log.error("%s", e)
        elif writer.is_alive():
            writer.stop()
            writer.join(timeout)
            if writer.is_alive():
                log.error("the journal writer did not stop within %.1f s", timeout)
        self.pipe.close()
