"""The live dashboard ``remus http`` serves at ``/``: one page, fed by server-sent events.

Routes (added by :func:`setup`; ``make_app`` calls :func:`add_routes`):

| route | what |
|---|---|
| ``GET /`` | the page (``static/dashboard.html``); with ``--tokens`` and no token yet, a sign-in
  form (``static/login.html``, 401) |
| ``POST /login`` | the form's token: if it is one of the gateway's, set as the cookie that
  lets the page's own reads in (``remus.http.auth``), and 303 to ``/``; else the form again |
| ``GET /static/{name}`` | its script and style, from the package (works offline, no CDN) |
| ``GET /api/stream`` | ``text/event-stream``: a ``history`` event, then a ``snapshot`` a second |
| ``GET /api/jobs/{id}`` | one job for the click-through: status, attempts, history, evidence,
  its progress updates (the latest ``PROGRESS_LIMIT``) |

Every page shares one poll loop (``remus.http.feed.Feed``) on the gateway's one AsyncClient;
the snapshot's fields are built in ``remus.http.snapshot``. See docs/dashboard.md.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from remus import protocol as p
from remus.aio import AsyncClient
from remus.http.auth import COOKIE
from remus.http.feed import Feed
from remus.http.gateway import GATEWAY
from remus.http.handlers import status_json, unknown_job
from remus.http.replies import Problem, json_response
from remus.http.sse import EventStream
from remus.types import Status

#: the most progress updates ``/api/jobs/{id}`` returns (the latest ones)
PROGRESS_LIMIT = 500

#: content types of the static files, by suffix
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain",
}

FEED = web.AppKey("remus_dashboard_feed", Feed)
#: the page's files, {name: (bytes, content type)}
STATIC: web.AppKey[dict[str, tuple[bytes, str]]] = web.AppKey("remus_dashboard_static")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_files() -> dict[str, tuple[bytes, str]]:
    """The files of ``remus/http/static``, read once: {name: (bytes, content type)}."""
    folder = resources.files(__package__ or "remus.http").joinpath("static")
    found = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in TYPES:
            found[entry.name] = (entry.read_bytes(), TYPES[suffix])
    if "dashboard.html" not in found:
        raise RuntimeError(
            f"remus.http's static files are missing from {folder}: reinstall remus "
            "(pyproject.toml's package-data must include remus/http/static/*)"
        )
    return found


def _file(request: web.Request, name: str) -> web.Response:
    files = request.app[STATIC]
    if name not in files:
        raise Problem(404, "not-found", f"no file /static/{name} (see remus/http/static)")
    body, content_type = files[name]
    charset = "utf-8" if content_type.startswith("text/") else None
    return web.Response(
        body=body,
        content_type=content_type,
        charset=charset,
        headers={"Cache-Control": "no-cache"},
    )


async def page(request: web.Request) -> web.Response:
    """``GET /``: the dashboard, or its sign-in form for a browser without a token."""
    from remus.http.app import signed_in  # (remus.http.app imports this module)

    if GATEWAY in request.app and not signed_in(request):
        return _sign_in(request, "")
    return _file(request, "dashboard.html")


async def login(request: web.Request) -> web.Response:
    """``POST /login``: a token from the sign-in form. One of the gateway's: it becomes the
    cookie the page's reads carry (HttpOnly, SameSite=Strict, for this browser session), and
    the browser goes to ``/``. Any other: the form again, saying so."""
    tokens = request.app[GATEWAY].tokens
    form = await request.post()
    token = form.get("token")
    if tokens is not None and not (isinstance(token, str) and tokens.valid(token)):
        return _sign_in(request, "That is not one of this gateway's tokens.")
    # (relative: the page keeps working behind a proxy that serves it under a path)
    response = web.Response(status=303, headers={"Location": "./"})
    if tokens is not None and isinstance(token, str):
        response.set_cookie(
            COOKIE, token, path="/", httponly=True, samesite="Strict", secure=request.secure
        )
    return response


def _sign_in(request: web.Request, wrong: str) -> web.Response:
    body, content_type = request.app[STATIC]["login.html"]
    text = body.decode().replace("<!--WRONG-->", html.escape(wrong))
    return web.Response(
        text=text,
        status=401,
        content_type=content_type,
        headers={"Cache-Control": "no-store", "WWW-Authenticate": 'Bearer realm="remus"'},
    )


async def static(request: web.Request) -> web.Response:
    """``GET /static/{name}``: a file of the page's."""
    return _file(request, request.match_info["name"])


async def stream(request: web.Request) -> web.StreamResponse:
    """``GET /api/stream``: the feed's events as server-sent events, until the page goes."""
    events = EventStream(request)
    await events.open()
    async with contextlib.aclosing(request.app[FEED].follow()) as follow:
        async for name, data in follow:
            await events.send(name, data)
    return await events.close()


async def job_detail(request: web.Request) -> web.Response:
    """``GET /api/jobs/{id}``: the job's status with its attempts and history, and its
    progress updates so far (the latest ``PROGRESS_LIMIT``), with the failure's traceback
    once it is over. 404 for a job the broker does not know."""
    feed = request.app[FEED]
    job_id = request.match_info["id"]
    st = await feed.client.job_status(job_id, timeout=feed.timeout)
    if st.status is Status.INVALID:
        raise unknown_job(job_id)
    return json_response({**status_json(st), **await progress_history(feed, job_id)})


async def progress_history(feed: Feed, job_id: str) -> dict[str, Any]:
    """Every progress update the broker keeps for the job, asked once without holding
    (``AsyncClient.job_progress`` would follow a running job to its end)."""
    reply = await feed.client.conn.call(
        p.ProgressRequest, job_id, 0, 0.0, False, False, timeout=feed.timeout
    )
    data = reply.data
    updates = data.get("updates") or []
    return {
        "updates": [
            {"seq": seq, "value": value, "message": message}
            for seq, value, message in updates[-PROGRESS_LIMIT:]
        ],
        "updates_total": len(updates) + int(data.get("dropped") or 0),
        "traceback": data.get("traceback", ""),
    }


def setup(app: web.Application, client: AsyncClient, **feed_options: Any) -> None:
    """Add the dashboard's routes to ``app``, polling the broker through ``client`` (which its
    owner closes). In the gateway, each route is behind its bearer-token check."""
    from remus.http.app import guarded  # (remus.http.app imports this module)

    wrap: Callable[[Handler], Handler] = guarded if GATEWAY in app else (lambda h: h)
    feed = app[FEED] = Feed(client, **feed_options)
    app[STATIC] = static_files()
    app.router.add_get("/", wrap(page))
    if GATEWAY in app:
        app.router.add_post("/login", wrap(login))
    app.router.add_get("/static/{name}", wrap(static))
    app.router.add_get("/api/stream", wrap(stream))
    app.router.add_get("/api/jobs/{id}", wrap(job_detail))

    async def close(app: web.Application) -> None:
        await feed.close()  # open streams end now, not after the shutdown grace

    app.on_shutdown.append(close)


def add_routes(app: web.Application) -> None:
    """The dashboard on the gateway's own client (``make_app`` calls this)."""
    setup(app, app[GATEWAY].client)
