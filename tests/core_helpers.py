"""The harness for tests/test_core_rules.py: a BrokerCore with a clock, and readers for what it
sends back. Imported as a top-level module (``from core_helpers import ...``), like
tests/factory_helpers.py.

Everything the core hands out goes through the wire codec on the way (``wire_check``), so a
rule that builds a message the protocol cannot carry fails where it happens.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import zmq

from remus import protocol as p
from remus.server.config import ServerConfig
from remus.server.core import BrokerCore, Outbox
from remus.types import IOType, JobRequirements, Status

EDGES = IOType("Edges", "Mesh2D")
VOLUME = IOType("Mesh2D", "Mesh3D")
CLIENT = b"client-1"
W1, W2, W3 = b"worker-1", b"worker-2", b"worker-3"
#: the smallest content or result that travels as a frame of its own
FRAMED = p.INLINE_MAX + 1

#: every topic run_a_little_of_everything makes the core publish (when someone wants it)
ALL_TOPICS = {
    "job.queued",
    "job.assigned",
    "job.started",
    "job.progress",
    "job.finished",
    "job.failed",
    "job.terminated",
    "job.expired",
    "worker.registered",
    "worker.ready",
    "worker.lost",
    "worker.exited",
}


def as_received(frames: list[Any]) -> list[Any]:
    """Frames the way the core thread receives them (copy=False): zmq.Frame objects."""
    return [zmq.Frame(bytes(f)) for f in frames]


def wire_check(msg: p.Message, allowed: frozenset[bytes]) -> None:
    """Fail unless ``msg`` encodes to frames that decode, on the receiving side, to its kind."""
    back = p.decode(p.encode(msg), allowed)
    assert type(back) is type(msg), f"{msg!r} came back as {back!r}"


def wire_check_outbox(out: Outbox) -> None:
    for _, msg in out.clients:
        wire_check(msg, p.BROKER_TO_CLIENT)
    for _, msg in out.workers:
        wire_check(msg, p.BROKER_TO_WORKER)


class Core:
    """A BrokerCore with a clock, and helpers that speak to it the way the threads do."""

    def __init__(self, wants: Callable[[str], bool] | None = None, **config: Any) -> None:
        self.now = 0.0
        config.setdefault("max_retries", 0)  # a lost worker's started job fails (issue 9)
        self.core = BrokerCore(ServerConfig(**config), now=self.now, wants_event=wants)
        self._rids = itertools.count(1)
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ workers

    def register(
        self,
        wid: bytes,
        reqs: IOType | JobRequirements = EDGES,
        *,
        credit: int = 1,
        heartbeat: float = 1.0,
        held: Iterable[str] = (),
        pid: int = 100,
        slots: int = 1,
    ) -> None:
        msg = p.Register(
            JobRequirements.of(reqs), heartbeat, "host-a", pid, credit, list(held), slots
        )
        self.core.worker_message(wid, msg, self.now)

    def report(
        self,
        wid: bytes,
        *,
        started: Iterable[str] = (),
        progress: Iterable[tuple[str, int | None, str]] = (),
        results: Mapping[str, p.Blob] | None = None,
        failures: Iterable[tuple[str, str, str]] = (),
        credit: int = 0,
        stopped: Iterable[str] = (),
        checkpoints: Mapping[str, p.Blob] | None = None,
    ) -> None:
        msg = p.Report(
            list(started),
            list(progress),
            list((results or {}).items()),
            list(failures),
            credit,
            stopped=list(stopped),
            checkpoints=list((checkpoints or {}).items()),
        )
        self.core.worker_message(wid, msg, self.now)

    def deliver(self, wid: bytes, frames: list[Any]) -> None:
        """A worker message as the core thread hands it over: decoded from its frames."""
        self.core.worker_message(wid, p.decode(frames, p.WORKER_COMMANDS), self.now)

    def heartbeat(self, *wids: bytes) -> None:
        for wid in wids:
            self.core.worker_message(wid, p.Heartbeat(), self.now)

    def goodbye(self, wid: bytes) -> None:
        self.core.worker_message(wid, p.Goodbye(), self.now)

    # ------------------------------------------------------------------ clients

    def submit(
        self,
        *ids: str,
        reqs: IOType | JobRequirements = EDGES,
        client: bytes = CLIENT,
        data: p.Blob | None = None,
        contents: Mapping[str, p.Blob] | None = None,
        opts: Mapping[str, Any] | None = None,
    ) -> p.Message:
        """Submit jobs (one request); returns the Reply or Error it got. Each job's contents
        are ``contents`` if given, else ``{"data": data}``, else ``{"data": <its id>}``.
        ``opts`` are the submit options; by default ``wait_for_worker`` (most rules are about
        queueing, whoever is connected), so pass ``opts={}`` to test the refusal."""
        jr = JobRequirements.of(reqs)
        ids = ids or (f"job-{next(self._ids)}",)
        jobs = []
        for i in ids:
            named = contents
            if named is None:
                named = {"data": i.encode() if data is None else data}
            jobs.append(p.SubmittedJob(i, jr, tuple(named), list(named.values())))
        options = {"wait_for_worker": True} if opts is None else dict(opts)
        return self.ask(p.SubmitRequest(next(self._rids), jobs, options), client)

    def follow(self, job_id: str, wait: float, data: bytes = b"x") -> int:
        """Submit one job with the 'follow' option: its reply is a (held) progress reply. It
        queues whoever is connected (``wait_for_worker``)."""
        job = p.SubmittedJob(job_id, JobRequirements(EDGES), ("data",), [data])
        opts = {"follow": wait, "wait_for_worker": True}
        return self.send(p.SubmitRequest(next(self._rids), [job], opts))

    def receive(self, frames: list[Any], client: bytes = CLIENT) -> None:
        """A client message as the core thread hands it over: decoded from its frames."""
        self.core.client_message(client, p.decode(frames, p.CLIENT_COMMANDS), self.now)

    def send(self, msg: p.Request, client: bytes = CLIENT) -> int:
        """Send a client request; do not look for its reply (it may be held)."""
        self.core.client_message(client, msg, self.now)
        return msg.rid

    def ask(self, msg: p.Request, client: bytes = CLIENT) -> p.Message:
        """Send a request that is answered at once; take its reply out of the pending outbox
        without flushing, so jobs assigned in this pass stay unsent."""
        self.core.client_message(client, msg, self.now)
        return self.take_reply(msg.rid, self.core.out, client)

    @staticmethod
    def take_reply(rid: int, out: Outbox, client: bytes = CLIENT) -> p.Message:
        found = [m for c, m in out.clients if c == client and getattr(m, "rid", None) == rid]
        assert len(found) == 1, f"expected one reply to rid {rid}, got {found}"
        out.clients.remove((client, found[0]))
        wire_check(found[0], p.BROKER_TO_CLIENT)
        return found[0]

    def rid(self) -> int:
        return next(self._rids)

    def status_row(self, job_id: str) -> list[Any]:
        reply = self.ask(p.StatusRequest(self.rid(), [job_id]))
        assert isinstance(reply, p.Reply)
        return reply.data[0]

    def status(self, job_id: str) -> Status:
        return Status(self.status_row(job_id)[1])

    def progress(self, job_id: str, since: int = 0, *, with_result: bool = False) -> p.Reply:
        reply = self.ask(p.ProgressRequest(self.rid(), job_id, since, 0.0, with_result))
        assert isinstance(reply, p.Reply)
        return reply

    def results(self, *ids: str) -> p.Reply:
        reply = self.ask(p.ResultRequest(self.rid(), list(ids)))
        assert isinstance(reply, p.Reply)
        return reply

    def terminate(self, *ids: str) -> list[Any]:
        reply = self.ask(p.TerminateRequest(self.rid(), list(ids)))
        assert isinstance(reply, p.Reply)
        return reply.data

    def control(self, job_id: str, data: p.Blob, client: bytes = CLIENT) -> p.Message:
        """Send job ``job_id`` a control message; returns the Reply (its ``seq``) or Error."""
        return self.ask(p.ControlRequest(self.rid(), job_id, data), client)

    # ------------------------------------------------------------------ time and output

    def flush(self) -> Outbox:
        out = self.core.flush()
        wire_check_outbox(out)
        return out

    def tick(self, now: float) -> Outbox:
        self.now = now
        self.core.tick(now)
        return self.flush()

    def advance(self, to: float, *, alive: Iterable[bytes] = (), step: float = 0.25) -> Outbox:
        """Tick in small steps up to ``to``; workers in ``alive`` heartbeat at every step.
        Returns everything flushed on the way, merged."""
        alive = tuple(alive)
        merged = Outbox()
        while self.now < to:
            self.now = min(to, self.now + step)
            self.heartbeat(*alive)
            self.core.tick(self.now)
            out = self.flush()
            merged.clients += out.clients
            merged.workers += out.workers
            merged.events += out.events
            merged.kills += out.kills
        return merged


# ---------------------------------------------------------------------- reading the outbox


def jobs_sent(out: Outbox) -> dict[bytes, list[list[str]]]:
    """For each worker, the job ids of each Jobs message it was sent (one list per message)."""
    sent: dict[bytes, list[list[str]]] = {}
    for wid, msg in out.workers:
        if isinstance(msg, p.Jobs):
            sent.setdefault(wid, []).append([j.id for j in msg.jobs])
    return sent


def ids_sent(out: Outbox, wid: bytes) -> list[str]:
    return [i for batch in jobs_sent(out).get(wid, []) for i in batch]


def to_worker(out: Outbox, wid: bytes, kind: type[p.Message]) -> list[Any]:
    return [m for w, m in out.workers if w == wid and isinstance(m, kind)]


def replies(out: Outbox, client: bytes = CLIENT) -> list[p.Message]:
    return [m for c, m in out.clients if c == client]


def topics(out: Outbox) -> list[str]:
    return [t for t, _ in out.events]


def result_values(reply: p.Message, rows: list[Any] | None = None) -> dict[str, Any]:
    """Read result rows ``[id, status, reason, traceback, slot, files?]`` the way a client
    does: a FINISHED row's result is its inline slot or, for nil, the reply's next frame (then
    its files' frames, if it has files); every other row has a nil slot and takes no frame.
    Every frame must be taken. Returns id -> result (the very object the reply holds) for
    FINISHED rows, id -> None for the rest."""
    assert isinstance(reply, p.Reply), reply
    frames = iter(reply.frames)
    values: dict[str, Any] = {}
    for row in reply.data if rows is None else rows:
        assert len(row) in (5, 6), f"a result row is [id, status, reason, tb, slot, files?]: {row}"
        job_id, status, _reason, _tb, slot = row[:5]
        if Status(status) is Status.FINISHED:
            values[job_id] = p.take(slot, frames, job_id)
            if len(row) == 6:
                p.take_files(row[5], frames, job_id)
        else:
            assert slot is None and len(row) == 5, f"{job_id} is {Status(status).name}: {row}"
            values[job_id] = None
    assert next(frames, None) is None, "the reply carries frames no row refers to"
    return values


def progress_result(reply: p.Reply) -> Any:
    """The result a progress reply carries (``with_result``), the way a client reads it."""
    frames = iter(reply.frames)
    value = p.take(reply.data["result"], frames, "progress reply")
    assert next(frames, None) is None, "the progress reply carries an extra frame"
    return value


# ---------------------------------------------------------------------- collect


def finish(c: Core, wid: bytes, *ids: str) -> None:
    c.report(wid, results={i: f"result of {i}".encode() for i in ids})


def collect(
    c: Core, watch: str, add: Iterable[str] = (), wait: float = 0.0, limit: int = 10_000
) -> int:
    return c.send(p.CollectRequest(c.rid(), watch, list(add), wait, limit))


def collected(reply: p.Message) -> tuple[list[str], int]:
    """The ids a collect reply hands over and how many remain; the results of FINISHED ones
    must be what ``finish`` reported."""
    assert isinstance(reply, p.Reply)
    rows = reply.data["results"]
    values = result_values(reply, rows)
    for job_id, value in values.items():
        if value is not None:
            assert bytes(value) == f"result of {job_id}".encode()
    return [r[0] for r in rows], reply.data["remaining"]


# ---------------------------------------------------------------------- a busy scenario


def run_a_little_of_everything(c: Core) -> Outbox:
    """Drive every job and worker lifecycle event once; returns the events it produced."""
    merged = Outbox()

    def keep(out: Outbox) -> None:
        merged.events.extend(out.events)

    c.register(W1, credit=3)
    c.submit("ok", "bad", "stop")
    keep(c.flush())
    c.report(W1, started=["ok", "bad"], progress=[("ok", 50, "half")])
    c.report(W1, results={"ok": b"r"}, failures=[("bad", "no", "")])
    c.terminate("stop")
    keep(c.flush())
    c.register(W2, credit=1)
    c.submit("lost")
    keep(c.flush())
    c.report(W2, started=["lost"])
    keep(c.advance(4.0, alive=[W1]))
    c.goodbye(W1)
    keep(c.flush())
    opts = {"wait_for_worker": True, "queue_time_limit": 0.5}
    c.submit("late", reqs=IOType("Nobody", "Serves"), opts=opts)  # expires: nobody took it
    keep(c.advance(c.now + 1.0))
    return merged
