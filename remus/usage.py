"""What this process uses: memory and CPU, cheap enough to measure around every job.

A worker sends :func:`current` with its heartbeats, and what one job used (:class:`JobMeter`)
with that job's result or failure; the broker shows both in ``workers()``, ``jobs()`` and
``remus top``, and a finished job's share in its ``JobResult``.

- ``rss``: resident memory now, in bytes (``/proc/self/statm`` on Linux; elsewhere the peak);
- ``peak_rss``: the most resident memory this process has had, in bytes;
- ``cpu``: user plus system CPU seconds this process has used.

A job's peak is the process's peak while the job ran: on Linux the meter resets the kernel's
high-water mark when the job starts (``/proc/self/clear_refs``), so a small job after a big
one does not inherit the big one's peak. A job's CPU seconds are those of the thread that ran
its handler.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from typing import NamedTuple

#: ru_maxrss is in KiB on Linux and in bytes on macOS
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class Usage(NamedTuple):
    rss: int
    peak_rss: int
    cpu: float


def _rusage() -> tuple[int, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    peak = ru.ru_maxrss * _MAXRSS_UNIT
    if peak <= _inherited:  # ru_maxrss says the parent's peak: ask the kernel for ours
        peak = _hwm() or peak
    return peak, ru.ru_utime + ru.ru_stime


def _open_status() -> int:
    try:
        return os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1  # not Linux


def _hwm() -> int | None:
    """The kernel's high-water mark of this process's RSS (VmHWM, Linux), in bytes."""
    if _status < 0:
        return None
    try:
        status = os.pread(_status, 4096, 0)
        start = status.index(b"VmHWM:") + 6
        return int(status[start : status.index(b"kB", start)]) * 1024
    except (OSError, ValueError):
        return None


def _inherited_peak() -> int:
    """The floor of ru_maxrss that is not this process's: Linux keeps in it the peak of the
    process this one was exec'ed from (a worker the broker spawned starts at the broker's
    size, which no reset lowers). 0 if ru_maxrss is this process's own."""
    hwm = _hwm()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT
    return maxrss if hwm is not None and maxrss > hwm else 0


#: /proc/self/status, kept open (-1: none); at or under _inherited, a peak is read from it
_status = _open_status()
_inherited = _inherited_peak()


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


#: the process's peak from before the kernel's high-water mark was last reset, and the jobs
#: being measured now (the mark is reset only when a job starts alone: in a process that runs
#: several at once, each job's peak is the process's)
_floor = 0
_running = 0
_lock = threading.Lock()


def current() -> Usage:
    """This process's memory and CPU now."""
    peak, cpu = _rusage()
    rss = _rss()
    peak = max(peak, _floor, rss or 0)
    return Usage(peak if rss is None else rss, peak, cpu)


#: the high-water mark is reset before a job at least this often (seconds)...
RESET_EVERY = 0.1
#: ...and before any job that follows one that raised it by this much (bytes)
RESET_RISE = 8 << 20


class _Marks:
    """When the kernel's high-water mark needs a reset before a job. A reset takes the
    process's mmap lock (≈15 µs in a busy worker, as much as a tiny job's whole handling), so
    it is done only when it changes the answer: after a job that raised the mark well above
    where it stood after the last reset (a big job: the next job must not inherit its peak),
    and at least every RESET_EVERY seconds (so a job's peak includes at most that much of
    the process's recent past)."""

    def __init__(self) -> None:
        self.at = -RESET_EVERY
        self.base = 0  # the mark right after the last reset (the RSS then)
        self.last = 0  # the mark when the latest job stopped

    def reset(self, base: int) -> None:
        self.at = time.monotonic()
        self.base = self.last = base

    def stopped(self, peak: int) -> None:
        self.last = peak

    def due(self) -> bool:
        return self.last - self.base >= RESET_RISE or time.monotonic() - self.at >= RESET_EVERY


_marks = _Marks()


def _reset_due() -> bool:
    return _marks.due()


class JobMeter:
    """Measures one job: ``start()`` before the handler, ``stop()`` after it, in one thread."""

    _clear: int | None = None  # the open /proc/self/clear_refs (-1: cannot reset), per process

    def __init__(self) -> None:
        self._cpu0 = 0.0
        self._running = False

    def start(self) -> None:
        global _floor, _running
        with _lock:
            if not self._running:
                self._running = True
                _running += 1
            if _running == 1 and _reset_due() and _clear_fd() >= 0:
                if not _floor:  # the peak before the first reset (then each stop adds its own)
                    _floor = _rusage()[0]
                try:
                    os.write(_clear_fd(), b"5")  # the high-water mark drops to the RSS now
                except OSError:
                    JobMeter._clear = -1
                _marks.reset(_rusage()[0])
        self._cpu0 = time.thread_time()

    def stop(self) -> tuple[int, float]:
        """(peak RSS in bytes, CPU seconds) of the job since ``start``."""
        global _floor, _running
        cpu = time.thread_time() - self._cpu0
        peak = _rusage()[0]
        with _lock:
            _floor = max(_floor, peak)
            _marks.stopped(peak)
            if self._running:
                self._running = False
                _running -= 1
        return peak, cpu


def _clear_fd() -> int:
    if JobMeter._clear is None:
        try:
            JobMeter._clear = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            JobMeter._clear = -1  # not Linux, or not allowed: a job's peak is the process's
    return JobMeter._clear


def _forked() -> None:
    # the inherited descriptor is the parent's /proc/self/clear_refs: never write to it
    global _floor, _running, _status, _inherited
    if JobMeter._clear is not None and JobMeter._clear >= 0:
        os.close(JobMeter._clear)
    JobMeter._clear = None
    _floor = _running = 0
    if _status >= 0:
        os.close(_status)
        _status = _open_status()
        _inherited = _inherited_peak()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
