"""Workflows (issue 14): jobs submitted ``after`` others, whole graphs, and what a failure does.

A job submitted after others is WAITING until they have all FINISHED, then runs with their
results (``job.inputs_from``). One that fails, expires or is terminated fails everything
downstream at once, naming itself. Graphs go in one call (``BasicClient.submit_graph``) and
survive a broker restart with the journal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_e2e import StatusFeed, restart_cli_server, sigkill, start_cli_server

from remus import (
    IOType,
    JobFailedError,
    JobSubmission,
    JobTerminatedError,
    ServerError,
    Status,
)
from remus import protocol as p
from remus.client import Step
from remus.worker import Job

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from flow_worker import FLOW, step

FLOW_WORKER = str(Path(__file__).parent / "workers" / "flow_worker.py")


def sub(data: bytes) -> JobSubmission:
    return JobSubmission(FLOW, {"data": data})


@pytest.fixture
def flow(make_server: Callable[..., Any], make_worker: Callable[..., Any], make_client: Any) -> Any:
    """A broker, a worker running ``step``, and a BasicClient of the broker."""
    server = make_server()
    make_worker(FLOW, server.ports.worker, run=step)
    return make_client(server.ports.client, basic=True, timeout=10)


def test_a_chain_of_three_passes_each_result_to_the_next(flow: Any) -> None:
    a = flow.submit(FLOW, b"a")
    b = flow.submit(FLOW, b"b", after=[a])
    c = flow.submit(FLOW, b"c", after=[b.id])
    assert flow.wait(c, timeout=10).data == b"c(b(a))"


def test_a_diamond_in_one_call(flow: Any) -> None:
    jobs = flow.submit_graph(
        {
            "join": Step(sub(b"d"), after=["left", "right"]),  # (names before their steps)
            "left": Step(sub(b"l"), after=["root"]),
            "right": Step(sub(b"r"), after=["root"]),
            "root": sub(b"a"),
        }
    )
    assert list(jobs) == ["join", "left", "right", "root"]
    assert flow.wait(jobs["join"], timeout=10).data == b"d(l(a)+r(a))"


def test_a_job_waits_saying_for_what_until_its_predecessors_finish(
    make_server: Callable[..., Any], make_worker: Callable[..., Any], make_client: Any
) -> None:
    server = make_server()
    c = make_client(server.ports.client, basic=True, timeout=10)
    first = c.submit(FLOW, b"a", wait_for_worker=True)  # nobody serves it yet
    then = c.submit(FLOW, b"b", after=[first], wait_for_worker=True)
    status = c.client.job_status(then)
    assert status.status is Status.WAITING and not status.status.done
    assert status.reason == f"waiting for 1 job to finish: {first.id}"
    make_worker(FLOW, server.ports.worker, run=step)
    assert c.wait(then, timeout=10).data == b"b(a)"


def test_a_failure_in_the_middle_fails_everything_downstream_at_once(
    make_server: Callable[..., Any], make_worker: Callable[..., Any], make_client: Any
) -> None:
    server = make_server()
    c = make_client(server.ports.client, basic=True, timeout=10)
    jobs = c.submit_graph(
        {
            "a": sub(b"a"),
            "b": Step(sub(b"fail"), after=["a"]),
            "c": Step(sub(b"c"), after=["b"]),
            "d": Step(sub(b"d"), after=["c", "a"]),
            "other": Step(sub(b"o"), after=["a"]),
        },
        wait_for_worker=True,
    )
    make_worker(FLOW, server.ports.worker, run=step)
    with pytest.raises(JobFailedError, match="fails on purpose"):
        c.wait(jobs["b"], timeout=10)
    # no wait: they were failed in the same broker pass as b
    for name, cause in (("c", "b"), ("d", "c")):
        status = c.client.job_status(jobs[name])
        assert status.status is Status.FAILED
        assert f"after job {jobs[cause].id}, which ended FAILED" in status.reason
    assert "fails on purpose" in c.client.job_status(jobs["c"]).reason
    assert c.wait(jobs["other"], timeout=10).data == b"o(a)", "a branch that did not fail runs"


def test_a_terminated_predecessor_fails_what_waits_for_it(flow: Any, make_server: Any) -> None:
    server = make_server()  # (no worker: the first job stays queued)
    c = flow.__class__(server.ports.client, timeout=10)
    try:
        first = c.submit(FLOW, b"a", wait_for_worker=True)
        then = c.submit(FLOW, b"b", after=[first], wait_for_worker=True)
        c.client.terminate(first)
        with pytest.raises(JobFailedError, match="ended TERMINATED"):
            c.wait(then, timeout=5)
        with pytest.raises(JobTerminatedError):
            c.wait(first, timeout=5)
    finally:
        c.close()


def test_a_cycle_and_an_unknown_job_are_refused(flow: Any) -> None:
    with pytest.raises(ValueError, match=r"cycle: (x -> y -> x|y -> x -> y)"):
        flow.submit_graph({"x": Step(sub(b"x"), after=["y"]), "y": Step(sub(b"y"), after=["x"])})
    with pytest.raises(ServerError, match="does not know") as info:
        flow.submit(FLOW, b"b", after=["no-such-job"])
    assert info.value.code == "bad-after"
    # a raw submit that names a job later in the same message (how a cycle would look)
    c = flow.client
    first, second = c.new_job_id(), c.new_job_id()
    jobs = [
        p.SubmittedJob(first, sub(b"1").requirements, ("data",), [b"1"], after=(second,)),
        p.SubmittedJob(second, sub(b"2").requirements, ("data",), [b"2"], after=(first,)),
    ]
    with pytest.raises(ServerError, match="comes after it in the same submit") as info:
        c.call(p.SubmitRequest, jobs, {})
    assert info.value.code == "bad-after"
    assert c.job_status(first).status is Status.INVALID, "refused whole"


def test_file_results_pass_to_the_next_job(
    make_server: Callable[..., Any],
    make_worker: Callable[..., Any],
    make_client: Any,
    tmp_path: Path,
) -> None:
    server = make_server()
    made, used = IOType("Make", "File"), IOType("Use", "File")

    def make(job: Job) -> list[str]:
        out = os.path.join(tmp_path, "part.txt")  # (a data job has no private folder)
        with open(out, "w") as f:
            f.write("made by " + job["data"].decode())
        return [out]

    def use(job: Job) -> bytes:
        (pred,) = job.after
        (handle,) = job.inputs_from(pred).files
        with open(handle.path) as f:
            return f.read().encode() + b", used"

    make_worker(made, server.ports.worker, run=make)
    make_worker(used, server.ports.worker, run=use)
    c = make_client(server.ports.client, basic=True, timeout=10)
    first = c.submit(made, b"one")
    assert c.wait(c.submit(used, b"", after=[first]), timeout=10).data == b"made by one, used"


def test_a_graph_survives_a_broker_sigkill_and_restart_with_the_journal(
    make_process: Callable[..., subprocess.Popen[str]], make_client: Any, tmp_path: Path
) -> None:
    journal = str(tmp_path / "journal.db")
    server, ports = start_cli_server(make_process, "--journal", journal)
    c = make_client(ports.client, basic=True, timeout=10)
    jobs = c.submit_graph(
        {
            "a": sub(b"a"),
            "b": Step(sub(b"b"), after=["a"]),
            "c": Step(sub(b"c"), after=["a"]),
            "d": Step(sub(b"d"), after=["b", "c"]),
        },
        wait_for_worker=True,
    )
    assert c.client.job_status(jobs["d"]).status is Status.WAITING
    sigkill(server)
    restart_cli_server(make_process, ports, "--journal", journal)
    started = time.monotonic()
    while c.client.job_status(jobs["d"], timeout=10).status is not Status.WAITING:
        assert time.monotonic() - started < 10, "d waits again after the restart"
    make_process([FLOW_WORKER, ports.worker])
    assert c.wait(jobs["d"], timeout=30).data == b"d(b(a)+c(a))"


# ---------------------------------------------------------------------------- groups


def test_a_group_has_one_status_a_wait_in_order_and_a_terminate(
    make_server: Callable[..., Any], make_worker: Callable[..., Any], make_client: Any
) -> None:
    server = make_server()
    feed = StatusFeed(server.ports.status, b"job.")
    c = make_client(server.ports.client, basic=True, timeout=10)
    nobody = IOType("Nobody", "Serves")
    feed.prime(lambda: c.submit(nobody, b"probe", wait_for_worker=True), "job.queued")
    group = c.submit_group([sub(b"%d" % i) for i in range(5)], name="batch-1", wait_for_worker=True)
    assert len(group) == 5 and group.name == "batch-1"
    status = group.status()
    assert status.counts == {Status.QUEUED: 5} and not status.done
    stats = c.client.stats()
    assert stats.groups == {"batch-1": {"QUEUED": 5}}
    assert sum(j.group == "batch-1" for j in c.client.jobs()) == 5

    make_worker(FLOW, server.ports.worker, run=step)
    assert [r.data for r in group.wait(timeout=10)] == [b"0", b"1", b"2", b"3", b"4"]
    assert group.status().done and group.status().finished == 5
    assert sorted(r.data for r in group.as_completed(timeout=10)) == [b"%d" % i for i in range(5)]
    _, event = feed.until(lambda topic, _: topic == "job.finished")
    assert event["group"] == "batch-1"
    feed.sock.close()

    later = c.submit_group(
        [JobSubmission(nobody, {"data": b"x"}) for _ in range(3)],
        wait_for_worker=True,
    )
    assert later.name.startswith("group-")
    after = later.terminate()
    assert after.done and after.counts == {Status.TERMINATED: 3}
    failed = later.wait(timeout=5, errors="yield")
    assert [type(e) for e in failed] == [JobTerminatedError] * 3
