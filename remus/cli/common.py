"""What every subcommand that reaches a broker shares: where the broker is, how long to wait for
it, the exit codes, the one-line error messages, and how values are shown to people."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from remus.server.config import DEFAULT_CLIENT
from remus.types import IOType, JobProgress, Status

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from remus.client import Client

#: exit codes of every subcommand
OK, JOB_FAILED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130

#: seconds the broker may stay silent before a subcommand gives up (exit 3)
DEFAULT_TIMEOUT = 5.0


class CliError(Exception):
    """Ends a subcommand with ``message`` on stderr and exit ``code``."""

    def __init__(self, message: str, code: int = JOB_FAILED) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------ reaching a broker


def add_reach_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--client EP`` and ``--timeout S``, on the program (dest ``top_*``) and on each
    subcommand that reaches a broker (the one given last wins)."""
    prefix = "top_" if top else ""
    parser.add_argument(
        "--client",
        dest=f"{prefix}client",
        metavar="EP",
        default=None,
        help="the broker's client endpoint [$REMUS_CLIENT, else " + DEFAULT_CLIENT + "]",
    )
    parser.add_argument(
        "--timeout",
        dest=f"{prefix}timeout",
        metavar="S",
        type=positive_float,
        default=None,
        help=f"seconds the broker may stay silent before giving up (exit 3) [{DEFAULT_TIMEOUT:g}]",
    )


def resolve_reach(args: argparse.Namespace) -> None:
    """Settle ``args.client`` and ``args.timeout``: subcommand option, program option,
    ``$REMUS_CLIENT``, default."""
    args.client = (
        getattr(args, "client", None)
        or getattr(args, "top_client", None)
        or os.environ.get("REMUS_CLIENT")
        or DEFAULT_CLIENT
    )
    args.timeout = getattr(args, "timeout", None) or getattr(args, "top_timeout", None)
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT


def connect(args: argparse.Namespace) -> Client:
    from remus.client import Client

    try:
        return Client(args.client, timeout=args.timeout)
    except ValueError as e:  # ConfigError: not an endpoint
        raise CliError(f"{e} (--client / REMUS_CLIENT)", USAGE) from None


@contextmanager
def client(args: argparse.Namespace) -> Iterator[Client]:
    c = connect(args)
    try:
        yield c
    finally:
        c.close()


# ------------------------------------------------------------------------------ argument types


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def priority(text: str) -> int:
    """A job's priority: a whole number within ±2**30 (higher runs first)."""
    from remus.protocol import MAX_PRIORITY

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: use -2**30 to 2**30")
    return value


def io_type(text: str) -> IOType:
    """``IN:OUT`` (or ``IN->OUT``, as the tables show it)."""
    sep = "->" if "->" in text else ":"
    parts = text.split(sep)
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an io type: write INPUT:OUTPUT, e.g. Text:Upper"
        )
    return IOType(parts[0].strip(), parts[1].strip())


#: what ``--status`` takes, besides the status names themselves
_STATUS_WORDS = {"running": Status.IN_PROGRESS, "done": Status.FINISHED}


def status(text: str) -> Status:
    word = text.strip().upper().replace("-", "_")
    found = _STATUS_WORDS.get(word.lower()) or Status.__members__.get(word)
    if found is None or found is Status.INVALID:
        names = ", ".join(s.name.lower() for s in Status if s is not Status.INVALID)
        raise argparse.ArgumentTypeError(f"{text!r} is not a job status: use one of {names}")
    return found


# ------------------------------------------------------------------------------ showing values


def duration(seconds: float | None) -> str:
    """Seconds for people: ``12 ms``, ``0.4 s``, ``12 s``, ``3 min 4 s``, ``2 h 5 min``,
    ``3 d 4 h``."""
    if seconds is None:
        return "-"
    if seconds < 0.1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def clock(unix: float) -> str:
    """A Unix time as local wall-clock time to the millisecond: ``12:03:04.120``."""
    return datetime.fromtimestamp(unix).strftime("%H:%M:%S.%f")[:-3]


def local_time_ago(seconds: float) -> str:
    """The local date and time ``seconds`` ago: ``2024-05-01 12:00:01``."""
    return datetime.fromtimestamp(time.time() - seconds).strftime("%Y-%m-%d %H:%M:%S")


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # not reached


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' * (n != 1)}"


def progress_text(p: JobProgress | None) -> str:
    if p is None:
        return "-"
    value = "" if p.value is None else f"{p.value}%"
    return f"{value} {p.message}".strip() or "-"


def io_text(raw: Any) -> str:
    """An io type from a record or an event: IOType, [in, out] or already a string."""
    if isinstance(raw, (list, tuple)) and len(raw) == 2:
        return f"{raw[0]}->{raw[1]}"
    return str(raw) if raw else "-"


def first_line(text: str, limit: int = 100) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    more = len(text.strip().splitlines()) > 1
    if len(line) > limit:
        line, more = line[: limit - 1], True
    return line + ("…" if more else "")


def progress_json(p: JobProgress | None) -> dict[str, Any] | None:
    return None if p is None else {"value": p.value, "message": p.message, "seq": p.seq}


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str), flush=True)


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr). Piped, it does not wrap lines at 80 columns, so a
    table's rows stay whole for grep."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() else 200
    return Console(file=stream, highlight=False, width=wide, soft_wrap=False)


def cell(value: Any) -> Text:
    """A table cell shown as it is (rich would read ``[...]`` in a reason as markup)."""
    from rich.text import Text

    return Text(str(value))
