"""Monitoring hooks: ``Server(monitors=[...])`` calls ``on_error``, ``on_latency`` and
``on_resource`` with a MonitorEvent, from its own thread, for a real broker and a worker
thread; a monitor that raises keeps getting events; a monitor with no hook is refused."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from conftest import wait_for
from helpers_cli import ECHO, Handler

from remus.client import BasicClient
from remus.errors import JobFailedError
from remus.server import Server, ServerPorts
from remus.server.monitors import ERROR_TOPICS, MonitorEvent, topics_for

pytestmark = pytest.mark.timeout(30)

BOOM = "ValueError: the input says boom"


class Recorder:
    """Keeps every call as (hook, event) and the thread it came from."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, MonitorEvent]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def _keep(self, hook: str, event: MonitorEvent) -> None:
        with self._lock:
            self.calls.append((hook, event))
            self.threads.add(threading.current_thread().name)

    def on_error(self, event: MonitorEvent) -> None:
        self._keep("on_error", event)

    def on_latency(self, event: MonitorEvent) -> None:
        self._keep("on_latency", event)

    def on_resource(self, event: MonitorEvent) -> None:
        self._keep("on_resource", event)

    def got(self, hook: str, topic: str | None = None, job: str | None = None) -> list[Any]:
        with self._lock:
            return [
                e
                for h, e in self.calls
                if h == hook and topic in (None, e.topic) and job in (None, e.job)
            ]

    def wait(self, hook: str, topic: str, job: str | None = None) -> MonitorEvent:
        found = wait_for(lambda: self.got(hook, topic, job), timeout=10.0)
        event: MonitorEvent = found[0]
        return event


class ErrorsOnly:
    """Only ``on_error``: the rest of its hooks are simply not there."""

    def __init__(self) -> None:
        self.events: list[MonitorEvent] = []

    def on_error(self, event: MonitorEvent) -> None:
        self.events.append(event)


class Flaky(Recorder):
    """``on_error`` records the event and then raises."""

    def on_error(self, event: MonitorEvent) -> None:
        super().on_error(event)
        raise RuntimeError("the pager is down")


def broker(make_server: Any, make_worker: Any, make_client: Any, *monitors: Any) -> BasicClient:
    server = make_server(monitors=list(monitors))
    make_worker(ECHO, server.ports.worker, run=Handler())
    c: BasicClient = make_client(server.ports.client, basic=True, timeout=10.0)
    return c


def fail(c: BasicClient) -> str:
    job = c.submit(ECHO, b"boom")
    with pytest.raises(JobFailedError, match="the input says boom"):
        c.wait(job, timeout=20)
    return job.id


def test_a_finished_and_a_failed_job(make_server: Any, make_worker: Any, make_client: Any) -> None:
    m = Recorder()
    c = broker(make_server, make_worker, make_client, m)
    done = c.run(ECHO, b"fine", timeout=20)
    failed = fail(c)

    latency = m.wait("on_latency", "job.finished", done.job_id)
    assert latency.io_type == "Text->Echo" and latency.reason == ""
    assert latency.queued_for is not None and 0.0 <= latency.queued_for < 10.0
    assert latency.running_for is not None and 0.0 <= latency.running_for < 10.0
    assert latency.time > 0 and latency.data["attempt"] == 1
    resource = m.wait("on_resource", "job.finished", done.job_id)
    assert resource.peak_rss is not None and resource.peak_rss > 1 << 20
    assert resource.cpu is not None and resource.cpu >= 0.0
    assert (resource.peak_rss, resource.cpu) == (done.peak_rss, done.cpu)

    error = m.wait("on_error", "job.failed", failed)
    assert error.reason == BOOM
    assert error.job == failed and error.worker  # the worker that ran it, by name
    failed_latency = m.wait("on_latency", "job.failed", failed)
    assert failed_latency.running_for is not None and failed_latency.reason == BOOM
    m.wait("on_resource", "job.failed", failed)  # a failure says what it used too

    assert m.got("on_error", job=done.job_id) == [], "a finished job is no error"
    assert [e.topic for e in m.got("on_latency")] == ["job.finished", "job.failed"]
    assert m.threads == {"remus-monitors"}, "hooks run off the core thread, in their own"


def test_a_workers_usage_reaches_on_resource(
    make_server: Any, make_worker: Any, make_client: Any
) -> None:
    m = Recorder()
    c = broker(make_server, make_worker, make_client, m)
    event = m.wait("on_resource", "worker.usage")
    (w,) = c.client.workers()
    assert event.worker == w.name
    assert event.rss is not None and event.peak_rss is not None and event.cpu is not None
    assert 1 << 20 < event.rss <= event.peak_rss
    assert event.cpu > 0.0
    assert m.got("on_latency") == [] and m.got("on_error") == []


def test_a_monitor_that_raises_keeps_getting_events(
    make_server: Any, make_worker: Any, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    flaky, steady = Flaky(), Recorder()
    c = broker(make_server, make_worker, make_client, flaky, steady)
    with caplog.at_level(logging.ERROR, logger="remus.server.monitors"):
        first = fail(c)
        flaky.wait("on_error", "job.failed", first)
        second = fail(c)
        flaky.wait("on_error", "job.failed", second)
        # the other hooks of the same monitor, and the other monitor, still get theirs
        flaky.wait("on_latency", "job.failed", second)
        steady.wait("on_error", "job.failed", second)
        # and the broker works on
        assert c.run(ECHO, b"after", timeout=20).data == b"echo:after"
        flaky.wait("on_latency", "job.finished")
    complaints = [r for r in caplog.records if "the pager is down" in str(r.exc_info)]
    assert len(complaints) == 1, "logged, once a minute at most"
    assert "on_error" in complaints[0].getMessage()


def test_a_monitor_with_no_hook_is_refused() -> None:
    class Deaf:
        on_error = None  # not callable: not a hook

        def on_latency_(self, event: MonitorEvent) -> None: ...

    for monitor in (object(), Deaf()):
        with pytest.raises(TypeError, match="none of the methods on_error"):
            Server(ServerPorts.ephemeral(), monitors=[monitor])
    with pytest.raises(TypeError):
        Server(ServerPorts.ephemeral(), monitors=[Recorder(), object()])


def test_a_monitor_with_only_on_error_gets_only_errors(
    make_server: Any, make_worker: Any, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    only = ErrorsOnly()
    assert topics_for([only]) == ERROR_TOPICS  # the broker builds no other events for it
    everything = Recorder()  # beside one that wants every event, so they are all dispatched
    c = broker(make_server, make_worker, make_client, only, everything)
    with caplog.at_level(logging.WARNING, logger="remus.server.monitors"):
        done = c.run(ECHO, b"fine", timeout=20)
        failed = fail(c)
        everything.wait("on_latency", "job.failed", failed)
        wait_for(lambda: only.events, timeout=10.0)
    assert [(e.topic, e.job) for e in only.events] == [("job.failed", failed)]
    assert everything.got("on_latency", "job.finished", done.job_id)
    assert not [r for r in caplog.records if r.name == "remus.server.monitors"]
