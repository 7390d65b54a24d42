"""``remus server``: run a broker until SIGINT or SIGTERM (also ``python -m remus.server``).

With ``--secret-key FILE --allow-clients DIR --allow-workers DIR`` it runs in secure mode
(CURVE): the ready line then ends with ``server_key=...``, the broker's public key that its
clients and workers pass as ``--server-key``. SIGHUP lifts every quarantine, rescans the
worker files and reads the allow-list folders again."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from remus import log as remus_log
from remus.errors import ConfigError, RemusError
from remus.server.config import (
    DEFAULT_CLIENT,
    DEFAULT_STATUS,
    DEFAULT_WORKER,
    ServerConfig,
    ServerPorts,
)
from remus.server.health import REGISTER_TIMEOUT, Backoff

#: seconds a worker has to register under ``--check-workers DIR --start``
START_TIMEOUT = 10.0

log = logging.getLogger("remus")


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "server",
        help="run a broker",
        description="Run a remus broker until SIGINT or SIGTERM. Port 0 picks a free port; "
        "the real endpoints are printed on one line once the broker is ready.",
    )
    s.add_argument(
        "--client", default=DEFAULT_CLIENT, metavar="EP", help="client endpoint [%(default)s]"
    )
    s.add_argument(
        "--worker", default=DEFAULT_WORKER, metavar="EP", help="worker endpoint [%(default)s]"
    )
    s.add_argument(
        "--status", default=DEFAULT_STATUS, metavar="EP", help="status PUB endpoint [%(default)s]"
    )
    s.add_argument(
        "--workers",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder of worker files (.rw) to spawn workers from; repeatable",
    )
    s.add_argument(
        "--max-workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="spawned workers alive at once [the CPU count: %(default)s]",
    )
    s.add_argument(
        "--quarantine-after",
        type=int,
        default=Backoff().quarantine_after,
        metavar="N",
        help="failed starts in a row (exits before registering) that quarantine a worker file "
        "until SIGHUP or a restart; 0: never [%(default)s]",
    )
    s.add_argument(
        "--register-timeout",
        type=float,
        default=REGISTER_TIMEOUT,
        metavar="SECONDS",
        help="a spawned worker that has not registered this long after its start is killed, "
        "and that counts as a failed start [%(default)g]",
    )
    s.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument passed to every spawned worker; repeatable",
    )
    s.add_argument(
        "--check-workers",
        action="append",
        default=[],
        metavar="DIR",
        help="check the worker files in DIR, print a verdict for each, and exit",
    )
    s.add_argument(
        "--start",
        action="store_true",
        help="with --check-workers: also start each worker once and report what it registers",
    )
    s.add_argument(
        "--start-timeout",
        type=float,
        default=START_TIMEOUT,
        metavar="S",
        help="with --check-workers --start: seconds a worker has to register [%(default)s]",
    )
    s.add_argument(
        "--result-ttl",
        type=float,
        default=ServerConfig().result_ttl,
        metavar="S",
        help="seconds a finished job's result is kept [%(default)s]",
    )
    s.add_argument(
        "--journal",
        metavar="PATH",
        help="a SQLite file that keeps every accepted job and result across restarts "
        "(default: memory only: a stopped broker forgets everything); its log is PATH-log",
    )
    s.add_argument(
        "--journal-sync",
        choices=("normal", "full"),
        default=ServerConfig().journal_sync,
        help="with --journal: 'normal' keeps what was acknowledged through a kill of the broker; "
        "'full' also through a power loss or kernel crash, at the cost of an fsync per group "
        "commit [%(default)s]",
    )
    s.add_argument(
        "--max-retries",
        type=int,
        default=ServerConfig().max_retries,
        metavar="N",
        help="times a job whose worker is lost is run again before it fails [%(default)s]",
    )
    s.add_argument(
        "--restart-grace",
        type=float,
        default=ServerConfig().restart_grace,
        metavar="S",
        help="after a restart with --journal, how long a job that was running waits for its "
        "worker to come back with it before it runs elsewhere [%(default)s]",
    )
    s.add_argument(
        "--preempt-grace",
        type=float,
        default=ServerConfig().preempt_grace,
        metavar="S",
        help="after a protected job preempts a spare-capacity (unprotected) one, how long its "
        "worker has to stop it before a spawned worker is killed [%(default)s]",
    )
    s.add_argument(
        "--file-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder whose files the broker may read (as its own user) to send them to a "
        "worker on another host than the client that named them; repeatable; none by "
        "default (docs/files.md)",
    )
    s.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="where files over 4 MiB wait, on disk, between their upload and their download "
        "(docs/files.md, 'Streamed files'); default: beside the journal (JOURNAL.spool), else "
        "a private temporary folder removed when the broker stops",
    )
    s.add_argument(
        "--drain",
        type=float,
        default=0.0,
        metavar="S",
        help="on SIGINT/SIGTERM, refuse new jobs and let running ones finish for up to S "
        "seconds before stopping (a second signal stops at once) [%(default)s]",
    )
    s.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST 127.0.0.1 unless "
        "given; PORT 0 picks a free one, printed on the ready line); needs remus[metrics]",
    )
    s.add_argument(
        "--secret-key",
        metavar="FILE",
        help="secure mode (CURVE): the broker's own secret key file, made by `remus keys new "
        "broker`; needs --allow-clients and --allow-workers (default: plain mode, no keys)",
    )
    s.add_argument(
        "--allow-clients",
        metavar="DIR",
        help="secure mode: a folder of the client public keys (NAME.key) let in; each sees "
        "only its own jobs",
    )
    s.add_argument(
        "--allow-workers",
        metavar="DIR",
        help="secure mode: a folder of the worker public keys let in (NAME.io_types beside "
        "NAME.key limits a key to those io types)",
    )
    s.add_argument(
        "--admin-clients",
        metavar="DIR",
        help="secure mode: a folder of client public keys that see and cancel every job",
    )
    s.add_argument(
        "--log-level",
        default="INFO",
        help="DEBUG, INFO, WARNING or ERROR [%(default)s]; at INFO the logger remus.jobs "
        "writes one line per job that ends",
    )
    s.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="trace every message through the three threads (very noisy)",
    )


def _factory(args: argparse.Namespace) -> Any:
    if not args.workers:
        return None
    from remus.server.factory import WorkerFactory

    backoff = Backoff(quarantine_after=args.quarantine_after)
    factory = WorkerFactory(
        args.workers,
        max_workers=args.max_workers,
        backoff=backoff,
        register_timeout=args.register_timeout,
    )
    for arg in args.worker_arg:
        factory.add_argument(arg)
    return factory


def run(args: argparse.Namespace) -> int:
    if args.start and not args.check_workers:
        print("remus server: --start goes with --check-workers DIR", file=sys.stderr)
        return 2
    if args.check_workers and args.start:
        from remus.server.check import check_starts, format_start_report

        checked = check_starts(
            args.check_workers, timeout=args.start_timeout, arguments=args.worker_arg
        )
        print(format_start_report(checked))
        return 0 if checked and all(c.ok for c in checked) else 1
    if args.check_workers:
        from remus.server.workerfile import check_worker_dirs, format_check_report

        results = check_worker_dirs(args.check_workers)
        print(format_check_report(results))
        return 0 if results and all(problem is None for _, problem in results) else 1
    level = remus_log.TRACE if args.verbose else args.log_level.upper()
    try:
        remus_log.configure(level)
    except ValueError:
        print(
            f"remus server: unknown log level {args.log_level!r}; use DEBUG, INFO, WARNING, ERROR",
            file=sys.stderr,
        )
        return 2
    if not args.register_timeout > 0:
        print("remus server: --register-timeout must be positive", file=sys.stderr)
        return 2
    if args.max_workers < 0 or args.quarantine_after < 0:
        print(
            "remus server: --max-workers and --quarantine-after must be 0 or more", file=sys.stderr
        )
        return 2
    from remus.server.server import Server

    metrics_at = None
    if args.metrics is not None:
        try:
            metrics_at = _metrics_address(args.metrics)
        except UsageError as e:
            print(f"remus server: {e}", file=sys.stderr)
            return 2

    try:
        ports = ServerPorts(args.client, args.worker, args.status)
        config = ServerConfig(
            result_ttl=args.result_ttl,
            file_roots=tuple(args.file_root),
            spool_dir=args.spool_dir,
            max_retries=args.max_retries,
            restart_grace=args.restart_grace,
            preempt_grace=args.preempt_grace,
            journal_sync=args.journal_sync,
        )
        factory = _factory(args)
        try:
            server = Server(
                ports,
                factory,
                config=config,
                journal=args.journal,
                secret_key=args.secret_key,
                allow_clients=args.allow_clients,
                allow_workers=args.allow_workers,
                admin_clients=args.admin_clients,
            )
        except ConfigError as e:  # secure mode half given, a key file that cannot be read, ...
            print(f"remus server: {e}", file=sys.stderr)
            return 2
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        hup = threading.Event()  # lift every quarantine and rescan the worker files
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: hup.set())
        server.start()
    except (RemusError, ValueError, OSError) as e:
        print(f"remus server: {e}", file=sys.stderr)
        return 1
    metrics = None
    if metrics_at is not None:
        try:
            metrics = _metrics(metrics_at, server)
        except (RemusError, ValueError) as e:
            print(f"remus server: {e}", file=sys.stderr)
            server.stop()
            return 1
    print(
        f"remus server ready: client={server.ports.client} worker={server.ports.worker} "
        f"status={server.ports.status}"
        + (f" metrics={metrics.url}" if metrics else "")
        + (f" server_key={server.public_key.decode()}" if server.public_key else ""),
        flush=True,
    )
    try:
        while not stop.wait(0.2):
            if hup.is_set():
                hup.clear()
                if server.security is not None:
                    log.info(
                        "SIGHUP: lifting every quarantine, rescanning the worker files and "
                        "reading the allow-lists again"
                    )
                else:
                    log.info("SIGHUP: lifting every quarantine and rescanning the worker files")
                server.lift_quarantine()
                server.reload_keys()
        if args.drain > 0:
            log.info("draining for up to %g s (signal again to stop now)", args.drain)
            stop.clear()
            drained = threading.Thread(target=server.drain, args=(args.drain,), daemon=True)
            drained.start()
            while drained.is_alive() and not stop.wait(0.1):
                pass
    finally:
        log.info("stopping")
        if metrics is not None:
            metrics.close()
        server.stop()
    return 0


class UsageError(ValueError):
    pass


def _metrics_address(where: str) -> tuple[str, int]:
    """(host, port) of ``--metrics [HOST:]PORT``; UsageError if it is neither."""
    host, _, port = where.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--metrics {where!r}: give a port (0-65535), or HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _metrics(at: tuple[str, int], server: Any) -> Any:
    """The metrics exporter at ``at``, reaching ``server`` as a client (in secure mode with
    the broker's own key pair, which it lets in as an admin)."""
    from remus.server.metrics import MetricsExporter
    from remus.server.server import reachable

    keys: dict[str, Any] = {"secret_key": False}  # plain, whatever $REMUS_SECRET_KEY says
    if server.security is not None:
        keys = {"server_key": server.public_key, "secret_key": server.security.own_keys()}
    exporter = MetricsExporter(reachable(server.ports.client), at[1], at[0], **keys)
    log.info("serving Prometheus metrics at %s", exporter.url)
    return exporter
