"""``make_app``: the gateway as an aiohttp ``Application``, built on one shared AsyncClient.

::

    app = make_app(GatewayConfig(broker="tcp://127.0.0.1:50505", max_pending=100))
    async with Serving(app, "127.0.0.1", 8080):   # as `remus http` does (remus.http.serve)
        ...

The routes are a table (:data:`ROUTES`); another feature adds its own with a function that
takes the app (as ``remus.http.dashboard.add_routes``), each handler wrapped in :func:`guarded`,
which checks the bearer token and answers every refusal as JSON ``{error, message}``. An
unknown path is answered 404 and a wrong method 405, as JSON too (:func:`add_fallbacks`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web

from remus.errors import RemusError
from remus.http import dashboard, handlers, openapi, progress
from remus.http.auth import COOKIE, PUBLIC, cookie_route
from remus.http.client import GatewayClient
from remus.http.config import GatewayConfig
from remus.http.gateway import GATEWAY, Gateway
from remus.http.replies import JSON, Problem, json_response, problem_of

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 if the broker answers (within 2 s), else 503."""
    gw = request.app[GATEWAY]
    try:
        stats = await gw.client.stats(timeout=min(2.0, gw.config.broker_timeout))
    except RemusError as e:
        problem = problem_of(e)
        return json_response(
            {"status": "unavailable", "error": problem.code, "message": problem.message},
            status=503,
        )
    return json_response(
        {
            "status": "ok",
            "broker": gw.client.endpoint,
            "broker_version": stats.version,
            "broker_uptime": stats.uptime,
        }
    )


async def openapi_json(request: web.Request) -> web.Response:
    return json_response(openapi.document())


#: (method, path, handler) of every route but the dashboard's (remus.http.dashboard)
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/run/{input}/{output}", handlers.run),
    ("POST", "/jobs/{input}/{output}", handlers.submit),
    ("GET", "/jobs/{id}", handlers.status),
    ("DELETE", "/jobs/{id}", handlers.terminate),
    ("GET", "/jobs/{id}/result", handlers.result),
    ("GET", "/jobs/{id}/progress", progress.progress),
    ("GET", "/healthz", healthz),
    ("GET", "/openapi.json", openapi_json),
]


def guarded(handler: Handler) -> Handler:
    """``handler`` behind the gateway's two rules: with tokens, every route but /healthz needs
    ``Authorization: Bearer TOKEN``; every refusal is answered as JSON ``{error, message}``
    (a ``Problem``, an exception of ``remus.errors``, or aiohttp's own, e.g. 413).

    A wrapper per route rather than middlewares: a waiting request then holds one frame more,
    not three (10,000 waiting requests are the gateway's memory)."""

    @functools.wraps(handler)
    async def guard(request: web.Request) -> web.StreamResponse:
        try:
            if not _let_in(request):
                raise _unauthorized()
            return await handler(request)
        except Problem as p:
            return p.response()
        except web.HTTPException as e:
            if e.status < 400 or e.content_type == JSON:
                raise
            return _http_problem(e).response()
        except RemusError as e:
            return problem_of(e).response()
        except ConnectionResetError:
            raise
        except Exception as e:
            log.exception("%s %s failed", request.method, request.path)
            return Problem(500, "internal", f"the gateway failed: {e!r} (see its log)").response()

    return guard


def _let_in(request: web.Request) -> bool:
    return request.path in PUBLIC or signed_in(request)


def signed_in(request: web.Request) -> bool:
    """Whether the request carries a token: the bearer header, or on the dashboard's own
    reads the sign-in cookie (remus.http.auth). Always, without ``--tokens``."""
    tokens = request.app[GATEWAY].tokens
    if tokens is None or tokens.allows(request.headers.get("Authorization")):
        return True
    return cookie_route(request.method, request.path) and tokens.valid(request.cookies.get(COOKIE))


def _unauthorized() -> Problem:
    return Problem(
        401,
        "unauthorized",
        "this gateway needs a bearer token: send Authorization: Bearer TOKEN "
        "(one of the lines of its --tokens file)",
        headers={"WWW-Authenticate": 'Bearer realm="remus"'},
    )


def _http_problem(e: web.HTTPException) -> Problem:
    """aiohttp's own refusals (a body over client_max_size, say) as problems."""
    code = HTTPStatus(e.status).phrase.lower().replace(" ", "-")
    keep = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
    return Problem(e.status, code, f"{e.reason}: {e.text or e.reason}", headers=keep)


async def _no_route(request: web.Request) -> web.Response:
    raise Problem(404, "not-found", f"no route {request.path}: see /openapi.json")


def _wrong_method(allowed: list[str]) -> Handler:
    allow = ", ".join(allowed)

    async def wrong_method(request: web.Request) -> web.Response:
        raise Problem(
            405,
            "method-not-allowed",
            f"{request.method} is not served at {request.path}: use {allow}",
            headers={"Allow": allow},
        )

    return wrong_method


def add_fallbacks(app: web.Application) -> None:
    """JSON answers for a known path with a method it does not serve (405) and for any other
    path (404); added last, after every route."""
    methods: dict[str, list[str]] = {}
    for route in app.router.routes():
        if route.resource is not None and route.method not in ("HEAD", "*"):
            methods.setdefault(route.resource.canonical, []).append(route.method)
    for path, allowed in methods.items():
        app.router.add_route("*", path, guarded(_wrong_method(allowed)))
    app.router.add_route("*", "/{tail:.*}", guarded(_no_route))


def make_app(
    config: GatewayConfig | None = None,
    *,
    client: GatewayClient | None = None,
    extra: tuple[Callable[[web.Application], None], ...] = (),
) -> web.Application:
    """The gateway app. ``client``: a GatewayClient to share (closed by its owner); default
    one made from ``config`` and closed with the app. ``extra``: functions that add routes
    (each handler wrapped in :func:`guarded`)."""
    config = config or GatewayConfig()
    app = web.Application(client_max_size=config.max_body)
    gw = app[GATEWAY] = Gateway(config, client)
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, guarded(handler))
    # the live dashboard at / (remus.http.dashboard)
    for add_routes in (dashboard.add_routes, *extra):
        add_routes(app)
    add_fallbacks(app)

    async def close(app: web.Application) -> None:
        await gw.close()

    async def stop_waiting(app: web.Application) -> None:
        await gw.stop_waiting()

    app.on_shutdown.append(stop_waiting)  # (before the server waits for running requests)
    app.on_cleanup.append(close)
    return app
