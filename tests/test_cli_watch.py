"""``remus watch`` as a real process: against no broker (the warning, Ctrl-C), against a real
``remus server`` (one readable line per event, ``--json``, ``--job``, ``--count``); and the
event lines themselves, from payloads."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import wait_for
from helpers_cli import ECHO, Broker, start_broker
from helpers_e2e import REMUS_SCRIPT, free_tcp_endpoint, wait_exit

from remus.cli.watch import Lines

pytestmark = pytest.mark.timeout(60)

CLOCK = r"\d\d:\d\d:\d\d\.\d{3}"


@pytest.fixture
def broker(make_process: Any, make_worker: Any) -> Iterator[Broker]:
    yield from start_broker(make_process, make_worker)


class Output:
    """Lines of a process's stream, read on a thread (so a test can wait with a deadline)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def until(self, pattern: str, timeout: float = 10.0) -> str:
        found = re.compile(pattern)
        return str(
            wait_for(lambda: next((x for x in self.lines if found.search(x)), None), timeout)
        )


def watch(make_process: Any, *args: str) -> tuple[subprocess.Popen[str], Output, Output]:
    proc = make_process(
        [REMUS_SCRIPT, "watch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return proc, Output(proc.stdout), Output(proc.stderr)


def prime(c: Any, out: Output, submit: Callable[[], Any] | None = None) -> None:
    """Submit jobs until the watcher prints an event: its subscription has reached the
    broker (events before that are not sent to it)."""
    deadline = time.monotonic() + 10
    while not out.lines:
        job = submit() if submit is not None else c.submit(ECHO, "prime")
        c.wait(job, timeout=5)
        assert time.monotonic() < deadline, "the watcher printed no event within 10 s"


def test_watch_warns_when_nothing_answers_and_stops_on_ctrl_c(make_process: Any) -> None:
    nowhere = free_tcp_endpoint()
    started = time.monotonic()
    proc, out, err = watch(make_process, "--status", nowhere)
    assert err.until("watching") == (
        f"remus watch: watching every event at {nowhere} (Ctrl-C to stop)"
    )
    warning = err.until("warning", timeout=10)
    waited = time.monotonic() - started
    assert warning.startswith(f"remus watch: warning: nothing answers at {nowhere} after 3 s: ")
    assert "`remus server`" in warning and "--status" in warning
    assert 3.0 <= waited < 8, waited
    proc.send_signal(signal.SIGINT)
    assert wait_exit(proc, 5) == 0
    assert out.lines == [] and not any("Traceback" in x for x in err.lines)


def test_watch_against_no_broker_with_count_exits_when_killed(make_process: Any) -> None:
    proc, _, err = watch(make_process, "--status", free_tcp_endpoint(), "--count", "1",
                         "--warn-after", "0.2")  # fmt: skip
    err.until("warning")
    proc.terminate()
    assert wait_exit(proc, 5) == -signal.SIGTERM


def test_watch_prints_one_readable_line_per_event(
    broker: Broker, make_process: Any, make_client: Any, make_worker: Any
) -> None:
    c = make_client(broker.ep, basic=True)
    proc, out, err = watch(make_process, "--status", broker.ports.status)
    prime(c, out)
    assert not any("warning" in x for x in err.lines)

    make_worker(ECHO, broker.ports.worker)  # a second worker connects
    out.until(rf"^{CLOCK} worker \S+@\S+:\d+ registered \(Text->Echo\)$")
    job = c.submit(ECHO, "steps")
    c.wait(job, timeout=10)
    me = r"\S+@\S+:\d+"
    out.until(rf"^{CLOCK} job {job.id} queued \(Text->Echo\)$")
    out.until(rf"^{CLOCK} job {job.id} assigned to {me} after \d+ ms in the queue$")
    out.until(rf"^{CLOCK} job {job.id} progress 50% step 50$")
    out.until(rf"^{CLOCK} job {job.id} finished on {me} \(\d+(\.\d)? m?s\)$")

    bad = c.submit(ECHO, "boom")
    with pytest.raises(Exception, match="boom"):
        c.wait(bad, timeout=10)
    line = out.until(rf"job {bad.id} failed")
    assert re.fullmatch(
        rf"{CLOCK} job {bad.id} failed on {me} \(.+\): ValueError: the input says boom", line
    ), line

    proc.send_signal(signal.SIGINT)
    assert wait_exit(proc, 5) == 0


def test_watch_json_count_and_topics(broker: Broker, make_process: Any, make_client: Any) -> None:
    c = make_client(broker.ep, basic=True)
    proc, out, _ = watch(
        make_process, "--status", broker.ports.status, "--json", "--count", "3", "job.finished"
    )
    sent = []
    deadline = time.monotonic() + 20
    while proc.poll() is None:
        job = c.submit(ECHO, "x")
        c.wait(job, timeout=5)
        sent.append(job.id)
        assert time.monotonic() < deadline, "remus watch --count 3 did not exit"
    assert wait_exit(proc, 5) == 0
    wait_for(lambda: len(out.lines) == 3)
    events = [json.loads(line) for line in out.lines]
    assert [e["topic"] for e in events] == ["job.finished"] * 3
    ids = [e["job"] for e in events]
    first = sent.index(ids[0])
    assert sent[first : first + 3] == ids  # three jobs in a row, as they finished
    for e in events:
        assert e["status"] == "FINISHED" and e["io_type"] == ["Text", "Echo"]
        assert isinstance(e["time"], float) and e["worker"]


def test_watch_job_follows_one_job(broker: Broker, make_process: Any, make_client: Any) -> None:
    c = make_client(broker.ep, basic=True)
    held = c.submit(ECHO, "hold")  # sends progress every 20 ms until released
    wait_for(lambda: c.client.job_status(held).progress is not None)
    proc, out, err = watch(
        make_process, "--status", broker.ports.status, "--json", "--job", held.id, "--count", "3"
    )
    err.until(f"watching job.\\* of job {held.id} at ")
    assert wait_exit(proc, 15) == 0
    broker.handler.release.set()
    assert c.wait(held, timeout=10).data == b"released"
    wait_for(lambda: len(out.lines) == 3)
    events = [json.loads(line) for line in out.lines]
    assert {e["job"] for e in events} == {held.id}
    assert all(e["topic"] == "job.progress" and e["message"] == "holding" for e in events)


# ------------------------------------------------------------------ the lines, from payloads

T = 1_700_000_000.25  # a Unix time


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("job.queued", {"job": "a-1", "io_type": ["A", "B"]}, "job a-1 queued (A->B)"),
        ("job.requeued", {"job": "a-1", "reason": "worker lost\nmore"}, "job a-1 requeued: "
         "worker lost…"),
        ("job.expired", {"job": "a-1", "reason": "queue time limit"}, "job a-1 expired: queue "
         "time limit"),
        ("job.terminated", {"job": "a-1", "worker": "w@h:1"}, "job a-1 terminated on w@h:1"),
        ("worker.lost", {"worker": "w@h:1", "reason": "no heartbeat"}, "worker w@h:1 lost: no "
         "heartbeat"),
        ("worker.spawned", {"pid": 7, "worker_name": "mesher", "worker_file": "/x/m.rw"},
         "worker pid 7 (mesher) spawned from /x/m.rw"),
        ("worker.reaped", {"pid": 7, "worker_name": "m", "returncode": None, "signal": 9,
                           "runtime": 75.0, "stderr_tail": "oom\n"},
         "worker pid 7 (m) ended (killed by signal 9) after 1 min 15 s: oom"),
        ("worker.quarantined", {"worker_file": "/x/m.rw", "reason": "5 failed starts"},
         "worker file /x/m.rw quarantined: 5 failed starts"),
        ("job.progress", {"job": "a-1", "value": None, "message": "meshing"},
         "job a-1 progress meshing"),
        ("job.finished", {"job": 5, "worker": ["odd"]}, "job 5 finished on ['odd']"),
        ("something.new", {"x": 1}, "something.new x=1"),
    ],
)  # fmt: skip
def test_event_lines(topic: str, payload: dict[str, Any], expected: str) -> None:
    line = Lines().line(topic, {"time": T, **payload})
    assert re.fullmatch(CLOCK, line.split(" ", 1)[0]), line
    assert line.split(" ", 1)[1] == expected


def test_event_line_durations_come_from_the_feed() -> None:
    lines = Lines()
    lines.line("job.queued", {"job": "a-1", "time": T})
    assigned = lines.line("job.assigned", {"job": "a-1", "time": T + 2.5, "worker": "w@h:1"})
    assert assigned.endswith("job a-1 assigned to w@h:1 after 2.5 s in the queue")
    done = lines.line("job.finished", {"job": "a-1", "time": T + 3.0, "worker": "w@h:1"})
    assert done.endswith("job a-1 finished on w@h:1 (0.5 s)")
    assert lines.times == {}  # forgotten once it ended
    assert Lines().line("job.finished", {"job": "b"}).startswith("--:--:--.--- job b finished")
