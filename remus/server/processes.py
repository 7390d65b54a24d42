"""Starting, watching and stopping worker processes (for the factory and ``--check-workers``).

A worker runs in its own process group, with stdin and stdout on /dev/null and its stderr in an
unlinked temporary file whose tail we read (:class:`StderrTail`). It is reaped with ``wait4`` so
that its peak RSS is known when it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence

STDERR_TAIL_BYTES = 4096
_STDERR_TRIM_AT = 1 << 20
_PR_SET_PDEATHSIG = 1


class StderrTail:
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


def parent_death_preexec() -> Callable[[], None] | None:
    """On Linux, a preexec_fn asking the kernel to SIGKILL the child if the broker dies.

    The signal fires when the *thread* that started the child exits, so the factory must be
    driven by a thread that outlives its workers (the core thread, which calls ``stop``).
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


def start_process(
    argv: Sequence[str], environment: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], StderrTail]:
    """Start a worker in its own process group; raises OSError or SubprocessError."""
    tail = StderrTail()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=tail.child_fd,
            env=worker_environment(environment),
            close_fds=True,
            process_group=0,
            preexec_fn=parent_death_preexec(),  # only calls prctl
        )
    except BaseException:
        tail.close()
        raise
    tail.child_started()
    return proc, tail


def collect(proc: subprocess.Popen[bytes]) -> tuple[int, int] | None:
    """Reap ``proc`` if it ended, without blocking: ``(returncode, ru_maxrss)``, else None.

    ``wait4`` gives the child's resource usage (its peak RSS); the Popen's ``returncode`` is set
    as ``poll()`` would have. ``ru_maxrss`` is 0 when unknown (already reaped elsewhere).
    """
    if proc.returncode is not None:
        return proc.returncode, 0
    if not hasattr(os, "wait4"):
        code = proc.poll()
        return None if code is None else (code, 0)
    try:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:  # reaped behind our back
        code = proc.poll()
        return (0 if code is None else code), 0
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss


def is_running(proc: subprocess.Popen[bytes]) -> bool:
    """True while ``proc`` has not ended; never reaps it (so :func:`collect` still can)."""
    if proc.returncode is not None:
        return False
    if not hasattr(os, "waitid"):
        return proc.poll() is None
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.poll() is None
    return info is None


def signal_name(returncode: int) -> str | None:
    """``SIGKILL`` for a returncode of -9; None for a normal exit."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the worker's process group (to the process alone if that fails)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except (PermissionError, AttributeError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
