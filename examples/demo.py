#!/usr/bin/env python3
"""``make demo``: a broker that starts the example workers by itself, and a client that uses it.

1. starts ``python -m remus.server`` with this folder as its worker folder (no worker runs yet);
2. asks the broker what it can do: the io types of the worker files it found;
3. submits point sets to triangulate and files to summarize; the broker starts workers;
4. shows their progress as they run, then the results and how long each took;
5. stops the broker (which stops its workers) and exits 0.

Run it with ``--out DIR`` to keep the meshes (OFF files) and summaries.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

import zmq

from remus import IOType, Job, JobStatus, JobSubmission, Status
from remus.client import BasicClient
from remus.protocol import unpack

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
POINTS = IOType("Points", "Mesh2D")
TEXT = IOType("Text", "Summary")


def start_broker(max_workers: int, log: TextIO) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start the broker on free ports; return it and its endpoints once it says it is ready."""
    any_port = "tcp://127.0.0.1:0"
    cmd = [sys.executable, "-m", "remus.server", "--workers", str(HERE),
           "--max-workers", str(max_workers),
           "--client", any_port, "--worker", any_port, "--status", any_port]  # fmt: skip
    broker = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # keep reading, so the broker never blocks on a full pipe
        assert broker.stdout is not None
        for line in broker.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=drain, name="demo-broker-stdout", daemon=True).start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line.startswith("remus server ready:"):
            return broker, dict(word.split("=", 1) for word in line.split()[3:])
        if not line:
            break
    broker.kill()
    broker.wait()
    raise RuntimeError("the broker did not start")


def make_jobs(rng: random.Random) -> list[tuple[str, JobSubmission]]:
    jobs = []
    for n in (500, 2000, 4000, 6000):
        points = "\n".join(f"{rng.uniform(0, 100):.6f} {rng.uniform(0, 50):.6f}" for _ in range(n))
        jobs.append((f"triangulate {n} points", JobSubmission.of(POINTS, points.encode())))
    for path in (REPO / "docs" / "workers.md", REPO / "remus" / "types.py", HERE / "summarize.py"):
        if path.exists() and path.stat().st_size:
            jobs.append(
                (f"summarize {path.relative_to(REPO)}", JobSubmission.of(TEXT, path.read_bytes()))
            )
    return jobs


class Board:
    """One line per job: a progress bar redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels
        self.width = max(map(len, labels))
        self.tty = sys.stdout.isatty()
        self.columns = shutil.get_terminal_size().columns - 1  # a wrapped line breaks the redraw
        self.drawn = 0
        self.last: dict[str, tuple[str, int]] = {}

    def note(self, text: str) -> None:
        if not self.tty:
            print(text, flush=True)

    def update(self, rows: list[tuple[str, Status, int, str]], footer: str) -> None:
        if not self.tty:
            for label, status, value, message in rows:
                key = (status.name, value // 25)  # a line per status change or quarter done
                if self.last.get(label) != key:
                    self.last[label] = key
                    print(f"{label}: {status.name.lower()} {value}% {message}".rstrip(), flush=True)
            return
        out = [f"\x1b[{self.drawn}F"] if self.drawn else []
        for label, status, value, message in rows:
            filled = value * 24 // 100
            bar = "#" * filled + "." * (24 - filled)
            state = status.name.lower()
            line = f"{label:<{self.width}} [{bar}] {value:3d}% {state:<11} {message[:32]}"
            out.append(f"\x1b[2K{line[: self.columns]}\n")  # erase the old line, write anew
        out.append(f"\x1b[2K{footer[: self.columns]}\n")
        self.drawn = len(rows) + 1
        sys.stdout.write("".join(out))
        sys.stdout.flush()


def percent(status: JobStatus) -> int:
    if status.status is Status.FINISHED:
        return 100
    if status.progress is None or status.progress.value is None:
        return 0
    return status.progress.value


def describe(io_type: IOType, data: bytes) -> str:
    """A one-line look at a result."""
    if io_type == POINTS:
        _, counts = data.split(b"\n", 2)[:2]
        vertices, faces, _ = counts.split()
        return f"mesh of {int(vertices)} vertices, {int(faces)} triangles (OFF)"
    summary = json.loads(data)
    top = ", ".join(word for word, _ in summary["top_words"][:3])
    return f"{summary['lines']} lines, {summary['words']} words, top: {top}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-workers", type=int, default=2, help="workers the broker may start")
    parser.add_argument("--out", type=Path, help="write each result into this folder")
    parser.add_argument("--seed", type=int, default=7, help="for the random point sets")
    args = parser.parse_args()

    fd, log_path = tempfile.mkstemp(prefix="remus-demo-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        try:
            broker, endpoints = start_broker(args.max_workers, log)
        except RuntimeError as e:
            print(f"{e}; its log is in {log_path}", file=sys.stderr)
            return 1
        print(f"broker started (pid {broker.pid}), clients connect to {endpoints['client']}")
        print(f"(its log is in {log_path})\n")
        failed = True
        try:
            failed = run_demo(endpoints, args)
        finally:
            broker.send_signal(signal.SIGTERM)
            try:
                code = broker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                broker.kill()
                code = broker.wait()
            print(f"\nbroker stopped (exit code {code})")
    if failed or code != 0:
        print(f"something went wrong: see the broker's log in {log_path}", file=sys.stderr)
        return 1
    os.unlink(log_path)
    return 0


def run_demo(endpoints: dict[str, str], args: argparse.Namespace) -> bool:
    """Everything a client does; returns True if something failed."""
    with BasicClient(endpoints["client"], timeout=10) as c:
        print("the broker can serve, before any worker runs:")
        for io_type in sorted(c.client.supported_io_types(), key=str):
            names = ", ".join(r.worker_name for r in c.client.retrieve_requirements(io_type))
            print(f"  {io_type}  (worker file for {names})")

        labelled = make_jobs(random.Random(args.seed))
        labels = [label for label, _ in labelled]
        submitted = time.monotonic()
        jobs = c.submit_many(sub for _, sub in labelled)
        print(f"\nsubmitted {len(jobs)} jobs; the broker may start {args.max_workers} workers\n")
        board = Board(labels)
        started, finished = watch(c, jobs, board, endpoints["status"])

        print("\nresults:")
        failed = len(finished) < len(jobs)
        by_id = {job.id: (label, job) for label, job in zip(labels, jobs, strict=True)}
        for result in c.as_completed(jobs, timeout=30, errors="yield"):
            if isinstance(result, Exception):
                failed = True
                print(f"  FAILED {result}")
                continue
            label, job = by_id[result.job_id]
            io_type = job.requirements.io_type
            waited = started[job.id] - submitted
            ran = finished[job.id] - started[job.id]
            print(f"  {label:<{board.width}} queued {waited:4.1f} s, ran {ran:4.1f} s: "
                  f"{describe(io_type, result.data)}")  # fmt: skip
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                name = label.replace(" ", "_").replace("/", "_")
                (args.out / f"{name}.{'off' if io_type == POINTS else 'json'}").write_bytes(
                    result.data
                )
        if args.out:
            print(f"results written to {args.out}")
        return failed


def watch(
    c: BasicClient, jobs: list[Job], board: Board, status_endpoint: str
) -> tuple[dict[str, float], dict[str, float]]:
    """Show the jobs' progress until all are done; return when each started and finished.

    Statuses are polled ten times a second for the display; the broker's status channel tells
    which workers it starts. (To follow one job, ``c.wait(job, on_progress=...)`` is simpler.)
    """
    events = zmq.Context.instance().socket(zmq.SUB)
    events.setsockopt(zmq.LINGER, 0)
    events.setsockopt(zmq.SUBSCRIBE, b"worker.")
    events.connect(status_endpoint)
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    spawned = exited = 0
    deadline = time.monotonic() + 300
    try:
        while len(finished) < len(jobs) and time.monotonic() < deadline:
            while events.poll(0):
                topic, body = events.recv_multipart()[:2]
                spawned += topic == b"worker.spawned"
                exited += topic == b"worker.reaped"
                info = unpack(body)
                board.note(f"{topic.decode()}: {info.get('worker_name')} (pid {info.get('pid')})")
            now = time.monotonic()
            rows = []
            for label, job, st in zip(board.labels, jobs, c.client.job_statuses(jobs), strict=True):
                if st.status is Status.IN_PROGRESS or st.status.done:
                    started.setdefault(job.id, now)
                if st.status.done:
                    finished.setdefault(job.id, now)
                message = st.progress.message if st.progress else ""
                rows.append((label, st.status, percent(st), message))
            board.update(rows, f"workers started by the broker: {spawned}, exited: {exited}")
            time.sleep(0.1)
    finally:
        events.close()
    return started, finished


if __name__ == "__main__":
    sys.exit(main())
