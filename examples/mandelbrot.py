#!/usr/bin/env python3
"""A remus worker with assistants: the Mandelbrot set as a PGM image (Region -> Image).

A job's data is JSON, every key optional::

    {"width": 160, "height": 100, "iterations": 100, "region": [-2.2, -1.2, 1.0, 1.2]}

Its handler is a *master*: it cuts the image into bands of rows, submits one assistant job
per band but the first (the same requirements, with ``"rows": [first, end]`` in the data),
computes the first band itself, collects the assistants' bands (``job.client.as_completed``)
and returns the whole image as a binary PGM (``P5``). A job with ``"rows"`` is an assistant:
it returns its band's pixels. Assistants are spare-capacity jobs: a protected job that needs a
slot preempts them (the broker runs them again later), and they end when their master ends.

An assistant still QUEUED when the master has finished its own band is terminated and computed
by the master, so a master never waits for slots that other masters hold.

The broker starts it from mandelbrot.rw (``"Slots": 4``, which the worker finds in
``$REMUS_SLOTS``) as ``mandelbrot.py <worker endpoint>``: a master and its three assistants fit
in one worker (as threads: they share one CPU; start more
workers, ``--max-workers``, to spread them).
"""

import argparse
import itertools
import json

from remus import IOType, JobRequirements, JobSubmission, Status
from remus.worker import Worker

# what this worker serves: must agree with mandelbrot.rw
REQUIREMENTS = JobRequirements(IOType("Region", "Image"), worker_name="Mandelbrot")
DEFAULTS = {"width": 160, "height": 100, "iterations": 100, "region": [-2.2, -1.2, 1.0, 1.2]}


def band(spec: dict, first: int, end: int) -> bytes:
    """Rows ``first`` to ``end - 1`` of the image: one byte per pixel, 255 inside the set."""
    width, height, limit = spec["width"], spec["height"], spec["iterations"]
    x0, y0, x1, y1 = spec["region"]
    out = bytearray()
    for row in range(first, end):
        ci = y1 - (y1 - y0) * (row + 0.5) / height
        for col in range(width):
            cr = x0 + (x1 - x0) * (col + 0.5) / width
            zr = zi = 0.0
            n = 0
            while n < limit and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + cr, 2 * zr * zi + ci
                n += 1
            out.append(255 if n == limit else 255 * n // limit)
    return bytes(out)


def bands_of(height: int, count: int) -> list[tuple[int, int]]:
    count = max(1, min(count, height))
    edges = [height * i // count for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def master(job, spec: dict, count: int) -> bytes:
    """Split, hand out, compute a share, collect, combine."""
    bands = bands_of(spec["height"], count)
    rows_of = {}  # assistant id -> its band
    for rows in bands[1:]:
        data = json.dumps({**spec, "rows": list(rows)})
        assistant = job.submit_assistant(JobSubmission.of(REQUIREMENTS, data))
        rows_of[assistant.id] = rows
    pixels = {bands[0]: band(spec, *bands[0])}
    job.send_progress(100 // len(bands), f"band 1 of {len(bands)} done here")

    client = job.client  # this thread's client of the broker
    for status in client.client.job_statuses(list(rows_of)):
        if status.status is Status.QUEUED:  # no slot for it yet: do it here instead
            client.client.terminate(status.job_id)
            rows = rows_of.pop(status.job_id)
            pixels[rows] = band(spec, *rows)
    waiting = [a for a in job.assistants if a.id in rows_of]
    for result in client.as_completed(waiting):
        pixels[rows_of[result.job_id]] = result.data
        job.send_progress(100 * len(pixels) // len(bands), f"{len(pixels)} bands")
    header = f"P5\n{spec['width']} {spec['height']}\n255\n".encode()
    return header + b"".join(pixels[rows] for rows in bands)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("endpoint", help="the broker's worker endpoint, e.g. tcp://127.0.0.1:50510")
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="jobs this worker runs at once (default: the worker file's Slots, else 1)",
    )
    parser.add_argument("--bands", type=int, default=4, help="bands per image (one per job)")
    args = parser.parse_args()

    with Worker(REQUIREMENTS, endpoint=args.endpoint, slots=args.slots) as w:

        def handle(job):
            spec = {**DEFAULTS, **json.loads(job["data"] or b"{}")}
            if "rows" in spec:  # an assistant
                return band(spec, *spec["rows"])
            return master(job, spec, args.bands)

        w.run(handle, idle_timeout=10)  # then exit; the broker starts another when needed


if __name__ == "__main__":
    main()
