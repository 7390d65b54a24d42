"""``remus watch``: the broker's status feed, one readable line per event.

::

    watching every event at tcp://127.0.0.1:50550 (Ctrl-C to stop)
    12:03:04.101 job 5f2c-1 queued (Text->Upper)
    12:03:04.102 job 5f2c-1 assigned to upper@host:123 after 0.0 s in the queue
    12:03:04.120 job 5f2c-1 finished on upper@host:123 (0.0 s)

``--json`` prints each event as one JSON object (its payload, plus ``topic``) a line. A SUB
socket cannot tell whether anyone is at the other end, so a socket monitor watches for the
connection: if none is made within ``--warn-after`` seconds, a warning says so on stderr.

With keys (``--key``/``--server-key``, else ``$REMUS_SECRET_KEY``/``$REMUS_SERVER_KEY``) the
feed is a secure broker's: it decides what each key may follow. A client key gets its own
jobs' events, as ``@ITS-KEY job.x``; an admin key gets every event. So the watcher subscribes
to everything it may see and matches the topic prefixes here, on the topic without its
``@KEY `` owner prefix (which is not shown either). A refused key ends the watch (exit 3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from remus.cli import common as c
from remus.server.config import DEFAULT_STATUS, check_endpoint

#: jobs whose queue and run times the watcher remembers, to show durations
MAX_REMEMBERED = 100_000
#: an owned event's topic starts with "@" + the owner's key (40 Z85 characters) + " "
OWNER_PREFIX = 42


def add_parser(sub: Any) -> None:
    w = sub.add_parser(
        "watch",
        help="follow the broker's status feed, one line per event",
        description="Subscribe to a broker's status feed and print one line per event "
        "(local time, job or worker, what happened) until Ctrl-C. Topics are prefixes: "
        "job. worker. job.failed ...",
    )
    w.add_argument(
        "--status",
        metavar="EP",
        default=None,
        help=f"the broker's status endpoint [$REMUS_STATUS, else {DEFAULT_STATUS}]",
    )
    w.add_argument("topics", nargs="*", metavar="TOPIC", help="topic prefixes (default: all)")
    w.add_argument("--job", metavar="ID", help="only the events of this job")
    w.add_argument("--json", action="store_true", help="one JSON object per event, for scripts")
    w.add_argument(
        "--count", type=int, default=0, metavar="N", help="exit after N events (0: never) [0]"
    )
    w.add_argument(
        "--warn-after",
        type=c.positive_float,
        default=3.0,
        metavar="S",
        help="warn when nothing answers at the endpoint within S seconds [3]",
    )
    c.add_key_options(w)
    w.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import zmq

    endpoint = args.status or os.environ.get("REMUS_STATUS") or DEFAULT_STATUS
    try:
        check_endpoint(endpoint, "status")
    except ValueError as e:
        raise c.CliError(f"{e} (--status / REMUS_STATUS)", c.USAGE) from None
    topics = args.topics or (["job."] if args.job else [""])
    peer = c.keys(args)
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.linger = 0
    if peer is None:
        for topic in topics:
            sock.subscribe(topic.encode())
    else:  # the broker applies "" as what this key may see; the topics are matched here
        peer.apply(sock)
        sock.subscribe(b"")
    args.secure = peer is not None
    args.wanted = None if peer is None or topics == [""] else tuple(topics)
    monitor = sock.get_monitor_socket(
        zmq.EVENT_CONNECTED
        | zmq.EVENT_DISCONNECTED
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )
    try:
        sock.connect(endpoint)
        what = "every event" if topics == [""] else " ".join(f"{t}*" for t in topics)
        if peer is not None:
            what += " this key may see"
        if args.job:
            what += f" of job {args.job}"
        _note(f"watching {what} at {endpoint} (Ctrl-C to stop)")
        return _follow(sock, monitor, endpoint, args)
    except KeyboardInterrupt:
        return c.OK
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def _follow(sock: Any, monitor: Any, endpoint: str, args: argparse.Namespace) -> int:
    """Print each event until ``--count`` of them; say when nothing answers at ``endpoint``."""
    import msgpack
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    lines = Lines()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    connected = warned = False
    warn_at = time.monotonic() + args.warn_after
    seen = 0
    while True:
        wait = None if connected or warned else max(0.0, warn_at - time.monotonic()) * 1000
        ready = dict(poller.poll(wait))
        if monitor in ready:
            event = recv_monitor_message(monitor)["event"]
            refused = c.handshake_failure(event, secure=args.secure)
            if refused:
                raise c.CliError(f"the broker at {endpoint} {refused}", c.UNREACHABLE)
            if event == zmq.EVENT_CONNECTED:
                connected = True
                if warned:
                    _note(f"connected to {endpoint}")
            elif event == zmq.EVENT_DISCONNECTED and connected:
                connected = False
                warned = True  # say it once, not again after the timer
                _note(f"lost the broker at {endpoint}; waiting for it to come back")
        if not connected and not warned and time.monotonic() >= warn_at:
            warned = True
            _note(
                f"warning: nothing answers at {endpoint} after {args.warn_after:g} s: is "
                "`remus server` running, with its status feed there? (--status / "
                "REMUS_STATUS); still waiting"
            )
        if sock not in ready:
            continue
        frames = sock.recv_multipart()
        topic = _unowned(frames[0].decode(errors="replace"))
        if args.wanted is not None and not topic.startswith(args.wanted):
            continue
        try:
            payload = msgpack.unpackb(frames[1], raw=False) if len(frames) > 1 else {}
        except ValueError as e:
            _note(f"an unreadable {topic} event: {e}")
            continue
        if not isinstance(payload, dict):
            payload = {"payload": payload}
        if args.job and payload.get("job") != args.job:
            continue
        if args.json:
            print(json.dumps({"topic": topic, **payload}, default=repr), flush=True)
        else:
            print(lines.line(topic, payload), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            return c.OK


def _unowned(topic: str) -> str:
    """``topic`` without the ``@KEY `` owner prefix a secure broker puts on owned events."""
    if topic.startswith("@") and topic[OWNER_PREFIX - 1 : OWNER_PREFIX] == " ":
        return topic[OWNER_PREFIX:]
    return topic


def _note(text: str) -> None:
    print(f"remus watch: {text}", file=sys.stderr, flush=True)


class Lines:
    """Events as lines for people; it remembers when each job was queued and assigned (as far
    as the feed showed it) to say how long it waited and ran."""

    def __init__(self) -> None:
        self.times: dict[str, dict[str, float]] = {}
        self._say: dict[str, Callable[[dict[str, Any]], str]] = {
            "job.queued": self._queued,
            "job.assigned": self._assigned,
            "job.started": self._started,
            "job.progress": self._progress,
            "job.requeued": lambda e: f"requeued: {c.first_line(str(e.get('reason', '')))}",
            "worker.registered": lambda e: f"registered ({c.io_text(e.get('io_type'))})",
            "worker.ready": lambda e: f"ready for {e.get('credit', '?')} jobs",
            "worker.lost": lambda e: f"lost: {c.first_line(str(e.get('reason', '')))}",
            "worker.exited": lambda e: f"exited: {c.first_line(str(e.get('reason', '')))}",
            "worker.spawned": lambda e: f"spawned from {e.get('worker_file', '?')}",
            "worker.spawn_failed": lambda e: (
                "could not be started: "
                + c.first_line(str(e.get("reason") or e.get("error") or ""))
            ),
            "worker.reaped": self._reaped,
            "worker.asked_to_leave": lambda e: (
                "asked to leave: " + c.first_line(str(e.get("reason", "")))
            ),
            "worker.quarantined": lambda e: f"quarantined: {c.first_line(str(e.get('reason')))}",
        }
        for end in ("finished", "failed", "terminated", "expired"):
            self._say[f"job.{end}"] = lambda e, end=end: self._ended(end, e)  # type: ignore[misc]

    def line(self, topic: str, e: dict[str, Any]) -> str:
        stamp = e.get("time")
        when = c.clock(stamp) if isinstance(stamp, (int, float)) else "--:--:--.---"
        say = self._say.get(topic)
        try:
            what = say(e) if say is not None else _generic(e)
        except (TypeError, ValueError, KeyError):  # a payload of another shape: show it raw
            what = _generic(e)
        return f"{when} {self._who(topic, e)} {what}"

    def _who(self, topic: str, e: dict[str, Any]) -> str:
        if topic.startswith("job.") and "job" in e:
            return f"job {e['job']}"
        if topic == "worker.quarantined":
            return f"worker file {e.get('worker_file', '?')}"
        if "worker" in e:
            return f"worker {e['worker']}"
        if "pid" in e:
            return f"worker pid {e['pid']} ({e.get('worker_name') or c.io_text(e.get('io_type'))})"
        return topic

    def _remember(self, e: dict[str, Any], key: str) -> dict[str, float]:
        times = self.times.setdefault(str(e.get("job")), {})
        if isinstance(e.get("time"), (int, float)):
            times.setdefault(key, float(e["time"]))
        if len(self.times) > MAX_REMEMBERED:
            self.times.pop(next(iter(self.times)))
        return times

    def _queued(self, e: dict[str, Any]) -> str:
        self._remember(e, "queued")
        return f"queued ({c.io_text(e.get('io_type'))})"

    def _started(self, e: dict[str, Any]) -> str:
        self._remember(e, "assigned")  # if the feed missed the assignment
        return f"started on {e.get('worker', '?')}"

    def _assigned(self, e: dict[str, Any]) -> str:
        times = self._remember(e, "assigned")
        waited = ""
        if "queued" in times and "assigned" in times:
            waited = f" after {c.duration(times['assigned'] - times['queued'])} in the queue"
        return f"assigned to {e.get('worker', '?')}{waited}"

    def _progress(self, e: dict[str, Any]) -> str:
        value = e.get("value")
        text = "" if value is None else f"{value}% "
        return f"progress {text}{e.get('message', '')}".rstrip()

    def _ended(self, status: str, e: dict[str, Any]) -> str:
        times = self.times.pop(str(e.get("job")), {})
        where = f" on {e['worker']}" if e.get("worker") else ""
        took = ""
        began = times.get("assigned")
        if began is not None and isinstance(e.get("time"), (int, float)):
            took = f" ({c.duration(e['time'] - began)})"
        reason = c.first_line(str(e.get("reason") or ""))
        if status == "finished" or not reason:
            return f"{status}{where}{took}"
        return f"{status}{where}{took}: {reason}"

    def _reaped(self, e: dict[str, Any]) -> str:
        code = e.get("returncode")
        how = f"killed by signal {e['signal']}" if e.get("signal") else f"exit code {code}"
        runtime = e.get("runtime")
        after = f" after {c.duration(runtime)}" if isinstance(runtime, (int, float)) else ""
        tail = c.first_line(str(e.get("stderr_tail") or ""))
        return f"ended ({how}){after}" + (f": {tail}" if tail else "")


def _generic(e: dict[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in e.items() if k != "time")
