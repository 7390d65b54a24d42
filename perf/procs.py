"""Child processes for benchmarks: start them, read their ready lines, measure them, stop them.

Every benchmark role (broker, worker, client, pusher, puller) runs as ``python -m perf.<module>
<role> ...`` in its own process. A role that binds prints one "ready" line with its real endpoints
(it binds port 0); a role that measures prints one JSON line with its samples. :class:`ProcGroup`
remembers every process it started and stops each one by its PID when the ``with`` block ends.
"""

from __future__ import annotations

import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcError(RuntimeError):
    """A benchmark process failed to start, report, or exit; carries the tail of its stderr."""


class Proc:
    """One child process, with its stdout lines delivered through a queue by a reader thread."""

    def __init__(self, name: str, argv: Sequence[str], *, stdin: bool = False) -> None:
        self.name = name
        self._err = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        self.popen = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        self.pid = self.popen.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"perf-read-{name}", daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} rc={self.popen.poll()}>"

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        self._lines.put(None)

    def stderr_tail(self, limit: int = 2000) -> str:
        self._err.seek(0)
        return self._err.read().decode(errors="replace")[-limit:]

    def _fail(self, why: str) -> ProcError:
        tail = self.stderr_tail()
        return ProcError(f"{self.name} (pid {self.pid}): {why}" + (f"\n{tail}" if tail else ""))

    def line(self, timeout: float) -> str:
        """The next stdout line; raises ProcError on timeout or when the process has exited."""
        try:
            line = self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise self._fail(f"no output within {timeout:.1f}s") from None
        if line is None:
            self._lines.put(None)
            self.popen.wait(timeout=5)
            raise self._fail(f"exited with code {self.popen.returncode} before reporting")
        return line

    def expect(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Skip stdout lines until one matches ``pattern`` (a regex), within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            line = self.line(deadline - time.monotonic())
            m = rx.search(line)
            if m:
                return m

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        """The first stdout line that starts with ``{``, parsed as JSON."""
        text = self.expect(r"^\{", timeout).string
        data: dict[str, Any] = json.loads(text)
        if "error" in data:
            raise self._fail(data["error"])
        return data

    def send(self, text: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(text.encode() + b"\n")
        self.popen.stdin.flush()

    # -- measurements from /proc, valid while the process lives --------------------------------

    def status_kib(self, field: str) -> int:
        """A ``/proc/PID/status`` field in KiB (``VmRSS``, ``VmHWM``); 0 if unreadable."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for row in f:
                    if row.startswith(field + ":"):
                        return int(row.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def thread_cpu_seconds(self) -> dict[str, float]:
        """utime + stime per thread name (threads of one name summed), from
        ``/proc/PID/task``; remus names its threads in the OS (``remus.log.name_os_thread``)."""
        seconds: dict[str, float] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the thread ended meanwhile
            used = (int(fields[11]) + int(fields[12])) / CLK_TCK
            seconds[name] = seconds.get(name, 0.0) + used
        return seconds

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all its threads), from ``/proc/PID/stat``."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    # -- lifetime --------------------------------------------------------------------------------

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM by PID, wait, then SIGKILL by PID; close the pipes. Idempotent."""
        if self.popen.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    break
                if self.wait(timeout) is not None:
                    break
        self.popen.wait()
        self._reader.join(timeout=2)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                pipe.close()
        self._err.close()


class ProcGroup:
    """Starts processes and stops every one of them (newest first) when the block ends."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def __enter__(self) -> ProcGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, name: str, module: str, *args: Any, stdin: bool = False) -> Proc:
        proc = Proc(name, ["-m", module, *map(str, args)], stdin=stdin)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        while self.procs:
            self.procs.pop().stop()


def emit(data: dict[str, Any]) -> None:
    """Write a role's JSON report line to stdout (the parent reads it with ``Proc.result``)."""
    print(json.dumps(data), flush=True)


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def install_sigterm_exit() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks close sockets before the process ends."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
