"""Prometheus metrics for a broker, served over HTTP (``remus server --metrics PORT``).

The exporter is a client like any other: on each scrape it asks the broker for its ``stats``
and ``workers`` through the client protocol, and turns the answers into metric families
(prometheus-client does the HTTP and the text format). So it never touches the core's state
and costs the broker two small requests per scrape, however often nothing scrapes it.

Use it from Python beside any broker::

    from remus.server.metrics import MetricsExporter

    with MetricsExporter("tcp://127.0.0.1:50505", port=9100) as m:
        print(m.url)                                    # http://127.0.0.1:9100/metrics
        ...

It needs the ``prometheus-client`` package (``pip install 'remus[metrics]'``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from remus.errors import ConfigError, RemusError
from remus.introspect import BrokerStats, WorkerInfo
from remus.security import KeyArg, SecretArg

log = logging.getLogger(__name__)

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError:  # an optional extra: only the exporter needs it
    CollectorRegistry = None  # type: ignore[assignment,misc]

#: how long one scrape waits for the broker's answers
SCRAPE_TIMEOUT = 2.0
#: the job statuses held now, as metric label values
HELD = ("QUEUED", "IN_PROGRESS", "FINISHED", "FAILED", "EXPIRED", "TERMINATED")
#: the endings counted since the start
ENDINGS = ("FINISHED", "FAILED", "EXPIRED", "TERMINATED")


class MetricsExporter:
    """Serves the broker at ``client_endpoint`` as Prometheus metrics on
    ``http://host:port/metrics`` (port 0: any free one; see :attr:`url`). A broker in secure
    mode needs ``server_key`` and ``secret_key``, as any :class:`~remus.client.Client` does
    (``remus server --metrics`` gives the broker's own pair, which it lets in as an admin)."""

    def __init__(
        self,
        client_endpoint: str,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        timeout: float = SCRAPE_TIMEOUT,
        server_key: KeyArg | bytes = None,
        secret_key: SecretArg = None,
    ) -> None:
        if CollectorRegistry is None:
            raise ConfigError(
                "metrics need the prometheus-client package: pip install 'remus[metrics]'"
            )
        self.client_endpoint = client_endpoint
        self._timeout = timeout
        self._keys: dict[str, Any] = {"server_key": server_key, "secret_key": secret_key}
        self._lock = threading.Lock()  # one scrape at a time talks to the broker
        self._client: Any = None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        try:
            self._httpd, self._thread = start_http_server(port, host, registry=self._registry)
        except OSError as e:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {e}") from e
        bound_host, bound_port = self._httpd.server_address[:2]
        self.port: int = int(bound_port)
        name = bound_host.decode() if isinstance(bound_host, bytes) else str(bound_host)
        shown = f"[{name}]" if ":" in name else name
        self.url = f"http://{shown}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> MetricsExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- a scrape

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            try:
                stats, workers = self._ask()
            except (RemusError, TimeoutError, OSError) as e:
                log.warning("metrics: no answer from the broker at %s: %s", self.client_endpoint, e)
                if self._client is not None:  # a fresh socket next time: no stale replies
                    self._client.close()
                    self._client = None
                yield _gauge("remus_up", "1 if the broker answered this scrape", 0)
                return
        yield _gauge("remus_up", "1 if the broker answered this scrape", 1)
        yield from broker_metrics(stats)
        yield from worker_metrics(workers)

    def _ask(self) -> tuple[BrokerStats, list[WorkerInfo]]:
        if self._client is None:
            from remus.client import Client

            self._client = Client(self.client_endpoint, timeout=self._timeout, **self._keys)
        return self._client.stats(), self._client.workers()


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def broker_metrics(s: BrokerStats) -> Iterator[Metric]:
    """The broker's stats as metric families (a pure function: tested without HTTP)."""
    info = GaugeMetricFamily(
        "remus_broker_info", "the broker's version and host", labels=["version", "host"]
    )
    info.add_metric([s.version, s.host], 1)
    yield info
    yield _gauge("remus_uptime_seconds", "seconds since the broker started", s.uptime)

    submitted = CounterMetricFamily(
        "remus_jobs_submitted", "jobs accepted since the broker started", labels=["io_type"]
    )
    ended = CounterMetricFamily(
        "remus_jobs_ended",
        "jobs that ended since the broker started, by status (finished, failed, expired, "
        "terminated)",
        labels=["io_type", "status"],
    )
    for io, totals in sorted(s.totals_by_io_type.items()):
        submitted.add_metric([io], totals.get("submitted", 0))
        for status in ENDINGS:
            ended.add_metric([io, status.lower()], totals.get(status, 0))
    yield submitted
    yield ended

    held = GaugeMetricFamily(
        "remus_jobs", "jobs the broker holds now, by status", labels=["io_type", "status"]
    )
    depth = GaugeMetricFamily("remus_queue_depth", "jobs queued now", labels=["io_type"])
    for io, counts in sorted(s.jobs_by_io_type.items()):
        for status in HELD:
            held.add_metric([io, status.lower()], counts.get(status, 0))
        depth.add_metric([io], counts.get("QUEUED", 0))
    yield held
    yield depth
    yield _gauge("remus_queued_bytes", "bytes of job contents held for queued jobs", s.queued_bytes)
    yield _gauge(
        "remus_max_queued_bytes", "queued bytes past which a submit is refused", s.max_queued_bytes
    )

    others = CounterMetricFamily(
        "remus_events", "requeued jobs and dropped results since the start", labels=["event"]
    )
    for event in ("requeued", "dropped_results"):
        others.add_metric([event], s.totals.get(event, 0))
    yield others

    workers = GaugeMetricFamily("remus_workers", "connected workers by state", labels=["state"])
    for state, count in sorted(s.workers.items()):
        workers.add_metric([state], count)
    yield workers
    quarantined = sum(1 for f in s.worker_files if f.get("quarantined"))
    yield _gauge("remus_worker_files_quarantined", "worker files that start no worker", quarantined)

    yield from _histograms(s.timings)

    yield _gauge(
        "remus_loop_lag_seconds",
        "how late the broker ran its latest timed rules",
        s.loop.get("lag", 0.0),
    )
    yield _gauge(
        "remus_loop_lag_max_seconds",
        "the worst lateness of the broker's timed rules over the last minute",
        s.loop.get("lag_max_1m", 0.0),
    )
    messages = CounterMetricFamily(
        "remus_messages", "messages through the broker's sockets", labels=["socket", "direction"]
    )
    for key, count in sorted(s.messages.items()):
        sock, _, direction = key.rpartition("_")
        messages.add_metric([sock, direction], count)
    yield messages
    if s.resources:
        yield _gauge(
            "remus_broker_resident_memory_bytes", "the broker's RSS", s.resources.get("rss", 0)
        )
        cpu = CounterMetricFamily("remus_broker_cpu_seconds", "CPU the broker has used")
        cpu.add_metric([], s.resources.get("cpu", 0.0))
        yield cpu


def _histograms(timings: dict[str, Any]) -> Iterator[Metric]:
    bounds = timings.get("bounds") or []
    families = {
        "queue_wait": HistogramMetricFamily(
            "remus_job_queue_wait_seconds",
            "seconds from a job's submission to its hand-over to a worker (or its end there)",
            labels=["io_type"],
        ),
        "run": HistogramMetricFamily(
            "remus_job_run_seconds",
            "seconds from a job's hand-over to a worker to its end",
            labels=["io_type"],
        ),
    }
    for io, t in sorted((k, v) for k, v in timings.items() if k != "bounds"):
        for kind, family in families.items():
            counts = t.get(kind) or []
            if len(counts) != len(bounds) + 1:
                continue  # a broker of another version: skip rather than mislabel
            cumulative, buckets = 0, []
            for bound, count in zip([*map(_le, bounds), "+Inf"], counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([io], buckets, t.get(f"{kind}_sum", 0.0))
    yield from families.values()


def _le(bound: float) -> str:
    return repr(float(bound))


def worker_metrics(workers: list[WorkerInfo]) -> Iterator[Metric]:
    """Each connected worker's memory, CPU and finished jobs."""
    labels = ["worker", "io_type"]
    rss = GaugeMetricFamily("remus_worker_resident_memory_bytes", "a worker's RSS", labels=labels)
    cpu = CounterMetricFamily("remus_worker_cpu_seconds", "CPU a worker has used", labels=labels)
    done = CounterMetricFamily(
        "remus_worker_jobs_finished", "jobs a worker finished since it registered", labels=labels
    )
    for w in workers:
        key = [w.name, str(w.io_type)]
        done.add_metric(key, w.jobs_finished)
        if w.resources:
            rss.add_metric(key, w.resources.get("rss", 0))
            cpu.add_metric(key, w.resources.get("cpu", 0.0))
    yield rss
    yield cpu
    yield done
