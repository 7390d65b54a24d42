"""Every exception remus raises, under one base class, each with the fields a caller needs."""

from __future__ import annotations

import builtins


class RemusError(Exception):
    """Base class of every remus error."""


class ProtocolError(RemusError):
    """A message that does not follow the wire format in docs/protocol.md."""

    def __init__(self, message: str, *, code: str = "bad-message") -> None:
        super().__init__(message)
        self.code = code


class ServerError(RemusError):
    """The broker refused a request; ``code`` says why in one word, the message in a sentence."""

    def __init__(self, message: str, *, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class BusyError(ServerError):
    """The broker's queue is full: try again later, or raise its ``max_queued_jobs``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="busy")


class NoWorkerError(ServerError):
    """No connected worker and no worker file can serve the job's requirements, so the broker
    refused it at once instead of queueing it forever. ``requirements`` names what was asked
    for, ``serves`` what the broker can serve. Submit with ``wait_for_worker=True`` to queue it
    anyway (a worker that connects later will take it)."""

    def __init__(self, message: str, *, requirements: str = "", serves: list[str] | None = None):
        super().__init__(message, code="no-worker")
        self.requirements = requirements
        self.serves = list(serves or ())


class BrokerStoppedError(ServerError):
    """The broker stopped (or is stopping) while this call waited on it. A job it keeps in its
    journal can be waited on again once it is back."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="broker-stopping")


class ForbiddenError(ServerError):
    """Secure mode: the broker refused this key for what it asked (a worker key registering an
    io type its allow-list entry does not name, or a key revoked while connected)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="forbidden")


class WrongEndpointError(ServerError):
    """This peer reached the wrong broker socket: a client at the worker endpoint, or a worker
    at the client endpoint. The message says which socket it reached and where to connect."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="wrong-endpoint")


class TimeoutError(RemusError, builtins.TimeoutError):
    """A peer did not answer in time. Also a builtin ``TimeoutError``."""

    def __init__(self, message: str, *, endpoint: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint


class UnknownJobError(RemusError, KeyError):
    """The broker does not know this job id (never submitted, or forgotten after its TTL).
    ``message``, when given, is the broker's own sentence (e.g. about a submit's parent)."""

    def __init__(self, job_id: str, message: str = "") -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.message = message

    def __str__(self) -> str:
        if self.message:
            return self.message
        return f"the broker does not know job {self.job_id} (never submitted, or forgotten)"


class JobNotRunningError(ServerError):
    """The job is over (finished, failed, terminated or expired), so it cannot take what was
    sent to it: a control message, or an assistant job naming it as its parent. The message
    says which job and its status."""

    def __init__(self, message: str, *, job_id: str = "") -> None:
        super().__init__(message, code="job-not-running")
        self.job_id = job_id


class JobNotFinishedError(RemusError):
    """The job is still queued or running; wait for it (``BasicClient.wait``)."""

    def __init__(self, job_id: str, status: object) -> None:
        super().__init__(f"job {job_id} is not finished yet: {status}")
        self.job_id = job_id
        self.status = status


class JobFailedError(RemusError):
    """The job did not produce a result. ``reason`` and ``traceback`` come from the worker."""

    def __init__(
        self, job_id: str, reason: str, traceback: str = "", *, status: object = None
    ) -> None:
        text = f"job {job_id} failed: {reason}"
        if traceback:
            text += f"\n--- worker traceback ---\n{traceback.rstrip()}"
        super().__init__(text)
        self.job_id = job_id
        self.reason = reason
        self.traceback = traceback
        self.status = status


class JobTerminatedError(JobFailedError):
    """The job was terminated by a client before it finished."""


class JobExpiredError(JobFailedError):
    """No worker took the job within its ``queue_time_limit``. (A job whose worker was lost,
    or that ran over its ``time_limit``, is FAILED: :class:`JobFailedError`.)"""


class WorkerFileError(RemusError):
    """A worker file (.rw) that cannot be used; the message names the file and what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ConfigError(RemusError, ValueError):
    """An option value that cannot work; the message says what to use instead."""


class FileError(RemusError):
    """A file of a job or a result that cannot be used: missing, unreadable, not a regular file,
    too large, outside the broker's ``--file-root`` allow-list, or a path on another host.
    The message names the file and says what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
