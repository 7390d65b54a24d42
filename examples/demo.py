#!/usr/bin/env python3
"""``make demo``: a broker that starts the example workers by itself, and a client that uses it.

1. starts ``python -m remus.server`` with this folder as its worker folder (no worker runs yet);
2. asks the broker what it can do: the io types of the worker files it found;
3. submits point sets to triangulate and files to summarize; the broker starts workers;
4. shows their progress as they run (remus.progress's BatchBar, fed by ``as_completed``),
   then a table of the results: how long each waited and ran (the broker's ``jobs()``);
5. stops the broker (which stops its workers) and exits 0.

Run it with ``--out DIR`` to keep the meshes (OFF files) and summaries.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.table import Table

from remus import IOType, JobResult, JobSubmission
from remus.client import BasicClient
from remus.progress import BatchBar

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
    # piped (as in the tests), rich would fit the table in 80 columns and wrap its cells
    console = Console(width=None if sys.stdout.isatty() else 120)
    with BasicClient(endpoints["client"], timeout=10) as c:
        console.print("the broker can serve, before any worker runs:")
        for io_type in sorted(c.client.supported_io_types(), key=str):
            names = ", ".join(r.worker_name for r in c.client.retrieve_requirements(io_type))
            console.print(f"  {io_type}  (worker file for {names})", highlight=False)

        labelled = make_jobs(random.Random(args.seed))
        jobs = c.submit_many(sub for _, sub in labelled)
        labels = {job.id: label for (label, _), job in zip(labelled, jobs, strict=True)}
        console.print(
            f"\nsubmitted {len(jobs)} jobs; the broker may start {args.max_workers} workers\n"
        )
        results: dict[str, JobResult] = {}
        failures: list[Exception] = []
        with BatchBar(len(jobs), "all jobs", labels=labels) as bar:
            done = c.as_completed(jobs, timeout=120, errors="yield", on_progress=bar.progress)
            for result in bar.track(done):
                if isinstance(result, Exception):
                    failures.append(result)
                else:
                    results[result.job_id] = result
        timing = {info.id: info for info in c.client.jobs(limit=len(jobs))}
        spawned = sum(f.get("spawned", 0) for f in c.client.stats().worker_files)

        console.print("\nresults:")
        table = Table("job", "queued", "ran", "CPU", "result")
        for job in jobs:
            result = results.get(job.id)
            if result is None:
                continue
            info = timing.get(job.id)
            table.add_row(
                labels[job.id],
                seconds(info.queued_for if info else None),
                seconds(info.running_for if info else None),
                seconds(result.cpu),
                describe(job.requirements.io_type, result.data),
            )
        console.print(table)
        for failure in failures:
            console.print(f"  [bold red]FAILED[/] {failure}", highlight=False)
        console.print(f"the broker started {spawned} workers from its worker files")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for job in jobs:
                if job.id in results:
                    io_type = job.requirements.io_type
                    name = labels[job.id].replace(" ", "_").replace("/", "_")
                    path = args.out / f"{name}.{'off' if io_type == POINTS else 'json'}"
                    path.write_bytes(results[job.id].data)
            console.print(f"results written to {args.out}")
        return bool(failures) or len(results) < len(jobs)


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
