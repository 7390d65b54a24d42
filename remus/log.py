"""Logging helpers: a TRACE level below DEBUG that follows each message through the threads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from remus import protocol as p

TRACE = 5
logging.addLevelName(TRACE, "TRACE")


def configure(level: int | str = logging.INFO) -> None:
    """For command-line entry points only: libraries never configure logging."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s",
    )


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
