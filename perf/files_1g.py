"""A 1 GiB file round trip across three simulated hosts, against bare PUSH/PULL of the same size.

Not part of CI or ``make perf``: it writes about 3 GiB under ``--dir`` and takes a minute::

    python -m perf.files_1g [--size-mib 1024] [--warmup-mib 64] [--dir DIR] [--json PATH]
    python perf/files_1g.py ...                                   # the same

Client, broker and worker are processes of their own with ``REMUS_HOST_ID`` set to
``perf-client``, ``perf-broker`` and ``perf-worker``, so every rule of docs/files.md that moves
bytes is exercised: the client reads the file and sends it inline, the broker passes it on to
the worker, the worker writes it into its private folder and returns that file as its result
(inline again, since the client is on another host), and the client saves it to disk.

Timed in the client, after one untimed ``--warmup-mib`` round: from ``run(files=[...])`` (the
read included) to the result in hand, and to the result saved. The file crosses four sockets
and is written to disk twice and read twice on the way; the reference is one bare pyzmq PUSH to
PULL of the same bytes, zero-copy (``perf.pushpull bulk``), measured in the same run. Peak RSS:
the broker's and the worker's ``VmHWM`` read from ``/proc`` before they stop, the client's
``ru_maxrss``. The output's SHA-256 is checked against the input's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `perf` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf import pushpull
from perf.harness import Goal, Row, Stat, machine, render
from perf.procs import ProcGroup, emit, install_sigterm_exit, peak_rss_kib

MIB = 1 << 20
SERVER_RE = r"remus server ready: client=(\S+) worker=(\S+) status=(\S+)"
MODULE = "perf.files_1g"
IO = ("PerfFile", "PerfFileBack")


# ---------------------------------------------------------------------------- roles (processes)


def role_broker(host: str) -> int:
    os.environ["REMUS_HOST_ID"] = host
    from remus.cli import main

    ep = "tcp://127.0.0.1:0"
    # results kept 1 s: the warm-up round's result must not sit beside the timed one's
    flags = ["--result-ttl", "1", "--log-level", "WARNING"]
    return main(["server", "--client", ep, "--worker", ep, "--status", ep, *flags])


def role_worker(host: str, endpoint: str) -> int:
    os.environ["REMUS_HOST_ID"] = host
    from remus import IOType
    from remus.worker import Job, Worker

    install_sigterm_exit()
    with Worker(IOType(*IO), endpoint) as w:
        while True:
            job: Job = w.get_job()  # its file is in its private folder when this returns
            if not job:
                return 0
            got = time.monotonic()
            w.return_result(job, files=job.files)  # from that folder: read, sent as bytes
            emit({"got": got, "posted": time.monotonic()})


def role_client(host: str, endpoint: str, warmup: str, path: str, out: str) -> int:
    os.environ["REMUS_HOST_ID"] = host
    from remus import IOType
    from remus.client import BasicClient

    install_sigterm_exit()
    with BasicClient(endpoint, timeout=120) as c:

        def round_trip(src: str, target: str) -> dict[str, Any]:
            t0 = time.monotonic()
            # the worker process starts beside this one: the warm-up round may wait for it
            result = c.run(IOType(*IO), files=[src], timeout=600, wait_for_worker=True)
            t1 = time.monotonic()
            (saved,) = result.save(target)
            t2 = time.monotonic()
            del result
            return {"t0": t0, "result_s": t1 - t0, "saved_s": t2 - t0, "saved": saved}

        round_trip(warmup, os.path.join(out, "warmup"))
        timed = round_trip(path, os.path.join(out, "timed"))
    emit({**timed, "client_peak_rss_kib": peak_rss_kib()})
    return 0


# ---------------------------------------------------------------------------- the parent


def make_file(path: Path, size: int) -> str:
    """``size`` random bytes (a fresh MiB at a time); returns their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(MIB, left))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            h.update(chunk)
    return h.hexdigest()


def measure_remus(src: Path, warm: Path, out: Path) -> dict[str, Any]:
    with ProcGroup() as group:
        broker = group.start("broker", MODULE, "broker", "perf-broker")
        client_ep, worker_ep, _ = broker.expect(SERVER_RE, timeout=30).groups()
        worker = group.start("worker", MODULE, "worker", "perf-worker", worker_ep)
        client = group.start("client", MODULE, "client", "perf-client", client_ep, warm, src, out)
        got = client.result(timeout=900)
        worker.result(timeout=10)  # the warm-up round's times
        got["worker"] = worker.result(timeout=10)
        got["broker_peak_rss_kib"] = broker.status_kib("VmHWM")
        got["worker_peak_rss_kib"] = worker.status_kib("VmHWM")
        return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.files_1g", description=__doc__)
    sub = parser.add_subparsers(dest="role")
    sub.add_parser("broker").add_argument("host")
    w = sub.add_parser("worker")
    w.add_argument("host")
    w.add_argument("endpoint")
    c = sub.add_parser("client")
    for name in ("host", "endpoint", "warmup", "path", "out"):
        c.add_argument(name)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--warmup-mib", type=int, default=64)
    parser.add_argument("--dir", default=None, help="where to write the files [a temp dir]")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.role == "broker":
        return role_broker(args.host)
    if args.role == "worker":
        return role_worker(args.host, args.endpoint)
    if args.role == "client":
        return role_client(args.host, args.endpoint, args.warmup, args.path, args.out)

    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="remus-files-1g-", dir=args.dir))
    try:
        print(f"writing {args.size_mib} MiB of random bytes under {work} ...", flush=True)
        src, warm = work / "input.bin", work / "warmup.bin"
        digest = make_file(src, size)
        make_file(warm, args.warmup_mib * MIB)
        print("bare PUSH/PULL of the same size ...", flush=True)
        ref = pushpull.run("bulk", size=size, warmup=1, repeat=1, timeout=600)
        print("remus round trip across three hosts ...", flush=True)
        got = measure_remus(src, warm, work / "out")
        same = sha256(got["saved"]) == digest
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = size / MIB
    trip = Row(f"file round trip {mib:.0f} MiB", "MiB/s", ref_label="PUSH/PULL one way")
    trip.remus, trip.reference = Stat.of(mib / got["result_s"]), Stat.of(ref["samples"])
    trip.note = "4 socket hops, 2 disk writes and 2 reads, against 1 hop in memory"
    saved = Row("... and saved to disk", "MiB/s")
    saved.remus = Stat.of(mib / got["saved_s"])
    rows = [trip, saved]
    ref_peak = max(ref["puller_peak_rss_kib"], ref["pusher_peak_rss_kib"]) / 1024
    for who in ("client", "broker", "worker"):
        row = Row(f"{who} peak RSS", "MiB", goal=Goal("<=", 1.5), ref_label="file size")
        row.remus, row.reference = Stat.of(got[f"{who}_peak_rss_kib"] / 1024), Stat.of(mib)
        rows.append(row)
    w, t0 = got["worker"], got["t0"]
    to_worker, in_worker = w["got"] - t0, w["posted"] - w["got"]
    back = got["result_s"] - (w["posted"] - t0)
    notes = [
        f"phases: client to worker (read, sent over 2 hops, written to the job folder) "
        f"{to_worker:.2f} s; worker reads its result {in_worker:.2f} s; back to the client "
        f"(2 hops) {back:.2f} s; saved {got['saved_s'] - got['result_s']:.2f} s",
        f"SHA-256 of the saved result {'matches' if same else 'DOES NOT MATCH'} the input",
        f"PUSH/PULL peak RSS (pusher, puller): {ref['pusher_peak_rss_kib'] / 1024:.0f}, "
        f"{ref['puller_peak_rss_kib'] / 1024:.0f} MiB (max {ref_peak:.0f})",
    ]
    print(render(rows, notes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "remus": got, "reference": ref}, f, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
