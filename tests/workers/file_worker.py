#!/usr/bin/env python3
"""A remus worker process for the file tests (tests/test_files.py).

    file_worker.py ENDPOINT [--mode copy|missing] [--chdir DIR] [--netns NAME] [--heartbeat S]

``copy``: for each input file, report (as one progress message, JSON) its local path, its
SHA-256 and size, the job's args, its private folder and what is in the temp directory; then
write a copy of each input, bytes unchanged, into the job's private folder as ``out-<name>``
and return those copies as the file result. ``missing`` returns a file that does not exist.

``--chdir`` moves the process into DIR first (the tests check nothing is written there);
``--netns`` joins the network namespace NAME (made with ``ip netns add``) before any socket
or thread exists, so the worker reaches the broker over that namespace's links only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import sys
import tempfile

from remus.files import sha256_file
from remus.types import FileHandle, IOType
from remus.worker import Job, Worker

FILES = IOType("Files", "Copies")
CLONE_NEWNET = 0x40000000


def join_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--mode", choices=("copy", "missing"), default="copy")
    parser.add_argument("--chdir")
    parser.add_argument("--netns")
    parser.add_argument("--heartbeat", type=float, default=0.2)
    args = parser.parse_args()
    if args.netns:
        join_netns(args.netns)
    if args.chdir:
        os.chdir(args.chdir)

    with Worker(FILES, args.endpoint, heartbeat_interval=args.heartbeat) as w:

        def copy(job: Job) -> list[FileHandle]:
            seen = [
                {
                    "path": f.path,
                    "mode": f.mode,
                    "sha256": sha256_file(f),
                    "size": os.path.getsize(f),
                }
                for f in job.files
            ]
            report = {
                "files": seen,
                "args": list(job.args),
                "workdir": job.workdir,
                "tmp": sorted(os.listdir(tempfile.gettempdir())),
                "origin": job.origin,
                "host": w.host,
                "ifaces": [name for _, name in socket.if_nameindex()],
            }
            w.send_progress(job, 50, json.dumps(report))
            outs = []
            for f in job.files:
                out = os.path.join(job.workdir, "out-" + os.path.basename(f.path))
                with open(f, "rb") as src, open(out, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                outs.append(FileHandle(out, f.mode))
            return outs

        def missing(job: Job) -> list[str]:
            return [os.path.join(job.workdir, "never-written.txt")]

        w.run(copy if args.mode == "copy" else missing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
