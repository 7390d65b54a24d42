"""``GET /jobs/{id}/progress``: a job's progress as server-sent events, resumable.

::

    retry: 2000

    id: 1
    event: progress
    data: {"seq":1,"value":50,"message":"halfway"}

    id: end
    event: end
    data: {"id":"...","status":"FINISHED","reason":""}

Each update's event id is its sequence number at the broker (1, 2, ...). A caller that
reconnects with ``Last-Event-ID: N`` (a browser's EventSource does it by itself), or asks with
``?since=N``, gets only the updates after N (``AsyncClient.job_progress(since=N)``). When the
job ends the stream says how (``end``, id ``end``) and closes; a reconnection after it
(``Last-Event-ID: end``) is answered 204, which tells an EventSource to stop. A broker that
goes silent or stops ends the stream with an ``error`` event. Quiet spells carry a comment
every ``keepalive`` seconds so that proxies keep the connection open.
"""

from __future__ import annotations

import logging

from aiohttp import web

from remus.errors import RemusError
from remus.http.gateway import GATEWAY
from remus.http.handlers import params, progress_json, unknown_job
from remus.http.replies import Problem, problem_of
from remus.http.sse import EventStream, with_keepalive
from remus.types import Status

log = logging.getLogger(__name__)

#: the event id of the last event, and what a reconnection after it sends
END = "end"


def since(request: web.Request, query: dict[str, str]) -> int | None:
    """Where to resume: ``Last-Event-ID`` (header), else ``?since=``, else 0; None after the
    end event. 400 for anything but a sequence number."""
    given = request.headers.get("Last-Event-ID")
    name = "Last-Event-ID"
    if given is None:
        given, name = query.get("since"), "since"
    if given is None or given.strip() == "":
        return 0
    if given.strip() == END:
        return None
    try:
        seq = int(given.strip())
    except ValueError:
        seq = -1
    if seq < 0:
        raise Problem(
            400,
            "bad-last-event-id",
            f"{name} {given!r} is not a progress sequence number: give the id of the last "
            "event received (a whole number, 0 for all)",
        )
    return seq


async def progress(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    job_id = request.match_info["id"]
    query = params(request)
    after = since(request, query)
    unknown = set(query) - {"since"}
    if unknown:
        raise Problem(400, "bad-parameter", f"unknown query parameter(s) {sorted(unknown)}")
    if after is None:
        return web.Response(status=204, headers={"X-Remus-Job": job_id})
    first = await gw.client.job_status(job_id)
    if first.status is Status.INVALID:
        raise unknown_job(job_id)
    stream = EventStream(request, headers={"X-Remus-Job": job_id})
    await stream.open()
    try:
        updates = gw.client.job_progress(job_id, since=after)
        async for update in with_keepalive(updates, gw.config.keepalive):
            if update is None:
                await stream.comment()
                continue
            await stream.send("progress", progress_json(update), event_id=str(update.seq))
        final = await gw.client.job_status(job_id)
        end = {"id": job_id, "status": final.status.name, "reason": final.reason}
        await stream.send(END, end, event_id=END)
    except RemusError as e:  # the broker went silent or stopped, or forgot the job
        problem = problem_of(e)
        await stream.send("error", {"error": problem.code, "message": problem.message})
    except ConnectionResetError:  # the caller went away
        log.debug("progress stream of job %s: the caller went away", job_id)
        return stream.response
    return await stream.close()
