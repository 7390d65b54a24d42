"""``remus server --check-workers DIR --start``: start each worker file's program once.

Each program is started as the factory would start it, against a throwaway ROUTER socket on
``tcp://127.0.0.1:0`` that speaks the real protocol: the first message must be a ``register``;
it is answered with ``shutdown``. The verdict says what the worker registered against what its
file declares, or how it failed (exit code or signal, run time, peak RSS, stderr tail).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from remus import protocol as p
from remus.errors import ProtocolError, WorkerFileError
from remus.server.factory_base import declares, describe_requirements
from remus.server.health import StartFailure, last_lines, peak_rss_bytes
from remus.server.processes import collect, is_running, signal_group, signal_name, start_process
from remus.server.workerfile import WorkerFile, check_worker_dirs, load_worker_file

#: seconds a checked worker has to register
START_TIMEOUT = 10.0
#: seconds it has to exit once told to
EXIT_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class StartCheck:
    """The verdict on one worker file: ``ok`` and what happened, in words."""

    path: str
    ok: bool
    text: str


def check_starts(
    paths: Iterable[str | os.PathLike[str]],
    *,
    timeout: float = START_TIMEOUT,
    arguments: Sequence[str] = (),
) -> list[StartCheck]:
    """Check every worker file under ``paths``, then start each usable one once."""
    results = []
    for path, problem in check_worker_dirs(paths):
        if problem is not None:
            results.append(StartCheck(path, False, problem))
            continue
        try:
            wf = load_worker_file(path)
        except WorkerFileError as e:  # changed since the scan
            results.append(StartCheck(path, False, e.problem))
            continue
        results.append(start_once(wf, timeout=timeout, arguments=arguments))
    return results


def start_once(
    wf: WorkerFile, *, timeout: float = START_TIMEOUT, arguments: Sequence[str] = ()
) -> StartCheck:
    """Start ``wf``'s program against a throwaway broker socket; see the module docstring."""
    context: zmq.Context[Any] = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.linger = 0
    try:
        sock.bind("tcp://127.0.0.1:0")
        endpoint = sock.last_endpoint.decode()
        started = time.monotonic()
        try:
            proc, tail = start_process(
                [wf.executable, endpoint, *arguments, *wf.arguments], wf.environment
            )
        except (OSError, subprocess.SubprocessError) as e:
            return StartCheck(wf.path, False, f"could not be started: {e}")
        try:
            return _watch(wf, sock, proc, tail.text, started, timeout)
        finally:
            _end(proc)
            tail.close()
    finally:
        sock.close(0)
        context.term()


def _watch(
    wf: WorkerFile,
    sock: zmq.Socket[Any],
    proc: subprocess.Popen[bytes],
    stderr: Any,
    started: float,
    timeout: float,
) -> StartCheck:
    deadline = started + timeout
    while True:
        now = time.monotonic()
        done = collect(proc)
        if done is not None:
            code, rss = done
            failure = StartFailure(
                proc.pid, now - started, code, signal_name(code), peak_rss_bytes(rss), stderr()
            )
            return StartCheck(wf.path, False, f"{failure.describe()} before registering")
        if now >= deadline:
            tail = last_lines(stderr())
            said = f"; stderr: {tail!r}" if tail else "; stderr empty"
            return StartCheck(wf.path, False, f"did not register within {timeout:g} s{said}")
        if not sock.poll(int(min(0.05, deadline - now) * 1000) + 1):
            continue
        frames = sock.recv_multipart()
        try:
            msg = p.decode(frames[1:], p.WORKER_COMMANDS)
        except ProtocolError as e:
            return StartCheck(wf.path, False, f"sent an unreadable first message: {e}")
        if not isinstance(msg, p.Register):
            return StartCheck(wf.path, False, f"sent {msg.COMMAND.value!r} before registering")
        bye = p.Shutdown("remus server --check-workers: the check is done")
        sock.send_multipart([frames[0], *p.encode(bye)])
        took = time.monotonic() - started
        got = describe_requirements(msg.requirements)
        if not declares(wf.requirements, msg.requirements):
            want = describe_requirements(wf.requirements)
            return StartCheck(
                wf.path, False, f"registered {got}, but the file declares {want} (pid {msg.pid})"
            )
        return StartCheck(
            wf.path, True, f"registered {got} after {took:.2f} s, as the file declares"
        )


def _end(proc: subprocess.Popen[bytes]) -> None:
    """Let the worker exit as told; then SIGTERM, then SIGKILL its process group."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            signal_group(proc, sig)
        deadline = time.monotonic() + EXIT_GRACE
        while is_running(proc) and time.monotonic() < deadline:
            time.sleep(0.01)
        if not is_running(proc):
            break
    if collect(proc) is None:
        proc.wait(5.0)


def format_start_report(results: Iterable[StartCheck]) -> str:
    """One line per worker file (``ok`` or ``FAIL``) and a count."""
    lines = []
    good = bad = 0
    for r in results:
        if r.ok:
            good += 1
        else:
            bad += 1
        lines.append(f"{'ok  ' if r.ok else 'FAIL'}  {r.path}: {r.text}")
    lines.append(f"{good} started and registered, {bad} with problems")
    return "\n".join(lines)
