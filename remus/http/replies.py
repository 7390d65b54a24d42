"""What the gateway answers when it cannot answer with a result: JSON ``{error, message}``.

Every refusal is one :class:`Problem` (an HTTP status, a one-word ``error`` code, a sentence
that says what to do, and extra fields), raised by a handler and written by the app's error
middleware. :func:`problem_of` turns the exceptions of ``remus.errors`` into problems through
one table, so a broker's refusal reaches an HTTP caller with the broker's own words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from remus.errors import (
    BrokerStoppedError,
    BusyError,
    ConfigError,
    FileError,
    ForbiddenError,
    JobFailedError,
    JobNotFinishedError,
    JobNotRunningError,
    NoWorkerError,
    ProtocolError,
    RemusError,
    ServerError,
    TimeoutError,
    UnknownJobError,
    WrongEndpointError,
)

JSON = "application/json"


class Problem(Exception):
    """An answer of ``http_status`` with JSON ``{"error": code, "message": message, **fields}``.
    An HTTP-level answer, internal to the gateway (never raised to library users)."""

    def __init__(
        self,
        http_status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.fields = fields

    def response(self) -> web.Response:
        body = {"error": self.code, "message": self.message, **self.fields}
        return json_response(body, status=self.http_status, headers=self.headers)


def json_response(
    document: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=json.dumps(document, separators=(",", ":"), default=str),
        status=status,
        content_type=JSON,
        headers=headers,
    )


def failed(e: JobFailedError) -> Problem:
    """422: the job ended without a result (failed, terminated or expired)."""
    status = getattr(e.status, "name", "FAILED")
    return Problem(
        422,
        "job-failed",
        str(e).split("\n", 1)[0],
        headers={"X-Remus-Job": e.job_id, "X-Remus-Status": status},
        job=e.job_id,
        status=status,
        reason=e.reason,
        traceback=e.traceback,
    )


def _no_worker(e: NoWorkerError) -> Problem:
    return Problem(
        404,
        "no-worker",
        f"{e} (add ?wait_for_worker=1 to queue it for a worker that connects later)",
        serves=e.serves,
    )


def _unknown(e: UnknownJobError) -> Problem:
    return Problem(404, "unknown-job", str(e), job=e.job_id)


def _not_finished(e: JobNotFinishedError) -> Problem:
    status = str(e.status)
    return Problem(
        409,
        "not-finished",
        f"{e}: follow GET /jobs/{e.job_id}/progress, or ask again later",
        headers={"X-Remus-Job": e.job_id, "X-Remus-Status": status},
        job=e.job_id,
        status=status,
    )


def _unreachable(e: RemusError) -> Problem:
    return Problem(503, "broker-unreachable", f"the broker did not answer: {e}")


#: the exceptions of remus.errors as answers (the most specific class first; busy answers are
#: made where the throttle can say when to retry)
PROBLEMS: list[tuple[type[Exception], Callable[[Any], Problem]]] = [
    (JobFailedError, failed),
    (NoWorkerError, _no_worker),
    (UnknownJobError, _unknown),
    (JobNotFinishedError, _not_finished),
    (JobNotRunningError, lambda e: Problem(409, "job-not-running", str(e))),
    (BrokerStoppedError, lambda e: Problem(503, "broker-stopped", str(e))),
    (ForbiddenError, lambda e: Problem(403, "forbidden", f"the broker refused: {e}")),
    (WrongEndpointError, lambda e: Problem(502, "wrong-endpoint", f"{e} (remus http --broker)")),
    (TimeoutError, _unreachable),
    (FileError, lambda e: Problem(400, "bad-file", str(e))),
    (ConfigError, lambda e: Problem(400, "bad-request", str(e))),
    (BusyError, lambda e: Problem(503, "busy", str(e), headers={"Retry-After": "1"})),
    (ProtocolError, lambda e: Problem(502, "broker-error", str(e))),
    (ServerError, lambda e: Problem(502, "broker-error", f"{e} ({e.code})")),
]


def problem_of(e: RemusError) -> Problem:
    """The answer that stands for ``e``."""
    for kind, make in PROBLEMS:
        if isinstance(e, kind):
            return make(e)
    return Problem(502, "broker-error", str(e))
