"""A 1 GiB file round trip across three simulated hosts, against bare PUSH/PULL of the same size.

Not part of CI or ``make perf``: it writes about 5 times the file under ``--dir`` and takes a
minute::

    python -m perf.files_1g [--size-mib 1024] [--warmup-mib 64] [--dir DIR] [--json PATH]
    python -m perf.files_1g --size-mib 4096      # memory does not grow with the file
    python perf/files_1g.py ...                                   # the same

Client, broker and worker are processes of their own with ``REMUS_HOST_ID`` set to
``perf-client``, ``perf-broker`` and ``perf-worker``, so every rule of docs/files.md that moves
bytes is exercised. The file is larger than ``remus.files.STREAM_FROM``, so it streams in
chunks: the client uploads it to the broker's spool (leg 1), the worker fetches it into its
private folder (leg 2), uploads that file back as its result (leg 3), and the client fetches
the result (leg 4) and saves it (a rename).

Timed after one untimed ``--warmup-mib`` round: the whole round trip from ``run(files=[...])``
to the result in hand, and each leg on its own (legs 1 and 4 in the client, around its
upload and fetch; leg 2 from the end of the upload to the worker holding the job, which
includes the submit; leg 3 in the worker). The reference is one bare pyzmq PUSH to PULL of the
same bytes, zero-copy (``perf.pushpull bulk``), measured in the same run.

Memory: each process's peak RSS (``VmHWM`` for the broker and the worker, ``ru_maxrss`` for
the client) against its RSS when idle (connected, before any file moved). Latency: a fourth
process runs tiny jobs one after the other on a worker of its own through the same broker the
whole time; its round-trip p99 while the big file moves is compared with its p99 before.
As a control, the same pinger then runs beside as many CPU-bound processes (hashing and
copying 4 MiB blocks, no remus in them) as the round trip kept cores busy (its processes' CPU
seconds over its wall time): what the p99 becomes when the machine's cores are merely that
busy, whatever keeps them so. The output's SHA-256 is checked against the input's.
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
PING = ("PerfPing", "PerfPong")
#: how long the pinger's latency is sampled before any file moves
BASELINE_S = 3.0
#: how long the control (the pinger beside plain CPU-bound processes) runs at most
CONTROL_S = 5.0


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
        print("ready", flush=True)
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
        idle = rss_kib()
        legs: dict[str, float] = {}
        upload, fetch = c.client.upload, c.client.fetch

        def timed_upload(*args: Any) -> Any:
            t = time.monotonic()
            try:
                return upload(*args)
            finally:
                legs["up_end"] = time.monotonic()
                legs["up_s"] = legs["up_end"] - t

        def timed_fetch(*args: Any) -> Any:
            t = time.monotonic()
            try:
                return fetch(*args)
            finally:
                legs["down_s"] = time.monotonic() - t

        c.client.upload, c.client.fetch = timed_upload, timed_fetch  # type: ignore[method-assign]

        def round_trip(src: str, target: str) -> dict[str, Any]:
            legs.clear()
            t0 = time.monotonic()
            # the worker process starts beside this one: the warm-up round may wait for it
            result = c.run(IOType(*IO), files=[src], timeout=900, wait_for_worker=True)
            t1 = time.monotonic()
            (saved,) = result.save(target)
            t2 = time.monotonic()
            del result
            return {"t0": t0, "t1": t1, "result_s": t1 - t0, "saved_s": t2 - t0, "saved": saved}

        round_trip(warmup, os.path.join(out, "warmup"))
        timed = round_trip(path, os.path.join(out, "timed"))
        timed.update(legs)
        emit({**timed, "client_idle_rss_kib": idle, "client_peak_rss_kib": peak_rss_kib()})
        sys.stdin.readline()  # the parent has started the pinger: once more, beside it
        loaded = round_trip(path, os.path.join(out, "loaded"))
        emit({"t0": loaded["t0"], "t1": loaded["t1"]})
    return 0


def role_pinger(endpoint: str, worker_endpoint: str) -> int:
    """Tiny jobs one after the other until told to stop on stdin; then every (when, seconds)."""
    import threading

    from remus import IOType
    from remus.client import BasicClient
    from remus.worker import Worker

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    samples: list[tuple[float, float]] = []
    with Worker(IOType(*PING), worker_endpoint) as w:
        threading.Thread(target=w.run, args=(lambda job: b"pong",), daemon=True).start()
        with BasicClient(endpoint, timeout=60) as c:
            c.run(IOType(*PING), data=b"ping", timeout=60, wait_for_worker=True)
            print("ready", flush=True)
            while not stop.is_set():
                t = time.monotonic()
                c.run(IOType(*PING), data=b"ping", timeout=60)
                samples.append((t, time.monotonic() - t))
    emit({"samples": samples})
    return 0


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for row in f:
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
    return 0


def role_hog() -> int:
    """Keep one core busy the way a transfer does (hash and copy 4 MiB at a time), until
    SIGTERM."""
    install_sigterm_exit()
    block = os.urandom(4 * MIB)
    while True:
        hashlib.sha256(block).digest()
        bytes(block)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


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
        worker.expect("^ready", timeout=30)
        idle = {"broker": broker.status_kib("VmRSS"), "worker": worker.status_kib("VmRSS")}
        args = ("perf-client", client_ep, warm, src, out)
        client = group.start("client", MODULE, "client", *args, stdin=True)
        got = client.result(timeout=1800)
        worker.result(timeout=10)  # the warm-up round's times
        got["worker"] = worker.result(timeout=10)
        got["broker_peak_rss_kib"] = broker.status_kib("VmHWM")
        got["worker_peak_rss_kib"] = worker.status_kib("VmHWM")
        got["broker_idle_rss_kib"] = idle["broker"]
        got["worker_idle_rss_kib"] = idle["worker"]
        # then the latency of tiny jobs beside the same round trip (it takes CPU from the
        # round trip, so that one is not the one timed above)
        pinger = group.start("pinger", MODULE, "pinger", client_ep, worker_ep, stdin=True)
        pinger.expect("^ready", timeout=30)
        time.sleep(BASELINE_S)  # the pinger's latency with no file moving
        moving = (client, broker, worker)
        cpu = sum(p.cpu_seconds() for p in moving)
        client.send("go")
        got["loaded"] = client.result(timeout=1800)
        wall = got["loaded"]["t1"] - got["loaded"]["t0"]
        got["loaded"]["busy"] = (sum(p.cpu_seconds() for p in moving) - cpu) / wall
        # the control: as many plain CPU-bound processes as the round trip kept cores busy
        hogs = [group.start(f"hog-{i}", MODULE, "hog") for i in range(round(got["loaded"]["busy"]))]
        t0 = time.monotonic()
        time.sleep(min(wall, CONTROL_S))
        got["control"] = {"t0": t0, "t1": time.monotonic(), "processes": len(hogs)}
        for hog in hogs:
            hog.stop()
        pinger.send("stop")
        got["ping"] = pinger.result(timeout=60)["samples"]
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
    pg = sub.add_parser("pinger")
    pg.add_argument("endpoint")
    pg.add_argument("worker_endpoint")
    sub.add_parser("hog")
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
    if args.role == "pinger":
        return role_pinger(args.endpoint, args.worker_endpoint)
    if args.role == "hog":
        return role_hog()

    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="remus-files-1g-", dir=args.dir))
    # every process's temporary files (the broker's spool, the worker's job folder, the
    # client's fetched result) go under --dir too: a tmpfs there takes the disk out of the legs
    os.environ["TMPDIR"] = str(work)
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
    push = Stat.of(ref["samples"])
    trip = Row(f"file round trip {mib:.0f} MiB", "MiB/s", ref_label="PUSH/PULL one way")
    trip.remus, trip.reference = Stat.of(mib / got["result_s"]), push
    trip.note = "4 legs, each through the broker's spool on disk"
    saved = Row("... and saved to disk", "MiB/s")
    saved.remus = Stat.of(mib / got["saved_s"])
    rows = [trip, saved]
    w = got["worker"]
    legs = {
        "leg 1: client uploads to the broker": got["up_s"],
        "leg 2: worker fetches (after the submit)": w["got"] - got["up_end"],
        "leg 3: worker uploads its result": w["posted"] - w["got"],
        "leg 4: client fetches the result": got["down_s"],
    }
    for name, seconds in legs.items():
        row = Row(name, "MiB/s", goal=Goal(">=", 0.45), ref_label="PUSH/PULL one way")
        row.remus, row.reference = Stat.of(mib / seconds), push
        rows.append(row)
    ref_peak = max(ref["puller_peak_rss_kib"], ref["pusher_peak_rss_kib"]) / 1024
    for who in ("client", "broker", "worker"):
        grew = (got[f"{who}_peak_rss_kib"] - got[f"{who}_idle_rss_kib"]) / 1024
        row = Row(f"{who} peak RSS over idle", "MiB", goal=Goal("<=", 64, on="value"))
        row.remus, row.reference = Stat.of(grew), Stat.of(mib)
        row.ref_label = "file size"
        row.note = f"idle {got[f'{who}_idle_rss_kib'] / 1024:.0f} MiB"
        rows.append(row)
    loaded = got["loaded"]
    before = [s for t, s in got["ping"] if t < loaded["t0"]]
    during = [s for t, s in got["ping"] if loaded["t0"] <= t <= loaded["t1"]]
    ping = Row("tiny job p99 while the file moves", "ms", goal=Goal("<=", 2.0))
    ping.ref_label = "p99 before"
    ping.remus, ping.reference = Stat.of(p99(during) * 1000), Stat.of(p99(before) * 1000)
    ping.note = f"{len(during)} jobs during, {len(before)} before"
    rows.append(ping)
    control = got["control"]
    beside = [s for t, s in got["ping"] if control["t0"] <= t <= control["t1"]]
    hogged = Row(f"... beside {control['processes']} CPU-bound processes, no file", "ms")
    hogged.ref_label = "p99 before"
    hogged.remus, hogged.reference = Stat.of(p99(beside) * 1000), Stat.of(p99(before) * 1000)
    hogged.note = (
        f"the control: the file's round trip kept {loaded['busy']:.1f} cores busy "
        f"(its processes' CPU seconds over its wall time); {len(beside)} jobs"
    )
    rows.append(hogged)
    notes = [
        f"round trip {got['result_s']:.2f} s; saved {got['saved_s'] - got['result_s']:.2f} s "
        "later (a rename)",
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
