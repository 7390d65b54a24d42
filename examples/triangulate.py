#!/usr/bin/env python3
"""A remus worker: Delaunay triangulation of 2D points (Points -> Mesh2D).

The broker starts it from triangulate.rw as ``triangulate.py <worker endpoint>``; start it by
hand the same way to serve a broker on another host. A job's data is text, one ``x y`` pair per
line (or a JSON list of pairs); its result is the mesh in OFF format (vertices, then triangles).
"""

import json
import sys

from remus import IOType, JobRequirements
from remus.worker import Worker

# what this worker serves: must agree with triangulate.rw
REQUIREMENTS = JobRequirements(IOType("Points", "Mesh2D"), worker_name="Triangulator")


def parse_points(data: bytes) -> list[tuple[float, float]]:
    text = data.decode()
    if text.lstrip().startswith("["):
        return [(float(x), float(y)) for x, y in json.loads(text)]
    points = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if len(fields) == 2:
            points.append((float(fields[0]), float(fields[1])))
        elif fields:
            raise ValueError(f"line {number}: expected 'x y', got {line!r}")
    return points


def circumcircle(p, q, r):
    """Centre and squared radius of the circle through three points (infinite if collinear)."""
    (ax, ay), (bx, by), (cx, cy) = p, q, r
    d = 2 * (ax * (by - cy) + bx * (cy - ay) + cx * (ay - by))
    if d == 0:
        return 0.0, 0.0, float("inf")
    a2, b2, c2 = ax * ax + ay * ay, bx * bx + by * by, cx * cx + cy * cy
    ux = (a2 * (by - cy) + b2 * (cy - ay) + c2 * (ay - by)) / d
    uy = (a2 * (cx - bx) + b2 * (ax - cx) + c2 * (bx - ax)) / d
    return ux, uy, (ax - ux) ** 2 + (ay - uy) ** 2


def triangulate(points, report=lambda done, total: None):
    """Bowyer-Watson: insert points one by one into a mesh that starts as one huge triangle,
    each time replacing the triangles whose circumcircle holds the new point by a fan around it.
    Returns the distinct points and counter-clockwise triangles as index triples."""
    pts = list(dict.fromkeys(points))
    n = len(pts)
    if n < 3:
        raise ValueError(f"need at least 3 distinct points, got {n}")
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-9) * 100
    pts += [(mx - span, my - span), (mx + span, my - span), (mx, my + span)]  # the super triangle
    tris = {(n, n + 1, n + 2): circumcircle(pts[n], pts[n + 1], pts[n + 2])}
    for i in range(n):
        x, y = pts[i]
        bad = [t for t, (cx, cy, r2) in tris.items() if (x - cx) ** 2 + (y - cy) ** 2 < r2]
        edges = {e for a, b, c in bad for e in ((a, b), (b, c), (c, a))}
        for t in bad:
            del tris[t]
        for a, b in edges:
            if (b, a) not in edges:  # on the hole's boundary: make a triangle with the new point
                tris[(a, b, i)] = circumcircle(pts[a], pts[b], pts[i])
        report(i + 1, n)
    triangles = [t for t, (_, _, r2) in tris.items() if max(t) < n and r2 != float("inf")]
    if not triangles:
        raise ValueError("all the points are on one line: there is no triangle to make")
    return pts[:n], triangles


def to_off(points, triangles) -> bytes:
    lines = ["OFF", f"{len(points)} {len(triangles)} 0"]
    lines += [f"{x} {y} 0" for x, y in points]  # str(float) round-trips exactly
    lines += [f"3 {a} {b} {c}" for a, b, c in triangles]
    return ("\n".join(lines) + "\n").encode()


def main() -> None:
    with Worker(REQUIREMENTS, endpoint=sys.argv[1]) as w:

        def handle(job):
            points = parse_points(job["data"])
            step = max(1, len(points) // 20)  # about 20 progress updates per job

            def report(done, total):
                if done % step == 0 or done == total:
                    w.send_progress(job, 100 * done // total, f"inserted {done}/{total} points")
                    if w.job_should_be_terminated(job):
                        raise RuntimeError("terminated at the client's request")

            return to_off(*triangulate(points, report))

        w.run(handle, idle_timeout=10)  # then exit; the broker starts another when needed


if __name__ == "__main__":
    main()
