"""The admin dashboard in headless Chromium, driven over the DevTools protocol.

meshd runs in-process with real upstreams and traffic flowing; Chromium (Debian's
/usr/bin/chromium) loads the dashboard from the admin server, and the test waits until the
rendered DOM shows the services and every client's endpoints, checks what it says against the
upstreams and meshd's own metrics, and saves a screenshot (set MESHD_SCREENSHOT_DIR to keep a
copy). Under CI=true a missing Chromium fails the test; elsewhere it is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import shutil
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.client import RawConnection
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,1100",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
MISSING = "install chromium: apt-get install chromium"


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return path


class Page:
    """One Chromium tab over the DevTools protocol: commands by id, events collected."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.exceptions: list[str] = []
        self.requested: list[str] = []  # every URL the page asked for (with Network enabled)
        self._reader = asyncio.create_task(self._read())

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = future
        await self._ws.send_json({"id": self._next_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 15)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._ws.close()

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.exceptionThrown":
                self.exceptions.append(json.dumps(data["params"]["exceptionDetails"])[:500])
            elif data.get("method") == "Network.requestWillBeSent":
                self.requested.append(data["params"]["request"]["url"])


@pytest.fixture
async def browser(chromium: str, tmp_path: pathlib.Path) -> AsyncIterator[Page]:
    profile = tmp_path / "chromium-profile"
    proc = await asyncio.create_subprocess_exec(
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    active_port = profile / "DevToolsActivePort"
    session = aiohttp.ClientSession()
    page: Page | None = None
    try:
        await wait_until(lambda: active_port.exists() and active_port.read_text().count("\n") >= 1, timeout=20)
        port = int(active_port.read_text().split()[0])
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        (target,) = [t for t in targets if t["type"] == "page"]
        ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        page = Page(ws)
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send("Network.enable")
        yield page
    finally:
        if page is not None:
            await page.close()
        await session.close()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def keep_sending(port: int, host: str, stop: asyncio.Event, method: str = "GET") -> int:
    """Requests back to back on one connection until `stop` (each answered: bounded by the test)."""
    sent = 0
    conn = await RawConnection.open(port)
    try:
        while not stop.is_set() and sent < 200_000:
            await asyncio.wait_for(conn.request(method, "/", host=host), 10)
            sent += 1
    finally:
        await conn.close()
    return sent


async def down(req: Received) -> Reply:
    return Reply(503, [], b"down\n")


async def test_dashboard_shows_services_and_every_clients_endpoints(make_mesh, make_upstream, browser, tmp_path):
    acc1, acc2 = await make_upstream(), await make_upstream()
    led_ok, led_down = await make_upstream(), await make_upstream(down)
    mesh = await make_mesh(
        clients=[
            {
                "prefix": "/#/fs/ledger",
                "failureAccrual": {"kind": "consecutiveFailures", "failures": 3, "backoff": {"kind": "constant", "ms": 60000}},
            }
        ],
        service={"responseClassifier": {"kind": "nonRetryable5XX"}},
    )
    mesh.register("accounts", acc1, acc2)
    mesh.register("ledger", led_ok, led_down)
    stop = asyncio.Event()
    senders = [
        asyncio.create_task(keep_sending(mesh.port, "accounts", stop)),
        asyncio.create_task(keep_sending(mesh.port, "ledger", stop)),
    ]
    try:
        await wait_until(lambda: led_down.requests >= 3, timeout=10, message="ledger's bad replica ejected")

        await browser.send("Page.navigate", url=f"http://127.0.0.1:{mesh.admin_port}/")
        # the page is ready once a second poll has given it request rates and both clients' endpoints
        shown = (
            "document.querySelectorAll('tr[data-endpoint]').length === 4"
            " && [...document.querySelectorAll('tr[data-service] td:nth-child(2)')].every(td => td.textContent !== '—')"
        )

        async def rendered() -> bool:
            return bool(await browser.evaluate(shown))

        await wait_until(rendered, timeout=20, interval=0.2, message="dashboard rendered with rates")
        view = await browser.evaluate(
            """(() => ({
              title: document.title,
              status: document.getElementById('status').textContent,
              routers: [...document.querySelectorAll('section.router')].map(s => s.dataset.router),
              services: Object.fromEntries([...document.querySelectorAll('tr[data-service]')].map(
                  tr => [tr.dataset.service, [...tr.cells].map(td => td.textContent)])),
              clients: [...document.querySelectorAll('article.client')].map(a => ({
                  client: a.dataset.client,
                  header: a.querySelector('header').textContent,
                  endpoints: Object.fromEntries([...a.querySelectorAll('tr[data-endpoint]')].map(
                      tr => [tr.dataset.endpoint, [...tr.cells].map(td => td.textContent)])),
              })),
            }))()"""
        )
        png = base64.b64decode((await browser.send("Page.captureScreenshot", format="png"))["data"])
    finally:
        stop.set()
        sent = await asyncio.gather(*senders)
    assert all(n > 0 for n in sent)

    assert view["title"] == "meshd"
    assert view["status"].startswith("updated"), view["status"]
    assert view["routers"] == ["outgoing"]
    # services: request rate, success rate and latency per logical name
    assert set(view["services"]) == {"/svc/accounts", "/svc/ledger"}
    service, rate, _trend, success, p50, p99, *_ = view["services"]["/svc/accounts"]
    assert float(rate) > 0
    assert success == "100%"
    assert p50.endswith(("µs", "ms")) and p99.endswith(("µs", "ms"))
    assert view["services"]["/svc/ledger"][3] != "—"
    # clients: every endpoint with its state, pending count and EWMA
    clients = {c["client"]: c for c in view["clients"]}
    assert set(clients) == {"/#/fs/accounts", "/#/fs/ledger"}
    assert set(clients["/#/fs/accounts"]["endpoints"]) == {f"127.0.0.1:{acc1.port}", f"127.0.0.1:{acc2.port}"}
    ledger = clients["/#/fs/ledger"]
    address, state, weight, pending, ewma, cost, conns = ledger["endpoints"][f"127.0.0.1:{led_down.port}"]
    assert state == "ejected"
    assert ledger["endpoints"][f"127.0.0.1:{led_ok.port}"][1] == "live"
    assert weight == "1" and pending.isdigit() and ewma != "—"
    assert "1 ejected" in ledger["header"] and "1 ejection" in ledger["header"]
    assert "0 ejections" in clients["/#/fs/accounts"]["header"]
    for endpoint in clients["/#/fs/accounts"]["endpoints"].values():
        assert endpoint[1] == "live" and endpoint[4].endswith(("µs", "ms"))
    assert browser.exceptions == []
    # everything the page loaded came from meshd's admin server: no external URL, no build output
    admin = f"http://127.0.0.1:{mesh.admin_port}/"
    assert browser.requested and all(url.startswith(admin) for url in browser.requested), browser.requested
    assert {url.removeprefix(admin).split("?")[0] for url in browser.requested} >= {
        "",
        "dashboard/dashboard.css",
        "dashboard/dashboard.js",
        "dashboard/prometheus.js",
        "admin/endpoints",
        "admin/routes",
        "metrics",
    }

    # the screenshot: a real image of a real page
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    (tmp_path / "dashboard.png").write_bytes(png)
    keep = os.environ.get("MESHD_SCREENSHOT_DIR")
    if keep:
        pathlib.Path(keep).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(keep) / "dashboard.png").write_bytes(png)


async def test_dashboard_parser_agrees_with_prometheus_client(make_mesh, make_upstream, browser):
    """The page's own Prometheus parser and quantile, run in Chromium against a live scrape."""
    from prometheus_client.parser import text_string_to_metric_families

    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("accounts", up)
    conn = await RawConnection.open(mesh.port)
    try:
        for _ in range(25):
            assert (await conn.request("GET", "/", host="accounts")).status == 200
    finally:
        await conn.close()
    await browser.send("Page.navigate", url=f"http://127.0.0.1:{mesh.admin_port}/")
    await wait_until(
        lambda: browser.evaluate("document.querySelectorAll('tr[data-service]').length === 1"),
        timeout=20,
        interval=0.2,
    )
    got = await browser.evaluate(
        """(async () => {
          const m = await import('./dashboard/prometheus.js');
          const text = await (await fetch('metrics')).text();
          const s = m.parseMetrics(text);
          const match = {router: 'outgoing', service: '/svc/accounts'};
          return {
            requests: m.sum(s, 'meshd_requests_total', match),
            count: m.sum(s, 'meshd_request_duration_seconds_count', match),
            buckets: m.buckets(s, 'meshd_request_duration_seconds', match, null).map(([le, n]) => [String(le), n]),
            text,
            workers: (await import('./dashboard/dashboard.js')).normalizeEndpoints([
                {worker: 0, routers: [{router: 'outgoing', clients: [{client: '/#/fs/a', endpoints: []}]}]},
                {worker: 1, routers: [{router: 'outgoing', clients: [{client: '/#/fs/a', endpoints: []}]}]},
                {worker: 2, routers: {error: 'worker 2 unavailable'}},
            ]),
            q: [m.quantile(0.5, [[0.1, 10], [0.2, 20], [Infinity, 20]]),
                m.quantile(0.99, [[0.1, 0], [Infinity, 5]]),
                m.quantile(0.5, [])],
          };
        })()"""
    )
    families = {f.name: f for f in text_string_to_metric_families(got["text"])}
    requests = sum(s.value for s in families["meshd_requests"].samples if s.labels.get("service") == "/svc/accounts")
    assert got["requests"] == requests >= 25
    assert got["count"] >= 25
    expected = [
        (s.labels["le"], s.value)
        for s in families["meshd_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["service"] == "/svc/accounts"
    ]
    assert [(float(le), n) for le, n in got["buckets"]] == [(float(le), n) for le, n in expected]
    # the supervisor's shape under --workers: one entry per worker, folded into routers
    assert got["workers"] == [
        {
            "router": "outgoing",
            "clients": [
                {"client": "/#/fs/a", "endpoints": [], "worker": 0},
                {"client": "/#/fs/a", "endpoints": [], "worker": 1},
            ],
        }
    ]
    assert got["q"] == [0.1, 0.1, None]  # mid-bucket interpolation, +Inf bucket, empty histogram
    assert browser.exceptions == []


async def test_dashboard_says_so_when_meshd_stops_answering(make_mesh, make_upstream, browser):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("accounts", up)
    await browser.send("Page.navigate", url=f"http://127.0.0.1:{mesh.admin_port}/")
    status = "document.getElementById('status')?.textContent"
    await wait_until(lambda: _starts(browser, status, "updated"), timeout=20, interval=0.2)
    started = time.monotonic()
    await mesh.daemon.shutdown(drain_timeout_s=1.0)
    await wait_until(lambda: _starts(browser, status, "cannot reach meshd"), timeout=20, interval=0.2)
    assert time.monotonic() - started < 20


async def _starts(page: Page, expression: str, prefix: str) -> bool:
    return str(await page.evaluate(expression)).startswith(prefix)

