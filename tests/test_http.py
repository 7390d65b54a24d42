"""``remus http``: the gateway against a real broker, driven over TCP by aiohttp's own client.

Each test runs a broker in this process (the usual fixtures), workers on threads, and the
gateway app on 127.0.0.1 port 0 in the test's event loop (``asyncio.run``, no plugin), under a
deadline of its own. One test runs ``remus http`` and ``remus server`` as processes and calls
the gateway with urllib, as a curl script would.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import io
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import wait_for
from helpers_async import arun, until
from helpers_e2e import REMUS_SCRIPT, free_tcp_endpoint, restart_cli_server, start_cli_server
from helpers_security import KeyRing, SecureWorkers, held_until

from remus import IOType, JobRequirements, Status
from remus.aio import AsyncClient
from remus.client import Client
from remus.http import GatewayConfig, Serving, make_app
from remus.http.auth import Tokens, load_tokens
from remus.http.gateway import GATEWAY, Gateway
from remus.http.throttle import Throttle
from remus.server import Server, ServerConfig

pytestmark = pytest.mark.timeout(60)

UPPER = IOType("Text", "Upper")
ECHO = IOType("Bytes", "Echo")
FILES = IOType("Files", "Back")
MIB = 1024**2


# ------------------------------------------------------------------ workers


class Shouter:
    """Upper-cases ``data``. ``bad...`` fails; ``hold...`` says 40% then holds the job until
    released (or terminated); ``steps`` reports three updates; an ``extra`` content is put in
    front."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.worker: Any = None

    def __call__(self, job: Any) -> bytes:
        data = bytes(job.get("data", b""))
        if data.startswith(b"bad"):
            raise ValueError("nothing to shout")
        if data.startswith(b"hold"):
            job.send_progress(40, "meshing")
            held_until(self.release, self.worker, job, self.started)
        if data == b"steps":
            for value, word in ((25, "a"), (50, "b"), (75, "c")):
                job.send_progress(value, word)
        return bytes(job.get("extra", b"")) + data.upper()


def shouter(make_worker: Any, server: Server) -> Shouter:
    handler = Shouter()
    handler.worker = make_worker(JobRequirements(UPPER), server.ports.worker, run=handler)
    return handler


def echo(job: Any) -> bytes:
    return job["data"]


def files_back(job: Any) -> list[str]:
    """Every input file back as the result, with the arguments in a file of its own."""
    out = list(job.paths)
    if job.args:
        path = os.path.join(job.workdir, "args.txt")
        Path(path).write_text(" ".join(job.args))
        out.append(path)
    return out


# ------------------------------------------------------------------ the gateway under test


@dataclass
class Gate:
    url: str
    http: aiohttp.ClientSession
    app: web.Application
    gw: Gateway

    def pending(self, io: IOType = UPPER) -> int:
        return self.gw.throttle.pending.get(str(io), 0)


@asynccontextmanager
async def gateway(endpoint: str, **options: Any) -> AsyncIterator[Gate]:
    """The gateway app on a free port in front of ``endpoint``, and a client session to it."""
    options.setdefault("broker_timeout", 5.0)
    app = make_app(GatewayConfig(broker=endpoint, **options))
    async with (
        Serving(app, "127.0.0.1", 0) as serving,
        aiohttp.ClientSession(base_url=serving.url) as http,
    ):
        yield Gate(serving.url, http, app, app[GATEWAY])


async def call(
    gate: Gate, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    async with gate.http.request(method, path, **kwargs) as r:
        return r.status, dict(r.headers), await r.read()


async def problem(gate: Gate, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """A refusal: its status and JSON body (which must have error and message)."""
    status, headers, body = await call(gate, method, path, **kwargs)
    assert headers["Content-Type"].startswith("application/json"), (status, body)
    doc = json.loads(body)
    assert isinstance(doc["error"], str) and isinstance(doc["message"], str), doc
    return status, doc


async def sse(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, str]]:
    """The events of a text/event-stream, each as {field: value}."""
    event: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in event:  # (as an EventSource: "retry:" alone is no event)
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        event[name] = value[1:] if value.startswith(" ") else value


async def all_events(gate: Gate, path: str, **kwargs: Any) -> list[dict[str, str]]:
    async with gate.http.get(path, **kwargs) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"] == "text/event-stream"
        return [e async for e in sse(r)]


# ------------------------------------------------------------------ POST /run


def test_run_answers_the_result_the_failure_and_the_timeout(
    make_worker: Any, server: Server
) -> None:
    held = shouter(make_worker, server)

    async def main() -> None:
        async with gateway(server.ports.client) as g:
            status, headers, body = await call(g, "POST", "/run/Text/Upper", data=b"hello")
            assert (status, body) == (200, b"HELLO")
            assert headers["X-Remus-Status"] == "FINISHED"
            assert headers["Content-Type"] == "application/octet-stream"
            done = await call(g, "GET", f"/jobs/{headers['X-Remus-Job']}")
            assert json.loads(done[2])["status"] == "FINISHED"

            status, doc = await problem(g, "POST", "/run/Text/Upper", data=b"bad input")
            assert status == 422
            assert doc["status"] == "FAILED" and doc["error"] == "job-failed"
            assert "nothing to shout" in doc["reason"] and "ValueError" in doc["traceback"]

            began = time.monotonic()
            status, headers, body = await call(
                g, "POST", "/run/Text/Upper?timeout=0.3", data=b"hold me"
            )
            assert status == 504, body
            assert time.monotonic() - began < 3
            doc = json.loads(body)
            job = headers["X-Remus-Job"]
            assert doc["error"] == "timeout" and doc["job"] == job
            assert headers["X-Remus-Status"] in ("QUEUED", "IN_PROGRESS")
            # the job keeps running: its result comes to whoever asks later
            assert (await call(g, "GET", f"/jobs/{job}/result"))[0] == 409
            held.release.set()

            async def finished() -> bool:
                return (await call(g, "GET", f"/jobs/{job}/result"))[0] == 200

            await until(finished)
            assert (await call(g, "GET", f"/jobs/{job}/result"))[2] == b"HOLD ME"

    arun(main)


def test_named_contents_and_files_as_multipart(make_worker: Any, server: Server) -> None:
    shouter(make_worker, server)
    make_worker(JobRequirements(FILES), server.ports.worker, run=files_back)

    async def main() -> None:
        async with gateway(server.ports.client) as g:
            status, _, body = await call(g, "POST", "/run/Text/Upper", data=_form())
            assert (status, body) == (200, b"big MESH")
            status, _, body = await call(g, "POST", "/jobs/Text/Upper", data=_form())
            assert status == 202
            job = json.loads(body)["id"]
            await until(lambda: _status_is(g, job, "FINISHED"))
            assert (await call(g, "GET", f"/jobs/{job}/result"))[2] == b"big MESH"

            # one file: its bytes, named
            one = form(("input", b"line 1\n", "part.stl"))
            status, headers, body = await call(g, "POST", "/run/Files/Back", data=one)
            assert (status, body) == (200, b"line 1\n")
            assert 'filename="part.stl"' in headers["Content-Disposition"]

            # several files and arguments: multipart/mixed, in order
            many = form(
                ("a", b"first", "a.txt"),
                ("args", b"--fine"),
                ("b", b"second", "dir/b.txt"),
                ("args", b"-v"),
            )
            status, headers, body = await call(g, "POST", "/run/Files/Back", data=many)
            assert status == 200, body
            assert headers["Content-Type"].startswith("multipart/mixed")
            parts = _mixed(headers["Content-Type"], body)
            assert parts == [("a.txt", b"first"), ("b.txt", b"second"), ("args.txt", b"--fine -v")]

    arun(main)


async def _status_is(g: Gate, job: str, status: str) -> bool:
    _, _, body = await call(g, "GET", f"/jobs/{job}")
    return bool(json.loads(body)["status"] == status)


def form(*parts: tuple[str | None, Any] | tuple[str | None, Any, str]) -> Any:
    """A multipart/form-data body: (name, bytes) parts, or (name, bytes, filename) files."""
    writer = aiohttp.MultipartWriter("form-data")
    for name, value, *filename in parts:
        part = writer.append(value, {"Content-Type": "application/octet-stream"})
        options = {"name": name} if name is not None else {}
        if filename:
            options["filename"] = filename[0]
        part.set_content_disposition("form-data", quote_fields=False, **options)  # as curl
    return writer


def raw_form(part: bytes) -> dict[str, Any]:
    """The arguments of a request with a hand-made multipart/form-data body of one part."""
    body = b"--zz\r\n" + part + b"\r\n\r\nx\r\n--zz--\r\n"
    return {"data": body, "headers": {"Content-Type": "multipart/form-data; boundary=zz"}}


def _form() -> Any:
    return form(("data", b"mesh"), ("extra", b"big "))


def _mixed(content_type: str, body: bytes) -> list[tuple[str | None, bytes]]:
    """The parts of a multipart/mixed body: (file name, bytes)."""
    message = email.message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body, policy=email.policy.HTTP
    )
    return [(part.get_filename(), part.get_payload(decode=True)) for part in message.iter_parts()]


# ------------------------------------------------------------------ /jobs and its routes


def test_jobs_queue_follow_and_collect(make_worker: Any, server: Server) -> None:
    held = shouter(make_worker, server)

    async def main() -> None:
        async with gateway(server.ports.client) as g:
            status, headers, body = await call(g, "POST", "/jobs/Text/Upper", data=b"hold on")
            assert status == 202
            doc = json.loads(body)
            job = doc["id"]
            assert headers["Location"] == f"/jobs/{job}" == doc["location"]
            assert headers["X-Remus-Job"] == job

            await until(held.started.is_set)

            async def progressed() -> dict[str, Any] | None:
                # (IN_PROGRESS from the hand-over on; its progress once the broker heard it)
                _, _, body = await call(g, "GET", headers["Location"])
                st: dict[str, Any] = json.loads(body)
                return st if st["progress"] is not None else None

            st = await until(progressed, what="the job's first progress at the broker")
            assert st["status"] == "IN_PROGRESS"
            assert st["progress"] == {"seq": 1, "value": 40, "message": "meshing"}

            status, doc = await problem(g, "GET", f"/jobs/{job}/result")
            assert (status, doc["error"], doc["status"]) == (409, "not-finished", "IN_PROGRESS")

            held.release.set()
            await until(lambda: _status_is(g, job, "FINISHED"))
            status, headers, body = await call(g, "GET", f"/jobs/{job}/result")
            assert (status, body, headers["X-Remus-Job"]) == (200, b"HOLD ON", job)

            # a failed job's result is its failure
            _, _, body = await call(g, "POST", "/jobs/Text/Upper", data=b"bad")
            bad = json.loads(body)["id"]
            await until(lambda: _status_is(g, bad, "FAILED"))
            status, doc = await problem(g, "GET", f"/jobs/{bad}/result")
            assert (status, doc["status"], doc["reason"]) == (
                422,
                "FAILED",
                "ValueError: nothing to shout",
            )

            # an unknown id, on every route that takes one
            for method, path in [
                ("GET", "/jobs/nope"),
                ("GET", "/jobs/nope/result"),
                ("GET", "/jobs/nope/progress"),
                ("DELETE", "/jobs/nope"),
            ]:
                status, doc = await problem(g, method, path)
                assert (status, doc["error"]) == (404, "unknown-job"), (method, path, doc)

    arun(main)


def test_delete_terminates_a_running_job(make_worker: Any, server: Server) -> None:
    held = shouter(make_worker, server)

    async def main() -> None:
        async with gateway(server.ports.client) as g:
            _, _, body = await call(g, "POST", "/jobs/Text/Upper", data=b"hold")
            job = json.loads(body)["id"]
            await until(held.started.is_set)
            status, headers, body = await call(g, "DELETE", f"/jobs/{job}")
            assert status == 200, body
            assert json.loads(body)["status"] == "TERMINATED" == headers["X-Remus-Status"]
            status, doc = await problem(g, "GET", f"/jobs/{job}/result")
            assert (status, doc["status"]) == (422, "TERMINATED")
            # terminating a finished job changes nothing
            status, headers, _ = await call(g, "POST", "/run/Text/Upper", data=b"x")
            done = headers["X-Remus-Job"]
            _, _, body = await call(g, "DELETE", f"/jobs/{done}")
            assert json.loads(body)["status"] == "FINISHED"

    arun(main)


def test_a_caller_that_hangs_up_terminates_its_run(make_worker: Any, server: Server) -> None:
    held = shouter(make_worker, server)

    async def main() -> None:
        async with gateway(server.ports.client) as g, AsyncClient(server.ports.client) as c:
            waiting = asyncio.ensure_future(call(g, "POST", "/run/Text/Upper", data=b"hold"))
            await until(held.started.is_set)
            assert g.pending() == 1
            waiting.cancel()  # closes the connection: the handler is cancelled
            await asyncio.wait([waiting])
            await until(lambda: g.pending() == 0 and g.gw.abandoned == 1)

            async def terminated() -> bool:
                return bool(await c.jobs(status=Status.TERMINATED))

            await until(terminated)

    arun(main)


# ------------------------------------------------------------------ progress as server-sent events


def test_progress_events_resume_from_last_event_id(make_worker: Any, server: Server) -> None:
    held = shouter(make_worker, server)

    async def main() -> None:
        async with gateway(server.ports.client, keepalive=0.05) as g:
            _, headers, _ = await call(g, "POST", "/run/Text/Upper", data=b"steps")
            job = headers["X-Remus-Job"]
            path = f"/jobs/{job}/progress"

            events = await all_events(g, path)
            assert [(e["id"], e["event"]) for e in events] == [
                ("1", "progress"),
                ("2", "progress"),
                ("3", "progress"),
                ("end", "end"),
            ]
            assert json.loads(events[1]["data"]) == {"seq": 2, "value": 50, "message": "b"}
            assert json.loads(events[3]["data"]) == {"id": job, "status": "FINISHED", "reason": ""}

            # resumed: only the events after the last one received
            resumed = await all_events(g, path, headers={"Last-Event-ID": "2"})
            assert [e["id"] for e in resumed] == ["3", "end"]
            assert [e["id"] for e in await all_events(g, path + "?since=3")] == ["end"]
            # after the end: 204, which tells an EventSource to stop reconnecting
            status, _, _ = await call(g, "GET", path, headers={"Last-Event-ID": "end"})
            assert status == 204
            for bad in ("x", "-1", "2.5"):
                status, doc = await problem(g, "GET", path, headers={"Last-Event-ID": bad})
                assert (status, doc["error"]) == (400, "bad-last-event-id")

            # live: each update as it happens, keep-alive comments between them
            _, _, body = await call(g, "POST", "/jobs/Text/Upper", data=b"hold")
            live = json.loads(body)["id"]
            async with g.http.get(f"/jobs/{live}/progress") as r:
                events = sse(r)
                first = await anext(events)
                assert (first["id"], json.loads(first["data"])["message"]) == ("1", "meshing")
                held.release.set()
                last = await anext(events)
                assert last["event"] == "end" and json.loads(last["data"])["status"] == "FINISHED"

    arun(main)


# ------------------------------------------------------------------ throttling


def test_a_flood_past_max_pending_is_refused_with_retry_after(
    make_worker: Any, server: Server
) -> None:
    held = shouter(make_worker, server)

    async def main() -> None:
        async with gateway(server.ports.client, max_pending=2) as g:
            waiting = [
                asyncio.ensure_future(call(g, "POST", "/run/Text/Upper", data=b"hold %d" % i))
                for i in range(2)
            ]
            await until(lambda: g.pending() == 2 and held.started.is_set())
            flood = await asyncio.gather(
                *(problem(g, "POST", "/run/Text/Upper", data=b"more") for _ in range(20)),
                call(g, "POST", "/jobs/Text/Upper", data=b"more"),
            )
            for status, doc in flood[:-1]:
                assert (status, doc["error"]) == (503, "busy"), doc
                assert doc["retry_after"] >= 1 and "--max-pending" in doc["message"]
            assert flood[-1][0] == 503
            assert int(flood[-1][1]["Retry-After"]) >= 1
            assert g.gw.throttle.refused[str(UPPER)] == 21
            # another io type has places of its own
            status, doc = await problem(g, "POST", "/run/Other/Type", data=b"x")
            assert (status, doc["error"]) == (404, "no-worker")

            held.release.set()
            done = await asyncio.gather(*waiting)
            assert sorted(body for _, _, body in done) == [b"HOLD 0", b"HOLD 1"]
            assert g.pending() == 0
            status, _, body = await call(g, "POST", "/run/Text/Upper", data=b"again")
            assert (status, body) == (200, b"AGAIN")

    arun(main)


def test_a_busy_broker_is_a_503_with_retry_after(make_server: Any) -> None:
    busy = make_server(config=ServerConfig(stop_timeout=1.0, max_queued_jobs=1))

    async def main() -> None:
        async with gateway(busy.ports.client) as g:
            path = "/jobs/Nobody/Yet?wait_for_worker=1"
            assert (await call(g, "POST", path, data=b"1"))[0] == 202
            status, headers, body = await call(g, "POST", path, data=b"2")
            assert status == 503, body
            doc = json.loads(body)
            assert doc["error"] == "busy" and "broker is busy" in doc["message"]
            assert int(headers["Retry-After"]) >= 1

    arun(main)


def test_retry_after_follows_the_observed_service_rate() -> None:
    t = Throttle(3, window=10.0, floor=1, ceiling=60)
    assert t.admit("A", 100.0) and t.admit("A", 100.0) and t.admit("A", 100.0)
    assert not t.admit("A", 100.0)
    # nothing ended yet: slower than one per second so far, so at least 3 s for 3 ahead
    assert t.retry_after("A", 100.5) == 3
    for i in range(20):  # 20 jobs in 10 s: 2 per second
        t.ended("A", 100.0 + i / 2)
    assert t.per_second("A", 110.0) == pytest.approx(2.0, rel=0.15)
    assert t.retry_after("A", 110.0) == 2  # 3 waiting / 2 per second
    for _ in range(3):
        t.release("A", 110.0, ended=False)
    assert t.pending == {}
    # nothing ended within the window: under one per window (10 s) each, so 3 x 10 s
    assert t.admit("A", 200.0) and t.admit("A", 200.0) and t.admit("A", 200.0)
    assert t.retry_after("A", 200.0) == 30
    assert Throttle(1, window=100.0, ceiling=60).retry_after("C", 0.0) == 1
    slow = Throttle(1, window=100.0, ceiling=60)
    slow.admit("C", 0.0)
    assert slow.retry_after("C", 99.0) == 60  # the ceiling
    # an io type nobody serves leaves nothing behind
    t.admit("Nobody", 1.0)
    t.release("Nobody", 1.0, ended=False)
    assert "Nobody" not in t._rates
    assert Throttle(1, ceiling=5).retry_after("B", 0.0) == 1  # nobody waiting: the floor


# ------------------------------------------------------------------ bodies


def test_a_10_mib_body_and_file_round_trip(make_worker: Any, server: Server) -> None:
    make_worker(JobRequirements(ECHO), server.ports.worker, run=echo)
    make_worker(JobRequirements(FILES), server.ports.worker, run=files_back)
    payload = os.urandom(10 * MIB)

    async def main() -> None:
        async with gateway(server.ports.client) as g:
            status, _, body = await call(
                g, "POST", "/run/Bytes/Echo?timeout=30", data=io.BytesIO(payload)
            )
            assert status == 200 and len(body) == len(payload) and body == payload
            # as a file: to disk at the gateway, through the broker's spool both ways
            big = form(("mesh", io.BytesIO(payload), "big.bin"))
            status, headers, body = await call(g, "POST", "/run/Files/Back?timeout=30", data=big)
            assert status == 200, body[:300]
            assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
            assert 'filename="big.bin"' in headers["Content-Disposition"]

    arun(main, timeout=50)


def test_bad_bodies_and_parameters_are_clear_4xx(
    make_worker: Any, server: Server, tmp_path: Path
) -> None:
    shouter(make_worker, server)
    uploads = tmp_path / "uploads"
    uploads.mkdir()

    async def main() -> None:
        async with gateway(server.ports.client, max_body=1000, upload_dir=str(uploads)) as g:
            cases: list[tuple[str, dict[str, Any], int, str]] = [
                ("/run/Text/Upper", {"data": b"x" * 1001}, 413, "too-large"),
                ("/run/Text/Upper", {"data": form(("data", b"x" * 2000))}, 413, "too-large"),
                ("/run/Text/Upper", {"data": form(("f", b"x" * 2000, "f.bin"))}, 413, "too-large"),
                ("/run/Text/Upper", raw_form(b"Content-Disposition: form-data"), 400, "bad-body"),
                ("/run/Text/Upper", {"data": form(("f", b"x", "f"), ("k", b"v"))}, 400, "bad-body"),
                ("/run/Text/Upper", {"data": form(("k", b"1"), ("k", b"2"))}, 400, "bad-body"),
                ("/run/Text/Upper", raw_form(b"no headers, no end"), 400, "bad-body"),
                ("/run/Text/Upper?timeout=0", {"data": b"x"}, 400, "bad-parameter"),
                ("/run/Text/Upper?timeout=abc", {"data": b"x"}, 400, "bad-parameter"),
                ("/run/Text/Upper?priority=high", {"data": b"x"}, 400, "bad-parameter"),
                ("/run/Text/Upper?tag={", {"data": b"x"}, 400, "bad-parameter"),
                ("/run/Text/Upper?colour=red", {"data": b"x"}, 400, "bad-parameter"),
                ("/jobs/Text/Upper?timeout=1", {"data": b"x"}, 400, "bad-parameter"),
                ("/run/No/Such", {"data": b"x"}, 404, "no-worker"),
                ("/jobs/No/Such", {"data": b"x"}, 404, "no-worker"),
                ("/run/Text", {"data": b"x"}, 404, "not-found"),
            ]
            for path, kwargs, want, code in cases:
                status, doc = await problem(g, "POST", path, **kwargs)
                assert (status, doc["error"]) == (want, code), (path, doc)
            status, doc = await problem(g, "POST", "/run/No/Such", data=b"x")
            assert "No->Such" in doc["message"] and doc["serves"] == ["Text->Upper"]
            status, doc = await problem(g, "GET", "/run/Text/Upper")
            assert (status, doc["error"]) == (405, "method-not-allowed")
            assert list(uploads.iterdir()) == []  # no refused file left behind
            assert g.pending() == 0

    arun(main)


# ------------------------------------------------------------------ tokens, health, description


def test_tokens_guard_every_route_but_healthz(
    make_worker: Any, server: Server, tmp_path: Path
) -> None:
    shouter(make_worker, server)
    tokens = tmp_path / "tokens"
    tokens.write_text("# who may call\ns3cret\n\nother-token\n")

    async def main() -> None:
        async with gateway(server.ports.client, tokens=load_tokens(str(tokens))) as g:
            assert (await call(g, "GET", "/healthz"))[0] == 200
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                for method, path in [
                    ("POST", "/run/Text/Upper"),
                    ("GET", "/openapi.json"),
                    ("GET", "/jobs/x"),
                    ("GET", "/api/jobs/x"),
                ]:
                    status, r_headers, body = await call(
                        g, method, path, data=b"hi", headers=headers
                    )
                    assert status == 401, (path, headers, body)
                    assert json.loads(body)["error"] == "unauthorized"
                    assert r_headers["WWW-Authenticate"].startswith("Bearer")
            ok = {"Authorization": "Bearer s3cret"}
            status, _, body = await call(g, "POST", "/run/Text/Upper", data=b"hi", headers=ok)
            assert (status, body) == (200, b"HI")
            other = {"Authorization": "bearer other-token"}
            assert (await call(g, "GET", "/openapi.json", headers=other))[0] == 200

    arun(main)
    tok = Tokens(["a"])
    assert tok.allows("Bearer a") and not tok.allows("Bearer ab") and not tok.allows(None)
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no token"):
        load_tokens(str(tmp_path / "empty"))


def test_openapi_describes_every_route_and_healthz_says_when_the_broker_is_gone(
    server: Server,
) -> None:
    async def main() -> None:
        async with gateway(server.ports.client) as g:
            status, headers, body = await call(g, "GET", "/openapi.json")
            assert status == 200 and headers["Content-Type"].startswith("application/json")
            doc = json.loads(body)
            assert doc["openapi"].startswith("3.1")
            served = {
                (r.method.lower(), r.resource.canonical)
                for r in g.app.router.routes()
                if r.method not in ("HEAD", "*") and r.resource is not None
            }
            described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
            assert served == described
            status, _, body = await call(g, "GET", "/healthz")
            assert status == 200 and json.loads(body)["status"] == "ok"
            status, headers, body = await call(g, "GET", "/")
            assert status == 200 and headers["Content-Type"].startswith("text/html")

        async with gateway(free_tcp_endpoint(), broker_timeout=0.3) as gone:
            status, _, body = await call(gone, "GET", "/healthz")
            assert status == 503 and json.loads(body)["status"] == "unavailable"
            status, doc = await problem(gone, "POST", "/run/Text/Upper", data=b"x")
            assert (status, doc["error"]) == (503, "broker-unreachable")

    arun(main)


def test_a_secure_broker_is_reached_with_the_gateways_own_key(
    make_server: Any, tmp_path: Path
) -> None:
    keys = KeyRing(tmp_path / "keys")
    worker_key, gateway_key, eve_key = keys.worker("w"), keys.client("gw"), keys.stranger("eve")
    secure = make_server(**keys.server_options())
    workers = SecureWorkers(keys)
    handler = Shouter()
    try:
        handler.worker = workers(
            JobRequirements(UPPER), secure.ports.worker, worker_key, run=handler
        )

        async def main() -> None:
            own = {"server_key": keys.broker_public, "secret_key": gateway_key}
            async with gateway(secure.ports.client, **own) as g:
                status, _, body = await call(g, "POST", "/run/Text/Upper", data=b"safe")
                assert (status, body) == (200, b"SAFE")
            refused = {"server_key": keys.broker_public, "secret_key": eve_key}
            async with gateway(secure.ports.client, broker_timeout=0.5, **refused) as g:
                status, _, body = await call(g, "GET", "/healthz")
                assert status == 503 and b"refused" in body, body
            async with gateway(secure.ports.client, broker_timeout=0.5, secret_key=False) as g:
                assert (await call(g, "GET", "/healthz"))[0] == 503

        arun(main)
    finally:
        workers.close()


# ------------------------------------------------------------------ the command


def test_remus_http_serves_until_sigterm(
    make_process: Any, make_worker: Any, tmp_path: Path
) -> None:
    _, ports = start_cli_server(make_process)
    handler = Shouter()
    handler.worker = make_worker(JobRequirements(UPPER), ports.worker, run=handler)
    tokens = tmp_path / "tokens"
    tokens.write_text("t0ken\n")
    proc = make_process(
        [
            REMUS_SCRIPT,
            "http",
            "--broker",
            ports.client,
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            str(tokens),
            "--max-pending",
            "5",
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
    )
    line = proc.stdout.readline()
    assert line.startswith("remus http ready: "), line
    fields = dict(part.split("=", 1) for part in line.split(": ", 1)[1].split())
    assert fields["broker"] == ports.client and fields["auth"] == "tokens"
    url = fields["url"]
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")

    def post(path: str, data: bytes, token: str | None) -> tuple[int, bytes]:
        request = urllib.request.Request(url + path, data=data, method="POST")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read()

    assert post("/run/Text/Upper", b"over http", "t0ken") == (200, b"OVER HTTP")
    status, body = post("/run/Text/Upper", b"x", None)
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"

    # a request still waiting when the gateway stops hears so at once, with its job's id
    waiting: dict[str, Any] = {}

    def wait_held() -> None:
        waiting["answer"] = post("/run/Text/Upper", b"hold", "t0ken")

    thread = threading.Thread(target=wait_held, name="test-http-caller", daemon=True)
    thread.start()
    assert handler.started.wait(10)
    proc.send_signal(signal.SIGTERM)
    thread.join(10)
    status, body = waiting["answer"]
    assert status == 503 and json.loads(body)["error"] == "gateway-stopping", body
    assert proc.wait(15) == 0
    job = json.loads(body)["job"]
    with Client(ports.client, timeout=5) as c:  # the job goes on
        assert c.job_status(job).status is Status.IN_PROGRESS
        handler.release.set()
        wait_for(lambda: c.job_status(job).done)
        assert c.retrieve_result(job).data == b"HOLD"


def test_remus_http_help_and_usage_errors(tmp_path: Path) -> None:
    from helpers_cli import cli

    ran = cli("http", "--help")
    assert ran.code == 0
    for option in (
        "--broker",
        "--listen",
        "--max-pending",
        "--timeout",
        "--tokens",
        "--key",
        "--server-key",
        "--max-body",
        "--broker-timeout",
    ):
        assert option in ran.out
    assert cli("http", "--listen", "nowhere").code == 2
    assert cli("http", "--max-body", "lots").code == 2
    ran = cli("http", "--tokens", str(tmp_path / "missing"), "--listen", "127.0.0.1:0")
    assert ran.code == 2 and "cannot read the tokens file" in ran.err


# ------------------------------------------------------------ many at once, and a broker that goes


def test_many_concurrent_runs_each_get_their_own_result(make_worker: Any, server: Server) -> None:
    make_worker(JobRequirements(ECHO), server.ports.worker, run=echo, prefetch=16)

    async def main() -> None:
        async with gateway(server.ports.client) as g:
            bodies = [b"job %d" % i for i in range(300)]
            got = await asyncio.gather(
                *(call(g, "POST", "/run/Bytes/Echo?timeout=20", data=b) for b in bodies)
            )
            assert [(status, body) for status, _, body in got] == [(200, b) for b in bodies]
            assert len({headers["X-Remus-Job"] for _, headers, _ in got}) == len(bodies)
            # submitted and collected in batches, not one request each
            assert g.gw.submitter.calls < len(bodies) / 2, g.gw.submitter.calls
            assert g.gw.collector.requests < len(bodies), g.gw.collector.requests
            assert g.gw.collector.waiting == 0 and g.pending(ECHO) == 0

    arun(main)


def test_a_broker_that_stops_ends_the_waiting_requests_at_once(
    make_worker: Any, make_server: Any
) -> None:
    doomed = make_server()
    held = shouter(make_worker, doomed)

    async def main() -> None:
        async with gateway(doomed.ports.client, broker_timeout=30) as g:
            waiting = asyncio.ensure_future(call(g, "POST", "/run/Text/Upper", data=b"hold"))
            await until(lambda: held.started.is_set() and g.gw.collector.requests > 0)
            await asyncio.to_thread(doomed.stop)
            stopped = time.monotonic()
            status, headers, body = await waiting
            assert time.monotonic() - stopped < 5, "heard from the broker, not a timeout"
            assert status == 503 and json.loads(body)["error"] == "broker-stopped", body
            assert headers["X-Remus-Job"]

    arun(main)


def test_a_waiting_run_rides_out_a_journaled_restart(
    make_process: Any, make_worker: Any, tmp_path: Path
) -> None:
    journal = str(tmp_path / "remus.db")
    proc, ports = start_cli_server(make_process, "--journal", journal)

    async def main() -> None:
        async with gateway(ports.client, broker_timeout=1.0) as g:
            path = "/run/Text/Upper?wait_for_worker=1&timeout=40"
            waiting = asyncio.ensure_future(call(g, "POST", path, data=b"after the restart"))
            await until(lambda: g.gw.collector.waiting == 1)
            _, _, body = await call(g, "GET", "/healthz")  # a round trip behind the collect
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 15) == 0
            restart_cli_server(make_process, ports, "--journal", journal)
            handler = Shouter()
            handler.worker = await asyncio.to_thread(
                make_worker, JobRequirements(UPPER), ports.worker, run=handler
            )
            status, _, body = await waiting  # longer than the gateway's 1 s broker timeout
            assert (status, body) == (200, b"AFTER THE RESTART")
            assert g.gw.collector.watches == 2  # registered again with the new broker

    arun(main, timeout=50)
