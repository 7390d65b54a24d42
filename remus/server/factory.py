"""Worker factories: start workers when queued jobs need them, reap them, stop them.

The core thread owns a factory and calls it with the time passed in:

* ``supported_io_types()``, ``can_mesh(reqs)``, ``retrieve_requirements(io_type)``: what the
  factory could start, answered beside the connected workers;
* ``create_workers(demand, worker_endpoint, now)``: ``demand`` says, per job requirements, how
  many queued jobs no connected worker can take right now; the factory starts what it may;
* ``reap(now)`` every pass, ``stop(grace)`` once at shutdown.

Each call returns :class:`FactoryEvent` values for the status channel. :class:`WorkerFactory`
starts executables described by worker files (:mod:`remus.server.workerfile`);
:class:`~remus.server.thread_factory.ThreadWorkerFactory` runs handlers on threads.
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from remus.errors import ConfigError, WorkerFileError
from remus.server.workerfile import WorkerFile, scan
from remus.types import IOType, JobRequirements, matches

log = logging.getLogger(__name__)

SPAWNED = "worker.spawned"
EXITED = "worker.reaped"
SPAWN_FAILED = "worker.spawn_failed"
STDERR_TAIL_BYTES = 4096
_STDERR_TRIM_AT = 1 << 20
_PR_SET_PDEATHSIG = 1
_UNLIMITED = 1 << 30


@dataclass(frozen=True, slots=True)
class FactoryEvent:
    """Something a factory did, for the log and the status channel; ``payload`` is msgpack-able."""

    topic: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before starting again a worker file whose processes keep failing.

    A process that exits non-zero (or by a signal) within ``quick_exit`` seconds of its start is
    a failure. After ``n`` failures in a row the next start waits ``initial * factor**(n-1)``
    seconds, at most ``cap``, and only one process of that file runs until one succeeds.
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    quick_exit: float = 5.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.cap, self.initial * self.factor ** (failures - 1))


DEFAULT_BACKOFF = Backoff()


class WorkerFactoryBase(abc.ABC):
    """What the server needs of a factory. Subclass it for a custom way of starting workers.

    A subclass says what it could start (:meth:`offers`), starts workers
    (:meth:`create_workers`), and counts them (:meth:`alive_count`); it may override
    :meth:`reap` and :meth:`stop` when its workers need reaping or stopping.
    """

    def __init__(self, *, max_workers: int = 1) -> None:
        if not isinstance(max_workers, int) or max_workers < 0:
            raise ConfigError(f"max_workers must be an integer >= 0, got {max_workers!r}")
        self.max_workers = max_workers
        self.arguments: list[str] = []

    @abc.abstractmethod
    def offers(self) -> list[JobRequirements]:
        """The requirements of every kind of worker this factory can start."""

    @abc.abstractmethod
    def create_workers(
        self, demand: Mapping[JobRequirements, int], worker_endpoint: str, now: float
    ) -> list[FactoryEvent]:
        """Start workers for the demand, within ``max_workers``; return what happened."""

    @abc.abstractmethod
    def alive_count(self) -> int:
        """How many workers this factory started are still alive."""

    def supported_io_types(self) -> set[IOType]:
        return {reqs.io_type for reqs in self.offers()}

    def can_mesh(self, reqs: JobRequirements) -> bool:
        """True if some worker this factory can start would take a job with ``reqs``."""
        return any(matches(reqs, offer) for offer in self.offers())

    def retrieve_requirements(self, io_type: IOType) -> list[JobRequirements]:
        found: list[JobRequirements] = []
        for offer in self.offers():
            if offer.io_type == io_type and offer not in found:
                found.append(offer)
        return found

    def add_argument(self, arg: str) -> None:
        """Pass ``arg`` to every worker started from now on, before its own arguments."""
        if not isinstance(arg, str):
            raise TypeError(f"worker arguments are strings, got {arg!r}")
        self.arguments.append(arg)

    def add_search_path(self, path: str | os.PathLike[str]) -> None:
        raise ConfigError(f"{type(self).__name__} does not read worker files")

    def rescan(self) -> None:
        """Look again for what the factory can start (worker files); nothing to do by default."""
        return None

    def reap(self, now: float) -> list[FactoryEvent]:
        """Collect workers that ended, without blocking; nothing to do by default."""
        return []

    def stop(self, grace: float = 2.0) -> None:
        """Stop every worker this factory started; nothing to do by default."""
        return None


def plan_spawns(
    demand: Mapping[JobRequirements, int],
    offers: Sequence[JobRequirements],
    alive: Sequence[int],
    limits: Sequence[int],
    capacity: int,
) -> list[int]:
    """Which offers to start a worker of, one index per worker, in start order.

    Each demand entry goes to the first matching offer that may start now (``limits[i] > 0``),
    else to its first match. An offer is wanted up to its share of the demand counting its
    ``alive`` workers; starts go round-robin between offers, so one busy io type does not take
    every slot, and stop at ``capacity`` (free slots under ``max_workers``).
    """
    wanted = [0] * len(offers)
    for reqs, count in demand.items():
        if count <= 0:
            continue
        candidates = [i for i, offer in enumerate(offers) if matches(reqs, offer)]
        if candidates:
            ready = [i for i in candidates if limits[i] > 0]
            wanted[(ready or candidates)[0]] += count
    starts: list[int] = []
    extra = [0] * len(offers)
    while len(starts) < capacity:
        before = len(starts)
        for i in range(len(offers)):
            if len(starts) < capacity and extra[i] < limits[i] and alive[i] + extra[i] < wanted[i]:
                extra[i] += 1
                starts.append(i)
        if len(starts) == before:
            break
    return starts


class _StderrTail:
    """A worker's stderr in an unlinked temp file that we read the last bytes of.

    A file never blocks the writer (a pipe would, once full, if the core is slow to read it).
    The child appends (O_APPEND), so when the file passes 1 MiB we keep its tail in memory and
    truncate it; lines written during that instant may be lost, which is fine for a log tail.
    """

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self.limit = limit
        self._carry = b""
        self._fd, name = tempfile.mkstemp(prefix="remus-worker-", suffix=".stderr")
        try:
            self.child_fd: int | None = os.open(name, os.O_WRONLY | os.O_APPEND)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)

    def child_started(self) -> None:
        if self.child_fd is not None:
            os.close(self.child_fd)
            self.child_fd = None

    def _read(self) -> tuple[bytes, bool]:
        size = os.fstat(self._fd).st_size
        start = max(0, size - self.limit)
        data = self._carry + os.pread(self._fd, size - start, start)
        return data[-self.limit :], bool(self._carry) or start > 0

    def trim(self) -> None:
        if os.fstat(self._fd).st_size > _STDERR_TRIM_AT:
            self._carry, _ = self._read()
            os.ftruncate(self._fd, 0)

    def text(self) -> str:
        data, cut = self._read()
        if cut and b"\n" in data:
            data = data[data.index(b"\n") + 1 :]
        return data.decode("utf-8", "replace")

    def close(self) -> None:
        self.child_started()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _parent_death_preexec() -> Callable[[], None] | None:
    """On Linux, a preexec_fn asking the kernel to SIGKILL the child if the broker dies.

    The signal fires when the *thread* that started the child exits, so the factory must be
    driven by a thread that outlives its workers (the core thread, which calls :meth:`stop`).
    Elsewhere, or if libc cannot be loaded, workers only have their process group.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the broker died before prctl took effect
            os._exit(1)

    return preexec


def worker_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The broker's environment plus ``extra``, with the broker's Python first on PATH.

    So a ``#!/usr/bin/env python3`` worker runs with the interpreter (and the installed remus)
    of the broker. The broker's own ``os.environ`` is never modified.
    """
    env = dict(os.environ)
    env.update(extra)
    bindir = os.path.dirname(sys.executable)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    if bindir and (not parts or parts[0] != bindir):
        env["PATH"] = os.pathsep.join([bindir, *parts])
    return env


@dataclass(eq=False)
class _Child:
    proc: subprocess.Popen[bytes]
    worker_file: WorkerFile
    started: float
    stderr: _StderrTail
    stopping: bool = False


class Health:
    """Back-off bookkeeping per kind of worker (a worker file's path, a handler's requirements)."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._failures: dict[Any, int] = {}
        self._not_before: dict[Any, float] = {}

    def limit(self, key: Any, alive: int, now: float) -> int:
        """How many workers of this kind may start now: all, none (backing off) or one."""
        if not self._failures.get(key):
            return _UNLIMITED
        if now < self._not_before.get(key, 0.0):
            return 0
        return 0 if alive else 1  # on probation: one at a time until one succeeds

    def failed(self, key: Any, now: float) -> float:
        """Count a failure; returns the delay before the next start."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        retry_in = self.backoff.delay(failures)
        self._not_before[key] = now + retry_in
        return retry_in

    def exited(self, key: Any, failed: bool, runtime: float, now: float) -> float | None:
        """Count an exit: a failure within ``quick_exit`` s backs off; anything else resets."""
        if failed and runtime < self.backoff.quick_exit:
            return self.failed(key, now)
        self._failures.pop(key, None)
        return None


class WorkerFactory(WorkerFactoryBase):
    """Starts worker executables described by the ``.rw`` files in its search paths.

    A worker is started as ``ExecutableName <worker endpoint> [factory arguments] [Arguments]``
    in its own process group, with the file's ``Environment`` added to the broker's, its stdout
    discarded and the tail of its stderr kept for the log. See ``docs/workers.md``.
    """

    #: its workers are separate processes (they need a tcp:// or ipc:// worker endpoint)
    spawns_processes = True

    def __init__(
        self,
        search_paths: Iterable[str | os.PathLike[str]] = (),
        *,
        max_workers: int = 1,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        super().__init__(max_workers=max_workers)
        self.backoff = backoff
        self.search_paths: list[str] = [os.path.abspath(os.fspath(p)) for p in search_paths]
        self.worker_files: list[WorkerFile] = []
        self.errors: list[WorkerFileError] = []
        self.spawned_total = 0
        self._children: dict[int, _Child] = {}
        self._health = Health(backoff)
        self._stopped = False
        self.rescan()

    def __repr__(self) -> str:
        return (
            f"<WorkerFactory files={len(self.worker_files)} alive={len(self._children)}"
            f"/{self.max_workers} spawned={self.spawned_total}"
            f"{' stopped' if self._stopped else ''}>"
        )

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

    def offers(self) -> list[JobRequirements]:
        return [wf.requirements for wf in self.worker_files]

    # -- starting ----------------------------------------------------------------------------

    def alive_count(self) -> int:
        return sum(1 for c in self._children.values() if c.proc.poll() is None)

    def create_workers(
        self, demand: Mapping[JobRequirements, int], worker_endpoint: str, now: float
    ) -> list[FactoryEvent]:
        events = self.reap(now)
        if self._stopped or not demand or self.max_workers <= 0:
            return events
        files = self.worker_files
        alive = [self._alive_of(wf) for wf in files]
        limits = [self._health.limit(wf.path, n, now) for wf, n in zip(files, alive, strict=True)]
        capacity = self.max_workers - len(self._children)
        for index in plan_spawns(demand, self.offers(), alive, limits, capacity):
            events.append(self._spawn(files[index], worker_endpoint, now))
        return events

    def _alive_of(self, wf: WorkerFile) -> int:
        return sum(1 for c in self._children.values() if c.worker_file.path == wf.path)

    def _spawn(self, wf: WorkerFile, endpoint: str, now: float) -> FactoryEvent:
        argv = [wf.executable, endpoint, *self.arguments, *wf.arguments]
        base = {
            "worker_name": wf.worker_name,
            "io_type": wf.io_type.to_wire(),
            "worker_file": wf.path,
        }
        tail = None
        try:
            tail = _StderrTail()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=tail.child_fd,
                env=worker_environment(wf.environment),
                close_fds=True,
                process_group=0,
                preexec_fn=_parent_death_preexec(),  # only calls prctl
            )
        except (OSError, subprocess.SubprocessError) as e:
            if tail is not None:
                tail.close()
            retry_in = self._health.failed(wf.path, now)
            log.warning(
                "cannot start worker %r from %s: %s; next try in %.1f s",
                wf.worker_name,
                wf.path,
                e,
                retry_in,
            )
            return FactoryEvent(SPAWN_FAILED, {**base, "error": str(e), "retry_in": retry_in})
        tail.child_started()
        self._children[proc.pid] = _Child(proc, wf, now, tail)
        self.spawned_total += 1
        log.info("started worker %r (pid %d): %s", wf.worker_name, proc.pid, " ".join(argv))
        return FactoryEvent(SPAWNED, {**base, "pid": proc.pid, "argv": argv})

    # -- reaping and stopping ----------------------------------------------------------------

    def reap(self, now: float) -> list[FactoryEvent]:
        events = []
        for pid, child in list(self._children.items()):
            code = child.proc.poll()
            if code is None:
                child.stderr.trim()
                continue
            del self._children[pid]
            events.append(self._exited(child, code, now))
        return events

    def _exited(self, child: _Child, code: int, now: float) -> FactoryEvent:
        wf = child.worker_file
        runtime = max(0.0, now - child.started)
        tail = child.stderr.text()
        child.stderr.close()
        signame = None
        if code < 0:
            with contextlib.suppress(ValueError):
                signame = signal.Signals(-code).name
        retry_in = None
        if not child.stopping:
            retry_in = self._health.exited(wf.path, code != 0, runtime, now)
        how = f"signal {signame or -code}" if code < 0 else f"code {code}"
        if code != 0 and not child.stopping:
            retry = f"; next start in {retry_in:.1f} s" if retry_in else ""
            log.warning(
                "worker %r (pid %d, %s) exited with %s after %.1f s%s; stderr tail:\n%s",
                wf.worker_name,
                child.proc.pid,
                wf.path,
                how,
                runtime,
                retry,
                tail.rstrip() or "(empty)",
            )
        else:
            log.info("worker %r (pid %d) exited with %s", wf.worker_name, child.proc.pid, how)
        return FactoryEvent(
            EXITED,
            {
                "pid": child.proc.pid,
                "returncode": code,
                "signal": signame,
                "worker_name": wf.worker_name,
                "io_type": wf.io_type.to_wire(),
                "worker_file": wf.path,
                "runtime": round(runtime, 3),
                "stderr_tail": tail,
                "stopped_by_broker": child.stopping,
                "retry_in": retry_in,
            },
        )

    def kill(self, pid: int) -> bool:
        """SIGKILL one spawned worker (its process group), e.g. one that ignored a time limit.
        Returns False for a pid this factory did not spawn."""
        child = self._children.get(pid)
        if child is None or child.proc.poll() is not None:
            return False
        log.warning("killing worker %r (pid %d)", child.worker_file.worker_name, pid)
        _signal_group(child.proc, signal.SIGKILL)
        return True

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM every worker's process group, SIGKILL what is left after ``grace`` s, reap."""
        self._stopped = True
        running = [c for c in self._children.values() if c.proc.poll() is None]
        for child in running:
            child.stopping = True
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for child in running:  # the group may hold the worker's own children
            _signal_group(child.proc, signal.SIGKILL)
        for child in running:
            try:
                child.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not die after SIGKILL", child.proc.pid)
        self.reap(time.monotonic())


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except (PermissionError, AttributeError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
