"""Server configuration: one frozen dataclass, every default in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass

from remus.errors import ConfigError

DEFAULT_CLIENT = "tcp://127.0.0.1:50505"
DEFAULT_WORKER = "tcp://127.0.0.1:50510"
DEFAULT_STATUS = "tcp://127.0.0.1:50550"

_SCHEMES = ("tcp://", "ipc://", "inproc://")


def endpoint_from_env(endpoint: str | None, role: str) -> str:
    """``endpoint`` if given, else ``$REMUS_CLIENT`` / ``$REMUS_WORKER`` / ``$REMUS_STATUS``
    (by ``role``), else the default endpoint of that role."""
    if endpoint is not None:
        return endpoint
    default = {"client": DEFAULT_CLIENT, "worker": DEFAULT_WORKER, "status": DEFAULT_STATUS}
    return os.environ.get(f"REMUS_{role.upper()}") or default[role]


def check_endpoint(endpoint: str, what: str) -> str:
    if not isinstance(endpoint, str) or not endpoint.startswith(_SCHEMES):
        raise ConfigError(
            f"{what} endpoint {endpoint!r} is not a ZeroMQ endpoint: use tcp://HOST:PORT "
            "(port 0 picks a free port), ipc:///path/to/socket or inproc://name"
        )
    return endpoint


@dataclass(frozen=True, slots=True)
class ServerPorts:
    """The three endpoints a broker binds. After start, ``Server.ports`` holds the real ones."""

    client: str = DEFAULT_CLIENT
    worker: str = DEFAULT_WORKER
    status: str = DEFAULT_STATUS

    def __post_init__(self) -> None:
        check_endpoint(self.client, "client")
        check_endpoint(self.worker, "worker")
        check_endpoint(self.status, "status")

    @classmethod
    def ephemeral(cls, host: str = "127.0.0.1") -> ServerPorts:
        """Three free TCP ports on ``host``: what tests and embedded brokers want."""
        return cls(f"tcp://{host}:0", f"tcp://{host}:0", f"tcp://{host}:0")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How the broker behaves. Times are seconds."""

    #: finished, failed, terminated and expired jobs are forgotten this long after they end
    result_ttl: float = 3600.0
    #: progress updates kept per job; past it the oldest are dropped (clients see the gap)
    max_progress_history: int = 100_000
    #: a worker silent for this many of its own heartbeat intervals is lost
    liveness_factor: float = 3.0
    #: a core loop pass later than this means the broker itself stalled: blame no worker
    stall_threshold: float = 1.0
    #: jobs waiting in the queue before submit_job raises BusyError
    max_queued_jobs: int = 2_000_000
    #: bytes of job contents held for queued jobs before submit_job raises BusyError
    max_queued_bytes: int = 8 * 1024**3
    #: largest message (all frames) either socket accepts; larger ones get an error reply
    max_message_bytes: int = 2 * 1024**3
    #: the longest a client may ask the broker to hold a reply (progress and collect waits)
    max_wait: float = 60.0
    #: times a job is requeued after its worker is lost before it FAILS (per job: max_retries)
    max_retries: int = 2
    #: after a job's time limit, how long its worker gets to stop before a spawned one is killed
    kill_grace: float = 5.0
    #: after a preemption, how long the worker gets to stop the job before a spawned one is
    #: killed (a connected one is no longer waited for)
    preempt_grace: float = 5.0
    #: after a restart from the journal, how long a job that was running waits for the worker
    #: that ran it to register again holding it (it then carries on, its attempt unchanged);
    #: past this it is requeued counting an attempt, or FAILS with no retry left. 0: at once
    restart_grace: float = 10.0
    #: how long stop() waits for workers to be told and for threads to finish
    stop_timeout: float = 5.0
    #: this broker's host id; "" detects it (REMUS_HOST_ID, else machine id and host name)
    host_id: str = ""
    #: folders whose files the broker may read, with its own permissions, to send their bytes
    #: to a worker on another host than the client that named them (docs/files.md); none by
    #: default: such a job then fails with a reason that names this option
    file_roots: tuple[str, ...] = ()
    #: where large files (over remus.files.STREAM_FROM) wait between their upload and their
    #: download (docs/files.md, "Streamed files"); None: beside the journal (JOURNAL.spool),
    #: else a private temporary folder removed when the broker stops
    spool_dir: str | None = None
    #: the cyclic garbage collector's thresholds while a broker runs in this process, restored
    #: when the last one stops (None: leave the collector alone). A broker holds many small
    #: long-lived objects (a record per job) without reference cycles; the default thresholds
    #: make the collector rescan them thousands of times a second under load
    gc_threshold: tuple[int, int, int] | None = (100_000, 50, 1000)
    #: how the journal (if any) syncs its commits: "normal" survives a kill of the broker,
    #: "full" a power loss or kernel crash too (an fsync per commit; see remus.server.journal)
    journal_sync: str = "normal"

    def __post_init__(self) -> None:
        if self.journal_sync not in ("normal", "full"):
            raise ConfigError(
                f"ServerConfig.journal_sync must be 'normal' or 'full', not {self.journal_sync!r}"
            )
        for name in ("result_ttl", "liveness_factor", "stall_threshold", "max_wait"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ServerConfig.{name} must be positive")
        for name in ("restart_grace", "kill_grace", "preempt_grace"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ServerConfig.{name} must not be negative")
        if self.max_progress_history < 1:
            raise ConfigError("ServerConfig.max_progress_history must be at least 1")
        if isinstance(self.file_roots, str):
            raise ConfigError("ServerConfig.file_roots must be a tuple of folders, not one str")
        roots = tuple(os.path.realpath(os.fspath(r)) for r in self.file_roots)
        for root in roots:
            if not os.path.isdir(root):
                raise ConfigError(f"file root {root} is not a folder")
        object.__setattr__(self, "file_roots", roots)
