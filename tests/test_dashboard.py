"""The dashboard of ``remus http`` (remus.http.dashboard): its feed and routes over real HTTP,
and the page itself in headless Chromium against a live broker.

The browser test drives Debian's ``chromium`` over the DevTools protocol with aiohttp's own
websocket client (no Selenium, no driver). ``make test`` installs chromium when it is missing
(``make chromium``); without it the browser test is skipped, except under CI=true, where it
fails. ``REMUS_DOCS_SCREENSHOT=1`` also saves the screenshot as docs/dashboard.png, after
letting jobs flow for a while so that the chart has some history.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers_async import arun, until

from remus import IOType, Job, JobRequirements
from remus.aio import AsyncClient
from remus.http import GatewayConfig, Serving, make_app
from remus.http.dashboard import FEED
from remus.http.feed import Feed
from remus.http.snapshot import percentiles
from remus.server import Server

pytestmark = pytest.mark.timeout(90)

MESH = IOType("Edges", "Mesh2D")
SURFACE = IOType("Points", "Surface")
ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ workers


class Mesher:
    """``slow`` reports ten steps of 10%, each once the test releases it (``steps``); any
    other input is done at once."""

    def __init__(self) -> None:
        self.steps = threading.Semaphore(0)

    def __call__(self, job: Any) -> bytes:
        data = bytes(job.get("data", b""))
        if data == b"slow":
            for i in range(1, 11):
                if not self.steps.acquire(timeout=30):
                    raise TimeoutError(f"step {i} was never released")
                job.send_progress(i * 10, f"step {i} of 10")
        return data.upper()

    def release(self, n: int = 1) -> None:
        self.steps.release(n)


def surfacer(job: Any) -> bytes:
    data = bytes(job.get("data", b""))
    if data.startswith(b"bad"):
        raise ValueError("the point cloud has a hole near (3.0, 4.0)")
    return data


def workers(make_worker: Any, server: Server) -> Mesher:
    mesher = Mesher()
    make_worker(JobRequirements(MESH, worker_name="EdgeMesher"), server.ports.worker, run=mesher)
    make_worker(JobRequirements(SURFACE, worker_name="Surfacer"), server.ports.worker, run=surfacer)
    return mesher


@asynccontextmanager
async def gateway(endpoint: str, **options: Any) -> AsyncIterator[tuple[str, Feed]]:
    """The gateway on 127.0.0.1, a free port: its URL and the dashboard's feed."""
    app = make_app(GatewayConfig(broker=endpoint, broker_timeout=5.0, **options))
    async with Serving(app, "127.0.0.1", 0) as serving:
        yield serving.url, app[FEED]


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) of a text/event-stream."""
    event: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if "data" in event:
                yield event.get("event", "message"), json.loads(event["data"])
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value


# ------------------------------------------------------------------ snapshot rules


def test_percentiles_interpolate_inside_the_bucket() -> None:
    bounds = [0.1, 1.0, 10.0]
    # 10 observations: 5 under 0.1 s, 4 between 0.1 and 1 s, 1 over 10 s
    got = percentiles([5, 4, 0, 1], bounds, total=14.0)
    assert got["count"] == 10 and got["mean"] == pytest.approx(1.4)
    assert got["p50"] == pytest.approx(0.1)  # the 5th of 10: the top of the first bucket
    assert got["p90"] == pytest.approx(1.0)
    assert got["p99"] == 10.0 and got["capped"] == ["p99"]  # in the open bucket
    empty = percentiles([0, 0, 0, 0], bounds, total=0)
    assert empty["p50"] is None and empty["mean"] is None and empty["count"] == 0


# ------------------------------------------------------------------ routes, over HTTP


def test_stream_is_one_shared_poll_that_stops_with_the_last_page(
    make_worker: Any, server: Server
) -> None:
    mesher = workers(make_worker, server)

    async def main() -> None:
        async with (
            gateway(server.ports.client) as (url, feed),
            AsyncClient(server.ports.client, timeout=5) as client,
            aiohttp.ClientSession(base_url=url) as http,
        ):
            async with http.get("/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert "static/dashboard.js" in await r.text()
            for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
                async with http.get(f"/static/{name}") as r:
                    assert (r.status, r.content_type) == (200, kind)
            async with http.get("/static/nothing.js") as r:
                assert r.status == 404 and (await r.json())["error"] == "not-found"
            async with http.get("/api/jobs/no-such-job") as r:
                assert r.status == 404 and (await r.json())["error"] == "unknown-job"

            assert not feed.polling
            job = await client.submit(MESH, b"slow")
            async with http.get("/api/stream") as one, http.get("/api/stream") as two:
                assert one.headers["Content-Type"] == "text/event-stream"
                a, b = events(one), events(two)
                assert (await anext(a))[0] == "history"
                assert (await anext(b))[0] == "history"
                first = (await anext(a))[1]
                seen_a = {first["t"], (await anext(a))[1]["t"], (await anext(a))[1]["t"]}
                seen_b = {(await anext(b))[1]["t"] for _ in range(3)}
                # the same polls, not a loop per page (which would make six snapshots)
                assert len(seen_a | seen_b) <= 4 and feed.polls <= 5, (seen_a, seen_b)
                names = [w["name"] for w in first["workers"]]
                assert any(n.startswith("EdgeMesher@") for n in names), names
                assert set(first["queued"]) >= {str(MESH), str(SURFACE)}
                mesher.release(3)

                def at_30(snap: dict[str, Any]) -> bool:
                    return any(
                        j["id"] == job.id and (j["progress"] or {}).get("value") == 30
                        for w in snap["workers"]
                        for j in w["jobs"]
                    )

                async with asyncio.timeout(10):
                    async for name, snap in a:
                        if name == "snapshot" and at_30(snap):
                            break
                polls = feed.polls
                assert feed.pages == 2 and polls < 25  # one poll a second for both
                await a.aclose()
                await b.aclose()
            await until(lambda: not feed.polling, what="the poll loop to stop")
            assert feed.pages == 0

            async with http.get(f"/api/jobs/{job.id}") as r:
                detail = await r.json()
            assert detail["status"] == "IN_PROGRESS" and detail["attempt"] == 1
            assert [u["value"] for u in detail["updates"]] == [10, 20, 30]
            assert detail["updates"][-1]["message"] == "step 3 of 10"
            mesher.release(7)
            await client.wait(job, timeout=10)

    arun(main, timeout=60)


# ------------------------------------------------------------------ the page, in Chromium


def chromium() -> str:
    """Debian's chromium, or skip (fail under CI=true: there it must be installed)."""
    found = shutil.which("chromium")
    if found is None:
        why = "Debian's chromium is not installed (make chromium: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


#: the flags a headless Chromium needs on this machine (no sandbox as root, no network)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",
)


class Browser:
    """A headless Chromium process, driven over one DevTools websocket (flat sessions)."""

    def __init__(self, executable: str, home: Path) -> None:
        self.executable = executable
        self.home = home
        self.proc: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        #: exceptions and console errors the pages raised
        self.errors: list[str] = []

    async def start(self, timeout: float = 20.0) -> None:
        profile = self.home / "profile"
        profile.mkdir()
        log = (self.home / "chromium.log").open("wb")
        with log:
            self.proc = await asyncio.create_subprocess_exec(
                self.executable,
                *FLAGS,
                f"--user-data-dir={profile}",
                "--window-size=1400,1000",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its helpers share its process group, stopped with it
            )
        port_file = profile / "DevToolsActivePort"

        def ready() -> bool:
            if self.proc is not None and self.proc.returncode is not None:
                raise AssertionError(f"chromium exited at once:\n{self.log_tail()}")
            return port_file.exists() and len(port_file.read_text().splitlines()) >= 2

        await until(ready, timeout, "chromium's DevToolsActivePort file")
        port, path = port_file.read_text().splitlines()[:2]
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def log_tail(self) -> str:
        path = self.home / "chromium.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            waiter = self._waiting.pop(data.get("id", -1), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description", str(details)))
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] in (
                "error",
                "assert",
            ):
                self.errors.append(json.dumps(data["params"]["args"])[:500])
        for waiter in self._waiting.values():
            waiter.cancel()

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str = "",
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        assert self.ws is not None
        rid = next(self._ids)
        waiter = self._waiting[rid] = asyncio.get_running_loop().create_future()
        msg: dict[str, Any] = {"id": rid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send_json(msg)
        async with asyncio.timeout(timeout):
            reply = await waiter
        if "error" in reply:
            raise AssertionError(f"DevTools {method}: {reply['error']}")
        return reply.get("result", {})

    async def open(self, url: str, width: int = 1400, height: int = 1000) -> Page:
        target = (await self.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        attached = await self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        await page.send("Page.navigate", {"url": url})
        await page.until("document.readyState === 'complete'", what="the page to load")
        return page

    async def stop(self) -> None:
        """Close the browser, and kill its process group (by our PID) if it lingers."""
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(AssertionError, TimeoutError, ConnectionError):
                await self.send("Browser.close", timeout=5)
            await self.ws.close()
        if self._reader is not None:
            await self._reader
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever it left in its group
            await self.proc.wait()


class Page:
    """One tab, through its flat DevTools session."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session=self.session)

    async def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        got = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in got:
            raise AssertionError(f"{expression}: {got['exceptionDetails']}")
        return got["result"].get("value")

    async def until(self, expression: str, timeout: float = 10.0, what: str = "") -> Any:
        return await until(lambda: self.js(expression), timeout, what or expression)

    async def click(self, selector: str) -> None:
        """Click the element ``selector`` finds (an error if none does)."""
        await self.js(f"document.querySelector({json.dumps(selector)}).click()")

    async def screenshot(self, path: Path) -> bytes:
        """The whole page as a PNG, saved at ``path``."""
        size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
        shot = await self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                },
            },
        )
        png = base64.b64decode(shot["data"])
        path.write_bytes(png)
        return png


@asynccontextmanager
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    b = Browser(chromium(), tmp_path)
    try:
        await b.start()
        yield b
    finally:
        await b.stop()


def bar(job_id: str) -> str:
    """The value of job ``job_id``'s progress bar in the workers panel (null if none)."""
    return (
        f"(() => {{ const b = document.querySelector('#workers progress[data-job=\"{job_id}\"]');"
        " return b && b.hasAttribute('value') ? b.value : null; })()"
    )


@pytest.mark.timeout(150)  # (with REMUS_DOCS_SCREENSHOT=1: a minute of load for the chart)
def test_the_page_shows_workers_progress_failures_and_a_jobs_detail(
    make_worker: Any, server: Server, tmp_path: Path
) -> None:
    chromium()
    mesher = workers(make_worker, server)
    docs = os.environ.get("REMUS_DOCS_SCREENSHOT") == "1"

    async def main() -> None:
        async with (
            gateway(server.ports.client) as (url, feed),
            AsyncClient(server.ports.client, timeout=5) as client,
            browser(tmp_path) as b,
        ):
            page = await b.open(url + "/")
            # a worker appears
            names = await page.until(
                "[...document.querySelectorAll('#workers tr.worker')]"
                ".map(r => r.dataset.name).join(' ')",
                what="the workers to appear",
            )
            assert "EdgeMesher@" in names and "Surfacer@" in names, names
            assert await page.js("document.getElementById('conn').dataset.state") == "live"

            # a job's progress bar moves
            job = await client.submit(MESH, b"slow")
            queued = [await client.submit(MESH, f"next {i}".encode()) for i in range(3)]
            mesher.release(2)
            await page.until(f"{bar(job.id)} >= 20", what="the progress bar at 20%")
            first = await page.js(bar(job.id))
            mesher.release(3)
            await page.until(f"{bar(job.id)} > {first}", what="the progress bar to move")
            second = await page.js(bar(job.id))
            assert second > first >= 20, (first, second)
            await page.until(
                "document.getElementById('count-queued').textContent === '3'",
                what="three jobs queued behind it",
            )

            # a failure appears with its reason
            failing = await client.submit(SURFACE, b"bad points")
            reason = await page.until(
                f"document.querySelector('#failures li[data-job=\"{failing.id}\"] .reason')"
                "?.textContent",
                what="the failure in the failures panel",
            )
            assert "hole near (3.0, 4.0)" in reason, reason

            # a click shows the job's detail: its progress history
            await page.click(f'#jobs tr[data-job="{job.id}"]')
            rows = await page.until(
                "!document.getElementById('detail').hidden && "
                "document.querySelectorAll('#detail-progress tbody tr').length",
                what="the job's detail",
            )
            assert rows == 5
            assert await page.js("document.getElementById('detail-id').textContent") == job.id
            await page.click(f'#failures li[data-job="{failing.id}"]')
            trace = await page.until(
                "document.getElementById('detail-trace').textContent",
                what="the failed job's traceback",
            )
            assert "ValueError" in trace
            await page.click(f'#jobs tr[data-job="{job.id}"]')
            await page.until(
                "document.querySelectorAll('#detail-progress tbody tr').length === 5",
                what="the detail back on the slow job",
            )

            # the chart has a line per io type
            legend = await page.js(
                "[...document.querySelectorAll('#legend [data-io]')].map(e => e.dataset.io)"
            )
            assert set(legend) >= {str(MESH), str(SURFACE)}, legend
            if docs:
                await flow(client, page, mesher, job)
            png = await page.screenshot(tmp_path / "dashboard.png")
            assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
            if docs:
                (ROOT / "docs" / "dashboard.png").write_bytes(png)
            assert not b.errors, b.errors

            mesher.release(5)
            for j in (job, *queued):
                await client.wait(j, timeout=10)
            assert feed.pages == 1

    arun(main, timeout=130 if docs else 60)


@pytest.mark.timeout(90)
def test_behind_tokens_a_browser_signs_in_and_the_page_goes_live(
    make_worker: Any, server: Server, tmp_path: Path
) -> None:
    """With --tokens the page is a sign-in form; the right token shows the dashboard, live
    (its EventSource and fetches carry the cookie the sign-in set)."""
    chromium()
    workers(make_worker, server)

    async def main() -> None:
        async with (
            gateway(server.ports.client, tokens=("s3cret",)) as (url, feed),
            browser(tmp_path) as b,
        ):
            page = await b.open(url + "/")
            await page.until("!!document.getElementById('token')", what="the sign-in form")
            await page.js(
                "document.getElementById('token').value = 'wrong';"
                "document.querySelector('form').submit()"
            )
            said = await page.until(
                "document.getElementById('wrong')?.textContent", what="the wrong token refused"
            )
            assert "not one of this gateway" in said
            await page.js(
                "document.getElementById('token').value = 's3cret';"
                "document.querySelector('form').submit()"
            )
            names = await page.until(
                "[...document.querySelectorAll('#workers tr.worker')]"
                ".map(r => r.dataset.name).join(' ')",
                what="the workers to appear after signing in",
            )
            assert "EdgeMesher@" in names, names
            assert await page.js("document.getElementById('conn').dataset.state") == "live"
            assert await page.js("document.cookie") == "", "the cookie is HttpOnly"
            assert feed.pages == 1
            assert not b.errors, b.errors

    arun(main, timeout=80)


async def flow(
    client: AsyncClient, page: Page, mesher: Mesher, first: Job, seconds: float = 55.0
) -> None:
    """For the docs' screenshot only: a minute of jobs coming and going (a slow job every 12 s,
    a step a second, quick ones queued behind it, now and then a failure), so the chart has a
    history; then a last slow job left at 60% and its detail open. ``first``: the slow job
    running (at 50%)."""
    mesher.release(5)
    await client.wait(first, timeout=10)
    slow = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        if i % 12 == 1:
            slow.append(await client.submit(MESH, b"slow"))
        if 1 <= i % 12 <= 10:
            mesher.release(1)
        for k in range(i % 4):
            await client.submit(MESH, f"tile {i}.{k}".encode())
        if i % 3 == 0:
            await client.submit(SURFACE, f"cloud {i}".encode())
        if i % 9 == 0:
            await client.submit(SURFACE, f"bad cloud {i}".encode())
        await asyncio.sleep(1.0)  # pacing the load, not waiting for anything
    mesher.release(10 * len(slow))
    for j in slow:
        await client.wait(j, timeout=30)
    while mesher.steps.acquire(blocking=False):
        pass  # no slow job runs now: drop the steps left over
    job = await client.submit(MESH, b"slow")
    for _ in range(3):
        await client.submit(MESH, b"later")
    mesher.release(6)
    await page.until(f"{bar(job.id)} === 60", what="the last job at 60%")
    await page.click(f'#jobs tr[data-job="{job.id}"]')
    await page.until(
        "document.querySelectorAll('#detail-progress tbody tr').length === 6",
        what="the detail on the last job",
    )
