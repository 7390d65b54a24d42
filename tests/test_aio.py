"""``remus.aio.AsyncClient`` against a real broker: the client suite's scenarios, many
coroutines on one client, and cancellation.

Each test runs its coroutines with ``asyncio.run`` (no plugin), under a deadline of its own.
Brokers and workers come from the usual fixtures; workers run on threads in this process,
except where a broker must be suspended (SIGSTOP): that one is a ``remus server`` process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_async import arun, until
from helpers_e2e import free_tcp_endpoint, is_stopped, start_cli_server
from helpers_security import KeyRing, SecureWorkers, held_until

import remus
from remus import IOType, Job, JobRequirements, JobSubmission, Status
from remus import files as rf
from remus.aio import AsyncClient
from remus.server import Server, ServerPorts

pytestmark = pytest.mark.timeout(60)

UPPER = IOType("Text", "Upper")
NOBODY = IOType("Nothing", "Nowhere")  # no worker ever serves this
#: the slack allowed past a timeout (as in test_client_timeouts.py)
SLACK = 1.0


def shout(job: Any) -> bytes:
    """The README's worker: a progress update, then the data in upper case (``bad...`` fails)."""
    job.send_progress(50, "halfway")
    data = job["data"]
    if data.startswith(b"bad"):
        raise ValueError("nothing to shout")
    return data.upper()


class Holder:
    """A handler that says 40% "meshing", then holds its job until released (or cancelled,
    or its worker told to exit)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.worker: Any = None

    def __call__(self, job: Any) -> bytes:
        job.send_progress(40, "meshing")
        held_until(self.release, self.worker, job, self.started)
        return b"held " + job["data"]


def holding_worker(make_worker: Any, endpoint: str) -> Holder:
    holder = Holder()
    holder.worker = make_worker(JobRequirements(UPPER), endpoint, run=holder)
    return holder


# ------------------------------------------------------------------ the client suite's scenarios


def test_one_job_all_the_way(make_worker: Any, server: Server) -> None:
    make_worker(JobRequirements(UPPER, worker_name="Shouter"), server.ports.worker, run=shout)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            assert await c.supported_io_types() == {UPPER}
            assert await c.can_mesh(UPPER) is True
            assert await c.can_mesh(NOBODY) is False
            (reqs,) = await c.retrieve_requirements(UPPER)
            assert reqs.worker_name == "Shouter"

            seen: list[Any] = []
            result = await c.run(UPPER, b"hello", timeout=10, on_progress=seen.append)
            assert result.data == b"HELLO"
            assert [(u.value, u.message, u.seq) for u in seen] == [(50, "halfway", 1)]

            heard: list[Any] = []

            async def later(update: Any) -> None:  # a coroutine callback is awaited
                await asyncio.sleep(0)
                heard.append(update)

            job = await c.submit(UPPER, "str as UTF-8", extra=b"a named content")
            got = await c.wait(job, timeout=10, on_progress=later)
            assert got.job_id == job.id and got.data == b"STR AS UTF-8"
            assert [u.message for u in heard] == ["halfway"]
            status = await c.job_status(job)
            assert status.status is Status.FINISHED
            assert status.progress is not None and status.progress.value == 50
            assert (await c.retrieve_result(job.id)).data == b"STR AS UTF-8"
            assert [s.status for s in await c.job_statuses([job, "never-submitted"])] == [
                Status.FINISHED,
                Status.INVALID,
            ]
            assert c.conn.in_flight == 0

    arun(main)


def test_a_hundred_coroutines_share_one_client(make_worker: Any, server: Server) -> None:
    make_worker(JobRequirements(UPPER), server.ports.worker, run=shout, slots=8)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=10) as c:

            async def one(i: int) -> tuple[int, bytes, str]:
                text = f"job number {i}".encode()
                if i % 3 == 0:  # submit, ask, then wait: three calls interleaved with the rest
                    job = await c.submit(UPPER, text)
                    assert (await c.job_status(job)).job_id == job.id
                    result = await c.wait(job, timeout=20)
                else:
                    result = await c.run(UPPER, text, timeout=20)
                return i, bytes(result.data), result.job_id

            done = await asyncio.gather(*(one(i) for i in range(100)))
            assert [data for _, data, _ in done] == [f"JOB NUMBER {i}".encode() for i in range(100)]
            assert len({job_id for _, _, job_id in done}) == 100
            assert c.conn.in_flight == 0 and c.conn.dropped == 0

    arun(main)


def test_progress_is_an_async_iterator(make_worker: Any, server: Server) -> None:
    go = threading.Event()
    steps = [(10, "reading"), (None, "no value"), (60, "meshing"), (90, "writing"), (100, "done")]

    def stepper(job: Any) -> bytes:
        job.send_progress(*steps[0])
        go.wait(20)  # the rest once the client has seen the first: they come as they happen
        for value, message in steps[1:]:
            job.send_progress(value, message)
        return b"stepped"

    make_worker(JobRequirements(UPPER), server.ports.worker, run=stepper)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            job = await c.submit(UPPER, b"x")
            seen = []
            async for update in c.job_progress(job, timeout=20):
                seen.append((update.seq, update.value, update.message))
                go.set()
            assert seen == [(i, v, m) for i, (v, m) in enumerate(steps, 1)]
            # the iteration ended with the job: it is over
            assert (await c.job_status(job)).status is Status.FINISHED
            # from an update on, after the end: the rest, then it stops at once
            assert [u.seq async for u in c.job_progress(job, since=3)] == [4, 5]
            with pytest.raises(remus.UnknownJobError):
                async for _ in c.job_progress("never-submitted"):
                    pass
            assert c.conn.in_flight == 0

    arun(main)


def test_as_completed_yields_each_job_once_with_its_progress(
    make_worker: Any, server: Server
) -> None:
    make_worker(JobRequirements(UPPER), server.ports.worker, run=shout, slots=4)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            lines = [b"bad %d" % i if i % 5 == 0 else b"line %d" % i for i in range(20)]
            jobs = await c.submit_many(JobSubmission.of(UPPER, line) for line in lines)
            assert len(jobs) == 20
            updates: dict[str, list[int | None]] = {}

            async def progress(job: Job, update: Any) -> None:
                updates.setdefault(job.id, []).append(update.value)

            got: dict[str, Any] = {}
            async for outcome in c.as_completed(
                jobs, timeout=20, errors="yield", on_progress=progress
            ):
                job_id = outcome.job_id
                assert job_id not in got, "a job came twice"
                got[job_id] = outcome
            for job, line in zip(jobs, lines, strict=True):
                if line.startswith(b"bad"):
                    assert isinstance(got[job.id], remus.JobFailedError)
                    assert "nothing to shout" in got[job.id].reason
                else:
                    assert got[job.id].data == line.upper()
            assert updates == {job.id: [50] for job in jobs}

            with pytest.raises(remus.JobFailedError):  # errors="raise", the default
                async for _ in c.as_completed(jobs[:1]):
                    pass
            assert [r async for r in c.as_completed([])] == []

    arun(main)


def test_failures_are_the_sync_clients_exceptions(
    make_worker: Any, server: Server, tmp_path: Path
) -> None:
    make_worker(JobRequirements(UPPER), server.ports.worker, run=shout)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            with pytest.raises(remus.JobFailedError) as info:
                await c.run(UPPER, b"bad input", timeout=10)
            assert "ValueError: nothing to shout" in info.value.reason
            assert "raise ValueError" in info.value.traceback
            job = await c.submit(UPPER, b"bad again")
            with pytest.raises(remus.JobFailedError):
                await c.wait(job, timeout=10)
            with pytest.raises(remus.JobFailedError):
                await c.retrieve_result(job)
            assert (await c.job_status(job)).status is Status.FAILED

            with pytest.raises(remus.NoWorkerError):
                await c.run(NOBODY, b"x")
            with pytest.raises(remus.UnknownJobError):
                await c.wait("never-submitted")
            with pytest.raises(remus.UnknownJobError):
                await c.send_control("never-submitted", b"stop")
            with pytest.raises(remus.FileError):  # before anything is sent
                await c.submit(UPPER, files=[tmp_path / "missing.txt"])
            with pytest.raises(TypeError):
                await c.jobs(status="FINISHED")  # type: ignore[arg-type]
            # and the client still works
            assert (await c.run(UPPER, b"fine", timeout=10)).data == b"FINE"

    arun(main)


def test_a_file_job_from_another_host(
    make_worker: Any, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client on another host (REMUS_HOST_ID): its file travels as bytes (read off the
    event loop), the worker's result file comes back as bytes, saved where the client says."""
    mesh = IOType("STL", "Mesh3D")

    def mesher(job: Any) -> list[str]:
        with open(job.files[0].path) as f:
            text = f.read()
        out = f"{job.workdir}/part.msh"
        with open(out, "w") as f:
            f.write(f"mesh of {text!r} with {' '.join(job.args)}")
        return [out]

    make_worker(JobRequirements(mesh), server.ports.worker, run=mesher)
    (tmp_path / "part.stl").write_text("solid part")
    monkeypatch.setenv("REMUS_HOST_ID", "another-host")

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            assert c.host == "another-host"
            result = await c.run(mesh, files=[tmp_path / "part.stl"], args=["--fine"], timeout=10)
            (saved,) = result.save(tmp_path / "meshes")
            assert Path(saved).read_text() == "mesh of 'solid part' with --fine"

    arun(main)


def test_large_files_stream_in_chunks_both_ways_off_the_event_loop(
    make_worker: Any, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file over STREAM_FROM from another host is uploaded in chunks, and the worker's large
    result file is fetched in chunks, on threads: run, retrieve_result and as_completed."""
    copy = IOType("Big", "Copy")

    def copier(job: Any) -> list[str]:
        out = f"{job.workdir}/copy.bin"
        shutil.copyfile(job.files[0].path, out)
        return [out]

    make_worker(JobRequirements(copy), server.ports.worker, run=copier)
    data = os.urandom(rf.STREAM_FROM + 12_345)
    (tmp_path / "big.bin").write_bytes(data)
    monkeypatch.setenv("REMUS_HOST_ID", "another-host")

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            result = await c.run(copy, files=[tmp_path / "big.bin"], timeout=30)
            assert result.files[0].data is None, "it came in chunks, to a file"
            assert Path(result.files[0].path).read_bytes() == data
            again = await c.retrieve_result(result.job_id)
            assert Path(again.files[0].path).read_bytes() == data
            job = await c.submit(copy, files=[tmp_path / "big.bin"])
            async for done in c.as_completed([job], timeout=30):
                assert Path(done.files[0].path).read_bytes() == data

    arun(main)


def test_terminate_ends_a_wait_with_JobTerminatedError(make_worker: Any, server: Server) -> None:
    holder = holding_worker(make_worker, server.ports.worker)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            job = await c.submit(UPPER, b"x")
            heard = asyncio.Event()
            waiting = asyncio.create_task(c.wait(job, on_progress=lambda _: heard.set()))
            await asyncio.wait_for(heard.wait(), 10)
            status = await c.terminate(job)
            assert status.status is Status.TERMINATED
            with pytest.raises(remus.JobTerminatedError):
                await waiting
            assert (await c.job_status(job)).status is Status.TERMINATED
            assert (await c.terminate(job)).status is Status.TERMINATED  # changes nothing

    arun(main)
    assert holder.started.is_set()


def test_workers_jobs_and_stats(make_worker: Any, server: Server) -> None:
    make_worker(JobRequirements(UPPER, worker_name="Shouter"), server.ports.worker, run=shout)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            jobs = await c.submit_many(
                [JobSubmission.of(UPPER, b"a"), JobSubmission.of(UPPER, b"b")]
            )
            assert len([r async for r in c.as_completed(jobs, timeout=10)]) == 2
            (worker,) = await c.workers()
            assert worker.io_type == UPPER and worker.worker_name == "Shouter"
            listed = await c.jobs(status=Status.FINISHED, io_type=UPPER)
            assert {j.id for j in listed} == {j.id for j in jobs}
            assert await c.jobs(io_type=NOBODY) == []
            assert len(await c.jobs(limit=1)) == 1
            stats = await c.stats()
            assert stats.jobs["FINISHED"] == 2 and stats.totals["submitted"] == 2
            assert stats.endpoints["client"] == server.ports.client

    arun(main)


# ------------------------------------------------------------------ cancellation


def test_a_cancelled_wait_leaves_no_stray_reply(make_worker: Any, server: Server) -> None:
    holder = holding_worker(make_worker, server.ports.worker)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=2) as c:
            job = await c.submit(UPPER, b"x")
            # a wait that has heard of the job (its first answer came), cancelled by hand
            heard = asyncio.Event()
            task = asyncio.create_task(c.wait(job, on_progress=lambda _: heard.set()))
            await asyncio.wait_for(heard.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # and one ended by asyncio.timeout: a builtin TimeoutError, the job untouched
            started = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                async with asyncio.timeout(0.3):
                    await c.wait(job)
            assert not isinstance(info.value, remus.TimeoutError)
            assert time.monotonic() - started < 0.3 + SLACK
            # a run cancelled while the broker holds its submit's answer
            running = asyncio.create_task(c.run(UPPER, b"second"))
            await until(lambda: c.conn.in_flight >= 1)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            assert c.conn.in_flight == 0, "a cancelled call is forgotten at once"

            # the broker still holds those requests; calls made meanwhile get their own replies
            calls = await asyncio.gather(
                c.job_status(job),
                c.job_statuses([job, "never-submitted"]),
                c.workers(),
                c.can_mesh(NOBODY),
                c.stats(),
            )
            status, statuses, workers, can_mesh, stats = calls
            assert status.job_id == job.id and status.status is Status.IN_PROGRESS
            assert status.progress is not None and status.progress.message == "meshing"
            assert [s.status for s in statuses] == [Status.IN_PROGRESS, Status.INVALID]
            assert len(workers) == 1 and can_mesh is False
            assert stats.totals["submitted"] == 2

            # the held requests are answered by their hold's end (at most the client's
            # timeout / 2 here) and dropped by id
            await until(lambda: c.conn.dropped >= 3, timeout=5)
            holder.release.set()
            result = await c.wait(job, timeout=10)
            assert result.data == b"held x"
            assert c.conn.in_flight == 0

    arun(main)


def test_cancelling_some_of_many_calls_leaves_the_others_right(
    make_worker: Any, server: Server
) -> None:
    make_worker(JobRequirements(UPPER), server.ports.worker, run=shout, slots=4)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            jobs = [await c.submit(UPPER, b"job %d" % i) for i in range(20)]
            tasks = [asyncio.create_task(c.wait(job, timeout=20)) for job in jobs]
            for task in tasks[::2]:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for i, outcome in enumerate(outcomes):
                if i % 2 == 0:
                    assert isinstance(outcome, asyncio.CancelledError)
                else:
                    assert outcome.data == b"JOB %d" % i
            # the cancelled waits' jobs ran all the same
            for i in range(0, 20, 2):
                assert (await c.wait(jobs[i], timeout=10)).data == b"JOB %d" % i
            assert c.conn.in_flight == 0

    arun(main)


# ------------------------------------------------------------------ a broker that does not answer


def test_calls_against_an_absent_broker_end_on_time() -> None:
    endpoint = free_tcp_endpoint()
    job = Job("nobody-knows", JobRequirements(UPPER))

    async def main() -> None:
        short = AsyncClient(endpoint, timeout=0.3)
        patient = AsyncClient(endpoint, timeout=30)
        calls: dict[str, tuple[float, Callable[[], Awaitable[Any]]]] = {
            "job_status (client's)": (0.3, lambda: short.job_status(job)),
            "run (client's)": (0.3, lambda: short.run(UPPER, b"x")),
            "wait (client's)": (0.3, lambda: short.wait(job)),
            "as_completed (client's)": (0.3, lambda: alist(short.as_completed([job]))),
            "job_progress (client's)": (0.3, lambda: alist(short.job_progress(job))),
            "stats (its own)": (0.3, lambda: patient.stats(timeout=0.3)),
            "submit (its own)": (0.5, lambda: patient.submit(UPPER, b"x", timeout=0.5)),
            "run (its own)": (0.5, lambda: patient.run(UPPER, b"x", timeout=0.5)),
            "wait (its own)": (1.0, lambda: patient.wait(job, timeout=1.0)),
            "as_completed (its own)": (0.5, lambda: alist(patient.as_completed([job], 0.5))),
        }
        try:
            ended = await asyncio.gather(*(timed(call) for _, call in calls.values()))
            # cancelled by asyncio.timeout: asyncio's TimeoutError, and nothing left waiting
            with pytest.raises(TimeoutError) as info:
                async with asyncio.timeout(0.2):
                    await patient.job_status(job)
            assert not isinstance(info.value, remus.TimeoutError)
            assert patient.conn.in_flight == short.conn.in_flight == 0
        finally:
            await short.close()
            await patient.close()
        for (name, (timeout, _)), (elapsed, error) in zip(calls.items(), ended, strict=True):
            assert isinstance(error, remus.TimeoutError), (name, repr(error))
            assert elapsed < timeout + SLACK, f"{name} took {elapsed:.2f} s with {timeout}"
            assert endpoint in str(error), (name, str(error))

    arun(main)


@pytest.mark.skipif(sys.platform == "win32", reason="signals")
def test_waits_on_a_suspended_broker_end_on_time(make_process: Any, make_worker: Any) -> None:
    proc, ports = start_cli_server(make_process)
    holding_worker(make_worker, ports.worker)

    async def main() -> None:
        async with (
            AsyncClient(ports.client, timeout=1.0) as short,
            AsyncClient(ports.client, timeout=30.0) as patient,
        ):
            job = await patient.submit(UPPER, b"x", timeout=20)

            async def running() -> bool:
                return (await patient.job_status(job)).progress is not None

            await until(running, timeout=20)
            heard = (asyncio.Event(), asyncio.Event(), asyncio.Event())
            started = time.monotonic()
            tasks = [
                asyncio.create_task(end_of(call))
                for call in (
                    lambda: short.wait(job, on_progress=lambda _: heard[0].set()),
                    lambda: patient.wait(job, timeout=3.0, on_progress=lambda _: heard[1].set()),
                    lambda: follow_all(short.job_progress(job), heard[2]),
                )
            ]
            for event in heard:  # each wait has heard of the job before the broker stops
                await asyncio.wait_for(event.wait(), 2)
            proc.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                await until(lambda: is_stopped(proc.pid))  # (it takes effect asynchronously)
                asked, error = await end_of(lambda: patient.job_status(job, timeout=0.5))
                assert isinstance(error, remus.TimeoutError), repr(error)
                assert asked < stopped + 0.5 + SLACK
                ended = await asyncio.gather(*tasks)
            finally:
                proc.send_signal(signal.SIGCONT)
            limits = {"wait, silent broker": stopped + 1.0, "wait(timeout=3)": started + 3.0}
            limits["job_progress, silent broker"] = stopped + 1.0
            for (what, limit), (end, error) in zip(limits.items(), ended, strict=True):
                assert isinstance(error, remus.TimeoutError), (what, repr(error))
                assert end < limit + SLACK, f"{what}: {end - limit:.2f} s late: {error}"
                assert "IN_PROGRESS, 40% 'meshing'" in str(error), (what, str(error))
                assert ports.client in str(error), (what, str(error))

    arun(main, timeout=45)


def test_a_broker_stopping_without_a_journal_ends_waits_at_once(
    make_worker: Any, server: Server
) -> None:
    holding_worker(make_worker, server.ports.worker)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=30) as c:
            job = await c.submit(UPPER, b"x")
            heard = (asyncio.Event(), asyncio.Event())
            waits = [
                asyncio.create_task(end_of(call))
                for call in (
                    lambda: c.wait(job, on_progress=lambda _: heard[0].set()),
                    lambda: alist(c.as_completed([job], on_progress=lambda *_: heard[1].set())),
                )
            ]
            for event in heard:  # each wait has heard of the job before the broker stops
                await asyncio.wait_for(event.wait(), 10)
            await asyncio.to_thread(server.stop)
            stopped = time.monotonic()
            for end, error in await asyncio.gather(*waits):
                assert isinstance(error, remus.BrokerStoppedError), repr(error)
                assert "keeps no journal" in str(error), str(error)
                assert end < stopped + SLACK, "a stopping broker answers held requests at once"

    arun(main)


async def alist(items: Any) -> list[Any]:
    return [item async for item in items]


async def follow_all(updates: Any, heard: asyncio.Event) -> None:
    async for _ in updates:
        heard.set()


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, BaseException | None]:
    """Run ``call()``; returns the seconds it took and what it raised (None if nothing)."""
    started = time.monotonic()
    end, error = await end_of(call)
    return end - started, error


async def end_of(call: Callable[[], Awaitable[Any]]) -> tuple[float, BaseException | None]:
    """Run ``call()``; returns when it ended (monotonic) and what it raised (None if nothing)."""
    try:
        await call()
    except Exception as e:
        return time.monotonic(), e
    return time.monotonic(), None


# ------------------------------------------------------------------ lifetime and endpoints


def test_a_client_at_the_worker_endpoint_is_told_where_to_connect(server: Server) -> None:
    async def main() -> None:
        async with AsyncClient(server.ports.worker, timeout=5) as c:
            # concurrent calls each hear the broker's answer, which names no request
            outcomes = await asyncio.gather(
                c.job_status("some-job"), c.run(UPPER, b"x"), return_exceptions=True
            )
            for error in outcomes:
                assert isinstance(error, remus.WrongEndpointError), repr(error)
                assert f"clients connect to its client endpoint {server.ports.client}" in str(error)

    arun(main)


def test_an_inproc_broker_in_this_process(make_worker: Any, make_server: Any) -> None:
    """The client's socket is made in the process's shared context, where a Server binds."""
    inproc = f"inproc://remus-aio-{uuid.uuid4().hex}"
    server = make_server(ServerPorts(client=inproc, worker="tcp://127.0.0.1:0"))
    make_worker(JobRequirements(UPPER), server.ports.worker, run=shout)

    async def main() -> None:
        async with AsyncClient(inproc, timeout=5) as c:
            assert (await c.run(UPPER, b"in process", timeout=10)).data == b"IN PROCESS"

    arun(main)


def test_close_ends_waiting_calls_and_a_client_keeps_to_its_loop(
    make_worker: Any, server: Server
) -> None:
    holding_worker(make_worker, server.ports.worker)
    c = AsyncClient(server.ports.client, timeout=5)

    async def first() -> None:
        job = await c.submit(UPPER, b"x")
        waiting = asyncio.create_task(c.wait(job))
        await until(lambda: c.conn.in_flight >= 1)
        assert "in_flight=1" in repr(c)
        await c.close()
        with pytest.raises(RuntimeError, match="closed"):
            await waiting
        with pytest.raises(RuntimeError, match="closed"):
            await c.job_status(job)
        await c.close()  # idempotent
        assert "closed" in repr(c)

    arun(first)

    other = AsyncClient(server.ports.client, timeout=5)
    try:
        arun(other.stats)
        with pytest.raises(RuntimeError, match="event loop"):
            arun(other.stats)
    finally:
        asyncio.run(other.close())


def test_secure_mode_with_keys_and_a_refused_key_says_so(make_server: Any, tmp_path: Path) -> None:
    keys = KeyRing(tmp_path / "keys")
    worker_key, alice_key, eve_key = keys.worker("w"), keys.client("alice"), keys.stranger("eve")
    secure = make_server(**keys.server_options())
    workers = SecureWorkers(keys)
    try:
        workers(JobRequirements(UPPER), secure.ports.worker, worker_key, run=shout)

        async def main() -> None:
            async with (
                AsyncClient(
                    secure.ports.client,
                    timeout=5,
                    secret_key=alice_key,
                    server_key=keys.broker_public,
                ) as alice,
                AsyncClient(
                    secure.ports.client,
                    timeout=1,
                    secret_key=eve_key,
                    server_key=keys.broker_public,
                ) as eve,
            ):
                assert (await alice.run(UPPER, b"secret", timeout=10)).data == b"SECRET"
                started = time.monotonic()
                with pytest.raises(remus.TimeoutError) as info:
                    await eve.job_status("any", timeout=1)
                assert time.monotonic() - started < 1 + SLACK
                assert "refused" in str(info.value), str(info.value)

        arun(main)
    finally:
        workers.close()


def test_a_job_after_others_through_the_async_client(make_worker: Any, server: Server) -> None:
    """``after=`` on submit and run, as with BasicClient: the last job sees the others' results."""
    step = IOType("Async", "Step")

    def handle(job: Any) -> bytes:
        return job["data"] + b"".join(b"<" + job.inputs_from(p).data for p in job.after)

    make_worker(JobRequirements(step), server.ports.worker, run=handle)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            first = await c.submit(step, b"a")
            second = await c.submit(step, b"b", after=[first])
            result = await c.run(step, b"c", after=[second, first], timeout=10)
            assert result.data == b"c<b<a<a"

    arun(main)


def test_submit_many_names_a_group(make_worker: Any, server: Server) -> None:
    make_worker(JobRequirements(UPPER), server.ports.worker, run=shout)

    async def main() -> None:
        async with AsyncClient(server.ports.client, timeout=5) as c:
            jobs = await c.submit_many(
                [JobSubmission(UPPER, {"data": b"x"}) for _ in range(3)], group="nightly"
            )
            results = [r async for r in c.as_completed(jobs, timeout=10)]
            assert len(results) == 3
            assert (await c.stats()).groups == {"nightly": {"FINISHED": 3}}

    arun(main)
