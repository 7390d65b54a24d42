"""Logging helpers: a TRACE level below DEBUG that follows each message through the threads,
and thread names the operating system shows."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from remus import protocol as p

TRACE = 5
logging.addLevelName(TRACE, "TRACE")


FORMAT = "%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s"


class LinesFormatter(logging.Formatter):
    """Formats a record that carries ``lines`` (many events logged at once, e.g. the jobs
    that finished in one broker pass) as one line each, every line with the full prefix."""

    def format(self, record: logging.LogRecord) -> str:
        lines = getattr(record, "lines", None)
        if not lines:
            return super().format(record)
        record.msg, record.args = lines[0], None
        head = super().format(record)
        prefix = head[: len(head) - len(lines[0])]
        return head + "".join("\n" + prefix + line for line in lines[1:])


def name_os_thread() -> None:
    """Give the calling thread its Python name in the operating system too (Linux keeps the
    first 15 bytes), so ``top -H`` and ``ps -L`` tell remus's threads apart: which one burns
    the CPU. Does nothing where there is no ``/proc``."""
    name = threading.current_thread().name.encode()[:15]
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "wb") as f:
            f.write(name)
    except OSError:
        pass


def configure(level: int | str = logging.INFO) -> None:
    """For command-line entry points only: libraries never configure logging."""
    logging.basicConfig(level=level, format=FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(LinesFormatter(FORMAT))


def describe(frames: Sequence[Any]) -> str:
    """A short description of a multipart message for trace lines: its command, size and the
    jobs it is about (no payload bytes)."""
    sizes = [len(f) for f in frames]
    head = bytes(frames[1])[:24] if len(frames) > 1 else b""
    try:
        jobs = p.name_jobs(p.job_ids(p.decode(frames)))
    except Exception:
        jobs = ""  # not a message we can read: the core says why
    return f"{head.decode(errors='replace')} frames={len(frames)} bytes={sum(sizes)}{jobs}"
