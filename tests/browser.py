"""A real headless Chromium driven over the DevTools protocol (no browser download, no
Selenium): open a page, read its text, take screenshots, close the tab.

Debian's ``chromium`` (/usr/bin/chromium) is used; :func:`chromium_path` is None where it is
missing, and the tests that need it skip saying so.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium process with a fresh profile; use as an async context manager."""

    def __init__(self, width: int = 1280, height: int = 800) -> None:
        self.width, self.height = width, height
        self.profile = tempfile.TemporaryDirectory(prefix="h2q-chromium-")
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Browser:
        path = chromium_path()
        assert path, "chromium is not installed"
        self.process = subprocess.Popen(
            [path, *FLAGS, f"--user-data-dir={self.profile.name}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = Path(self.profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.monotonic() < deadline, "chromium did not start"
            await asyncio.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.http is not None:
            await self.http.close()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.profile.cleanup()

    async def open(self, url: str) -> Tab:
        async with self.http.put(f"http://127.0.0.1:{self.port}/json/new?{url}") as r:
            target = await r.json()
        tab = Tab(self, target["id"])
        await tab.connect(target["webSocketDebuggerUrl"])
        return tab


class Tab:
    """A page: DevTools commands over its websocket."""

    def __init__(self, browser: Browser, target_id: str) -> None:
        self.browser, self.target_id = browser, target_id
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.ids = itertools.count(1)

    async def connect(self, url: str) -> None:
        self.ws = await self.browser.http.ws_connect(url, max_msg_size=64 << 20)

    async def send(self, method: str, **params) -> dict:
        call = next(self.ids)
        await self.ws.send_str(json.dumps({"id": call, "method": method, "params": params}))
        while True:
            message = json.loads((await self.ws.receive()).data)
            if message.get("id") == call:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode((await self.send("Page.captureScreenshot", format="png"))["data"])
        path.write_bytes(data)
        return data

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        async with self.browser.http.get(
            f"http://127.0.0.1:{self.browser.port}/json/close/{self.target_id}"
        ) as r:
            await r.read()
