"""``remus top``: in a pseudo-terminal against a real ``remus server`` and worker (it draws,
refreshes, says when the broker goes silent, and ends with exit 0 on Ctrl-C), ``--once`` for a
known state, no broker (exit 3), and :func:`remus.cli.top.frame` from hand-made records."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_for
from helpers_cli import ECHO, Broker, cli, start_broker
from helpers_e2e import REMUS_SCRIPT, free_tcp_endpoint, start_cli_server, wait_exit
from rich.console import Console

from remus.cli.top import frame
from remus.introspect import BrokerStats, JobInfo, WorkerInfo
from remus.types import JobProgress, Status

pytestmark = pytest.mark.timeout(60)

#: makes the pty (its stdin) the controlling terminal of the new session, then runs the rest
#: (so Ctrl-C written to the master reaches it as SIGINT); no preexec_fn in a threaded test
CONTROLLING_TTY = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Z0-9])")


@pytest.fixture
def broker(make_process: Any, make_worker: Any) -> Iterator[Broker]:
    yield from start_broker(make_process, make_worker)


class Terminal:
    """``remus ARGS`` on a pseudo-terminal of 200 x 60: a thread keeps everything it draws."""

    def __init__(self, make_process: Any, *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 200, 0, 0))
        self.master = master
        # (COLUMNS and LINES as the pty says: make_process merges the runner's environment,
        # where pytest-xdist, say, sets them to 80 x 24)
        env = {"TERM": "xterm-256color", "COLUMNS": "200", "LINES": "60"}
        try:
            self.proc: subprocess.Popen[str] = make_process(
                ["-c", CONTROLLING_TTY, REMUS_SCRIPT, *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                env={k: v for k, v in {**os.environ, **env}.items() if v},
            )
        finally:
            os.close(slave)
        self.raw = bytearray()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, name="top-pty-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the child is gone and the slave closed
                return
            if not chunk:
                return
            with self.lock:
                self.raw += chunk

    def text(self) -> str:
        """What was drawn so far, escape codes removed."""
        with self.lock:
            raw = bytes(self.raw)
        return ANSI.sub("", raw.decode(errors="replace"))

    def until(self, pattern: str, start: int = 0, timeout: float = 15.0) -> re.Match[str]:
        """The first match of ``pattern`` in what was drawn after offset ``start``."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.text(), start)
            if found:
                return found
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                raise AssertionError(
                    f"{pattern!r} not drawn within {timeout} s (exit {self.proc.poll()}); "
                    f"drew:\n{self.text()[-3000:]}"
                )
            time.sleep(0.02)

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(5)
        os.close(self.master)


@pytest.fixture
def terminal(make_process: Any) -> Iterator[Any]:
    made: list[Terminal] = []

    def make(*args: str) -> Terminal:
        made.append(Terminal(make_process, *args))
        return made[-1]

    yield make
    for t in made:
        t.close()


def test_top_in_a_terminal_draws_refreshes_and_ends_on_ctrl_c(
    broker: Broker, terminal: Any
) -> None:
    worker = broker.worker
    wait_for(lambda: worker.connected)
    term = terminal("top", "--client", broker.ep, "--interval", "0.2")
    # the first frame: the broker, its io type, the worker idle
    first = term.until(r"Text->Echo\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*1\s*│")
    term.until(r"@[^│]*│\s*Text->Echo\s*│\s*idle\s*│")
    assert f"remus broker 0.1.0 at {broker.ep}" in term.text()

    # a job that runs and reports 10 % "holding": a later frame shows it on the worker
    ran = cli("submit", "Text", "Echo", "--data", "hold", "--client", broker.ep)
    assert ran.code == 0, ran.err
    job_id = ran.out.strip()
    held = term.until(rf"busy\s*│\s*{re.escape(job_id)} [━╸╺ ]*10% holding", first.end())
    term.until(r"Text->Echo\s*│\s*0\s*│\s*1\s*│\s*0\s*│\s*0\s*│\s*1\s*│", first.end())

    # it finishes: the counts move on
    broker.handler.release.set()
    term.until(r"Text->Echo\s*│\s*0\s*│\s*0\s*│\s*1\s*│\s*0\s*│\s*1\s*│", held.end())

    term.ctrl_c()
    assert wait_exit(term.proc, 10) == 0
    with term.lock:
        raw = bytes(term.raw)
    assert b"Traceback" not in raw
    # the cursor rich hid while drawing is shown again
    assert raw.rfind(b"\x1b[?25h") > raw.rfind(b"\x1b[?25l") >= 0


def test_top_says_when_the_broker_stops_answering(make_process: Any, terminal: Any) -> None:
    server, ports = start_cli_server(make_process)
    term = terminal("top", "--client", ports.client, "--interval", "0.2", "--timeout", "0.5")
    first = term.until(rf"remus broker 0\.1\.0 at {re.escape(ports.client)}")
    term.until(r"no worker is connected", first.start())
    server.kill()
    wait_exit(server, 10)
    silent = term.until(rf"no answer from {re.escape(ports.client)} for [0-9.]+ s", first.end())
    # it keeps drawing (the last answer under the red line) and counts the silence up
    term.until(r"no answer from \S+ for ([1-9][0-9.]* s)", silent.end())
    assert term.proc.poll() is None
    term.ctrl_c()
    assert wait_exit(term.proc, 10) == 0


def test_top_once_shows_a_known_state(broker: Broker) -> None:
    done = submit_and_wait(broker, "one", "FINISHED")
    failed = submit_and_wait(broker, "boom", "FAILED")
    ran = cli("top", "--once", "--client", broker.ep)
    assert ran.code == 0, ran.err
    out = ran.out
    assert f"remus broker 0.1.0 at {broker.ep}" in out
    assert re.search(r"Text->Echo\s*│\s*0\s*│\s*0\s*│\s*1\s*│\s*1\s*│\s*1\s*│", out), out
    # the worker, idle, with no job, having finished one (a failure is not "done")
    assert re.search(r"@\S+\s*│\s*Text->Echo\s*│\s*idle\s*│\s*-\s*│[^│]*ago\s*│\s*1\s*│", out), out
    assert re.search(
        rf"{re.escape(failed)}\s*│\s*Text->Echo\s*│\s*FAILED\s*│\s*1\s*│\s*ValueError: the input "
        "says boom",
        out,
    ), out
    assert done not in out  # finished jobs are not failures
    assert "last minute: " in out and "1 failed" in out


def submit_and_wait(b: Broker, data: str, status: str) -> str:
    ran = cli("submit", "Text", "Echo", "--data", data, "--client", b.ep)
    assert ran.code == 0, ran.err
    job_id = ran.out.strip()
    wait_for(
        lambda: (
            json.loads(cli("status", job_id, "--json", "--client", b.ep).out)["status"] == status
        )
    )
    return job_id


def test_top_without_a_broker_exits_3_within_the_timeout() -> None:
    ep = free_tcp_endpoint()
    started = time.monotonic()
    ran = cli("top", "--client", ep, "--timeout", "0.5")
    took = time.monotonic() - started
    assert ran.code == 3, (ran.out, ran.err)
    assert ran.err.startswith(f"remus top: no broker answers at {ep} (waited 0.5 s)"), ran.err
    assert ran.out == "" and took < 3.0


def test_top_usage_errors_exit_2() -> None:
    assert cli("top", "--interval", "0").code == 2
    assert cli("top", "--client", "nowhere", "--once").code == 2


def test_top_runs_as_python_m_remus(broker: Broker, make_process: Any) -> None:
    proc = make_process(
        ["-m", "remus", "top", "--once", "--client", broker.ep],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Text->Echo" in out and "jobs by io type" in out


# ------------------------------------------------------------------ the frame, without a broker


def stats(**changes: Any) -> BrokerStats:
    base: dict[str, Any] = dict(
        version="9.9.9",
        uptime=125.0,
        endpoints={"client": "tcp://h:1", "worker": "tcp://h:2", "status": "tcp://h:3"},
        host="h",
        journal=True,
        jobs={"QUEUED": 3, "IN_PROGRESS": 2, "FINISHED": 7, "FAILED": 1, "EXPIRED": 1},
        jobs_by_io_type={
            "Text->Echo": {"QUEUED": 3, "IN_PROGRESS": 2, "FINISHED": 7, "FAILED": 1},
            "Mesh->Mesh": {"EXPIRED": 1},
        },
        totals={"submitted": 14, "finished": 7, "failed": 1},
        workers={"idle": 0, "busy": 1, "leaving": 0},
        worker_files=[],
        rates={"submitted": 0.25, "finished": 0.1, "failed": 0.0},
        queued_bytes=2048,
        max_queued_bytes=1 << 30,
        max_queued_jobs=100_000,
    )
    base.update(changes)
    return BrokerStats(**base)


def worker(name: str, jobs: tuple[str, ...] = (), **changes: Any) -> WorkerInfo:
    base: dict[str, Any] = dict(
        id="ab",
        name=name,
        io_type=ECHO,
        worker_name="echo",
        tag=None,
        host="h",
        pid=12,
        state="busy" if jobs else "idle",
        jobs_held=len(jobs),
        jobs_running=len(jobs),
        credit=0,
        last_heard=0.3,
        jobs_finished=7,
        jobs=jobs,
    )
    base.update(changes)
    return WorkerInfo(**base)


def job(
    job_id: str, status: Status, progress: JobProgress | None = None, reason: str = ""
) -> JobInfo:
    return JobInfo(job_id, ECHO, status, 1, "", 0.1, 1.0, progress, reason)


def draw(*args: Any, **kwargs: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=180, color_system=None).print(frame(*args, **kwargs))
    return out.getvalue()


def test_frame_shows_counts_workers_progress_resources_and_failures() -> None:
    workers = [
        worker("a@h:1", ("j-1", "j-2"), resources={"rss": 30e6, "peak_rss": 41e6, "cpu": 2.5}),
        worker("b@h:2"),
    ]
    jobs = [
        job("j-1", Status.IN_PROGRESS, JobProgress(45, "meshing", 3)),
        job("j-2", Status.IN_PROGRESS, JobProgress(None, "starting", 1)),
        job("x-9", Status.EXPIRED, reason="waited 60 s in the queue"),
        job("x-8", Status.FAILED, reason="ValueError: [bold]boom[/bold]\nTraceback ..."),
    ]
    out = draw(stats(), workers, jobs, endpoint="tcp://h:1")
    lines = out.splitlines()
    assert lines[0].startswith("remus broker 9.9.9 at tcp://h:1  up 2 min 5 s  journal on")
    assert "client tcp://h:1  worker tcp://h:2  status tcp://h:3" in out
    assert "queue: 3 of 100,000 jobs, 2.0 KiB of 1.0 GiB" in out
    assert "last minute: 0.25/s submitted, 0.10/s finished, 0.00/s failed" in out
    # expired jobs exist: the io type table grows that column, and lists every io type
    assert re.search(r"IO TYPE\s*┃\s*QUEUED\s*┃\s*RUNNING\s*┃\s*FINISHED\s*┃\s*FAILED\s*┃\s*"
                     r"EXPIRED\s*┃\s*WORKERS", out), out  # fmt: skip
    assert re.search(r"Mesh->Mesh\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*1\s*│\s*0\s*│", out), out
    assert re.search(r"Text->Echo\s*│\s*3\s*│\s*2\s*│\s*7\s*│\s*1\s*│\s*0\s*│\s*2\s*│", out), out
    # the busy worker: its jobs one a line, a bar for a percentage, memory and cpu
    assert re.search(r"a@h:1\s*│\s*Text->Echo\s*│\s*busy\s*│\s*j-1 [━╸╺ ]+ 45% meshing", out), out
    assert re.search(r"│\s*j-2 starting\s*│", out), out
    assert re.search(r"0\.3 s ago\s*│\s*7\s*│\s*28\.6 MiB\s*│\s*39\.1 MiB\s*│\s*2\.5 s\s*│", out)
    # the idle one: no job, no resources reported yet
    assert re.search(
        r"b@h:2\s*│\s*Text->Echo\s*│\s*idle\s*│\s*-\s*│.*│\s*-\s*│\s*-\s*│\s*-\s*│$", out, re.M
    )
    # failures first, then expiries; the reason's first line, shown as written (no markup)
    fail, expired = out.index("x-8"), out.index("x-9")
    assert out.index("latest failures") < fail < expired
    assert "ValueError: [bold]boom[/bold]…" in out
    assert "no answer" not in out


def test_frame_with_nothing_and_a_silent_broker() -> None:
    empty = stats(jobs={}, jobs_by_io_type={}, totals={}, rates={}, workers={})
    out = draw(empty, [], [], endpoint="tcp://h:1", silent=12.4)
    assert out.splitlines()[0] == (
        "no answer from tcp://h:1 for 12 s; showing its last answer, still asking"
    )
    assert "(no jobs, no workers)" in out and "(no worker is connected)" in out
    assert "no failed, expired or terminated job" in out
    assert "EXPIRED" not in out and "TERMINATED" not in out
    stopped = draw(empty, [], [], endpoint="tcp://h:1", silent=0.5, problem="it stopped")
    assert "no answer from tcp://h:1 for 0.5 s: it stopped;" in stopped


def test_frame_caps_jobs_per_worker_and_failures() -> None:
    many = tuple(f"j-{i}" for i in range(5))
    bad = [job(f"f-{i}", Status.FAILED, reason="x") for i in range(12)]
    out = draw(stats(), [worker("a@h:1", many)], bad)
    assert "j-2" in out and "j-3" not in out and "+2 more" in out
    assert "f-9" in out and "f-10" not in out  # at most ten rows of failures


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
