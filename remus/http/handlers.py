"""The job routes: ``POST /run/{input}/{output}`` (submit and wait), ``POST /jobs/{input}/
{output}`` (submit, 202), and ``GET``/``DELETE /jobs/{id}`` with ``GET /jobs/{id}/result``.

Every handler is a few awaits on the gateway's one ``AsyncClient``: no thread is held while a
job runs, and a refused request costs nothing but its answer. The throttle is asked before a
body is read, so a flood is refused without reading it. Query parameters (each optional):

| name | meaning |
|---|---|
| ``timeout`` | ``/run`` only: seconds to wait for the result before 504 (``--timeout``) |
| ``priority`` | the job's priority, a whole number (higher runs first) |
| ``wait_for_worker`` | ``1``: queue the job even when no worker serves its io type yet |
| ``worker`` | only a worker of this name may run it |
| ``tag`` | only a worker with this tag (JSON) may run it |
| ``time_limit``, ``queue_time_limit`` | seconds the job may run, and wait in the queue |
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import math
import urllib.parse
from typing import Any

from aiohttp import web

from remus.errors import BusyError, JobFailedError, RemusError
from remus.http.bodies import Body, read_body
from remus.http.gateway import GATEWAY, Gateway
from remus.http.replies import Problem, failed, json_response, problem_of
from remus.http.results import write_result
from remus.types import IOType, Job, JobProgress, JobRequirements, JobStatus, Status

log = logging.getLogger(__name__)

#: the query parameters a job route takes (``timeout`` only on /run)
JOB_PARAMS = ("priority", "wait_for_worker", "worker", "tag", "time_limit", "queue_time_limit")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


# ------------------------------------------------------------------------------ reading requests


def io_type(request: web.Request) -> IOType:
    try:
        return IOType(request.match_info["input"], request.match_info["output"])
    except ValueError as e:
        raise Problem(400, "bad-io-type", str(e)) from None


def params(request: web.Request) -> dict[str, str]:
    """The query string as a plain dict (the last value of a name wins), parsed for the call:
    not kept on the request while its job runs."""
    query = request.query_string
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True)) if query else {}


def job_options(query: dict[str, str], allowed: tuple[str, ...] = JOB_PARAMS) -> dict[str, Any]:
    """The submit options in the query (400 for a value that is not one)."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise Problem(
            400,
            "bad-parameter",
            f"unknown query parameter(s) {unknown}: this route takes {list(allowed)}",
        )
    opts: dict[str, Any] = {}
    if "priority" in query:
        opts["priority"] = _number(query, "priority", int)
    if "wait_for_worker" in query:
        word = query["wait_for_worker"].strip().lower()
        if word not in _TRUE + _FALSE:
            raise _bad("wait_for_worker", query["wait_for_worker"], "use 1 or 0")
        opts["wait_for_worker"] = word in _TRUE
    for name in ("time_limit", "queue_time_limit"):
        if name in query:
            opts[name] = _positive(query, name)
    return opts


def requirements(request: web.Request, query: dict[str, str]) -> JobRequirements:
    """The io type of the path, and the query's ``worker`` and ``tag``."""
    tag = None
    if "tag" in query:
        try:
            tag = json.loads(query["tag"])
        except ValueError:
            raise _bad("tag", query["tag"], "give JSON, e.g. tag=%22gpu%22") from None
    return JobRequirements(io_type(request), worker_name=query.get("worker", ""), tag=tag)


def run_timeout(query: dict[str, str], gw: Gateway) -> float:
    """``?timeout=`` (seconds, at most ``max_timeout``), else the gateway's default."""
    if "timeout" not in query:
        return gw.config.run_timeout
    value = _positive(query, "timeout")
    if value > gw.config.max_timeout:
        raise _bad("timeout", str(value), f"the most is {gw.config.max_timeout:g} s")
    return value


def _number(query: Any, name: str, kind: type) -> Any:
    try:
        return kind(query[name])
    except ValueError:
        raise _bad(name, query[name], f"give a {kind.__name__}") from None


def _positive(query: Any, name: str) -> float:
    value = _number(query, name, float)
    if not (value > 0 and math.isfinite(value)):
        raise _bad(name, query[name], "give a positive number of seconds")
    return float(value)


def _bad(name: str, value: str, hint: str) -> Problem:
    return Problem(400, "bad-parameter", f"{name}={value!r} is not a valid value: {hint}")


# ------------------------------------------------------------------------------ writing answers


def status_json(st: JobStatus) -> dict[str, Any]:
    return {
        "id": st.job_id,
        "status": st.status.name,
        "progress": progress_json(st.progress),
        "reason": st.reason,
        "attempt": st.attempt,
        "worker": st.worker,
        "parent": st.parent,
        "assistants": list(st.assistants),
        "history": list(st.history),
    }


def progress_json(p: JobProgress | None) -> dict[str, Any] | None:
    return None if p is None else {"seq": p.seq, "value": p.value, "message": p.message}


def unknown_job(job_id: str) -> Problem:
    return Problem(
        404,
        "unknown-job",
        f"the broker does not know job {job_id} (never submitted, or forgotten after its "
        "result was kept for the broker's --result-ttl)",
        job=job_id,
    )


# ------------------------------------------------------------------------------ the routes


async def run(request: web.Request) -> web.StreamResponse:
    """``POST /run/{input}/{output}``: submit the body as a job, wait, answer its result."""
    gw = request.app[GATEWAY]
    query = params(request)
    reqs = requirements(request, query)
    opts = job_options(query, (*JOB_PARAMS, "timeout"))
    timeout = run_timeout(query, gw)
    key = str(reqs.io_type)
    del query
    job: Job | None = None
    with gw.place(key) as place:
        body = await read_body(request, limit=gw.config.max_body, upload_dir=gw.config.upload_dir)
        submitted = _submit(gw, reqs, body, opts)
        del body  # (gone once its job is sent, not kept while the job runs)
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                job = await submitted
                try:
                    result = await gw.collector.expect(job.id)
                finally:
                    gw.collector.forget(job.id)
        except JobFailedError as e:
            place.ended = True
            raise failed(e) from None
        except BusyError as e:
            raise gw.busy(key, e) from None
        except builtins.TimeoutError as e:
            if limit.expired():
                raise await _late(gw, job, timeout) from None
            if not isinstance(e, RemusError):
                raise
            raise _naming(problem_of(e), job) from None  # the broker went silent: 503
        except RemusError as e:
            raise _naming(problem_of(e), job) from None
        except Problem as e:  # (the gateway stops)
            raise _naming(e, job) from None
        except asyncio.CancelledError:  # the caller hung up: nobody will read this result
            if job is not None:
                gw.abandon(job.id)
            raise
        place.ended = True
    return await write_result(request, result)


async def _submit(gw: Gateway, reqs: JobRequirements, body: Body, opts: dict[str, Any]) -> Job:
    """Submit the body as a job (with the submits of other requests); its files go once the
    broker holds their bytes."""
    sub = body.submission(reqs)
    return await gw.submitter.submit(sub, opts, orphan=gw.orphan, sent=body.remove)


def _naming(problem: Problem, job: Job | None) -> Problem:
    """``problem`` (or, naming the job, a copy of it: one problem may answer many requests)."""
    if job is None:
        return problem
    return Problem(
        problem.http_status,
        problem.code,
        problem.message,
        headers={**problem.headers, "X-Remus-Job": job.id},
        **{**problem.fields, "job": job.id},
    )


async def _late(gw: Gateway, job: Job | None, timeout: float) -> Problem:
    """504: the job is not done within ``timeout``; it keeps running, and the answer names it
    (and where it is, if the broker says so at once)."""
    job_id = job.id if job is not None else ""
    status = "UNKNOWN"
    if job_id:
        try:
            st = await gw.client.job_status(job_id, timeout=min(1.0, gw.config.broker_timeout))
            status = st.status.name
        except RemusError:
            pass
    more = f": follow it at /jobs/{job_id}" if job_id else ""
    return Problem(
        504,
        "timeout",
        f"the job did not finish within {timeout:g} s and keeps running{more} "
        "(or ask for more with ?timeout=)",
        headers={"X-Remus-Job": job_id, "X-Remus-Status": status},
        job=job_id,
        status=status,
    )


async def submit(request: web.Request) -> web.Response:
    """``POST /jobs/{input}/{output}``: queue the body as a job; 202 with its id."""
    gw = request.app[GATEWAY]
    query = params(request)
    reqs = requirements(request, query)
    opts = job_options(query)
    key = str(reqs.io_type)
    with gw.place(key):
        body = await read_body(request, limit=gw.config.max_body, upload_dir=gw.config.upload_dir)
        try:
            job = await _submit(gw, reqs, body, opts)
        except BusyError as e:
            raise gw.busy(key, e) from None
    where = f"/jobs/{job.id}"
    return json_response(
        {"id": job.id, "io_type": key, "status": Status.QUEUED.name, "location": where},
        status=202,
        headers={"Location": where, "X-Remus-Job": job.id, "X-Remus-Status": "QUEUED"},
    )


async def status(request: web.Request) -> web.Response:
    """``GET /jobs/{id}``: where the job is, as JSON."""
    gw = request.app[GATEWAY]
    job_id = request.match_info["id"]
    st = await gw.client.job_status(job_id)
    if st.status is Status.INVALID:
        raise unknown_job(job_id)
    return json_response(status_json(st), headers={"X-Remus-Status": st.status.name})


async def result(request: web.Request) -> web.StreamResponse:
    """``GET /jobs/{id}/result``: 200 the result, 409 not finished, 422 failed, 404 unknown."""
    gw = request.app[GATEWAY]
    job_id = request.match_info["id"]
    try:
        got = await gw.client.retrieve_result(job_id)
    except JobFailedError as e:
        raise failed(e) from None
    return await write_result(request, got)


async def terminate(request: web.Request) -> web.Response:
    """``DELETE /jobs/{id}``: stop the job (a finished one stays as it is); its status."""
    gw = request.app[GATEWAY]
    job_id = request.match_info["id"]
    st = await gw.client.terminate(job_id)
    if st.status is Status.INVALID:
        raise unknown_job(job_id)
    return json_response(status_json(st), headers={"X-Remus-Status": st.status.name})
