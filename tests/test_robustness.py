"""The broker under abuse: garbage on both sockets, oversized messages, a worker killed mid-job,
the broker itself suspended, and peers that keep talking while it stops."""

from __future__ import annotations

import copy
import gc
import math
import os
import signal
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq
from conftest import start_server_process, wait_for
from helpers_e2e import ECHO_WORKER, FLOOD, drain_replies, free_tcp_endpoint, is_stopped

import remus
from remus import IOType, JobRequirements, JobSubmission, Status
from remus import protocol as p
from remus.client import Client
from remus.server import Server, ServerConfig, ServerPorts
from remus.worker import Job as WorkerJob
from remus.worker import Worker

TET = JobRequirements(IOType("Mesh2D", "Mesh3D"), worker_name="TetMesher", tag={"v": 2})
ECHO = JobRequirements(IOType("Text", "Echo"), worker_name="echo")  # tests/workers/echo_worker.py
V = p.VERSION
pk = p.pack
#: garbage messages sent at each socket
GARBAGE = 1000


@contextmanager
def dealers(endpoint: str, n: int) -> Iterator[list[zmq.Socket[Any]]]:
    """``n`` raw DEALER sockets connected to ``endpoint``, closed afterwards."""
    ctx = zmq.Context.instance()
    socks = []
    try:
        for _ in range(n):
            s = ctx.socket(zmq.DEALER)
            s.linger = 0
            s.sndhwm = s.rcvhwm = 0
            s.connect(endpoint)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close(0)


def expected_rid(frames: list[bytes]) -> int:
    """The request id an error reply must carry: the body's int ``rid`` if it can be read."""
    if len(frames) < 3:
        return -1
    try:
        body = p.unpack(frames[2])
    except remus.ProtocolError:
        return -1
    rid = body.get("rid", -1) if isinstance(body, dict) else -1
    return rid if type(rid) is int else -1


def throw_garbage(endpoint: str, kinds: list[tuple[str, list[bytes], str]]) -> None:
    """Send GARBAGE messages spread over ``kinds`` (one DEALER per kind) in one burst, then
    check that every message got exactly one Error reply whose message contains the kind's
    hint and whose rid is the request's own (or -1 when it could not be read)."""
    per_kind = math.ceil(GARBAGE / len(kinds))
    with dealers(endpoint, len(kinds)) as socks:
        for sock, (_, frames, _) in zip(socks, kinds, strict=True):
            for _ in range(per_kind):
                sock.send_multipart(frames)
        got = drain_replies(socks, dict.fromkeys(socks, per_kind), timeout=10)
        # deliberately let a moment pass: nobody may get a second answer to the same message
        extra = drain_replies(socks, dict.fromkeys(socks, 1), timeout=0.1)
    problems = []
    for sock, (name, frames, hint) in zip(socks, kinds, strict=True):
        replies = got[sock]
        if len(replies) != per_kind or extra[sock]:
            problems.append(f"{name}: {len(replies) + len(extra[sock])} replies to {per_kind}")
            continue
        msg = p.decode(replies[0])
        if not isinstance(msg, p.Error):
            problems.append(f"{name}: answered with {type(msg).__name__}, not an error")
            continue
        if hint.lower() not in msg.message.lower():
            problems.append(f"{name}: error {msg.message!r} does not mention {hint!r}")
        if msg.rid != expected_rid(frames):
            problems.append(f"{name}: error rid {msg.rid}, expected {expected_rid(frames)}")
        if any(r != replies[0] for r in replies):
            problems.append(f"{name}: the same message got different answers")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ garbage
#
# Messages that carry bulk frames are not built by hand: they are what a real Client and a real
# Worker send (captured by a bare ROUTER), then broken in one way each. So the garbage stays
# garbage, and nothing else, whatever the body layout of a valid message is.

Frames = list[bytes]


@contextmanager
def fake_broker() -> Iterator[tuple[zmq.Socket[Any], str]]:
    """A bare ROUTER on a free port that records what peers send."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    try:
        router.bind("tcp://127.0.0.1:0")
        yield router, router.last_endpoint.decode()
    finally:
        router.close(0)


def next_message(router: zmq.Socket[Any], command: bytes) -> Frames:
    """The next message with ``command`` (without the identity frame)."""
    deadline = time.monotonic() + 5
    while router.poll(max(0.0, deadline - time.monotonic()) * 1000):
        frames = router.recv_multipart()[1:]
        if len(frames) >= 2 and frames[1] == command:
            return frames
    raise AssertionError(f"no {command!r} message within 5 s")


def real_submit() -> Frames:
    """What a Client sends to submit one job with a 256 KiB content (sent as a bulk frame)."""
    with fake_broker() as (router, endpoint), Client(endpoint, timeout=0.2) as c:
        with pytest.raises(remus.TimeoutError):  # nobody answers: that is the point
            c.submit_job(JobSubmission(TET, {"data": os.urandom(256 * 1024)}))
        frames = next_message(router, b"submit")
    assert len(frames) == 4, "a 256 KiB content should travel as a frame of its own"
    assert isinstance(p.decode(frames), p.SubmitRequest)
    return frames


def real_register_and_report() -> tuple[Frames, Frames]:
    """What a Worker sends to register, and to hand in a 256 KiB result."""
    with fake_broker() as (router, endpoint):
        w = Worker(TET, endpoint, heartbeat_interval=5.0)
        try:
            register = next_message(router, b"register")
            w.return_result(WorkerJob("j-result", TET), os.urandom(256 * 1024))
            report = next_message(router, b"report")
        finally:
            w.close()
    assert isinstance(p.decode(register), p.Register)
    assert len(report) == 4, "a 256 KiB result should travel as a frame of its own"
    assert isinstance(p.decode(report), p.Report)
    return register, report


def mutate(frames: Frames, change: Any) -> Frames:
    """``frames`` with ``change(body)`` applied to a copy of the decoded body."""
    body = copy.deepcopy(p.unpack(frames[2]))
    change(body)
    return [*frames[:2], pk(body), *frames[3:]]


def client_garbage() -> list[tuple[str, Frames, str]]:
    """(name, frames, a word the error message must contain) for the client socket."""
    sub = real_submit()

    def job_field(i: int, value: Any) -> Any:
        return lambda body: body["jobs"][0].__setitem__(i, value)

    def short_entry(body: dict[str, Any]) -> None:
        body["jobs"][0] = body["jobs"][0][:2]

    def key_twice(body: dict[str, Any]) -> None:
        body["jobs"][0][2] = body["jobs"][0][2] * 2

    return [
        ("one empty frame", [b""], "3 frames"),
        ("version only", [V], "3 frames"),
        ("no body", [V, b"status"], "3 frames"),
        ("wrong version", [b"remus/0", b"status", pk({"rid": 1, "ids": []})], "version"),
        ("empty version", [b"", b"io_types", pk({"rid": 2})], "version"),
        ("future version", [b"remus/999", b"io_types", pk({"rid": 3})], "version"),
        ("unknown command", [V, b"frobnicate", pk({"rid": 4})], "unknown command"),
        ("worker command", [V, b"register", pk({"rid": 5})], "workers connect to its worker"),
        ("broker command", [V, b"reply", pk({"rid": 6, "data": 1})], "unknown command"),
        ("body not msgpack", [V, b"status", b"\xc1\xc1\xc1"], "msgpack"),
        ("truncated msgpack", [V, b"status", pk({"rid": 7, "ids": ["abc"]})[:-2]], "msgpack"),
        ("empty body", [V, b"io_types", b""], "msgpack"),
        ("body is a list", [V, b"status", pk([1, 2])], "map"),
        ("body is an int", [V, b"io_types", pk(7)], "map"),
        ("missing rid", [V, b"io_types", pk({})], "missing field 'rid'"),
        ("missing ids", [V, b"status", pk({"rid": 8})], "missing field 'ids'"),
        ("rid is a string", [V, b"status", pk({"rid": "9", "ids": []})], "wrong type"),
        ("rid is a bool", [V, b"io_types", pk({"rid": True})], "wrong type"),
        ("ids not strings", [V, b"status", pk({"rid": 10, "ids": [1, 2]})], "list of strings"),
        ("ids is a string", [V, b"terminate", pk({"rid": 11, "ids": "abc"})], "wrong type"),
        ("bad requirements", [V, b"can_mesh", pk({"rid": 12, "reqs": [1, 2, 3]})], "requirements"),
        ("empty io type", [V, b"requirements", pk({"rid": 13, "io": ["", ""]})], "io type"),
        (
            "since is a string",
            [V, b"progress", pk({"rid": 14, "id": "j", "since": "0"})],
            "wrong type",
        ),
        (
            "wait is a string",
            [V, b"collect", pk({"rid": 15, "watch": "w", "wait": "long"})],
            "wrong type",
        ),
        ("submit: content frame missing", sub[:3], "frames"),
        ("submit: one frame too many", [*sub, b"extra"], "frames"),
        ("submit: huge job id", mutate(sub, job_field(0, "x" * 100_000)), "bad job id"),
        ("submit: empty job id", mutate(sub, job_field(0, "")), "bad job id"),
        ("submit: reqs index out of range", mutate(sub, job_field(1, 5)), "out of range"),
        ("submit: negative reqs index", mutate(sub, job_field(1, -1)), "out of range"),
        ("submit: short job entry", mutate(sub, short_entry), "each job must be"),
        ("submit: content key twice", [*mutate(sub, key_twice), sub[3]], "twice"),
        (
            "submit: bad reqs table",
            mutate(sub, lambda b: b.__setitem__("reqs", [[1]])),
            "requirements",
        ),
        ("submit: opts not a map", mutate(sub, lambda b: b.__setitem__("opts", [1])), "wrong type"),
    ]


def worker_garbage() -> list[tuple[str, Frames, str]]:
    """(name, frames, a word the error message must contain) for the worker socket."""
    reg, rep = real_register_and_report()

    def register(**changes: Any) -> Frames:
        def change(body: dict[str, Any]) -> None:
            for key, value in changes.items():
                if value is ...:
                    del body[key]
                else:
                    body[key] = value

        return mutate(reg, change)

    def report(body: Any, *blobs: bytes) -> Frames:
        return [V, b"report", pk(body), *blobs]

    return [
        ("one empty frame", [b""], "3 frames"),
        ("no body", [V, b"register"], "3 frames"),
        ("wrong version", [b"remus/2", *reg[1:]], "version"),
        ("unknown command", [V, b"explode", pk({})], "unknown command"),
        (
            "client command",
            [V, b"submit", pk({"rid": 1, "reqs": [], "jobs": []})],
            "clients connect to its client",
        ),
        ("broker command", [V, b"jobs", pk({"reqs": [], "jobs": []})], "unknown command"),
        ("body not msgpack", [V, b"register", b"\xc1"], "msgpack"),
        ("body is a list", [V, b"register", pk([1, 2])], "map"),
        ("heartbeat body is a string", [V, b"heartbeat", pk("beat")], "map"),
        ("missing reqs", register(reqs=...), "missing field 'reqs'"),
        ("missing heartbeat", register(heartbeat=...), "missing field 'heartbeat'"),
        ("heartbeat is a string", register(heartbeat="fast"), "wrong type"),
        ("heartbeat zero", register(heartbeat=0), "outside"),
        ("heartbeat a billion", register(heartbeat=1e9), "outside"),
        ("negative credit", register(credit=-1), "credit"),
        ("credit is a string", register(credit="lots"), "wrong type"),
        ("reqs too short", register(reqs=["Mesh2D", "Mesh3D"]), "requirements"),
        ("reqs empty io type", register(reqs=["", "", "", None, b"", "USER"]), "requirements"),
        ("worker name is an int", register(reqs=["a", "b", 7, None, b"", "USER"]), "requirements"),
        ("pid is a string", register(pid="one"), "wrong type"),
        ("host is nil", register(host=None), "wrong type"),
        ("held not strings", register(held=[1, 2]), "list of strings"),
        ("report: result frame missing", rep[:3], "frames"),
        ("report: one frame too many", [*rep, b"orphan"], "frames"),
        ("report: short progress", report({"progress": [["j", 5]]}), "progress entry"),
        ("report: progress over 100", report({"progress": [["j", 101, "m"]]}), "0–100"),
        ("report: progress a string", report({"progress": [["j", "5", "m"]]}), "0–100"),
        ("report: bad failure", report({"failures": [["j", 1, None]]}), "failure"),
        ("report: negative credit", report({"credit": -1}), "credit"),
        ("report: credit of a billion", report({"credit": 10**9}), "credit"),
        ("report: started not strings", report({"started": [1]}), "list of strings"),
        ("heartbeat before register", [V, b"heartbeat", pk({})], "register first"),
        ("report before register", report({"started": ["x" * 100_000]}), "register first"),
    ]


def test_garbage_at_the_client_socket_gets_errors_and_the_broker_serves_on(
    make_worker, server, make_client
):
    throw_garbage(server.ports.client, client_garbage())

    c = make_client(server.ports.client)
    assert c.supported_io_types() == set()  # no garbage became a job or a worker
    assert c.job_status("j1").status is Status.INVALID
    make_worker(TET, server.ports.worker, run=lambda job: b"still here: " + job["data"])
    bc = make_client(server.ports.client, basic=True)
    assert bc.run(TET, data=b"ok", timeout=10).data == b"still here: ok"


def test_garbage_at_the_worker_socket_gets_errors_and_the_broker_serves_on(
    make_worker, server, make_client
):
    throw_garbage(server.ports.worker, worker_garbage())

    c = make_client(server.ports.client)
    assert c.supported_io_types() == set()  # no garbage registered a worker
    make_worker(TET, server.ports.worker, run=lambda job: b"still here: " + job["data"])
    bc = make_client(server.ports.client, basic=True)
    assert bc.run(TET, data=b"ok", timeout=10).data == b"still here: ok"
    assert c.supported_io_types() == {TET.io_type}


def test_wrong_version_error_names_both_versions(server):
    with dealers(server.ports.client, 1) as (sock,):
        sock.send_multipart([b"remus/0", b"io_types", pk({"rid": 5})])
        assert sock.poll(5000), "no reply to a wrong protocol version"
        msg = p.decode(sock.recv_multipart())
    assert isinstance(msg, p.Error)
    assert msg.code == "version"
    assert msg.rid == 5
    assert V.decode() in msg.message and "remus/0" in msg.message


@pytest.fixture
def small_server(make_server):
    """A broker that accepts messages of at most 1 MiB."""
    return make_server(config=ServerConfig(stop_timeout=1.0, max_message_bytes=1024 * 1024))


def _one_reply(endpoint: str, frames: list[bytes]) -> p.Message:
    with dealers(endpoint, 1) as (sock,):
        sock.send_multipart(frames)
        assert sock.poll(5000), "no reply to an oversized message"
        return p.decode(sock.recv_multipart())


def test_oversized_message_with_bulk_frames_is_refused(make_worker, small_server, make_client):
    big = os.urandom(1536 * 1024)  # over the 1 MiB limit, under libzmq's cut-off at twice it
    submit = real_submit()
    msg = _one_reply(small_server.ports.client, [*submit[:3], big])
    assert isinstance(msg, p.Error) and msg.code == "too-large", msg
    assert "limit" in msg.message
    assert msg.rid == expected_rid(submit)

    _, report = real_register_and_report()
    msg = _one_reply(small_server.ports.worker, [*report[:3], big])
    assert isinstance(msg, p.Error) and msg.code == "too-large", msg

    c = make_client(small_server.ports.client)
    submitted = p.decode(submit)
    assert isinstance(submitted, p.SubmitRequest)
    assert c.job_status(submitted.jobs[0].id).status is Status.INVALID  # it was not queued
    make_worker(TET, small_server.ports.worker, run=lambda job: job["data"][::-1])
    bc = make_client(small_server.ports.client, basic=True)
    assert bc.run(TET, data=b"small", timeout=10).data == b"llams"


def test_oversized_message_body_is_refused(small_server):
    huge_ids = ["x" * 1024 for _ in range(1536)]  # a 1.5 MiB body, no bulk frames
    msg = _one_reply(small_server.ports.client, [V, b"status", pk({"rid": 4, "ids": huge_ids})])
    assert isinstance(msg, p.Error), f"a 1.5 MiB message passed a 1 MiB limit: {type(msg)}"
    assert msg.code == "too-large"
    assert msg.rid == 4


def test_message_far_over_the_limit_costs_only_its_sender_a_timeout(small_server, make_client):
    # Far over the limit libzmq itself cuts the sender off (the broker never buffers it): no
    # error reply then, but the call times out instead of hanging, the client's socket
    # reconnects, and the broker serves everyone on.
    c = make_client(small_server.ports.client, timeout=0.5)
    with pytest.raises(remus.TimeoutError):
        c.job_status("x" * (4 * 1024 * 1024))
    assert c.job_status("small").status is Status.INVALID
    assert make_client(small_server.ports.client).supported_io_types() == set()


# ------------------------------------------------------------------ a worker killed mid-job


def test_worker_killed_mid_job_fails_within_a_few_heartbeats(server, make_client, make_process):
    c = make_client(server.ports.client)
    proc = make_process([ECHO_WORKER, server.ports.worker, "--mode", "hold", "--heartbeat", "0.1"])
    wait_for(lambda: c.can_mesh(ECHO), timeout=10)  # the worker process registered
    job = c.submit_job(JobSubmission(ECHO, {"data": b"x"}), max_retries=0)
    wait_for(lambda: c.job_status(job).status is Status.IN_PROGRESS, timeout=10)

    killed = time.monotonic()
    proc.kill()  # SIGKILL: no goodbye, no more heartbeats
    proc.wait(5)
    # no retry left: FAILED (EXPIRED is only for a queue time limit)
    wait_for(lambda: c.job_status(job).status is Status.FAILED, timeout=3)
    elapsed = time.monotonic() - killed
    assert elapsed < 1.5, f"FAILED after {elapsed:.2f} s with a 0.1 s heartbeat"

    with pytest.raises(remus.JobFailedError) as info:
        c.retrieve_result(job)
    assert "heartbeat" in info.value.reason
    assert c.can_mesh(ECHO) is False  # and the worker left the pool


# ------------------------------------------------------------------ a suspended broker


def wait_until_done(client: Any, job: Any, timeout: float) -> None:
    try:
        wait_for(lambda: client.job_status(job).status.done, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"after {timeout} s the job is {client.job_status(job)}") from None


@pytest.mark.parametrize(
    "finish", ["after", "during"], ids=["job-finishes-after-resume", "job-finishes-while-suspended"]
)
def test_suspended_broker_does_not_declare_healthy_workers_dead(
    make_worker, make_process, make_client, finish
):
    proc, ports = start_server_process(make_process)
    c = make_client(ports.client)
    release = threading.Event()
    ran: list[str] = []

    def handler(job):
        ran.append(job.id)
        if job["data"] == b"long":
            release.wait(10)
        return b"done: " + job["data"]

    w = make_worker(TET, ports.worker, run=handler, heartbeat=0.1)  # liveness: 0.3 s
    job = c.submit_job(JobSubmission(TET, {"data": b"long"}))
    wait_for(lambda: c.job_status(job).status is Status.IN_PROGRESS, timeout=5)

    os.kill(proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: is_stopped(proc.pid), timeout=2)
        stopped = time.monotonic()
        # a client call against the suspended broker times out instead of hanging
        impatient = make_client(ports.client, timeout=0.3)
        with pytest.raises(remus.TimeoutError):
            impatient.job_status(job)
        assert time.monotonic() - stopped < 2
        if finish == "during":
            time.sleep(max(0.0, 0.75 - (time.monotonic() - stopped)))
            release.set()  # the worker reports its result to a broker that is not listening
        # deliberately outlive the liveness window (0.3 s) five times over
        time.sleep(max(0.0, 1.5 - (time.monotonic() - stopped)))
    except BaseException:
        release.set()
        raise
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    try:
        # awake again, the broker answers and has not given up on the job ...
        awake = {Status.IN_PROGRESS} if finish == "after" else {Status.IN_PROGRESS, Status.FINISHED}
        assert c.job_status(job).status in awake
        # ... and the worker hears from it again (Worker has no public "connected" yet)
        wait_for(lambda: w.connected, timeout=5)
    finally:
        release.set()

    wait_until_done(c, job, timeout=3)
    status = c.job_status(job)
    assert status.status is Status.FINISHED, f"{status.status.name}: {status.reason}"
    assert c.retrieve_result(job).data == b"done: long"
    # the worker is still in the pool and takes new work
    after = c.submit_job(JobSubmission(TET, {"data": b"after"}))
    wait_until_done(c, after, timeout=5)
    assert c.retrieve_result(after).data == b"done: after"
    assert ran == [job.id, after.id]


def test_worker_whose_broker_went_silent_leaks_no_socket():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # nothing listens there, so the broker is silent and the worker tries to reconnect
        w = Worker(TET, free_tcp_endpoint(), heartbeat_interval=0.05)
        try:
            wait_for(lambda: w._conn.reconnects >= 1, timeout=3)
        finally:
            w.close()
        assert not w._conn.is_alive()
        gc.collect()
    leaks = [str(c.message) for c in caught if issubclass(c.category, ResourceWarning)]
    assert not leaks, leaks


def test_worker_survives_its_inproc_broker_vanishing():
    ctx = zmq.Context()  # its own context, so that a stuck worker thread can be freed below
    endpoint = f"inproc://remus-vanishing-{uuid.uuid4().hex}"
    broker = ctx.socket(zmq.ROUTER)
    broker.linger = 0
    broker.bind(endpoint)
    w = Worker(TET, endpoint, heartbeat_interval=0.05, context=ctx)
    try:
        assert broker.poll(5000), "the worker never registered"
        assert isinstance(p.decode(broker.recv_multipart()[1:]), p.Register)
        broker.close()  # the broker is gone without a word (crashed, or stopped uncleanly)
        time.sleep(0.25)  # deliberately let a few heartbeat intervals pass
        w._conn.post("stop")  # what Worker.close() does, without its 5 s wait
        w._conn.join(1.0)
        assert not w._conn.is_alive(), "the worker's connection thread is stuck"
    finally:
        # terminating the context makes a blocked send raise ETERM, which frees a stuck thread
        terminator = threading.Thread(target=ctx.term, name="e2e-ctx-term", daemon=True)
        terminator.start()
        terminator.join(5)
        w.close()


# ------------------------------------------------------------------ stopping under traffic


def test_stop_while_peers_keep_sending(make_process):
    """Server.stop() under traffic on both sockets: prompt, and no broker thread left behind.

    Two kinds of traffic: a flood from another process (no GIL shared with the broker), and
    chatter from threads of this one, which slows the broker's threads down between receiving a
    message and passing it on (where a stop once left a thread blocked for good)."""
    before = set(threading.enumerate())
    ctx = zmq.Context()  # its own context, so that a stuck broker thread can be freed below
    server = Server(ServerPorts.ephemeral(), config=ServerConfig(stop_timeout=1.0), context=ctx)
    server.start()
    quiet = threading.Event()
    answers = {"client": 0, "worker": 0}

    def chatter(role: str, endpoint: str, message: Frames) -> None:
        with dealers(endpoint, 1) as (sock,):
            while not quiet.is_set():
                sock.send_multipart(message)
                while sock.poll(0):
                    sock.recv_multipart()
                    answers[role] += 1

    talkers = [
        threading.Thread(target=chatter, args=args, name=f"e2e-chatter-{args[0]}")
        for args in (
            ("client", server.ports.client, p.encode(p.IoTypesRequest(1))),
            ("worker", server.ports.worker, p.encode(p.Heartbeat())),
        )
    ]
    try:
        flood = make_process([FLOOD, server.ports.worker], stdout=subprocess.PIPE)
        assert flood.stdout is not None and flood.stdout.readline() == "flooding\n"
        for t in talkers:
            t.start()
        wait_for(lambda: min(answers.values()) > 50, timeout=5)  # the broker is busy
        started = time.monotonic()
        server.stop(timeout=1.0)
        elapsed = time.monotonic() - started
        stuck = [
            t.name
            for t in threading.enumerate()
            if t not in before and t.is_alive() and t.name.startswith("remus")
        ]
        assert not stuck, f"broker threads still running after stop(): {stuck}"
        assert elapsed < 1.0, f"stop() took {elapsed:.2f} s"
    finally:
        quiet.set()
        for t in talkers:
            if t.is_alive():
                t.join(5)
        server.stop()
        # terminating the context makes a blocked send raise ETERM, which frees a stuck thread
        terminator = threading.Thread(target=ctx.term, name="e2e-ctx-term", daemon=True)
        terminator.start()
        terminator.join(5)
