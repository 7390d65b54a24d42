#!/usr/bin/env python3
"""The soak test's broker: ``remus server`` with the factory's crash back-off turned off.

    soak_broker.py --client EP --worker EP --status EP --journal PATH --workers DIR
                   [--max-workers N] [--max-retries N]

The soak's chaos loop SIGKILLs spawned workers on purpose, every few hundred milliseconds. With
the factory's default back-off (what ``remus server`` uses) each of those kills counts as a
crash, and the factory soon starts one worker at a time, seconds apart: the soak would measure
the back-off, not the broker. Everything else is what ``remus server`` does, down to the ready
line on stdout; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from remus import log as remus_log
from remus.server import Server, ServerConfig, ServerPorts
from remus.server.factory import Backoff, WorkerFactory


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--journal", required=True)
    parser.add_argument("--workers", required=True)
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--max-retries", type=int, default=5)
    args = parser.parse_args()
    remus_log.configure("INFO")

    factory = WorkerFactory(
        [args.workers], max_workers=args.max_workers, backoff=Backoff(quick_exit=0.0)
    )
    config = ServerConfig(max_retries=args.max_retries, stop_timeout=2.0)
    server = Server(
        ServerPorts(args.client, args.worker, args.status),
        factory,
        config=config,
        journal=args.journal,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start()
    except Exception as e:
        print(f"soak_broker.py: {e}", file=sys.stderr)
        return 1
    ports = server.ports
    print(
        f"remus server ready: client={ports.client} worker={ports.worker} status={ports.status}",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
