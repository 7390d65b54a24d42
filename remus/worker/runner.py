"""``Worker.run``'s loop: up to ``slots`` handlers at once, on threads or processes.

The calling thread takes jobs (only while a slot is free) and hands each to a pool; the thread
that sees a handler end reports it: its result, its failure, or, for a job the broker cancelled
meanwhile, that it stopped, with one credit back in the same message. The worker's credit is
thus always its free slots plus the prefetch.

**Threads** (``pool="thread"``, the default): a ``ThreadPoolExecutor`` of ``slots`` threads
named ``remus-slot``; with one slot, the thread that called ``run`` itself, as ever (so a
handler may still do what only the main thread may, such as set signal handlers). The handler
gets the :class:`~remus.worker.job.Job`, with everything it
offers (progress, cancels, checkpoints, control messages, assistants). Right for handlers that
wait (I/O, subprocesses) or release the GIL (NumPy and most native code). One slot, the
default, has a loop of its own: nothing else runs a handler, so it takes no lock and waits on
no condition per job (for tiny jobs, that was a third of what the worker's thread spent).

**Processes** (``pool="process"``): a ``ProcessPoolExecutor`` of ``slots`` processes, started
with ``spawn`` (never ``fork``: the worker has threads and a ZeroMQ context), for CPU-bound
pure-Python handlers, which threads would run one at a time. The handler must be picklable (a
function defined at the top level of an importable module, with a ``__main__`` guard in a
script) and so must its return value; it gets a :class:`ProcessJob`: the job's id, contents
(bytes), files and args, ``last_checkpoint``, ``parent``, ``protected``, and ``cancelled`` /
``cancel_reason`` / ``preempted``, which follow the broker's cancels through shared memory.
Progress, checkpoints, control messages and assistants are NOT available there: those methods
raise :class:`RuntimeError` saying so. A handler process that dies fails its job (and the pool
is started again for the next ones). A driver thread per slot (``remus-slot``) hands each job
to the process pool and waits for it, so both pools share one loop.

**Work packages** (jobs submitted with ``package_size``): the broker sends a package's jobs
together, on one credit. They run one after the other in one slot; each one's end is reported
without waking the connection (it rides with the next report, or the next heartbeat, which
keeps the package's jobs alive), and the last one's end brings the package's one credit back,
so a package costs one message each way. ``prefetch="auto"`` counts a package as one job of the
package's whole duration.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remus.errors import FileError
from remus.types import DEFAULT_KEY, FileHandle, JobRequirements
from remus.usage import JobMeter
from remus.worker.job import Job, content
from remus.worker.jobstate import CANCEL_REASONS

if TYPE_CHECKING:
    from remus.worker.worker import Worker

#: what the worker says of its jobs goes where it always went (users filter on that name)
log = logging.getLogger("remus.worker.worker")

POOLS = ("thread", "process")

#: what a process handler cannot do, and why
NOT_IN_A_PROCESS = (
    "{what} is not available to a handler run with pool='process' (it runs in another process, "
    "without the worker's connection); use pool='thread' for handlers that need it"
)


#: ``prefetch="auto"``: at most this many jobs wait here beyond the slots (16 gave the default
#: settings 12-14k jobs/s against 18-26k with 64, tiny jobs, 2 workers: perf --only defaults)
AUTO_MAX = 64
#: ``prefetch="auto"``: enough jobs wait here to keep the slots busy for this long, the time a
#: job takes to come from the broker once asked for (about a round trip on one machine)
AUTO_COVER = 0.002


class AutoPrefetch:
    """``prefetch="auto"``: how many jobs to keep waiting here, from how long the handlers
    take. Jobs slower than a round trip to the broker get none (one at a time per slot: a job
    is never held back here while another worker is free); tiny ones get up to AUTO_MAX, so
    the next is here when a slot frees. It moves with the handlers' recent pace."""

    __slots__ = ("_avg", "_slots", "current")

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._avg: float | None = None
        #: jobs asked for beyond the slots right now
        self.current = 0

    def credit(self, seconds: float) -> int:
        """A job ended after ``seconds``: the jobs to ask for with its report (1 to replace
        it, more to prefetch more, 0 to prefetch one fewer)."""
        avg = seconds if self._avg is None else 0.8 * self._avg + 0.2 * seconds
        self._avg = avg
        target = min(AUTO_MAX, int(AUTO_COVER * self._slots / max(avg, 1e-7)))
        if target > self.current:
            more = target - self.current
            self.current = target
            return 1 + more
        if target < self.current:
            self.current -= 1
            return 0
        return 1


class Runner:
    """One ``Worker.run`` call."""

    def __init__(
        self,
        worker: Worker,
        handler: Callable[[Any], Any],
        *,
        slots: int,
        prefetch: int | str,
        pool: str,
        max_jobs: int | None,
        idle_timeout: float | None,
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be 'thread' or 'process', got {pool!r}")
        if pool == "process":
            try:
                pickle.dumps(handler)
            except Exception as e:
                raise TypeError(
                    "pool='process' needs a picklable handler (a function defined at the top "
                    f"level of a module, not a lambda, closure or bound method): {e}"
                ) from e
        self.worker = worker
        self.handler = handler
        self.slots = slots
        #: prefetch="auto": adapts to the handlers' pace (starts at none)
        self.auto = AutoPrefetch(slots) if prefetch == "auto" else None
        self.prefetch = 0 if isinstance(prefetch, str) else prefetch
        self.pool = pool
        self.max_jobs = max_jobs
        self.idle_timeout = idle_timeout
        self._cond = threading.Condition()
        self.running = 0
        #: credit asked for in this run (never more than max_jobs)
        self.asked = 0
        self._idle_since = time.monotonic()
        self._procs: _Processes | None = None

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        w = self.worker
        first = self.slots + self.prefetch
        if self.max_jobs is not None:
            first = min(first, self.max_jobs)
        self.asked = first
        w.ask_for_jobs(first)
        if self.pool == "thread" and self.slots == 1:
            return self._one_slot()
        if self.pool == "process":
            self._procs = _Processes(self.slots, self.handler)
        # (with processes too, a thread per slot drives its jobs through the process pool)
        executor = cf.ThreadPoolExecutor(self.slots, thread_name_prefix="remus-slot")
        taken = 0
        try:
            while not w.should_terminate and (self.max_jobs is None or taken < self.max_jobs):
                if not self._wait_for_a_slot():
                    break
                job = w._take(block=True, timeout=self._wait())
                if not job:
                    if self._idle_ends_run():
                        break
                    continue
                rest = self._rest_of_package(job)  # (its slot's, in order: taken now)
                taken += 1 + len(rest)
                with self._cond:
                    self.running += 1
                if job.cancelled:  # cancelled while it waited here: it never starts
                    self._ended(job, None, None, None, last=not rest)
                    unit = self._next(rest)
                    if unit is None:
                        continue
                    job, rest = unit
                else:
                    log.info("job %s taken (%s)", job.id, w.requirements.io_type)
                executor.submit(self._in_slot, job, rest)
        finally:
            executor.shutdown(wait=True)
            if self._procs is not None:
                self._procs.shutdown(wait=True)
        return taken

    def _one_slot(self) -> int:
        """The loop of the default worker, one slot on threads: the handler runs on this
        thread, one job at a time, so no slot is waited for and nothing is shared with another
        handler thread: no condition, no lock, one meter for every job. What a tiny job costs
        the worker here is its take, its handler and the posts that report its end."""
        w = self.worker
        stop = w._conn.shutdown
        handler = self.handler
        max_jobs = self.max_jobs
        meter = JobMeter()
        taken = 0
        #: the handlers' time so far in the work package running now
        spent = 0.0
        while not stop.is_set() and (max_jobs is None or taken < max_jobs):
            job = w._take(block=True, timeout=self._wait())
            if not job:
                if self._idle_ends_run():
                    break
                continue
            taken += 1
            pack = job.package
            if pack is None or pack[1] == 0:
                spent = 0.0
            # a work package's jobs share the slot: only the last one gives it back
            last = pack is None or pack[1] == pack[2] - 1
            if job.cancelled:  # cancelled while it waited here: it never starts
                if last:
                    self._credit_back(spent or None)
                self._report(job, None, None, None, wake=last)
            else:
                log.info("job %s taken (%s)", job.id, w.requirements.io_type)
                error: tuple[str, str] | None = None
                result: Any = None
                meter.start()
                began = time.perf_counter()
                try:
                    result = handler(job)
                except Exception as e:
                    error = (f"{type(e).__name__}: {e}", traceback.format_exc())
                spent += time.perf_counter() - began
                used = meter.stop()
                if last:  # (only now: while the handler ran, the slot was busy)
                    self._credit_back(spent)
                self._report(job, result, error, used, wake=last)
            self._idle_since = time.monotonic()
        return taken

    def _idle_ends_run(self) -> bool:
        """No job came: whether ``idle_timeout`` is over (then the run ends, and says so)."""
        if not self._idle_over():
            return False
        log.info("no job for %.1f s; worker exits", self.idle_timeout)
        return True

    def _wait_for_a_slot(self) -> bool:
        """Wait until fewer than ``slots`` handlers run; False if the worker must stop."""
        w = self.worker
        with self._cond:
            while self.running >= self.slots and not w.should_terminate:
                self._cond.wait(0.5)  # (woken when a handler ends; the timeout rechecks the stop)
        return not w.should_terminate

    def _wait(self) -> float:
        """How long to wait for a job before looking at the idle timeout and the stop again."""
        if self.idle_timeout is None or self.running:
            return 1.0
        return max(0.0, self.idle_timeout - (time.monotonic() - self._idle_since))

    def _idle_over(self) -> bool:
        with self._cond:
            return (
                self.idle_timeout is not None
                and not self.running
                and time.monotonic() - self._idle_since >= self.idle_timeout
            )

    # ------------------------------------------------------------------ one slot's jobs

    def _in_slot(self, job: Job, rest: list[Job]) -> None:
        """On a slot's thread: run the job, then the rest of its work package, if any."""
        call = self._procs.call if self._procs is not None else self._call
        spent = 0.0
        while True:
            began = time.perf_counter()
            result, error, used = call(job)
            spent += time.perf_counter() - began
            self._ended(job, result, error, used, spent, last=not rest)
            unit = self._next(rest)
            if unit is None:
                return
            job, rest = unit

    def _call(self, job: Job) -> tuple[Any, tuple[str, str] | None, tuple[int, float] | None]:
        """The handler on this thread: (result, error, (peak RSS, CPU seconds))."""
        meter = JobMeter()
        meter.start()
        try:
            result = self.handler(job)
        except Exception as e:
            return None, (f"{type(e).__name__}: {e}", traceback.format_exc()), meter.stop()
        return result, None, meter.stop()

    def _rest_of_package(self, job: Job) -> list[Job]:
        """The jobs of ``job``'s work package after it (none for a job on its own), taken from
        what the worker received (they came in the same message, right after it) but not
        started: each starts in turn (:meth:`_next`)."""
        pack = job.package
        if pack is None:
            return []
        rest = []
        for _ in range(pack[2] - 1 - pack[1]):
            member = self.worker._take_raw(block=True, timeout=1.0)
            if not member:
                break  # the worker is stopping
            rest.append(member)
        return rest

    def _next(self, jobs: list[Job]) -> tuple[Job, list[Job]] | None:
        """The next job of a work package that can run in this slot, started, and the ones
        after it; those that cannot (cancelled, files that cannot be had) are reported on the
        way. None when none is left."""
        w = self.worker
        while jobs:
            job, jobs = jobs[0], jobs[1:]
            try:
                job = w._begin(job)
            except FileError as e:
                log.warning("job %s failed: %s", job.id, e)
                error = (f"the worker cannot take the job's files: {e}", "")
                self._ended(job, None, error, None, last=not jobs)
                continue
            if job.cancelled:
                self._ended(job, None, None, None, last=not jobs)
                continue
            log.info("job %s taken (%s)", job.id, w.requirements.io_type)
            return job, jobs
        return None

    def _ended(
        self,
        job: Job,
        result: Any,
        error: tuple[str, str] | None,
        used: tuple[int, float] | None,
        took: float | None = None,
        *,
        last: bool = True,
    ) -> None:
        """A pool's handler ended (any thread) after ``took`` seconds (None: it never ran): a
        credit back for its slot, the report, and the slot free again. ``last``: False for a
        work package's job with more to run in its slot (no credit, nothing freed: the
        report waits for the next one)."""
        try:
            if last:
                with self._cond:  # (keeps the worker's request count exact across threads)
                    self._credit_back(took)
            self._report(job, result, error, used, wake=last)
        finally:
            if last:
                with self._cond:
                    self.running -= 1
                    self._idle_since = time.monotonic()
                    self._cond.notify_all()

    def _report(
        self,
        job: Job,
        result: Any,
        error: tuple[str, str] | None,
        used: tuple[int, float] | None,
        *,
        wake: bool = True,
    ) -> None:
        """Report how the job ended; it rides with the credit for its slot, posted before.
        ``used``: (peak RSS, CPU seconds) of its handler, if it ran and that is known.
        ``wake=False`` (a work package's job, not its last): the report waits for the next
        one that wakes the connection, or its next heartbeat."""
        w = self.worker
        try:
            cpu = 0.0
            if used is not None:
                peak, cpu = used
                w._conn.post("used", job.id, peak, cpu, wake=False)
            if job.cancelled:
                # the broker has let go of it: it hears the job stopped, no result
                when = "before it started" if used is None else "while it ran"
                if job.preempted:
                    log.info("job %s was cancelled %s (preempted): stopped", job.id, when)
                else:
                    log.warning(
                        "job %s was cancelled %s (%s): stopped, no result sent",
                        job.id,
                        when,
                        job.cancel_reason,
                    )
                w.send_stopped(job, _wake=wake)
            elif error is not None:
                log.warning("job %s failed: %s", job.id, error[0])
                w.send_failure(job, *error, _wake=wake)
            elif isinstance(result, (list, tuple)):
                try:
                    w.return_result(job, files=result, _wake=wake)
                except FileError as e:
                    log.info("job %s failed: result file %s", job.id, e)
            else:
                try:
                    w.return_result(job, b"" if result is None else result, _wake=wake)
                except TypeError as e:
                    log.warning("job %s failed: %s", job.id, e)
                    w.send_failure(
                        job, f"the handler's return value is not a result: {e}", _wake=wake
                    )
                else:
                    log.info("job %s finished (%.3f s of CPU)", job.id, cpu)
        except Exception:
            log.exception("job %s: could not report its end", job.id)

    def _credit_back(self, took: float | None = None) -> None:
        """Ask for one job in place of one that ended after ``took`` seconds (with
        ``prefetch="auto"``, as many as keep the right number waiting here), never more than
        ``max_jobs`` in all (with slots, under ``_cond``). It waits for the report that
        follows."""
        n = 1 if self.auto is None or took is None else self.auto.credit(took)
        if self.max_jobs is not None:
            n = min(n, self.max_jobs - self.asked)
        if n <= 0:
            return
        self.asked += n
        self.worker.ask_for_jobs(n, _wake=False)


# ====================================================================== process pool


@dataclass(frozen=True)
class ProcessJob:
    """What a handler run with ``pool="process"`` gets: a picklable view of the job.

    ``job[key]`` / ``job.contents``, ``job.files`` and ``job.args`` (file requests),
    ``job.last_checkpoint``, ``job.parent``, ``job.protected``; ``job.cancelled``,
    ``job.cancel_reason`` and ``job.preempted`` as on a :class:`~remus.worker.job.Job`.
    ``send_progress``, ``checkpoint``, ``control_messages``, ``on_control``,
    ``submit_assistant`` and ``client`` raise RuntimeError: they need the worker's connection,
    which stays in the worker process."""

    id: str
    requirements: JobRequirements | None
    contents: dict[str, bytes]
    files: tuple[FileHandle, ...] = ()
    args: tuple[str, ...] = ()
    last_checkpoint: bytes | None = None
    parent: str = ""
    protected: bool = True
    workdir: str | None = None
    #: which cancel flag is this job's (internal)
    flag: int = field(default=-1, repr=False)

    def __getitem__(self, key: str) -> bytes:
        return content(self.id, self.contents, key)

    def get(self, key: str = DEFAULT_KEY, default: bytes | None = None) -> bytes | None:
        return self.contents.get(key, default)

    @property
    def valid(self) -> bool:
        return bool(self.id)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def cancel_reason(self) -> str | None:
        code = _FLAGS[self.flag] if _FLAGS is not None and self.flag >= 0 else 0
        if not code:
            return None
        return CANCEL_REASONS[code - 1] if code <= len(CANCEL_REASONS) else "cancelled"

    @property
    def cancelled(self) -> bool:
        return self.cancel_reason is not None

    @property
    def preempted(self) -> bool:
        return self.cancel_reason == "preempted"

    def _unsupported(self, what: str) -> RuntimeError:
        return RuntimeError(NOT_IN_A_PROCESS.format(what=what))

    def send_progress(self, value: int | None = None, message: str = "") -> None:
        raise self._unsupported("progress")

    def checkpoint(self, data: bytes) -> None:
        raise self._unsupported("job.checkpoint")

    def control_messages(self) -> list[bytes]:
        raise self._unsupported("job.control_messages")

    def on_control(self, callback: Any) -> None:
        raise self._unsupported("job.on_control")

    def submit_assistant(self, submission: Any, **options: Any) -> Any:
        raise self._unsupported("job.submit_assistant")

    @property
    def client(self) -> Any:
        raise self._unsupported("job.client")

    @property
    def assistants(self) -> Any:
        raise self._unsupported("job.assistants")


#: in a handler process: one cancel flag per slot, written by the worker (0: not cancelled,
#: else 1 + the index of the reason in CANCEL_REASONS; past them: another reason)
_FLAGS: Any = None


def _init_process(flags: Any) -> None:
    global _FLAGS
    _FLAGS = flags


def _call(handler: Callable[[ProcessJob], Any], job: ProcessJob) -> tuple[Any, ...]:
    """In a handler process: run the handler, measured; never raises."""
    meter = JobMeter()
    meter.start()
    try:
        result = handler(job)
    except Exception as e:
        peak, cpu = meter.stop()
        return ("error", f"{type(e).__name__}: {e}", traceback.format_exc(), peak, cpu)
    peak, cpu = meter.stop()
    return ("ok", result, peak, cpu)


def _code(reason: str) -> int:
    try:
        return CANCEL_REASONS.index(reason) + 1
    except ValueError:
        return len(CANCEL_REASONS) + 1


class _Processes:
    """A process pool with a cancel flag per slot; started again if a handler process dies."""

    def __init__(self, slots: int, handler: Callable[[ProcessJob], Any]) -> None:
        self._handler = handler
        self._ctx = multiprocessing.get_context("spawn")
        self._flags = self._ctx.RawArray("b", slots)
        self._slots = slots
        self._free = list(range(slots))
        self._owner: dict[int, object] = {}  # flag -> the run it belongs to
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            self._slots, mp_context=self._ctx, initializer=_init_process, initargs=(self._flags,)
        )

    def call(self, job: Job) -> tuple[Any, tuple[str, str] | None, tuple[int, float] | None]:
        """Run the handler on ``job`` in a handler process and wait for it (on a slot's
        thread): (result, error, (peak RSS, CPU seconds)); never raises."""
        with self._lock:
            flag = self._free.pop()
            self._flags[flag] = 0
            self._owner[flag] = job.state
        if job.state is not None:
            job.state.on_cancel(lambda reason: self._cancelled(flag, job.state, reason))
        view = ProcessJob(
            job.id,
            job.requirements,
            {k: job.contents[k] for k in job.contents},
            job.files,
            job.args,
            job.last_checkpoint,
            job.parent,
            job.protected,
            None if job.scratch is None else job.workdir,
            flag,
        )
        try:
            out = self._submit(view).result()
        except BrokenProcessPool as e:
            return None, (f"the handler's process died: {e}", ""), None
        except Exception as e:  # e.g. a result that cannot be pickled
            return None, (f"{type(e).__name__}: {e}", traceback.format_exc()), None
        finally:
            with self._lock:
                self._owner.pop(flag, None)
                self._free.append(flag)
        if out[0] == "ok":
            return out[1], None, (out[2], out[3])
        return None, (out[1], out[2]), (out[3], out[4])

    def _submit(self, view: ProcessJob) -> cf.Future[tuple[Any, ...]]:
        pool = self._pool
        try:
            return pool.submit(_call, self._handler, view)
        except BrokenProcessPool:
            with self._lock:  # (one slot's thread starts it again, not each of them)
                if self._pool is pool:
                    log.warning("a handler process died: starting the process pool again")
                    pool.shutdown(wait=False)
                    self._pool = self._new_pool()
                pool = self._pool
            return pool.submit(_call, self._handler, view)

    def _cancelled(self, flag: int, state: object, reason: str) -> None:
        with self._lock:
            if self._owner.get(flag) is state:  # (not a flag handed on to another job since)
                self._flags[flag] = _code(reason)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
