"""What every subcommand that reaches a broker shares: where the broker is, how long to wait for
it, which keys to show it in secure mode, the exit codes, the one-line error messages, and how
values are shown to people."""

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

    from remus.client import BasicClient, Client
    from remus.security import PeerKeys

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
    """``--client EP``, ``--timeout S``, ``--key FILE`` and ``--server-key KEY``, on the program
    (dest ``top_*``) and on each subcommand that reaches a broker (the one given last wins)."""
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
    add_key_options(parser, top=top)


def add_key_options(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--key FILE`` and ``--server-key KEY``: what a broker in secure mode needs to let this
    command in. Without them the environment's keys are used, else plain mode."""
    prefix = "top_" if top else ""
    parser.add_argument(
        "--key",
        dest=f"{prefix}key",
        metavar="FILE",
        default=None,
        help="secure mode: this client's secret key file (NAME.key_secret, from `remus keys "
        "new NAME`) [$REMUS_SECRET_KEY]",
    )
    parser.add_argument(
        "--server-key",
        dest=f"{prefix}server_key",
        metavar="KEY",
        default=None,
        help="secure mode: the broker's public key, its .key file or its 40 characters of Z85 "
        "text [$REMUS_SERVER_KEY]",
    )


def resolve_reach(args: argparse.Namespace) -> None:
    """Settle ``args.client`` and ``args.timeout``: subcommand option, program option,
    ``$REMUS_CLIENT``, default; and the key options (see :func:`resolve_keys`)."""
    args.client = (
        getattr(args, "client", None)
        or getattr(args, "top_client", None)
        or os.environ.get("REMUS_CLIENT")
        or DEFAULT_CLIENT
    )
    args.timeout = getattr(args, "timeout", None) or getattr(args, "top_timeout", None)
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT
    resolve_keys(args)


def resolve_keys(args: argparse.Namespace) -> None:
    """Settle ``args.key`` and ``args.server_key``: subcommand option, program option, else
    None (then :func:`keys` reads the environment)."""
    args.key = getattr(args, "key", None) or getattr(args, "top_key", None)
    args.server_key = getattr(args, "server_key", None) or getattr(args, "top_server_key", None)


def keys(args: argparse.Namespace) -> PeerKeys | None:
    """The keys this command shows the broker: ``--key``/``--server-key``, else
    ``$REMUS_SECRET_KEY``/``$REMUS_SERVER_KEY``, else None (plain mode). A key file that cannot
    be read, or only one half given, ends the command (exit 2)."""
    from remus.errors import ConfigError
    from remus.security import peer_keys

    try:
        return peer_keys(args.server_key, args.key)
    except ConfigError as e:
        raise CliError(str(e), USAGE) from None


def connect(args: argparse.Namespace) -> Client:
    from remus.client import Client

    peer = keys(args)
    try:
        return Client(args.client, timeout=args.timeout, **_key_arguments(peer))
    except ValueError as e:  # ConfigError: not an endpoint
        raise CliError(f"{e} (--client / REMUS_CLIENT)", USAGE) from None


@contextmanager
def client(args: argparse.Namespace) -> Iterator[Client]:
    c = connect(args)
    try:
        yield c
    finally:
        c.close()


@contextmanager
def basic_client(args: argparse.Namespace) -> Iterator[BasicClient]:
    from remus.client import BasicClient

    peer = keys(args)
    try:
        bc = BasicClient(args.client, timeout=args.timeout, **_key_arguments(peer))
    except ValueError as e:  # ConfigError: not an endpoint
        raise CliError(f"{e} (--client / REMUS_CLIENT)", USAGE) from None
    with bc:
        yield bc


def _key_arguments(peer: PeerKeys | None) -> dict[str, Any]:
    return {} if peer is None else {"server_key": peer.server, "secret_key": peer.own}


def handshake_failure(event: int, *, secure: bool) -> str:
    """What a socket monitor's ``event`` says about the broker's answer to this command's keys
    (``secure``: it gave some), to end a sentence that starts "the broker at EP"; "" if the
    event is no handshake failure."""
    import zmq

    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            "refused this command's key: is its public key (the .key file beside --key / "
            "$REMUS_SECRET_KEY) in the broker's --allow-clients or --admin-clients folder?"
        )
    failed = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    if event in failed and not secure:  # (a secure broker may hang up before it says why)
        return (
            "runs in secure mode and needs keys: give --key FILE (this client's "
            "NAME.key_secret) and --server-key KEY (the broker's public key), or set "
            "$REMUS_SECRET_KEY and $REMUS_SERVER_KEY"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return (
            "does not run in secure mode, and this command gave it keys: drop --key and "
            "--server-key (and $REMUS_SECRET_KEY, $REMUS_SERVER_KEY)"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return (
            "did not accept the encrypted handshake: is --server-key ($REMUS_SERVER_KEY) "
            "this broker's public key, and does it run in secure mode?"
        )
    return ""


def handshake_problem(endpoint: str, peer: PeerKeys | None, wait: float = 1.0) -> str:
    """Why a broker at ``endpoint`` may not have answered although it runs: a connection
    made with the same keys tells whether its handshake fails (a refused key, plain mode
    against secure mode or the other way round, a wrong server key). "" if the handshake
    succeeds, nothing listens there, or nothing is known within ``wait`` seconds.

    A handshake cut short says little (the peer may hang up before it says why): the next
    attempts, within ``wait``, may tell more."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    if peer is not None:
        peer.apply(sock)
    monitor = sock.get_monitor_socket(
        zmq.EVENT_CONNECTED
        | zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_CONNECT_RETRIED
    )
    cut_short = ""
    connected = False
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0 and monitor.poll(int(left * 1000)):
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                connected = True
            elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and peer is not None:
                # a wrong server key, or a plain broker that hung up first: the next try may say
                cut_short = handshake_failure(event, secure=True)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED or not connected:
                return ""  # it lets us in (and only did not answer), or nothing listens
            elif event != zmq.EVENT_CONNECT_RETRIED:
                return handshake_failure(event, secure=peer is not None)
        return cut_short
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


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
