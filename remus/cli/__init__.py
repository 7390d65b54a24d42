"""The ``remus`` command (also ``python -m remus``).

``remus server`` runs a broker; the other subcommands reach one at ``--client EP`` (default:
``$REMUS_CLIENT``, else tcp://127.0.0.1:50505) and give up after ``--timeout`` seconds of
silence. A broker in secure mode needs ``--key FILE`` (this client's secret key) and
``--server-key KEY`` (the broker's public key), else ``$REMUS_SECRET_KEY`` and
``$REMUS_SERVER_KEY``. One module per concept: ``server`` (run a broker), ``keys`` (make and
show CURVE keys), ``inspect`` (info, workers, jobs), ``jobs`` (submit, status, result, cancel,
control), ``watch`` (the status feed), ``top`` (a live view), ``gateway`` (``remus http``, an
HTTP front door), ``common`` (what they share).

Exit codes, for every subcommand: 0 done; 1 the job failed, was terminated or expired (or the
broker refused it: no worker, queue full, a job of another key); 2 a usage error (a key file
that cannot be read included); 3 no broker answers (or it refused this command's key). Errors
are one line on stderr that says what to do, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from remus.cli import common as c
from remus.cli import gateway, inspect, jobs, keys, server, top, watch
from remus.errors import (
    BrokerStoppedError,
    ConfigError,
    FileError,
    JobFailedError,
    NoWorkerError,
    RemusError,
    TimeoutError,
    WrongEndpointError,
)

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    from remus import __version__

    parser = argparse.ArgumentParser(
        prog="remus",
        description="remus: a ZeroMQ job broker. `remus server` runs one; the other commands "
        "reach it at --client EP ($REMUS_CLIENT), with --key and --server-key for a broker in "
        "secure mode. Exit codes: 0 done, 1 the job failed (or was refused), 2 usage error, "
        "3 no broker answers.",
    )
    parser.add_argument("--version", action="version", version=f"remus {__version__}")
    c.add_reach_options(parser, top=True)
    reach = argparse.ArgumentParser(add_help=False)
    c.add_reach_options(reach)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server.add_parser(sub)
    keys.add_parser(sub)
    inspect.add_parsers(sub, reach)
    jobs.add_parsers(sub, reach)
    watch.add_parser(sub)
    top.add_parser(sub, reach)
    gateway.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else c.USAGE
    if args.command == "server":
        if args.top_client or args.top_timeout:
            print(
                "remus server: put --client after `server` (it is the endpoint to bind)",
                file=sys.stderr,
            )
            return c.USAGE
        if args.top_key or args.top_server_key:
            print(
                "remus server: --key and --server-key are a client's; the broker's own key is "
                "`remus server --secret-key FILE`",
                file=sys.stderr,
            )
            return c.USAGE
        return server.run(args)
    if args.command == "watch":
        c.resolve_keys(args)
    elif args.command != "keys":
        c.resolve_reach(args)
    try:
        return int(args.run(args))
    except c.CliError as e:
        return _fail(args, str(e), e.code)
    except KeyboardInterrupt:  # Ctrl-C is how `remus watch` and `remus top` end
        return c.OK if args.command in ("watch", "top") else c.INTERRUPTED
    except BrokenPipeError:
        # the reader went away (| head): stop quietly, and keep Python's exit flush quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return c.OK
    except TimeoutError:
        refused = _refused(args)
        if refused:
            return _fail(args, f"the broker at {args.client} {refused}", c.UNREACHABLE)
        return _fail(
            args,
            f"no broker answers at {args.client} (waited {args.timeout:g} s): is `remus server` "
            "running there? (--client / REMUS_CLIENT, --timeout)",
            c.UNREACHABLE,
        )
    except WrongEndpointError as e:
        return _fail(args, f"{e} (--client / REMUS_CLIENT)", c.UNREACHABLE)
    except BrokerStoppedError as e:
        return _fail(args, f"the broker at {args.client} stopped: {e}", c.UNREACHABLE)
    except JobFailedError as e:
        return _fail(args, f"job {e.job_id} {_ended(e)}: {e.reason}", c.JOB_FAILED)
    except (FileError, ConfigError) as e:
        return _fail(args, str(e), c.USAGE)
    except NoWorkerError as e:
        return _fail(args, f"{e} (remus submit --wait-for-worker)", c.JOB_FAILED)
    except RemusError as e:  # NoWorkerError, BusyError, UnknownJobError, ...
        return _fail(args, str(e), c.JOB_FAILED)


def _refused(args: argparse.Namespace) -> str:
    """Why the broker did not answer, when its handshake says so ("" if it does not)."""
    try:
        peer = c.keys(args)
    except c.CliError:
        return ""
    return c.handshake_problem(args.client, peer, min(1.0, args.timeout))


def _ended(e: JobFailedError) -> str:
    name = getattr(e.status, "name", "FAILED")
    return {"TERMINATED": "was terminated", "EXPIRED": "expired"}.get(name, "failed")


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"remus {args.command}: {message}", file=sys.stderr, flush=True)
    return code
