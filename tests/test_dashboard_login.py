"""The dashboard behind ``--tokens``: a browser signs in once, with a form, and the cookie it
gets opens the page's own reads and nothing else (remus.http.auth)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers_async import arun
from test_http import call, gateway, problem, shouter

from remus.http.auth import COOKIE
from remus.server import Server

pytestmark = pytest.mark.timeout(60)


def test_a_browser_signs_in_with_a_token_and_its_cookie_opens_only_the_dashboard(
    make_worker: Any, server: Server
) -> None:
    shouter(make_worker, server)

    async def main() -> None:
        async with gateway(server.ports.client, tokens=("s3cret",)) as g:
            # no token yet: the page is a sign-in form, not a JSON refusal
            status, headers, body = await call(g, "GET", "/")
            assert status == 401 and headers["Content-Type"].startswith("text/html")
            assert b'name="token"' in body and b"--tokens" in body
            # a wrong token: the form again, saying so, and no cookie
            status, headers, body = await call(
                g, "POST", "/login", data={"token": "nope"}, allow_redirects=False
            )
            assert status == 401 and b"not one of this gateway" in body
            assert "Set-Cookie" not in headers
            # the right one: the cookie, and back to the page
            status, headers, _ = await call(
                g, "POST", "/login", data={"token": "s3cret"}, allow_redirects=False
            )
            assert status == 303 and headers["Location"] == "./"
            cookie = headers["Set-Cookie"]
            assert cookie.startswith(f"{COOKIE}=s3cret;"), cookie
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
            jar = {COOKIE: "s3cret"}
            status, _, body = await call(g, "GET", "/", cookies=jar)
            assert status == 200 and b"dashboard.js" in body
            assert (await call(g, "GET", "/static/dashboard.js", cookies=jar))[0] == 200
            status, doc = await problem(g, "GET", "/api/jobs/never", cookies=jar)
            assert status == 404 and doc["error"] == "unknown-job"
            # the cookie is no bearer token: the job routes still need the header
            for method, path in [("POST", "/run/Text/Upper"), ("GET", "/jobs/never")]:
                status, doc = await problem(g, method, path, data=b"hi", cookies=jar)
                assert (status, doc["error"]) == (401, "unauthorized"), path
            # nor does a wrong cookie open the page's reads
            bad = {COOKIE: "s3cre"}
            assert (await call(g, "GET", "/static/dashboard.js", cookies=bad))[0] == 401
            assert (await call(g, "GET", "/", cookies=bad))[0] == 401

    arun(main)


def test_without_tokens_the_page_is_open_and_login_just_goes_to_it(server: Server) -> None:
    async def main() -> None:
        async with gateway(server.ports.client) as g:
            status, _, body = await call(g, "GET", "/")
            assert status == 200 and b"dashboard.js" in body
            status, headers, _ = await call(
                g, "POST", "/login", data={"token": "x"}, allow_redirects=False
            )
            assert status == 303 and "Set-Cookie" not in headers

    arun(main)
