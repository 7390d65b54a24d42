"""Secure mode end to end: CURVE keys and allow-lists, job owners, revoked keys, the status feed
and the bytes on the wire, with a broker in this process (``Server``), workers (threads, and
one process) and clients over real sockets on 127.0.0.1.

The keys are laid out as an operator would (see ``helpers_security.KeyRing``): each peer keeps
its secret key, and the broker's allow-list folders hold copies of the public halves.

Tests ask for ``make_secure_worker`` before the server, so that at teardown (which runs in
reverse) the server stops while its workers are still connected.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import wait_for
from helpers_e2e import ECHO_WORKER
from helpers_security import (
    KeyRing,
    Relay,
    SecureFeed,
    SecureWorkers,
    held_until,
    security_of,
    submitted_to,
    workers_of,
)

import remus
from remus import IOType, Job, JobRequirements, JobSubmission, Status
from remus import protocol as p
from remus.client import BasicClient
from remus.security import SECRET_KEY_ENV, SECRET_KEY_Z85_ENV, SERVER_KEY_ENV
from remus.server import Server

pytestmark = pytest.mark.timeout(60)

TET = JobRequirements(IOType("Mesh2D", "Mesh3D"), worker_name="TetMesher")
ECHO = JobRequirements(IOType("Text", "Echo"), worker_name="echo")  # tests/workers/echo_worker.py
#: how long a refused client waits for an answer before it says why none came
REFUSED_TIMEOUT = 1.0


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def keys(tmp_path: Path) -> KeyRing:
    return KeyRing(tmp_path / "keys")


@pytest.fixture
def serve(make_server: Callable[..., Server], keys: KeyRing) -> Callable[[], Server]:
    """Start a secure broker on the keys made so far. A peer refused once is not retried
    (libzmq ends a session the ZAP handler refused), so make every key before this."""
    return lambda: make_server(**keys.server_options())


@pytest.fixture
def make_secure_client(keys: KeyRing, make_client: Any) -> Callable[..., BasicClient]:
    """BasicClients of a broker; ``secret=None`` makes a plain one (no keys at all)."""

    def make(
        endpoint: str,
        secret: Path | None,
        *,
        timeout: float = 5.0,
        server_key: bytes | None = None,
    ) -> BasicClient:
        options: dict[str, Any] = {}
        if secret is not None:
            options = {"secret_key": secret, "server_key": server_key or keys.broker_public}
        return make_client(endpoint, basic=True, timeout=timeout, **options)

    return make


@pytest.fixture
def make_secure_worker(keys: KeyRing) -> Iterator[SecureWorkers]:
    workers = SecureWorkers(keys)
    yield workers
    workers.close()


# ------------------------------------------------------------------ the right keys


def test_a_client_and_workers_with_allowed_keys_run_jobs_end_to_end(
    make_process, make_secure_worker, serve, make_secure_client, keys
):
    mesher, echoer, alice_key = keys.worker("mesher"), keys.worker("echoer"), keys.client("alice")
    secure_server = serve()
    steps = [(25, "a quarter"), (75, "three quarters")]

    def mesh(job: Any) -> bytes:
        for value, message in steps:
            job.send_progress(value, message)
        return b"meshed:" + job["data"]

    make_secure_worker(TET, secure_server.ports.worker, mesher, run=mesh)
    # a worker process that reads its keys from the environment, as `remus worker` would
    make_process(
        [ECHO_WORKER, secure_server.ports.worker],
        env={
            SECRET_KEY_ENV: str(echoer),
            SERVER_KEY_ENV: str(keys.broker_secret.with_suffix(".key")),
            SECRET_KEY_Z85_ENV: "",
        },
    )
    alice = make_secure_client(secure_server.ports.client, alice_key)
    wait_for(lambda: alice.client.can_mesh(ECHO), timeout=15)

    seen: list[Any] = []
    got = alice.run(TET, data=b"points", timeout=10, on_progress=seen.append)
    assert got.data == b"meshed:points"
    assert [(u.value, u.message) for u in seen] == steps
    assert alice.client.job_status(got.job_id).status is Status.FINISHED

    job = alice.submit(ECHO, data=b"hello")
    assert alice.wait(job, timeout=10).data == b"echo:hello"

    jobs = [alice.submit(TET if i % 2 else ECHO, data=b"n%d" % i) for i in range(6)]
    updates: dict[str, list[int]] = {}
    results = {
        r.job_id: r.data
        for r in alice.as_completed(
            jobs, timeout=15, on_progress=lambda j, u: updates.setdefault(j.id, []).append(u.value)
        )
    }
    assert results == {
        j.id: (b"meshed:" if i % 2 else b"echo:") + b"n%d" % i for i, j in enumerate(jobs)
    }
    assert updates == {j.id: [25, 75] for i, j in enumerate(jobs) if i % 2}

    security = security_of(alice)
    assert security["mode"] == "curve"
    assert security["refused_clients"] == security["refused_workers"] == 0
    assert workers_of(alice) == 2


# ------------------------------------------------------------------ refused clients

REFUSED = {
    # kind: (words the TimeoutError says, in lower case)
    "a stranger's key": ("refused",),
    "no key at all": ("secure mode",),
    "the wrong server key": ("handshake",),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_a_refused_client_times_out_saying_why_and_no_job_reaches_a_worker(
    kind, make_secure_worker, serve, make_secure_client, keys
):
    worker_key, alice_key = keys.worker("w"), keys.client("alice")
    eve, mallory = keys.stranger("eve"), keys.client("mallory")
    impostor = keys.public(keys.stranger("impostor-broker").stem)
    secure_server = serve()
    ran: list[bytes] = []

    def record(job: Any) -> bytes:
        ran.append(job["data"])
        return b"ran"

    make_secure_worker(TET, secure_server.ports.worker, worker_key, run=record)
    alice = make_secure_client(secure_server.ports.client, alice_key)
    endpoint = secure_server.ports.client
    if kind == "a stranger's key":
        bad = make_secure_client(endpoint, eve, timeout=REFUSED_TIMEOUT)
    elif kind == "no key at all":
        bad = make_secure_client(endpoint, None, timeout=REFUSED_TIMEOUT)
    else:  # an allowed key, but another broker's public key
        bad = make_secure_client(endpoint, mallory, timeout=REFUSED_TIMEOUT, server_key=impostor)

    started = time.monotonic()
    with pytest.raises(remus.TimeoutError) as info:
        bad.client.submit_job(JobSubmission(TET, {"data": b"from a refused client"}))
    took = time.monotonic() - started
    assert took < REFUSED_TIMEOUT + 1.0, f"the refusal took {took:.2f} s"
    text = str(info.value).lower()
    assert all(words in text for words in REFUSED[kind]), text
    with pytest.raises(remus.TimeoutError):  # and again: it is not a one-off
        bad.client.supported_io_types()

    wait_for(lambda: security_of(alice)["refused_clients"] >= 1, timeout=5)
    assert security_of(alice)["refused_workers"] == 0
    assert alice.run(TET, data=b"from alice", timeout=10).data == b"ran"
    assert ran == [b"from alice"], "a refused client's job reached a worker"
    assert submitted_to(alice) == 1


# ------------------------------------------------------------------ refused workers


def test_a_worker_with_a_strangers_key_never_registers_and_gets_no_job(
    make_secure_worker, serve, make_secure_client, keys
):
    alice_key, eve_key, worker_key = keys.client("alice"), keys.stranger("eve"), keys.worker("w")
    secure_server = serve()
    ran: list[str] = []

    def record(job: Any) -> bytes:
        ran.append(job.id)
        return b"stolen"

    alice = make_secure_client(secure_server.ports.client, alice_key)
    job = alice.submit(TET, data=b"x", wait_for_worker=True)
    eve = make_secure_worker(TET, secure_server.ports.worker, eve_key, run=record, connected=False)
    wait_for(lambda: security_of(alice)["refused_workers"] >= 1, timeout=5)
    assert not eve.connected
    assert workers_of(alice) == 0
    assert alice.client.supported_io_types() == set()
    assert alice.client.job_status(job).status is Status.QUEUED

    # the job could be taken all along: an allowed worker takes it at once
    make_secure_worker(
        TET, secure_server.ports.worker, worker_key, run=lambda j: b"by w:" + j["data"]
    )
    assert alice.wait(job, timeout=10).data == b"by w:x"
    assert ran == [] and not eve.connected
    assert eve.pending_job_count() == 0


def test_a_worker_refused_at_first_gets_in_once_its_key_is_allowed(
    make_secure_worker, serve, make_secure_client, keys
):
    """ZeroMQ does not retry a refused handshake; a remus worker does, on a new socket, each
    time the broker has been silent for three heartbeats: allowing its key is enough."""
    alice_key, late = keys.client("alice"), keys.stranger("late")
    secure_server = serve()
    alice = make_secure_client(secure_server.ports.client, alice_key)
    job = alice.submit(TET, data=b"x", wait_for_worker=True)
    worker = make_secure_worker(
        TET, secure_server.ports.worker, late, run=lambda j: b"late:" + j["data"], connected=False
    )
    wait_for(lambda: security_of(alice)["refused_workers"] >= 1, timeout=5)
    shutil.copyfile(keys.private / "late.key", keys.workers / "late.key")
    secure_server.reload_keys()
    assert alice.wait(job, timeout=15).data == b"late:x"
    assert worker.connected


def test_a_worker_key_limited_by_io_types_registers_only_those(
    caplog, make_secure_worker, serve, make_secure_client, keys
):
    caplog.set_level(logging.WARNING, logger="remus.server")
    secret = keys.worker("mesher", io_types="# this key meshes only\nMesh2D:Mesh3D\n")
    alice_key = keys.client("alice")
    secure_server = serve()
    alice = make_secure_client(secure_server.ports.client, alice_key)
    make_secure_worker(TET, secure_server.ports.worker, secret, run=lambda j: b"meshed")
    assert alice.run(TET, data=b"x", timeout=10).data == b"meshed"

    ran: list[str] = []
    echo = make_secure_worker(
        ECHO,
        secure_server.ports.worker,
        secret,
        run=lambda j: ran.append(j.id) or b"never",
        connected=False,
    )
    wait_for(lambda: echo.should_terminate, timeout=5)
    assert isinstance(echo.error, remus.ForbiddenError), echo.error
    assert "may not serve" in str(echo.error) and "Text" in str(echo.error)
    make_secure_worker.thread_of(echo).join(5)
    assert not make_secure_worker.thread_of(echo).is_alive(), "Worker.run did not return"
    assert ran == []
    assert alice.client.supported_io_types() == {TET.io_type}
    assert workers_of(alice) == 1
    assert any(
        "refused worker" in r.getMessage() and "may not serve" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


# ------------------------------------------------------------------ owners


def outcome(call: Callable[[str], Any], job_id: str) -> str:
    """What ``call(job_id)`` does, in words, with the job id written as <id>."""
    try:
        text = f"returns {call(job_id)!r}"
    except remus.RemusError as e:
        text = f"raises {type(e).__name__}: {e}"
    return text.replace(job_id, "<id>")


#: what another key may try on a job; every one must look as it does for an unknown id
TRIES: dict[str, Callable[[BasicClient, str], Any]] = {
    "job_status": lambda c, i: c.client.job_status(i),
    "wait": lambda c, i: c.wait(Job(i, TET), timeout=3),
    "retrieve_result": lambda c, i: c.client.retrieve_result(i),
    "job_progress": lambda c, i: c.client.job_progress(i),
    "send_control": lambda c, i: c.send_control(i, b"stop it"),
    "control (the broker's own words)": lambda c, i: c.client.call(p.ControlRequest, i, b"x"),
    "terminate": lambda c, i: c.client.terminate(i),
}


def test_a_jobs_owner_and_admins_see_it_and_another_key_cannot_tell_it_exists(
    make_secure_worker, serve, make_secure_client, keys
):
    worker_key, root_key = keys.worker("w"), keys.admin("root")
    alice_key, bob_key = keys.client("alice"), keys.client("bob")
    secure_server = serve()
    release, holding = threading.Event(), threading.Event()
    controls: list[bytes] = []

    def handler(job: Any) -> bytes:
        if job["data"] == b"hold":
            held_until(release, worker, job, holding)
            controls.extend(job.control_messages())
            return b"held"
        return b"done:" + job["data"]

    worker = make_secure_worker(TET, secure_server.ports.worker, worker_key, run=handler)
    endpoint = secure_server.ports.client
    alice = make_secure_client(endpoint, alice_key)
    bob = make_secure_client(endpoint, bob_key)
    root = make_secure_client(endpoint, root_key)

    finished = alice.run(TET, data=b"secret", timeout=10).job_id
    bobs = bob.run(TET, data=b"bob's", timeout=10).job_id
    running = alice.submit(TET, data=b"hold").id
    assert holding.wait(10)
    never = alice.client.new_job_id()  # same shape as alice's ids, never submitted

    differ = []
    for name, call in TRIES.items():
        unknown = outcome(lambda i: call(bob, i), never)  # noqa: B023
        for job_id in (finished, running):
            seen = outcome(lambda i: call(bob, i), job_id)  # noqa: B023
            if seen != unknown:
                differ.append(f"{name}: {seen!r} for alice's job, {unknown!r} for no job")
    assert not differ, "\n".join(differ)
    # (and the unknown-id answers are the documented ones)
    assert outcome(lambda i: TRIES["wait"](bob, i), never).startswith("raises UnknownJobError")
    assert outcome(lambda i: TRIES["send_control"](bob, i), never).startswith(
        "raises UnknownJobError"
    )
    assert bob.client.job_status(running).status is Status.INVALID
    assert bob.client.job_progress(running) == []

    assert {j.id for j in bob.client.jobs()} == {bobs}
    assert {j.id for j in alice.client.jobs()} == {finished, running}
    # bob's terminate and control changed nothing
    assert alice.client.job_status(running).status is Status.IN_PROGRESS
    assert controls == []

    # an admin sees every job, and may end any
    assert {j.id for j in root.client.jobs()} == {finished, running, bobs}
    assert root.client.job_status(running).status is Status.IN_PROGRESS
    assert root.client.retrieve_result(finished).data == b"done:secret"
    assert root.client.terminate(running).status is Status.TERMINATED
    assert alice.client.job_status(running).status is Status.TERMINATED
    with pytest.raises(remus.JobTerminatedError):
        alice.client.retrieve_result(running)
    assert alice.client.retrieve_result(finished).data == b"done:secret"
    assert bob.client.retrieve_result(bobs).data == b"done:bob's"


# ------------------------------------------------------------------ revoked keys


@pytest.mark.parametrize("how", ["reload_keys", "folder change"])
def test_a_revoked_worker_is_told_to_exit_and_its_job_runs_on_another(
    how, make_secure_worker, serve, make_secure_client, keys
):
    alice_key, carol_key = keys.client("alice"), keys.client("carol")
    w1_key, w2_key = keys.worker("w1"), keys.worker("w2")
    secure_server = serve()
    release, started = threading.Event(), threading.Event()

    def hold(job: Any) -> bytes:
        held_until(release, w1, job, started)
        return b"w1"

    endpoint = secure_server.ports.client
    alice = make_secure_client(endpoint, alice_key)
    carol = make_secure_client(endpoint, carol_key)
    w1 = make_secure_worker(TET, secure_server.ports.worker, w1_key, run=hold)
    job = alice.submit(TET, data=b"long")
    try:
        assert started.wait(10)
        make_secure_worker(
            TET, secure_server.ports.worker, w2_key, run=lambda j: b"w2:" + j["data"]
        )
        assert carol.client.supported_io_types() == {TET.io_type}  # connected, and allowed
        before = security_of(alice)

        keys.revoke("w1")
        keys.revoke("carol")
        if how == "reload_keys":
            secure_server.reload_keys()
        wait_for(lambda: w1.should_terminate, timeout=5)

        got = alice.wait(job, timeout=10)
        assert got.data == b"w2:long"
        assert alice.client.job_status(job).status is Status.FINISHED
    finally:
        release.set()
    assert workers_of(alice) == 1
    after = security_of(alice)
    assert (after["worker_keys"], after["client_keys"]) == (
        before["worker_keys"] - 1,
        before["client_keys"] - 1,
    )

    # the revoked client: its open connection is refused, and so is a new one
    with pytest.raises(remus.ForbiddenError, match="revoked"):
        carol.client.supported_io_types()
    again = make_secure_client(endpoint, carol_key, timeout=REFUSED_TIMEOUT)
    with pytest.raises(remus.TimeoutError, match="refused"):
        again.client.supported_io_types()


# ------------------------------------------------------------------ the status feed


def submit_and_track(client: BasicClient, ids: list[str]) -> Callable[[], None]:
    """A probe for ``StatusFeed.prime``: submit a job, note its id."""

    def probe() -> None:
        ids.append(client.submit(TET, data=b"probe").id)

    return probe


def test_a_clients_feed_of_its_own_jobs_works_with_no_other_subscriber(
    make_secure_worker, serve, make_secure_client, keys
):
    """``""`` from a client that is not an admin means "all my jobs' events": it must work
    without an admin (or anyone) following the plain topics too."""
    worker_key, secret = keys.worker("w"), keys.client("alice")
    secure_server = serve()
    make_secure_worker(TET, secure_server.ports.worker, worker_key, run=lambda j: b"ok")
    alice = make_secure_client(secure_server.ports.client, secret)
    own = "@" + keys.public("alice").decode() + " "
    ids: list[str] = []
    with SecureFeed(secure_server.ports.status, keys.peer_keys(secret), b"") as feed:
        feed.prime(submit_and_track(alice, ids), own + "job.queued")
        assert {payload["job"] for _, payload in feed.events} <= set(ids)
        assert all(topic.startswith(own + "job.") for topic in feed.topics())


def test_subscribers_that_leave_do_not_stop_the_broker(
    make_secure_worker, serve, make_secure_client, keys
):
    """A SUB that closes makes libzmq hand the broker an unsubscription with no peer
    metadata (no User-Id): the broker must take it in its stride."""
    worker_key, secret, admin = keys.worker("w"), keys.client("alice"), keys.admin("root")
    secure_server = serve()
    make_secure_worker(TET, secure_server.ports.worker, worker_key, run=lambda j: b"ok")
    alice = make_secure_client(secure_server.ports.client, secret)
    own = b"@" + keys.public("alice") + b" job."
    ids: list[str] = []
    status = secure_server.ports.status
    with SecureFeed(status, keys.peer_keys(admin), b"") as everything:
        everything.prime(submit_and_track(alice, ids), "job.queued")
        with SecureFeed(status, keys.peer_keys(secret), own) as mine:
            mine.prime(submit_and_track(alice, ids), own.decode() + "queued")
    # both have unsubscribed by leaving
    assert alice.run(TET, data=b"still there?", timeout=5).data == b"ok"
    assert submitted_to(alice) >= len(ids) + 1
    # and the broker knows nobody wants events any more (it stops making them)
    core = secure_server._core
    assert core is not None
    wait_for(lambda: not core._subscriptions, timeout=5)


def test_the_feed_shows_a_client_only_its_own_jobs_and_no_contents_to_anyone(
    make_secure_worker, serve, make_secure_client, keys
):
    worker_key, root_key = keys.worker("w"), keys.admin("root")
    alice_key, bob_key = keys.client("alice"), keys.client("bob")
    secure_server = serve()
    marker = b"MARKER-" + uuid.uuid4().hex.encode()

    def echo(job: Any) -> bytes:
        job.send_progress(50, "halfway")
        return b"echo:" + job["data"]

    make_secure_worker(TET, secure_server.ports.worker, worker_key, run=echo)
    endpoint, status = secure_server.ports.client, secure_server.ports.status
    alice = make_secure_client(endpoint, alice_key)
    bob = make_secure_client(endpoint, bob_key)
    own = "@" + keys.public("alice").decode() + " "
    bobs_topic = b"@" + keys.public("bob") + b" "
    alice_ids: list[str] = []

    everything = SecureFeed(status, keys.peer_keys(root_key), b"")
    # alice also asks for the plain topics and for bob's: neither may be applied
    mine = SecureFeed(status, keys.peer_keys(alice_key), b"job.", b"worker.", bobs_topic, b"")
    try:
        everything.prime(submit_and_track(alice, alice_ids), "job.queued")
        mine.prime(submit_and_track(alice, alice_ids), own + "job.queued")

        bobs = bob.run(TET, data=b"bob:" + marker, timeout=10)
        assert bobs.data == b"echo:bob:" + marker
        # a worker arrives: an event for admins only
        make_secure_worker(TET, secure_server.ports.worker, worker_key, run=echo)
        result = alice.run(TET, data=b"alice:" + marker, timeout=10)
        assert result.data == b"echo:alice:" + marker
        alice_ids.append(result.job_id)

        # one socket's events come in the order they were sent: bob's were sent before these
        mine.until(lambda t, e: t == own + "job.finished" and e["job"] == result.job_id)
        everything.until(lambda t, e: t == "job.finished" and e["job"] == result.job_id)
        everything.until(lambda t, e: t == "worker.registered")
    finally:
        everything.close()
        mine.close()

    assert mine.events and all(t.startswith(own + "job.") for t in mine.topics()), mine.topics()
    assert {e["job"] for _, e in mine.events} <= set(alice_ids)
    assert mine.for_job(bobs.job_id) == []
    assert any(t == own + "job.progress" for t in mine.topics()), mine.topics()

    topics = everything.topics()
    assert all(t.startswith(("job.", "worker.")) for t in topics), topics
    assert everything.for_job(bobs.job_id) and everything.for_job(result.job_id)

    for feed in (mine, everything):
        assert feed.raw and not [f for f in feed.raw if marker in f], "job contents in an event"


# ------------------------------------------------------------------ the bytes on the wire


@pytest.mark.parametrize("mode", ["secure", "plain (the control experiment)"])
def test_the_bytes_between_a_client_and_the_broker_carry_no_plaintext(
    mode, make_secure_worker, make_server, make_secure_client, keys
):
    secure = mode == "secure"
    worker_key, alice_key = (keys.worker("w"), keys.client("alice")) if secure else (None, None)
    server = make_server(**(keys.server_options() if secure else {}))
    make_secure_worker(TET, server.ports.worker, worker_key, run=lambda j: b"echo:" + j["data"])
    relay = Relay(server.ports.client)
    relay.start()
    try:
        client = make_secure_client(relay.endpoint, alice_key)
        marker = b"MARKER-" + uuid.uuid4().hex.encode()
        data = b"contents with " + marker + b" inside"
        assert client.run(TET, data=data, timeout=10).data == b"echo:" + data
    finally:
        relay.close()
    captured = relay.captured
    assert relay.connections >= 1 and len(captured) > 2 * len(data), "nothing went through"
    if secure:
        assert marker not in captured, "the marker crossed the wire in clear text"
    else:
        assert captured.count(marker) >= 2, "the relay did not see the job and its result"


# ------------------------------------------------------------------ fuzzing with a key


def test_random_frames_from_allowed_keys_leave_a_secure_broker_serving(
    make_secure_worker, serve, make_secure_client, keys
):
    """The decoder property tests of test_protocol.py, sent over authenticated sockets at a
    live secure broker: whatever arrives, it answers and keeps serving."""
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from test_protocol import RANDOM_FRAMES, structured_frames

    # (a message has at least one frame: an empty list cannot be sent)
    frames_strategy = st.one_of(RANDOM_FRAMES.filter(bool), structured_frames())
    fuzz_client, fuzz_worker = keys.client("fuzz-client"), keys.worker("fuzz-worker")
    worker_key, alice_key = keys.worker("w"), keys.client("alice")
    secure_server = serve()
    ctx = zmq.Context.instance()
    sockets = []
    for endpoint, secret in (
        (secure_server.ports.client, fuzz_client),
        (secure_server.ports.worker, fuzz_worker),
    ):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = sock.rcvhwm = 0
        keys.peer_keys(secret).apply(sock)
        sock.connect(endpoint)
        sockets.append(sock)
    answers = dict.fromkeys(sockets, 0)

    def drain(sock: zmq.Socket[Any]) -> None:
        while sock.poll(0):
            sock.recv_multipart()
            answers[sock] += 1

    try:
        for sock in sockets:

            @settings(
                max_examples=150,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(frames_strategy)
            def send(frames: list[bytes]) -> None:
                sock.send_multipart(frames)  # noqa: B023
                drain(sock)  # noqa: B023

            send()

        # the client socket's key is still served: a hello gets its answer
        rid = 2**31 - 7
        client_sock = sockets[0]
        client_sock.send_multipart(p.encode(p.HelloRequest(rid)))
        deadline = time.monotonic() + 5
        answered = False
        while not answered and client_sock.poll(max(0.0, deadline - time.monotonic()) * 1000):
            msg = p.decode(client_sock.recv_multipart(), p.BROKER_TO_CLIENT)
            answered = isinstance(msg, p.Reply) and msg.rid == rid
        assert answered, "the fuzzing client's key got no answer to a hello afterwards"
        for sock in sockets:
            drain(sock)
        assert all(answers.values()), f"a socket got no answer at all: {answers}"
    finally:
        for sock in sockets:
            sock.close(0)

    make_secure_worker(
        ECHO, secure_server.ports.worker, worker_key, run=lambda j: b"echo:" + j["data"]
    )
    alice = make_secure_client(secure_server.ports.client, alice_key)
    assert alice.run(ECHO, data=b"after the fuzz", timeout=10).data == b"echo:after the fuzz"
    assert security_of(alice)["refused_clients"] == 0
