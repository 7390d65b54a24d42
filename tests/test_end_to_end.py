"""End-to-end scenarios over real sockets: a broker, clients and workers (threads or processes).

These are the "How we will know" list of issue 2, most of them after Remus's own integration
suite. Garbage input, killed workers and a suspended broker are in test_robustness.py.

Tests that use in-process workers ask for ``make_worker`` before the server, so that at teardown
(which runs in reverse) the server stops while its workers are still connected: every test then
also exercises the broker telling its workers to exit.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from typing import Any

import pytest
from conftest import start_server_process, wait_for
from helpers_e2e import (
    ECHO_WORKER,
    StatusFeed,
    assert_same_bytes,
    free_tcp_endpoint,
    start_cli_server,
    wait_exit,
)

import remus
from remus import IOType, JobRequirements, JobSubmission, Status
from remus.server import ServerPorts

MESH = IOType("Mesh2D", "Mesh3D")
TET = JobRequirements(MESH, worker_name="TetMesher", tag={"algorithm": "delaunay", "version": 2})
ECHO = JobRequirements(IOType("Text", "Echo"), worker_name="echo")  # tests/workers/echo_worker.py
NOBODY = IOType("Nothing", "Nowhere")  # no worker ever serves this

MiB = 1024 * 1024


def status_of(client: Any, job: Any) -> Status:
    return client.job_status(job).status


# ------------------------------------------------------------------ what the broker can do


def test_can_mesh_follows_the_connected_workers(make_worker, server, make_client):
    c = make_client(server.ports.client)
    assert c.can_mesh(MESH) is False
    assert c.can_mesh(TET) is False
    assert c.supported_io_types() == set()
    assert c.retrieve_requirements(MESH) == []

    w = make_worker(TET, server.ports.worker)
    w.ask_for_jobs(1)
    wait_for(lambda: c.can_mesh(MESH), timeout=5)

    assert c.can_mesh(MESH) is True
    assert c.can_mesh(TET) is True
    assert c.can_mesh(JobRequirements(MESH, worker_name="TetMesher")) is True
    assert c.can_mesh(JobRequirements(MESH, worker_name="HexMesher")) is False
    assert c.can_mesh(JobRequirements(MESH, tag={"algorithm": "advancing-front"})) is False
    assert c.can_mesh(IOType("Mesh3D", "Mesh2D")) is False
    assert c.supported_io_types() == {MESH}
    reqs = c.retrieve_requirements(MESH)
    assert reqs == [TET]
    assert reqs[0].worker_name == "TetMesher"
    assert reqs[0].tag == {"algorithm": "delaunay", "version": 2}
    assert c.retrieve_requirements(IOType("Edges", "Mesh2D")) == []


# ------------------------------------------------------------------ one job, all the way


def test_contents_progress_and_result_travel_byte_for_byte(make_worker, server, make_client):
    short = b"a short text"
    text = b"".join(b"line %07d of a long text\n" % i for i in range(2 * MiB // 26 + 1))[: 2 * MiB]
    binary = os.urandom(8 * MiB)
    result = os.urandom(2 * MiB)
    steps = [(10, "reading"), (50, "meshing"), (None, "a message without a value"), (100, "done")]
    received: dict[str, Any] = {}

    def handler(job):
        received["id"] = job.id
        received["requirements"] = job.requirements
        received["contents"] = dict(job.contents)
        for value, message in steps:
            w.send_progress(job, value, message)
        return result

    w = make_worker(TET, server.ports.worker, run=handler)
    bc = make_client(server.ports.client, basic=True, timeout=10)
    job = bc.client.submit_job(JobSubmission(TET, {"a": short, "b": text, "data": binary}))
    seen = []
    got = bc.wait(job, timeout=30, on_progress=seen.append)

    assert received["id"] == job.id
    assert received["requirements"] == TET
    assert sorted(received["contents"]) == ["a", "b", "data"]
    assert_same_bytes(received["contents"]["a"], short, "content a")
    assert_same_bytes(received["contents"]["b"], text, "content b")
    assert_same_bytes(received["contents"]["data"], binary, "content data")
    assert [(p.seq, p.value, p.message) for p in seen] == [
        (i, v, m) for i, (v, m) in enumerate(steps, 1)
    ]
    assert got.job_id == job.id
    assert_same_bytes(got.data, result, "result")
    status = bc.client.job_status(job)
    assert status.status is Status.FINISHED
    assert status.progress is not None and status.progress.value == 100
    assert_same_bytes(bc.client.retrieve_result(job).data, result, "result fetched again")


def test_basic_client_run_submits_and_waits(make_worker, server, make_client):
    def handler(job):
        w.send_progress(job, 50, "half")
        return job["data"].upper()

    w = make_worker(TET, server.ports.worker, run=handler)
    bc = make_client(server.ports.client, basic=True)
    seen = []
    got = bc.run(TET, data=b"points", timeout=10, on_progress=seen.append)
    assert got.data == b"POINTS"
    assert [(p.value, p.message) for p in seen] == [(50, "half")]
    assert status_of(bc.client, got.job_id) is Status.FINISHED


# ------------------------------------------------------------------ failures


def test_worker_failure_reaches_the_client_with_its_reason(make_worker, server, make_client):
    c = make_client(server.ports.client)
    w = make_worker(TET, server.ports.worker)
    job = c.submit_job(JobSubmission(TET, {"data": b"x"}))
    taken = w.get_job(timeout=5)
    assert taken.id == job.id
    w.send_failure(taken, "job failed")

    wait_for(lambda: status_of(c, job) is Status.FAILED, timeout=5)
    assert c.job_status(job).reason == "job failed"
    with pytest.raises(remus.JobFailedError) as info:
        c.retrieve_result(job)
    assert type(info.value) is remus.JobFailedError
    assert info.value.reason == "job failed"
    assert info.value.job_id == job.id
    assert status_of(c, job) is Status.FAILED  # reading the failure changes nothing


def test_handler_exception_fails_the_job_with_its_traceback(make_worker, server, make_client):
    def mesh_the_input(job):
        if job["data"] == b"bad":
            raise ValueError("the mesh is inside out: 42")
        return b"fine"

    make_worker(TET, server.ports.worker, run=mesh_the_input)
    bc = make_client(server.ports.client, basic=True)
    job = bc.submit(TET, data=b"bad")
    with pytest.raises(remus.JobFailedError) as info:
        bc.wait(job, timeout=10)
    err = info.value
    assert err.reason == "ValueError: the mesh is inside out: 42"
    assert "Traceback (most recent call last)" in err.traceback
    assert "mesh_the_input" in err.traceback
    assert "ValueError: the mesh is inside out: 42" in err.traceback
    with pytest.raises(remus.JobFailedError) as again:
        bc.client.retrieve_result(job)
    assert "ValueError: the mesh is inside out: 42" in again.value.traceback
    assert status_of(bc.client, job) is Status.FAILED
    # the worker survived its handler's exception
    assert bc.run(TET, data=b"good", timeout=10).data == b"fine"


# ------------------------------------------------------------------ terminate


def test_terminated_queued_job_never_runs(make_worker, server, make_client):
    c = make_client(server.ports.client)
    # queued before any worker exists: the point is that it never runs once one does
    doomed = c.submit_job(JobSubmission(TET, {"data": b"doomed"}), wait_for_worker=True)
    assert status_of(c, doomed) is Status.QUEUED

    assert c.terminate(doomed).status is Status.TERMINATED
    assert c.terminate(doomed).status is Status.TERMINATED  # a second terminate is harmless
    assert status_of(c, doomed) is Status.TERMINATED
    assert c.terminate("no-such-job").status is Status.INVALID
    with pytest.raises(remus.JobTerminatedError):
        c.retrieve_result(doomed)

    ran: list[str] = []

    def handler(job):
        ran.append(job.id)
        return b"ran " + job["data"]

    make_worker(TET, server.ports.worker, run=handler)
    later = c.submit_job(JobSubmission(TET, {"data": b"later"}))
    wait_for(lambda: status_of(c, later) is Status.FINISHED, timeout=5)
    assert c.retrieve_result(later).data == b"ran later"
    # the worker was alive and took the later job, and the older, terminated one not at all
    assert ran == [later.id]
    assert status_of(c, doomed) is Status.TERMINATED


def test_terminate_running_job_worker_sees_it_and_status_stays(make_worker, server, make_client):
    told = threading.Event()
    running = threading.Event()

    def handler(job):
        if job["data"] == b"long":
            running.set()
            wait_for(lambda: w.job_should_be_terminated(job), timeout=5)
            told.set()
            return b"a result nobody wants"
        return b"next"

    w = make_worker(TET, server.ports.worker, run=handler)
    c = make_client(server.ports.client)
    job = c.submit_job(JobSubmission(TET, {"data": b"long"}))
    wait_for(lambda: status_of(c, job) is Status.IN_PROGRESS, timeout=5)
    # (IN_PROGRESS from the hand-over on: a job cancelled before its handler starts never
    # starts, so wait until it runs)
    assert running.wait(5)

    assert c.terminate(job).status is Status.TERMINATED
    assert told.wait(5), "the worker never saw job_should_be_terminated"
    # the same worker finishes a later job, so everything it said about the first has arrived
    after = c.submit_job(JobSubmission(TET, {"data": b"after"}))
    wait_for(lambda: status_of(c, after) is Status.FINISHED, timeout=5)
    assert status_of(c, job) is Status.TERMINATED
    with pytest.raises(remus.JobTerminatedError) as info:
        c.retrieve_result(job)
    assert info.value.job_id == job.id


def test_late_result_of_a_terminated_job_is_dropped(make_worker, server, make_client):
    c = make_client(server.ports.client)
    w = make_worker(TET, server.ports.worker)
    job = c.submit_job(JobSubmission(TET, {"data": b"x"}))
    taken = w.get_job(timeout=5)
    assert taken.id == job.id
    w.send_progress(taken, 10, "started")
    wait_for(lambda: status_of(c, job) is Status.IN_PROGRESS, timeout=5)

    assert c.terminate(job).status is Status.TERMINATED
    wait_for(lambda: w.job_should_be_terminated(taken), timeout=5)
    w.return_result(taken, b"too late")  # a worker that ignores the cancel
    wait_for(lambda: server.stats["dropped_results"] == 1, timeout=5)
    assert status_of(c, job) is Status.TERMINATED
    with pytest.raises(remus.JobTerminatedError):
        c.retrieve_result(job)


# ------------------------------------------------------------------ stopping the broker


def test_stopping_the_server_ends_every_workers_run_loop(make_worker, server, make_client):
    release = threading.Event()
    holding: list[str] = []

    def handler(job):
        holding.append(job.id)
        release.wait(10)
        return b"x"

    workers = [make_worker(TET, server.ports.worker) for _ in range(3)]
    returned: dict[int, int] = {}
    threads = [
        threading.Thread(
            target=lambda i=i, w=w: returned.__setitem__(i, w.run(handler)),
            name=f"e2e-run-{i}",
            daemon=True,
        )
        for i, w in enumerate(workers)
    ]
    for t in threads:
        t.start()
    try:
        c = make_client(server.ports.client)
        c.submit_jobs(JobSubmission(TET, {"data": b"%d" % i}) for i in range(3))
        wait_for(lambda: len(holding) == 3, timeout=5)  # each worker is busy with a job

        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3, "Server.stop() hung"
        # the broker told each worker to exit while its handler was busy
        wait_for(lambda: all(w.should_terminate for w in workers), timeout=3)
    finally:
        release.set()
    for t in threads:
        t.join(3)
    assert not any(t.is_alive() for t in threads), "a worker's run() did not return"
    assert returned == {0: 1, 1: 1, 2: 1}


@pytest.mark.parametrize("mode", ["echo", "hold"], ids=["idle", "holding-a-job"])
def test_worker_process_exits_when_the_server_stops(server, make_client, make_process, mode):
    proc = make_process([ECHO_WORKER, server.ports.worker, "--mode", mode, "--heartbeat", "0.1"])
    c = make_client(server.ports.client)
    wait_for(lambda: c.can_mesh(ECHO), timeout=10)
    if mode == "hold":
        job = c.submit_job(JobSubmission(ECHO, {"data": b"x"}))
        wait_for(lambda: status_of(c, job) is Status.IN_PROGRESS, timeout=5)
    server.stop()
    assert wait_exit(proc, 5) == 0


# ------------------------------------------------------------------ transports


def test_tcp_client_inproc_worker_ipc_status(make_worker, make_server, make_client, tmp_path):
    inproc = f"inproc://remus-e2e-{uuid.uuid4().hex}"
    status = f"ipc://{tmp_path}/status"
    server = make_server(ServerPorts(client="tcp://127.0.0.1:0", worker=inproc, status=status))
    assert server.ports.client.startswith("tcp://127.0.0.1:")
    assert not server.ports.client.endswith(":0")
    assert server.ports.worker == inproc
    assert server.ports.status == status

    with StatusFeed(server.ports.status, b"job.") as feed:
        make_worker(TET, server.ports.worker, run=lambda job: b"inproc:" + job["data"])
        bc = make_client(server.ports.client, basic=True)
        feed.prime(lambda: bc.submit(NOBODY, data=b"probe", wait_for_worker=True), "job.queued")
        got = bc.run(TET, data=b"hello", timeout=10)
        assert got.data == b"inproc:hello"
        feed.until(lambda t, p: t == "job.finished" and p["job"] == got.job_id)
    assert status_of(bc.client, got.job_id) is Status.FINISHED


def test_ipc_client_and_worker_endpoints(make_worker, make_server, make_client, tmp_path):
    ports = ServerPorts(
        client=f"ipc://{tmp_path}/client",
        worker=f"ipc://{tmp_path}/worker",
        status="tcp://127.0.0.1:0",
    )
    server = make_server(ports)
    assert server.ports.client == ports.client
    assert server.ports.worker == ports.worker
    make_worker(TET, server.ports.worker, run=lambda job: b"ipc:" + job["data"])
    bc = make_client(server.ports.client, basic=True)
    assert bc.run(TET, data=b"hello", timeout=10).data == b"ipc:hello"
    assert bc.client.supported_io_types() == {MESH}


# ------------------------------------------------------------------ progress, complete


def test_ten_thousand_progress_updates_all_arrive_in_order(make_worker, server, make_client):
    n = 10_000

    def handler(job):
        for i in range(1, n + 1):
            w.send_progress(job, i % 101, f"step {i}")
        return b"done"

    w = make_worker(TET, server.ports.worker, run=handler)
    bc = make_client(server.ports.client, basic=True, timeout=10)
    job = bc.submit(TET, data=b"")
    seen = []
    assert bc.wait(job, timeout=30, on_progress=seen.append).data == b"done"

    expected = [(i, i % 101, f"step {i}") for i in range(1, n + 1)]
    got = [(p.seq, p.value, p.message) for p in seen]
    assert len(got) == n
    assert got == expected

    history = bc.client.job_progress(job, since=0)
    assert [(p.seq, p.value, p.message) for p in history] == expected
    tail = bc.client.job_progress(job, since=n - 10)
    assert [(p.seq, p.value, p.message) for p in tail] == expected[-10:]
    assert bc.client.job_progress(job, since=n) == []


# ------------------------------------------------------------------ BasicClient, many jobs


def test_as_completed_yields_every_result_exactly_once(make_worker, server, make_client):
    square = JobRequirements(IOType("Number", "Square"))
    ran: list[str] = []

    def handler(job):
        ran.append(job.id)
        return str(int(job["data"]) ** 2).encode()

    for _ in range(2):
        make_worker(square, server.ports.worker, run=handler, prefetch=8)
    bc = make_client(server.ports.client, basic=True, timeout=10)
    jobs = bc.submit_many(JobSubmission.of(square, b"%d" % i) for i in range(500))
    assert len({j.id for j in jobs}) == 500
    expected = {j.id: b"%d" % (i * i) for i, j in enumerate(jobs)}

    results = list(bc.as_completed(jobs, timeout=30))
    ids = [r.job_id for r in results]
    assert len(ids) == 500
    assert set(ids) == set(expected)
    assert all(r.data == expected[r.job_id] for r in results)
    assert sorted(ran) == sorted(expected)  # and each job ran once


def test_as_completed_yields_or_raises_failures(make_worker, server, make_client):
    reqs = JobRequirements(IOType("Number", "Checked"))

    def handler(job):
        if int(job["data"]) % 7 == 0:
            raise ArithmeticError(f"{int(job['data'])} is a multiple of 7")
        return job["data"]

    for _ in range(2):
        make_worker(reqs, server.ports.worker, run=handler, prefetch=8)
    bc = make_client(server.ports.client, basic=True, timeout=10)
    jobs = bc.submit_many(JobSubmission.of(reqs, b"%d" % i) for i in range(1, 101))
    failing = {j.id for i, j in enumerate(jobs, 1) if i % 7 == 0}

    outcomes = list(bc.as_completed(jobs, timeout=30, errors="yield"))
    assert len(outcomes) == 100
    failed = [o for o in outcomes if isinstance(o, remus.JobFailedError)]
    good = [o for o in outcomes if isinstance(o, remus.JobResult)]
    assert len(failed) + len(good) == 100
    assert {e.job_id for e in failed} == failing
    assert all("multiple of 7" in e.reason for e in failed)
    assert {r.job_id for r in good} == {j.id for j in jobs} - failing

    with pytest.raises(remus.JobFailedError):
        list(bc.as_completed(jobs, timeout=30))


def test_wait_on_a_job_nobody_serves_times_out(server, make_client):
    bc = make_client(server.ports.client, basic=True)
    job = bc.submit(NOBODY, data=b"x", wait_for_worker=True)
    started = time.monotonic()
    with pytest.raises(remus.TimeoutError) as info:
        bc.wait(job, timeout=0.2)
    assert time.monotonic() - started < 2
    assert isinstance(info.value, TimeoutError)
    assert job.id in str(info.value)
    assert status_of(bc.client, job) is Status.QUEUED  # the job keeps waiting


def test_held_progress_replies_are_answered_on_time(server, make_client):
    c = make_client(server.ports.client)
    job = c.submit_job(JobSubmission(NOBODY, {"data": b"x"}), wait_for_worker=True)
    for _ in range(4):
        started = time.monotonic()
        assert c.job_progress(job, since=0, wait=0.05) == []
        elapsed = time.monotonic() - started
        assert elapsed < 0.25, f"a 0.05 s hold was answered after {elapsed:.2f} s"


# ------------------------------------------------------------------ no call blocks forever


def test_client_calls_against_a_stopped_broker_time_out(make_server, make_client):
    server = make_server()
    endpoint = server.ports.client
    server.stop()
    _assert_every_call_times_out(make_client, endpoint)


def test_client_calls_against_nothing_listening_time_out(make_client):
    _assert_every_call_times_out(make_client, free_tcp_endpoint())


def _assert_every_call_times_out(make_client, endpoint: str) -> None:
    c = make_client(endpoint, timeout=0.3)
    bc = make_client(endpoint, basic=True, timeout=0.3)
    calls = {
        "job_status": lambda: c.job_status("some-job"),
        "can_mesh": lambda: c.can_mesh(MESH),
        "supported_io_types": c.supported_io_types,
        "submit_job": lambda: c.submit_job(JobSubmission(TET, {"data": b"x"})),
        "BasicClient.run": lambda: bc.run(TET, data=b"x", timeout=0.3),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(remus.TimeoutError) as info:
            call()
        elapsed = time.monotonic() - started
        assert elapsed < 2, f"{name} took {elapsed:.2f} s with timeout=0.3"
        assert isinstance(info.value, TimeoutError), name
        assert endpoint in str(info.value), name
        assert info.value.endpoint == endpoint, name


# ------------------------------------------------------------------ the status feed


def test_status_feed_publishes_job_and_worker_events(make_worker, server, make_client):
    def handler(job):
        w.send_progress(job, 42, "meshing")
        return b"ok"

    # subscribe to worker. first: once a job. event arrives, both subscriptions are live
    with StatusFeed(server.ports.status, b"worker.", b"job.") as feed:
        c = make_client(server.ports.client)
        feed.prime(
            lambda: c.submit_job(JobSubmission(NOBODY, {}), wait_for_worker=True), "job.queued"
        )

        w = make_worker(TET, server.ports.worker, run=handler)
        _, registered = feed.until(
            lambda t, p: t == "worker.registered" and p.get("pid") == os.getpid()
        )
        assert registered["worker_name"] == "TetMesher"
        assert registered["io_type"] == ["Mesh2D", "Mesh3D"]

        job = c.submit_job(JobSubmission(TET, {"data": b"x"}))
        feed.until(lambda t, p: t == "job.finished" and p.get("job") == job.id)
        assert feed.for_job(job.id) == [
            "job.queued",
            "job.assigned",
            "job.started",
            "job.progress",
            "job.finished",
        ]
        events = {t: p for t, p in feed.events if p.get("job") == job.id}
        assert events["job.progress"]["value"] == 42
        assert events["job.progress"]["message"] == "meshing"
        assert events["job.progress"]["seq"] == 1
        assert events["job.finished"]["status"] == "FINISHED"
        assert all(p["io_type"] == ["Mesh2D", "Mesh3D"] for p in events.values())
        assert all(t.startswith(("job.", "worker.")) for t in feed.topics())


# ------------------------------------------------------------------ the command line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("launcher", ["python -m remus.server", "remus server"])
def test_server_process_exits_cleanly_on_signal(make_process, make_client, launcher, sig):
    if launcher == "remus server":
        proc, ports = start_cli_server(make_process)
    else:
        proc, ports = start_server_process(make_process)
    for endpoint in (ports.client, ports.worker, ports.status):
        assert endpoint.startswith("tcp://127.0.0.1:")
        assert not endpoint.endswith(":0"), "the ready line must report the real port"
    c = make_client(ports.client)
    assert c.supported_io_types() == set()  # it serves

    started = time.monotonic()
    proc.send_signal(sig)
    assert wait_exit(proc, 5) == 0
    assert time.monotonic() - started < 3
