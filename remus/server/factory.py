"""Worker factories: start workers when queued jobs need them, reap them, stop them.

The core thread owns a factory and calls it with the time passed in:

* ``supported_io_types()``, ``can_mesh(reqs)``, ``retrieve_requirements(io_type)``: what the
  factory could start, answered beside the connected workers; ``explain(reqs)``: in words,
  what it is doing about a job that waits;
* ``observe(seen, now)``: what the broker knows of the processes the factory started (which
  registered, with what, which are idle, how many jobs each finished);
* ``create_workers(demand, worker_endpoint, now)``: ``demand`` says, per job requirements, how
  many queued jobs no connected worker can take right now; the factory starts what it may;
* ``reap(now)`` every pass, ``stop(grace)`` once at shutdown.

Each call returns :class:`FactoryEvent` values for the status channel; the core thread also acts
on two of them: ``worker.quarantined`` (fail the jobs only that worker file could run) and
``worker.asked_to_leave`` (tell that worker to exit). :class:`WorkerFactory` starts executables
described by worker files (:mod:`remus.server.workerfile`);
:class:`~remus.server.thread_factory.ThreadWorkerFactory` runs handlers on threads.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from remus.errors import WorkerFileError
from remus.security import PeerKeys
from remus.server.factory_base import (
    ASKED_TO_LEAVE,
    EXITED,
    QUARANTINED,
    SPAWN_FAILED,
    SPAWNED,
    FactoryEvent,
    WorkerFactoryBase,
    WorkerSeen,
    declares,
    describe_requirements,
    plan_spawns,
)
from remus.server.health import (
    DEFAULT_BACKOFF,
    REGISTER_TIMEOUT,
    Backoff,
    Health,
    StartFailure,
    last_lines,
    peak_rss_bytes,
)
from remus.server.processes import (
    STDERR_TAIL_BYTES,
    StderrTail,
    collect,
    is_running,
    signal_group,
    signal_name,
    start_process,
    worker_environment,
)
from remus.server.workerfile import WorkerFile, scan
from remus.types import JobRequirements, matches

log = logging.getLogger(__name__)

#: seconds a worker asked to leave has before its process group is killed
LEAVE_GRACE = 5.0

_StderrTail = StderrTail  # the old private name, for the tests
__all__ = [
    "ASKED_TO_LEAVE",
    "DEFAULT_BACKOFF",
    "EXITED",
    "QUARANTINED",
    "SPAWNED",
    "SPAWN_FAILED",
    "STDERR_TAIL_BYTES",
    "Backoff",
    "FactoryEvent",
    "Health",
    "WorkerFactory",
    "WorkerFactoryBase",
    "WorkerSeen",
    "plan_spawns",
    "worker_environment",
]


@dataclass(eq=False)
class _Child:
    proc: subprocess.Popen[bytes]
    worker_file: WorkerFile
    started: float
    stderr: StderrTail
    #: the broker stopped, killed or asked it to leave: its exit is never a crash
    stopping: bool = False
    #: when a worker asked to leave is killed if it is still there
    leave_by: float | None = None
    registered: bool = False
    idle: bool = False
    finished: int = 0
    #: killed for not registering within the factory's register_timeout
    timed_out: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, why: str) -> None:
        """SIGKILL its process group, saying why in the log."""
        log.warning("worker pid %d (%s) %s; killing it", self.pid, self.worker_file.path, why)
        signal_group(self.proc, signal.SIGKILL)

    def state(self) -> str:
        if self.stopping:
            return "leaving"
        if not self.registered:
            return "starting"
        return "idle" if self.idle else "busy"


class WorkerFactory(WorkerFactoryBase):
    """Starts worker executables described by the ``.rw`` files in its search paths.

    A worker is started as ``ExecutableName <worker endpoint> [factory arguments] [Arguments]``
    in its own process group, with the file's ``Environment`` added to the broker's, its stdout
    discarded and the tail of its stderr kept for the log. ``max_workers`` defaults to the CPU
    count. A file whose program keeps failing to start is backed off, then quarantined
    (``backoff``); a worker that has not registered ``register_timeout`` seconds after its start
    is killed, and that is a failed start too (it would hold its ``max_workers`` slot for
    ever). See ``docs/workers.md``.
    """

    #: its workers are separate processes (they need a tcp:// or ipc:// worker endpoint)
    spawns_processes = True

    def __init__(
        self,
        search_paths: Iterable[str | os.PathLike[str]] = (),
        *,
        max_workers: int | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        leave_grace: float = LEAVE_GRACE,
        register_timeout: float = REGISTER_TIMEOUT,
    ) -> None:
        super().__init__(max_workers=(os.cpu_count() or 1) if max_workers is None else max_workers)
        if not register_timeout > 0:
            raise ValueError(f"register_timeout must be positive, got {register_timeout!r}")
        self.backoff = backoff
        self.leave_grace = leave_grace
        self.register_timeout = register_timeout
        self.search_paths: list[str] = [os.path.abspath(os.fspath(p)) for p in search_paths]
        self.worker_files: list[WorkerFile] = []
        self.errors: list[WorkerFileError] = []
        self.spawned_total = 0
        #: workers started per worker file path
        self._spawned: dict[str, int] = {}
        self._children: dict[int, _Child] = {}
        self._health = Health(backoff)
        self._stopped = False
        #: secure mode: the keys its workers get, in their environment (see use_keys)
        self._key_env: dict[str, str] = {}
        self.rescan()

    def __repr__(self) -> str:
        return (
            f"<WorkerFactory files={len(self.worker_files)} alive={len(self._children)}"
            f"/{self.max_workers} spawned={self.spawned_total}"
            f" quarantined={len(self._health.quarantined)}"
            f"{' stopped' if self._stopped else ''}>"
        )

    def use_keys(self, keys: PeerKeys) -> None:
        """Secure mode: the workers it starts get ``keys`` in their environment
        ($REMUS_SECRET_KEY_Z85 and $REMUS_SERVER_KEY), never on their command line."""
        self._key_env = keys.env()

    # -- what it can start -------------------------------------------------------------------

    def add_search_path(self, path: str | os.PathLike[str]) -> None:
        self.search_paths.append(os.path.abspath(os.fspath(path)))
        self.rescan()

    def rescan(self) -> None:
        self.worker_files, self.errors = scan(self.search_paths)
        for wf in self.worker_files:
            log.info(
                "worker file %s: %s %r runs %s", wf.path, wf.io_type, wf.worker_name, wf.executable
            )
        for err in self.errors:
            log.warning("skipping worker file %s", err)

    def _usable(self) -> list[WorkerFile]:
        return [wf for wf in self.worker_files if wf.path not in self._health.quarantined]

    def offers(self) -> list[JobRequirements]:
        """The requirements of every worker file that is not quarantined."""
        return [wf.requirements for wf in self._usable()]

    def quarantined(self) -> dict[str, str]:
        """Quarantined worker files and why."""
        return {path: q.reason for path, q in self._health.quarantined.items()}

    def lift_quarantine(self, path: str | None = None) -> list[str]:
        """Let a quarantined worker file (None: every one) start workers again, with a clean
        record. Call it from the thread that drives the factory (``Server.lift_quarantine``
        and SIGHUP on ``remus server`` do); returns the paths lifted."""
        lifted = self._health.lift(None if path is None else os.path.abspath(path))
        for p in lifted:
            log.warning("worker file %s: quarantine lifted", p)
        return lifted

    # -- what the broker saw -----------------------------------------------------------------

    def observe(self, seen: Mapping[int, WorkerSeen], now: float) -> list[FactoryEvent]:
        """Note which workers registered (and with what), which are idle, which are healthy.

        A worker that registered other requirements than its file declares is asked to leave
        and its file quarantined."""
        events: list[FactoryEvent] = []
        for child in list(self._children.values()):
            s = seen.get(child.pid)
            if s is None or s.requirements is None:
                continue
            wf = child.worker_file
            child.idle, child.finished = s.idle, s.finished
            if child.stopping:
                child.registered = True
                continue
            if not declares(wf.requirements, s.requirements):
                events.extend(self._mismatch(child, s.requirements, now))
                continue
            if not child.registered:
                child.registered = True
                self._health.registered(wf.path)
            if s.finished or now - child.started >= self.backoff.healthy_after:
                self._health.healthy(wf.path)
        return events

    def _mismatch(self, child: _Child, got: JobRequirements, now: float) -> list[FactoryEvent]:
        wf = child.worker_file
        reason = (
            f"its worker (pid {child.pid}) registered {describe_requirements(got)}, but "
            f"the file declares {describe_requirements(wf.requirements)}"
        )
        log.error("worker file %s: %s; stopping it and quarantining the file", wf.path, reason)
        return [self._ask_to_leave(child, reason, now), self._quarantine(wf, reason, now, [])]

    def _ask_to_leave(self, child: _Child, reason: str, now: float) -> FactoryEvent:
        child.stopping = True
        child.leave_by = now + self.leave_grace
        return FactoryEvent(
            ASKED_TO_LEAVE, {**self._base(child.worker_file), "pid": child.pid, "reason": reason}
        )

    def _quarantine(
        self, wf: WorkerFile, why: str, now: float, starts: list[StartFailure]
    ) -> FactoryEvent:
        reason = f"worker file {wf.path} is quarantined: {why}"
        if starts:
            reason += ": " + "; ".join(
                f"[{i}] pid {s.pid}: {s.describe()}" for i, s in enumerate(starts, 1)
            )
        self._health.quarantine(wf.path, reason, now, starts)
        log.error(
            "%s\nno more workers start from it until the quarantine is lifted "
            "(SIGHUP to remus server, or a restart)",
            reason,
        )
        payload = {
            **self._base(wf),
            "reason": reason,
            "starts": [s.to_wire() for s in starts],
        }
        return FactoryEvent(QUARANTINED, payload, wf.requirements)

    # -- starting ----------------------------------------------------------------------------

    def alive_count(self) -> int:
        return sum(1 for c in self._children.values() if is_running(c.proc))

    def create_workers(
        self, demand: Mapping[JobRequirements, int], worker_endpoint: str, now: float
    ) -> list[FactoryEvent]:
        events = self.reap(now)
        if self._stopped or not demand or self.max_workers <= 0:
            return events
        files = self._usable()
        alive = [self._alive_of(wf) for wf in files]
        limits = [self._health.limit(wf.path, n, now) for wf, n in zip(files, alive, strict=True)]
        capacity = max(0, self.max_workers - len(self._children))
        # A worker of a file that jobs wait for is only idle until its credit comes (a worker
        # registers first, then asks for jobs): never evicted for another file's jobs.
        wanted = {
            wf.path
            for wf in files
            if any(n > 0 and matches(reqs, wf.requirements) for reqs, n in demand.items())
        }
        idle = [
            c
            for c in self._children.values()
            if c.registered and c.idle and not c.stopping and c.worker_file.path not in wanted
        ]
        offers = [wf.requirements for wf in files]
        plan = plan_spawns(demand, offers, alive, limits, capacity + len(idle))
        for index in plan[:capacity]:
            events.extend(self._spawn(files[index], worker_endpoint, now))
        events.extend(self._evict(idle, [files[i] for i in plan[capacity:]], now))
        return events

    def _evict(
        self, idle: list[_Child], waiting: list[WorkerFile], now: float
    ) -> list[FactoryEvent]:
        """Ask idle workers of other files to leave, one per start that waits for a slot
        (counting those already leaving), so that one file's idle workers never starve
        another file's jobs."""
        leaving = sum(1 for c in self._children.values() if c.stopping)
        need = len(waiting) - leaving
        paths = {wf.path for wf in waiting}
        events = []
        for child in sorted(idle, key=lambda c: c.started):
            if need <= 0:
                break
            if child.worker_file.path in paths:
                continue
            reason = (
                f"its slot is needed: max_workers={self.max_workers} reached and jobs wait for "
                f"{waiting[0].path}"
            )
            log.info(
                "asking idle worker pid %d (%s) to leave: %s",
                child.pid,
                child.worker_file.path,
                reason,
            )
            events.append(self._ask_to_leave(child, reason, now))
            need -= 1
        return events

    def _alive_of(self, wf: WorkerFile) -> int:
        return sum(1 for c in self._children.values() if c.worker_file.path == wf.path)

    @staticmethod
    def _base(wf: WorkerFile) -> dict[str, Any]:
        return {
            "worker_name": wf.worker_name,
            "io_type": wf.io_type.to_wire(),
            "worker_file": wf.path,
        }

    def _spawn(self, wf: WorkerFile, endpoint: str, now: float) -> list[FactoryEvent]:
        argv = [wf.executable, endpoint, *self.arguments, *wf.arguments]
        try:
            proc, tail = start_process(argv, {**wf.environment, **self._key_env})
        except (OSError, subprocess.SubprocessError) as e:
            failure = StartFailure(0, 0.0, error=str(e))
            retry_in = self._health.failed(wf.path, now, failure)
            log.warning(
                "cannot start worker %r from %s: %s; next try in %.1f s",
                wf.worker_name,
                wf.path,
                e,
                retry_in,
            )
            event = FactoryEvent(
                SPAWN_FAILED, {**self._base(wf), "error": str(e), "retry_in": retry_in}
            )
            return [event, *self._maybe_quarantine(wf, now)]
        self._children[proc.pid] = _Child(proc, wf, now, tail)
        self.spawned_total += 1
        self._spawned[wf.path] = self._spawned.get(wf.path, 0) + 1
        log.info("started worker %r (pid %d): %s", wf.worker_name, proc.pid, " ".join(argv))
        return [FactoryEvent(SPAWNED, {**self._base(wf), "pid": proc.pid, "argv": argv})]

    def _maybe_quarantine(self, wf: WorkerFile, now: float) -> list[FactoryEvent]:
        starts = self._health.due_quarantine(wf.path)
        if starts is None:
            return []
        why = f"{len(starts)} failed starts in a row (each ended before it registered)"
        return [self._quarantine(wf, why, now, starts)]

    # -- reaping and stopping ----------------------------------------------------------------

    def reap(self, now: float) -> list[FactoryEvent]:
        events = []
        for pid, child in list(self._children.items()):
            done = collect(child.proc)
            if done is None:
                if child.leave_by is not None and now >= child.leave_by:
                    child.leave_by = None
                    child.kill(
                        f"was asked to leave {self.leave_grace:.1f} s ago and is still there"
                    )
                elif (
                    not child.registered
                    and not child.stopping
                    and not child.timed_out
                    and now - child.started >= self.register_timeout
                ):
                    child.timed_out = True
                    child.kill(
                        f"has not registered {self.register_timeout:g} s after it started "
                        "(a failed start)"
                    )
                child.stderr.trim()
                continue
            del self._children[pid]
            events.extend(self._exited(child, done[0], peak_rss_bytes(done[1]), now))
        return events

    def _exited(self, child: _Child, code: int, rss: int, now: float) -> list[FactoryEvent]:
        wf = child.worker_file
        runtime = max(0.0, now - child.started)
        tail = child.stderr.text()
        child.stderr.close()
        signame = signal_name(code)
        retry_in = None
        more: list[FactoryEvent] = []
        healthy = runtime >= self.backoff.healthy_after
        if child.stopping:
            pass  # the broker stopped it: never a crash
        elif not child.registered and (not healthy or child.timed_out):
            lines = last_lines(tail)
            if child.timed_out:  # (as its last line: the evidence keeps the last ones)
                said = f"it did not register within {self.register_timeout:g} s"
                lines = f"{lines}\n({said}; killed)".strip()
            failure = StartFailure(child.pid, runtime, code, signame, rss, lines)
            retry_in = self._health.failed(wf.path, now, failure)
            more = self._maybe_quarantine(wf, now)
            if more:
                retry_in = None
        elif code != 0 and not healthy and not child.finished:
            retry_in = self._health.failed(wf.path, now)  # registered, then crashed
        else:
            self._health.healthy(wf.path)
        how = f"signal {signame}" if code < 0 else f"code {code}"
        if code != 0 and not child.stopping:
            retry = f"; next start in {retry_in:.1f} s" if retry_in else ""
            before = "" if child.registered else " before registering"
            if child.timed_out:
                before = f", not registered within {self.register_timeout:g} s"
            log.warning(
                "worker %r (pid %d, %s) exited with %s after %.1f s%s%s; stderr tail:\n%s",
                wf.worker_name,
                child.pid,
                wf.path,
                how,
                runtime,
                before,
                retry,
                tail.rstrip() or "(empty)",
            )
        else:
            log.info("worker %r (pid %d) exited with %s", wf.worker_name, child.pid, how)
        payload = {
            **self._base(wf),
            "pid": child.pid,
            "returncode": code,
            "signal": signame,
            "runtime": round(runtime, 3),
            "peak_rss": rss,
            "stderr_tail": tail,
            "registered": child.registered,
            "stopped_by_broker": child.stopping,
            "retry_in": retry_in,
        }
        return [FactoryEvent(EXITED, payload), *more]

    def kill(self, pid: int) -> bool:
        """SIGKILL one spawned worker (its process group), e.g. one that ignored a time limit.
        Its exit is never counted as a crash. Returns False for a pid this factory did not
        spawn."""
        child = self._children.get(pid)
        if child is None or not is_running(child.proc):
            return False
        log.warning("killing worker %r (pid %d)", child.worker_file.worker_name, pid)
        child.stopping = True
        signal_group(child.proc, signal.SIGKILL)
        return True

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM every worker's process group, SIGKILL what is left after ``grace`` s, reap."""
        self._stopped = True
        running = [c for c in self._children.values() if is_running(c.proc)]
        for child in running:
            child.stopping = True
            signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            while is_running(child.proc) and time.monotonic() < deadline:
                time.sleep(0.01)
        for child in running:  # the group may hold the worker's own children
            signal_group(child.proc, signal.SIGKILL)
        for child in running:
            try:
                child.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not die after SIGKILL", child.pid)
        self.reap(time.monotonic())

    # -- in words ----------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Per worker file (quarantined ones included): path, io type, worker name, workers
        spawned from it, alive now, and why it is quarantined ("" if it is not)."""
        quarantined = self._health.quarantined
        return [
            {
                "path": wf.path,
                "io_type": str(wf.io_type),
                "worker_name": wf.worker_name,
                "spawned": self._spawned.get(wf.path, 0),
                "alive": sum(
                    1
                    for c in self._children.values()
                    if c.worker_file.path == wf.path and is_running(c.proc)
                ),
                "quarantined": quarantined[wf.path].reason if wf.path in quarantined else "",
            }
            for wf in self.worker_files
        ]

    def worker_file_of(self, pid: int) -> str:
        child = self._children.get(pid)
        return child.worker_file.path if child is not None else ""

    def explain(self, reqs: JobRequirements, now: float | None = None) -> str | None:
        """What the factory is doing about a queued job with ``reqs``, or None if no worker
        file (quarantined or not) would serve it."""
        now = time.monotonic() if now is None else now
        files = [wf for wf in self.worker_files if matches(reqs, wf.requirements)]
        if not files:
            return None
        usable = [wf for wf in files if wf.path not in self._health.quarantined]
        if not usable:
            return "; ".join(self._health.quarantined[wf.path].reason for wf in files)
        for wf in usable:
            starting = [
                c.pid
                for c in self._children.values()
                if c.worker_file.path == wf.path and c.state() == "starting"
            ]
            if starting:
                pids = ", ".join(str(pid) for pid in starting)
                return f"starting a worker from {wf.path} (pid {pids})"
        for wf in usable:
            off = self._health.backing_off(wf.path, now)
            if off is not None and off[1] > 0:
                failures, retry_in, last = off
                text = (
                    f"worker file {wf.path} is backing off after {failures} failed "
                    f"start{'s' if failures != 1 else ''} (next start in {retry_in:.1f} s)"
                )
                if last is not None:
                    text += f": last: {last.describe(lines=1)}"
                return text
        if self.max_workers <= 0:
            return "max_workers=0: the broker starts no worker"
        if len(self._children) >= self.max_workers:
            held = ", ".join(
                f"{c.worker_file.worker_name or c.worker_file.path} (pid {c.pid}, {c.state()})"
                for c in sorted(self._children.values(), key=lambda c: c.started)
            )
            return f"max_workers={self.max_workers} reached, held by: {held}"
        paths = {wf.path for wf in usable}
        running = [
            c for c in self._children.values() if c.worker_file.path in paths and not c.stopping
        ]
        if running:
            held = ", ".join(f"pid {c.pid}, {c.state()}" for c in running)
            path = running[0].worker_file.path
            return f"waiting for the worker already started from {path} ({held})"
        return f"a worker from {usable[0].path} will be started"
