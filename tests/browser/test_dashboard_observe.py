"""The dashboard's observability panels in headless Chromium: replicas (per-endpoint success and
latency over the last minutes), recent requests, and the dtab playground (a path through a typed
dtab: the delegation tree and the outcome; a bad dtab refused with the parser's line and column).

meshd runs in-process with real upstreams and traffic; Chromium loads the page from the admin
server. The test checks what the panels say against the upstreams, then takes a screenshot of the
whole page and checks its layout: every panel present, with a size, inside the page's width, not
overlapping another, and not blank (each panel's own screenshot has many colours); and the page
logged no error to its console. Set MESHD_SCREENSHOT_DIR to keep the screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from routing.parser import DtabSyntaxError, parse_dtab
from tests.browser.test_dashboard import CHROMIUM_FLAGS, Page, chromium, down, keep_sending  # noqa: F401
from tests.support.waiting import wait_until


class ConsolePage(Page):
    """A tab that also collects what the page logs as errors (console.error, failed loads)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.console_errors: list[str] = []
        super().__init__(ws)

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
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] == "error":
                self.console_errors.append(json.dumps(data["params"]["args"])[:500])
            elif data.get("method") == "Log.entryAdded" and data["params"]["entry"]["level"] == "error":
                entry = data["params"]["entry"]
                self.console_errors.append(f'{entry.get("text", "")[:400]} {entry.get("url", "")}')


@pytest.fixture
async def page(chromium: str, tmp_path: pathlib.Path) -> AsyncIterator[ConsolePage]:  # noqa: F811
    profile = tmp_path / "chromium-profile"
    proc = await asyncio.create_subprocess_exec(
        chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    active_port = profile / "DevToolsActivePort"
    session = aiohttp.ClientSession()
    tab: ConsolePage | None = None
    try:
        await wait_until(lambda: active_port.exists() and active_port.read_text().count("\n") >= 1, timeout=20)
        port = int(active_port.read_text().split()[0])
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        (target,) = [t for t in targets if t["type"] == "page"]
        ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        tab = ConsolePage(ws)
        for domain in ("Runtime", "Page", "Log"):
            await tab.send(f"{domain}.enable")
        yield tab
    finally:
        if tab is not None:
            await tab.close()
        await session.close()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit non-interlaced PNG (what Chromium writes)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def colours(png: bytes) -> int:
    width, height, rows = png_pixels(png)
    bpp = len(rows[0]) // width
    return len({row[i : i + 3] for row in rows for i in range(0, len(row), bpp)})


async def test_replicas_recent_requests_and_dtab_playground(make_mesh, make_upstream, page, tmp_path):
    acc1, acc2 = await make_upstream(), await make_upstream()
    led_ok, led_down = await make_upstream(), await make_upstream(down)
    # round robin: every replica gets its share of the one connection's back-to-back requests (with
    # P2C + Peak EWMA a replica whose first answer was slower, a connect included, can sit unpicked
    # for longer than this test waits while the other answers faster)
    mesh = await make_mesh(
        service={"responseClassifier": {"kind": "nonRetryable5XX"}},
        client={"loadBalancer": {"kind": "roundRobin"}},
    )
    mesh.register("accounts", acc1, acc2)
    mesh.register("ledger", led_ok, led_down)
    stop = asyncio.Event()
    senders = [asyncio.create_task(keep_sending(mesh.port, host, stop)) for host in ("accounts", "ledger")]
    try:
        await wait_until(lambda: led_down.requests >= 3 and acc1.requests >= 3 and acc2.requests >= 3, timeout=10)
        await page.send("Page.navigate", url=f"http://127.0.0.1:{mesh.admin_port}/")
        ready = (
            "document.querySelectorAll('tr[data-replica]').length === 4"
            " && document.querySelectorAll('#recent tr[data-request]').length > 0"
            " && document.querySelectorAll('#pg-router option').length === 1"
            " && document.getElementById('pg-dtab').value !== ''"
        )
        await wait_until(lambda: page.evaluate(ready), timeout=20, interval=0.2, message="panels rendered")
    finally:
        stop.set()
        await asyncio.gather(*senders)

    view = await page.evaluate(
        """(() => ({
          replicas: Object.fromEntries([...document.querySelectorAll('tr[data-replica]')].map(
              tr => [tr.dataset.replica, [...tr.cells].map(td => td.textContent)])),
          clients: [...document.querySelectorAll('[data-replica-client]')].map(e => e.dataset.replicaClient),
          recent: [...document.querySelectorAll('#recent tr[data-request]')].slice(0, 5).map(
              tr => [...tr.cells].map(td => td.textContent)),
          dtab: document.getElementById('pg-dtab').value,
        }))()"""
    )
    assert sorted(view["clients"]) == ["/#/fs/accounts", "/#/fs/ledger"]
    endpoint, attempts, success, _trend, p99, _p99_trend, p50 = view["replicas"][f"127.0.0.1:{led_down.port}"]
    assert int(attempts) > 0 and success == "0%"
    assert view["replicas"][f"127.0.0.1:{led_ok.port}"][2] == "100%"
    for address in (f"127.0.0.1:{acc1.port}", f"127.0.0.1:{acc2.port}"):
        row = view["replicas"][address]
        assert int(row[1]) > 0 and row[2] == "100%" and row[4].endswith(("µs", "ms")) and row[6].endswith(("µs", "ms"))
    time, router, service, endpoint, status, latency, tries, trace = view["recent"][0]
    assert router == "outgoing" and service in ("/svc/accounts", "/svc/ledger")
    assert endpoint.startswith("127.0.0.1:") and status in ("200", "503") and latency.endswith(("µs", "ms"))
    assert tries == "1" and trace == "—" and len(time) == 12
    assert view["dtab"] == "/svc=>/#/fs;"

    # the playground: accounts split 7:3 with ledger's replicas by a typed dtab
    typed = "/svc => /#/fs;\n/svc/accounts => 7 * /#/fs/accounts & 3 * /#/fs/ledger;"
    await page.evaluate(
        f"""(() => {{
          document.getElementById('pg-path').value = '/svc/accounts';
          document.getElementById('pg-dtab').value = {json.dumps(typed)};
          document.getElementById('pg-explain').click();
        }})()"""
    )
    await wait_until(
        lambda: page.evaluate("document.querySelectorAll('#pg-result tr[data-outcome]').length === 2"),
        timeout=10, interval=0.1, message="the playground's outcome",
    )
    result = await page.evaluate(
        """(() => ({
          outcomes: Object.fromEntries([...document.querySelectorAll('#pg-result tr[data-outcome]')].map(
              tr => [tr.dataset.outcome, [...tr.cells].map(td => td.textContent)])),
          kinds: [...document.querySelectorAll('#pg-result .tree li')].map(li => li.dataset.kind),
          tree: document.querySelector('#pg-result .tree').textContent,
        }))()"""
    )
    assert result["outcomes"]["/#/fs/accounts"][0] == "70.00%"
    assert result["outcomes"]["/#/fs/ledger"][0] == "30.00%"
    assert result["outcomes"]["/#/fs/ledger"][2] == f"127.0.0.1:{led_ok.port}, 127.0.0.1:{led_down.port}" or result[
        "outcomes"
    ]["/#/fs/ledger"][2] == f"127.0.0.1:{led_down.port}, 127.0.0.1:{led_ok.port}"
    assert "union" in result["kinds"] and result["kinds"].count("bound") == 2
    # the dentry that matched, by its index in the typed dtab, and the rewrite it made
    assert "#1/svc/accounts=>7.00*/#/fs/accounts&3.00*/#/fs/ledger" in result["tree"].replace(" ", "")

    # a bad dtab: the parser's line and column, and the caret on the offending character
    bad = "/svc => /#/fs;\n/svc/x =>> /#/fs/y;"
    with pytest.raises(DtabSyntaxError) as parsed:
        parse_dtab(bad)
    await page.evaluate(
        f"""(() => {{
          document.getElementById('pg-dtab').value = {json.dumps(bad)};
          document.getElementById('pg-explain').click();
        }})()"""
    )
    await wait_until(lambda: page.evaluate("!!document.querySelector('.pg-error[data-line]')"), timeout=10, interval=0.1)
    error = await page.evaluate(
        """(() => { const e = document.querySelector('.pg-error'); const t = document.getElementById('pg-dtab');
                    return {line: e.dataset.line, column: e.dataset.column, text: e.textContent, at: t.selectionStart}; })()"""
    )
    assert (int(error["line"]), int(error["column"])) == (parsed.value.line, parsed.value.column) == (2, 10)
    assert f"line 2, column {parsed.value.column}: {parsed.value.reason}" in error["text"]
    assert error["at"] == len("/svc => /#/fs;\n") + parsed.value.column - 1

    # layout: a screenshot of the whole page; each panel present, sized, inside the page, apart, not blank
    boxes: dict[str, Any] = await page.evaluate(
        """(() => Object.fromEntries(['replicas', 'recent', 'playground'].map(id => {
              const r = document.getElementById(id).getBoundingClientRect();
              return [id, {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}];
          }).concat([['page', {width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight,
                               viewport: innerWidth}]])))()"""
    )
    full = await page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    png = base64.b64decode(full["data"])
    width, height, _ = png_pixels(png)
    assert boxes["page"]["width"] <= boxes["page"]["viewport"]  # nothing wider than the window
    assert height >= boxes["page"]["height"] - 1 and width >= boxes["page"]["viewport"] - 1
    panels = [boxes[k] for k in ("replicas", "recent", "playground")]
    for box in panels:
        assert box["width"] > 600 and box["height"] > 100 and box["x"] >= 0 and box["x"] + box["width"] <= width
        assert box["y"] + box["height"] <= height
    for a, b in zip(panels, panels[1:], strict=False):
        assert a["y"] + a["height"] <= b["y"]  # stacked, not overlapping
    for box in panels:
        clip = {"x": box["x"], "y": box["y"], "width": box["width"], "height": min(box["height"], 400), "scale": 0.25}
        shot = base64.b64decode((await page.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True))["data"])
        assert colours(shot) > 20  # text, tables and lines: not an empty box

    # the one error the page may log: the 400 it was answered for the bad dtab, on purpose
    expected = [e for e in page.console_errors if "status of 400" in e and "/admin/dtab/playground?" in e]
    assert len(expected) == 1, page.console_errors
    assert page.exceptions == [] and [e for e in page.console_errors if e not in expected] == []
    (tmp_path / "dashboard-observe.png").write_bytes(png)
    keep = os.environ.get("MESHD_SCREENSHOT_DIR")
    if keep:
        pathlib.Path(keep).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(keep) / "dashboard-observe.png").write_bytes(png)
