"""Headless Debian Chromium driven by Playwright for Python (no browser download), and a loopback WSGI server.

``chromium()`` is the executable (``/usr/bin/chromium``, installed by ``make system-deps``); tests
skip with the reason when it is missing. ``launch(playwright)`` starts it with the flags that keep
a headless run quiet and offline. ``WsgiServer`` serves a Flask app on 127.0.0.1 in a thread so
that the browser loads real HTTP pages (stopped by ``close()``).
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server

CHROMIUM = os.environ.get("CXR_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def chromium() -> str:
    """The Chromium executable, or skip: ``apt-get install chromium`` (``make system-deps`` does)."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and not shutil.which("chromium"):
        pytest.skip(f"Chromium not found at {CHROMIUM}: apt-get install chromium (make system-deps installs it)")
    return CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")


def playwright_or_skip():
    """``playwright.sync_api.sync_playwright``, or skip: pip install -e '.[test]'."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    return sync_playwright


def launch(playwright):
    """Headless Chromium from Debian (``executable_path``; never ``playwright install``)."""
    return playwright.chromium.launch(executable_path=chromium(), headless=True, args=ARGS)


def offline(context, allowed_prefixes: tuple[str, ...] = ("http://127.0.0.1",)) -> None:
    """Abort every request that is not to loopback, so runs are deterministic and nothing leaves the machine."""
    def route(r):
        if r.request.url.startswith(allowed_prefixes) or r.request.url.startswith(("data:", "blob:")):
            r.continue_()
        else:
            r.abort()
    context.route("**/*", route)


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:
        pass


class WsgiServer:
    """A WSGI app on ``127.0.0.1:port`` in a daemon thread; ``url`` is its base URL."""

    def __init__(self, app, port: int = 0):
        self._server = make_server("127.0.0.1", port, app, threaded=True, request_handler=_Quiet)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


def watch_console(page) -> list[str]:
    """Collect console errors and uncaught page errors of ``page`` (a test asserts the list stays empty)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors


def serious_violations(page) -> list[dict]:
    """axe-core (bundled by ``axe-playwright-python``) violations of impact serious or critical."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
