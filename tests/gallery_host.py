"""A test MCP Apps host in headless Chromium: the official `AppBridge` (npm `@modelcontextprotocol/ext-apps`, bundled
here with esbuild) renders our `ui://` view in a sandboxed iframe under the spec's default CSP, and relays the view's
tool calls to an in-memory MCP client of our server, so the view's protocol is checked by the library hosts use.

Needs Debian's `chromium`, Playwright for Python and `npm ci --prefix tests/browser`. Without them the browser tests
skip and say why; with CLIPSEARCH_BROWSER_TESTS=required (set by .ci/run) a missing piece fails them instead."""

import importlib.util
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client

from conftest import apps_client
from server.mcp_server.gallery import GALLERY_URI

BROWSER_DIR = Path(__file__).parent / "browser"
OUT_DIR = BROWSER_DIR / "out"  # screenshots and timings of the last run
REQUIRED_ENV = "CLIPSEARCH_BROWSER_TESTS"
HOST_URL = "http://host.test/host.html"


def chromium() -> str | None:
    return os.environ.get("CLIPSEARCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def missing() -> str | None:
    """What the browser tests lack on this machine, if anything."""
    if chromium() is None:
        return "Chromium (Debian: apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python (pip install -e '.[test]')"
    if shutil.which("node") is None:
        return "Node.js 20"
    if not (BROWSER_DIR / "node_modules" / "@modelcontextprotocol" / "ext-apps").is_dir():
        return "the MCP Apps host library (npm ci --prefix tests/browser)"
    return None


def require_browser() -> None:
    """Skip with the reason, or fail where the browser tests are required (CI)."""
    lacking = missing()
    if lacking is None:
        return
    if os.environ.get(REQUIRED_ENV) == "required":
        pytest.fail(f"{REQUIRED_ENV}=required, but this machine lacks {lacking}")
    pytest.skip(f"browser test: this machine lacks {lacking}")


def bridge_bundle(out: Path) -> Path:
    """The AppBridge and its dependencies as one script that defines `ExtApps` in the page."""
    target = out / "bridge.js"
    if not target.exists():
        esbuild = BROWSER_DIR / "node_modules" / "esbuild" / "bin" / "esbuild"
        command = [str(esbuild), str(BROWSER_DIR / "bridge-entry.js"), "--bundle", "--format=iife"]
        command += ["--global-name=ExtApps", "--platform=browser", f"--outfile={target}", "--log-level=warning"]
        subprocess.run(command, check=True, cwd=BROWSER_DIR, timeout=120)
    return target


async def wait_until(frame: Any, condition: str, timeout_ms: int = 20_000) -> None:
    """Poll a JavaScript condition in the view. (Playwright's own wait_for_function evaluates its predicate with
    eval, which the view's CSP rightly forbids.)"""
    deadline = time.monotonic() + timeout_ms / 1000
    while not await frame.evaluate(f"() => !!({condition})"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the view never reached: {condition}")
        await anyio.sleep(0.02)


def wire(result: types.CallToolResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


class GalleryHost:
    """One page of the test host, holding one view at a time."""

    def __init__(self, page: Any, client: Client, html: str, errors: list[str]) -> None:
        self.page = page
        self.client = client
        self.html = html
        self.errors = errors  # page errors and console errors (a CSP violation is one)

    async def show(
        self, tool: str, host_context: dict[str, Any] | None = None, **arguments: Any
    ) -> types.CallToolResult:
        """Call `tool` as the model would, then hand its input and result to a fresh view, as a host does (with
        `host_context`: theme, style variables)."""
        result = await self.client.call_tool(tool, arguments)
        await self.page.evaluate(
            "([html, input, result, context]) => showTool(html, input, result, context)",
            [self.html, arguments, wire(result), host_context],
        )
        return result

    async def tool_context(self, tool: str) -> dict[str, Any]:
        """A host context naming the tool whose result the view shows (`toolInfo`), as hosts send it."""
        listed = {t.name: t for t in (await self.client.list_tools()).tools}
        info = listed[tool].model_dump(mode="json", by_alias=True, exclude_none=True)
        return {"theme": "light", "displayMode": "inline", "toolInfo": {"tool": info}}

    async def frame(self) -> Any:
        handle = await self.page.wait_for_selector("iframe")
        return await handle.content_frame()

    async def ready(self, timeout_ms: int = 20_000) -> Any:
        """The view's frame, once it has rendered and every thumbnail it asked for has arrived."""
        frame = await self.frame()
        await wait_until(frame, "document.documentElement.dataset.state === 'ready'", timeout_ms)
        return frame

    async def calls(self) -> list[dict[str, Any]]:
        """The tool calls the view made through the host, in order."""
        return await self.page.evaluate("window.appCalls")


@asynccontextmanager
async def gallery_host(server: Any, tmp: Path) -> AsyncIterator[GalleryHost]:
    from playwright.async_api import async_playwright

    bundle = bridge_bundle(tmp).read_bytes()
    host_page = (BROWSER_DIR / "host.html").read_bytes()
    async with apps_client(server) as client, async_playwright() as playwright:
        html = (await client.read_resource(GALLERY_URI)).contents[0].text
        browser = await playwright.chromium.launch(executable_path=chromium())
        try:
            page = await browser.new_page(viewport={"width": 920, "height": 700})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

            async def serve(route: Any) -> None:
                name = route.request.url.rsplit("/", 1)[-1]
                body, kind = (bundle, "text/javascript") if name == "bridge.js" else (host_page, "text/html")
                await route.fulfill(status=200, body=body, content_type=kind)

            async def relay(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
                return wire(await client.call_tool(name, arguments))

            await page.route("http://host.test/**", serve)
            await page.expose_function("relayCallTool", relay)
            await page.goto(HOST_URL)
            yield GalleryHost(page, client, html, errors)
        finally:
            await browser.close()
