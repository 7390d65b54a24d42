"""``remus http``: serve the HTTP gateway (remus.http) in front of a broker until SIGINT or
SIGTERM.

Once it listens it prints one line, ``remus http ready: url=http://HOST:PORT broker=EP
auth=tokens|open`` (``--listen HOST:0`` picks a free port: the line has the real one).
Without ``--tokens`` every caller is let in, and it says so in its log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from remus import log as remus_log
from remus.cli import common as c
from remus.errors import ConfigError, RemusError

log = logging.getLogger("remus.http")

#: defaults (those of GatewayConfig, repeated for --help without importing aiohttp)
LISTEN = "127.0.0.1:8080"
MAX_PENDING = 1000
RUN_TIMEOUT = 60.0
BROKER_TIMEOUT = 10.0
MAX_BODY = "1GiB"
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def add_parser(sub: Any) -> None:
    h = sub.add_parser(
        "http",
        help="serve an HTTP front door to a broker (POST /run/IN/OUT, /jobs, SSE progress)",
        description="Serve HTTP in front of a broker until SIGINT or SIGTERM: POST "
        "/run/INPUT/OUTPUT submits the body as a job and answers with its result; POST "
        "/jobs/INPUT/OUTPUT queues it (202) and /jobs/ID, /jobs/ID/result, /jobs/ID/progress "
        "(server-sent events) and DELETE /jobs/ID follow it; /healthz and /openapi.json "
        "describe the gateway; / is a live dashboard for a browser. Prints `remus http "
        "ready: url=...` once it listens. With a broker in secure mode, --key and --server-key "
        "are the gateway's own client key (its public half in the broker's --allow-clients) and "
        "the broker's public key: HTTP callers get what that key may do (and, with --tokens, "
        "only with a token). Needs remus[http] (aiohttp). See docs/http.md.",
    )
    h.add_argument(
        "--broker",
        dest="client",
        metavar="EP",
        default=None,
        help="the broker's client endpoint [$REMUS_CLIENT, else tcp://127.0.0.1:50505]",
    )
    h.add_argument(
        "--listen",
        default=LISTEN,
        metavar="HOST:PORT",
        help="where to serve HTTP; port 0 picks a free one (the ready line shows it) [%(default)s]",
    )
    h.add_argument(
        "--max-pending",
        type=c.positive_int,
        default=MAX_PENDING,
        metavar="N",
        help="requests that may wait on jobs of one io type at once; one more is answered "
        "503 with a Retry-After from that io type's observed service rate [%(default)s]",
    )
    h.add_argument(
        "--timeout",
        dest="run_timeout",
        type=c.positive_float,
        default=RUN_TIMEOUT,
        metavar="S",
        help="seconds POST /run waits for a result before answering 504 (the job keeps "
        "running), when the request gives no ?timeout= [%(default)g]",
    )
    h.add_argument(
        "--broker-timeout",
        type=c.positive_float,
        default=None,
        metavar="S",
        help=f"seconds the broker may stay silent before a request gives up with 503 "
        f"[{BROKER_TIMEOUT:g}]",
    )
    h.add_argument(
        "--max-body",
        type=byte_size,
        default=byte_size(MAX_BODY),
        metavar="SIZE",
        help="the largest request body, e.g. 10MiB, 1G, 5000000; larger ones are answered 413. "
        "File parts of a multipart body go to disk as they arrive; any other body is held "
        f"in memory [{MAX_BODY}]",
    )
    h.add_argument(
        "--tokens",
        metavar="FILE",
        help="bearer tokens, one per line ('#' comments): every route but /healthz then needs "
        "Authorization: Bearer TOKEN (else 401); a browser signs in to the dashboard at / "
        "with one instead. Without it the gateway is open to anyone who reaches --listen",
    )
    h.add_argument(
        "--upload-dir",
        metavar="DIR",
        help="where uploaded files wait until the broker holds their bytes [the system's "
        "temporary folder]",
    )
    c.add_key_options(h)
    h.add_argument(
        "--access-log", action="store_true", help="log one line per HTTP request (at INFO)"
    )
    h.add_argument(
        "--log-level",
        default="INFO",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR [%(default)s]",
    )
    h.set_defaults(run=run)


def byte_size(text: str) -> int:
    """``5000000``, ``10MiB``, ``10M``, ``1G``, ``512k`` (powers of 1024) as bytes."""
    word = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = word[-1:] if word[-1:] in _UNITS else ""
    number = word[: len(word) - len(unit)] if unit else word
    try:
        value = int(float(number) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size: write e.g. 10MiB, 1G or a number of bytes"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1 byte")
    return value


def listen_address(text: str) -> tuple[str, int]:
    """(host, port) of ``HOST:PORT``, ``[::1]:PORT`` or ``:PORT`` (host 127.0.0.1)."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise c.CliError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080", c.USAGE)
    return host.strip("[]") or "127.0.0.1", int(port)


def run(args: argparse.Namespace) -> int:
    level = args.log_level.upper()
    try:
        remus_log.configure(level)
    except ValueError:
        raise c.CliError(
            f"unknown log level {args.log_level!r}; use DEBUG, INFO, WARNING, ERROR", c.USAGE
        ) from None
    try:
        from remus.http import GatewayConfig
        from remus.http.auth import load_tokens
    except ImportError as e:
        raise c.CliError(f"needs aiohttp ({e}): pip install 'remus[http]'", c.USAGE) from None
    host, port = listen_address(args.listen)
    peer = c.keys(args)
    try:
        config = GatewayConfig(
            broker=args.client,
            server_key=peer.server if peer is not None else None,
            secret_key=peer.own if peer is not None else False,
            broker_timeout=args.broker_timeout or args.top_timeout or BROKER_TIMEOUT,
            max_pending=args.max_pending,
            run_timeout=args.run_timeout,
            max_timeout=max(args.run_timeout, 24 * 3600.0),
            max_body=args.max_body,
            tokens=load_tokens(args.tokens) if args.tokens else None,
            upload_dir=args.upload_dir,
        )
    except ConfigError as e:
        raise c.CliError(str(e), c.USAGE) from None
    try:
        return asyncio.run(_serve(config, host, port, access_log=args.access_log))
    except OSError as e:  # the address is taken, or not this machine's
        raise c.CliError(f"cannot listen on {args.listen}: {e.strerror or e}", c.JOB_FAILED) from e
    except ValueError as e:  # not an endpoint (ConfigError)
        raise c.CliError(f"{e} (--broker / REMUS_CLIENT)", c.USAGE) from None


async def _serve(config: Any, host: str, port: int, *, access_log: bool) -> int:
    from remus.http import Serving, make_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = make_app(config)
    async with Serving(app, host, port, access_log=access_log) as serving:
        from remus.http.gateway import GATEWAY

        gw = app[GATEWAY]
        if config.open:
            log.warning(
                "no --tokens: the gateway is open, every caller who reaches %s is let in",
                serving.url,
            )
        print(
            f"remus http ready: url={serving.url} broker={gw.client.endpoint} "
            f"auth={'open' if config.open else 'tokens'}",
            flush=True,
        )
        probe = loop.create_task(_probe(gw.client, config.broker_timeout))
        await stop.wait()
        log.info("stopping")
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
    return c.OK


async def _probe(client: Any, timeout: float) -> None:
    """Say in the log whether the broker answers, once at start."""
    try:
        stats = await client.stats(timeout=timeout)
    except RemusError as e:
        log.warning("the broker at %s does not answer yet: %s", client.endpoint, e)
        return
    log.info("the broker at %s answers (remus %s)", client.endpoint, stats.version)
