"""Prometheus metrics: ``remus server --metrics PORT`` scraped with a real HTTP client
(urllib), its text parsed by prometheus-client's own parser, numbers checked against what was
run; the exporter against no broker; bad and busy ports."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from typing import Any

import pytest
from conftest import wait_for
from helpers_cli import ECHO, Handler
from helpers_e2e import free_tcp_endpoint, launch_cli_server, start_cli_server, wait_exit
from prometheus_client.parser import text_string_to_metric_families

from remus.client import BasicClient
from remus.errors import JobFailedError
from remus.server import ServerPorts
from remus.server.metrics import MetricsExporter
from remus.types import JobSubmission

pytestmark = pytest.mark.timeout(30)

IO = str(ECHO)  # the io_type label: "Text->Echo"
#: samples by name, each a list of (labels, value)
Samples = dict[str, list[tuple[dict[str, str], float]]]


def start_with_metrics(make_process: Any, *extra: str) -> tuple[ServerPorts, str]:
    """``remus server --metrics 0`` on free ports: its endpoints and its metrics URL, both
    from the ready line."""
    proc, ports = start_cli_server(make_process, "--metrics", "0", *extra)
    url = proc.ready["metrics"]  # type: ignore[attr-defined]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), proc.ready  # type: ignore[attr-defined]
    return ports, url


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    found = [v for got, v in samples.get(name, []) if labels.items() <= got.items()]
    assert len(found) == 1, f"{name}{labels}: {found} in {samples.get(name)}"
    return found[0]


def test_a_scrape_counts_what_was_run(
    make_process: Any, make_client: Any, make_worker: Any
) -> None:
    ports, url = start_with_metrics(make_process)
    make_worker(ECHO, ports.worker, run=Handler())
    c: BasicClient = make_client(ports.client, basic=True, timeout=10.0)
    n = 6
    inputs = [f"job {i}".encode() for i in range(n - 1)] + [b"boom"]
    jobs = c.submit_many(JobSubmission.of(ECHO, data) for data in inputs)
    results = list(c.as_completed(jobs, timeout=20, errors="yield"))
    assert sum(isinstance(r, JobFailedError) for r in results) == 1 and len(results) == n

    def reported() -> Samples | None:
        # the worker's memory arrives with its next heartbeat after it registered
        s = scrape(url)
        rss = [v for _, v in s.get("remus_worker_resident_memory_bytes", [])]
        return s if rss and rss[0] > 0 else None

    s = wait_for(reported, timeout=10.0)
    assert value(s, "remus_up") == 1
    assert value(s, "remus_jobs_submitted_total", io_type=IO) == n
    assert value(s, "remus_jobs_ended_total", io_type=IO, status="finished") == n - 1
    assert value(s, "remus_jobs_ended_total", io_type=IO, status="failed") == 1
    assert value(s, "remus_jobs_ended_total", io_type=IO, status="expired") == 0
    assert value(s, "remus_jobs_ended_total", io_type=IO, status="terminated") == 0
    assert value(s, "remus_jobs", io_type=IO, status="finished") == n - 1
    assert value(s, "remus_queue_depth", io_type=IO) == 0

    # every job ran: n run times, and n queue waits (each handed over once)
    assert value(s, "remus_job_run_seconds_count", io_type=IO) == n
    assert value(s, "remus_job_run_seconds_bucket", io_type=IO, le="+Inf") == n
    assert 0 < value(s, "remus_job_run_seconds_sum", io_type=IO) < 20
    assert value(s, "remus_job_queue_wait_seconds_count", io_type=IO) == n
    buckets = [v for labels, v in s["remus_job_run_seconds_bucket"] if labels["io_type"] == IO]
    assert buckets == sorted(buckets), "histogram buckets are cumulative"

    assert value(s, "remus_workers", state="idle") + value(s, "remus_workers", state="busy") == 1
    messages = {(x["socket"], x["direction"]): v for x, v in s["remus_messages_total"]}
    assert messages[("client", "in")] > 0 and messages[("worker", "in")] > 0
    assert messages[("worker", "out")] > 0 and messages[("client", "out")] > 0
    assert value(s, "remus_worker_resident_memory_bytes", io_type=IO) > 1 << 20
    assert value(s, "remus_worker_cpu_seconds_total", io_type=IO) > 0
    assert value(s, "remus_worker_jobs_finished_total", io_type=IO) == n - 1
    assert value(s, "remus_broker_resident_memory_bytes") > 1 << 20
    assert value(s, "remus_uptime_seconds") > 0

    # a later scrape sees later jobs
    assert c.run(ECHO, b"one more", timeout=20).data == b"echo:one more"
    later = scrape(url)
    assert value(later, "remus_jobs_submitted_total", io_type=IO) == n + 1
    assert value(later, "remus_jobs_ended_total", io_type=IO, status="finished") == n


def test_no_broker_answers_is_remus_up_0_within_the_scrape_timeout() -> None:
    with MetricsExporter(free_tcp_endpoint(), timeout=0.5) as exporter:
        for _ in range(2):  # and again: a fresh socket after a silent one
            start = time.monotonic()
            s = scrape(exporter.url)
            took = time.monotonic() - start
            assert value(s, "remus_up") == 0
            assert set(s) == {"remus_up"}, "no numbers made up for a broker that is not there"
            assert took < 3.0, f"a scrape took {took:.1f} s with a 0.5 s timeout"


def test_the_exporter_finds_a_broker_that_starts_late(make_server: Any) -> None:
    """remus_up goes 0 -> 1 once a broker listens at the endpoint (same exporter)."""
    client = free_tcp_endpoint()
    with MetricsExporter(client, timeout=0.5) as exporter:
        assert value(scrape(exporter.url), "remus_up") == 0
        make_server(ServerPorts(client, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"))
        s = wait_for(lambda: (x := scrape(exporter.url)) and value(x, "remus_up") == 1 and x)
        assert value(s, "remus_workers", state="idle") == 0


def test_metrics_needs_a_port(make_process: Any) -> None:
    proc, ports = launch_cli_server(make_process, "--metrics", "notaport", stderr=subprocess.PIPE)
    assert ports is None
    assert wait_exit(proc, 10) == 2
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "--metrics 'notaport'" in err and "port" in err, err


def test_metrics_on_a_port_in_use_says_so(make_process: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, ports = launch_cli_server(
            make_process, "--metrics", str(port), stderr=subprocess.PIPE
        )
        assert ports is None
        assert wait_exit(proc, 10) == 1
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err, err
