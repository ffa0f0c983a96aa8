"""Shared headless-Chromium harness for browser tests (Playwright sync API, in this process).

Usage: ``from tests.browser import page  # noqa: F401`` then ``@pytest.mark.browser def test_x(page, live):``
``page`` is a Playwright Page (attributes delegate; ``page.page`` is the raw Page, for ``expect``)
plus ``.console_errors``, ``.allow_console_errors(*regexes)`` for errors a test provokes on purpose, and
``.save_screenshot(name)`` -> test-artifacts/<name>.png. Teardown fails the test on any other console error.
``make_page(**context_options)`` (also importable) gives more pages, e.g. ``http_credentials={...}``.

Playwright's sync API runs fine under the gevent monkey-patching of tests/conftest.py (measured:
other greenlets, even an in-process gevent server the page talks to, keep running while it waits),
so no subprocess driver is needed. One Chromium is launched lazily per test session and closed at
exit; each page gets its own browser context (fresh cookies and storage). No Chromium -> skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support import require_tool

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEFAULT_TIMEOUT_MS = 10_000


class BrowserPage:
    """A Playwright Page that records console errors and uncaught exceptions."""

    def __init__(self, page: Any, artifacts: Path = ARTIFACTS) -> None:
        self.page = page
        self.artifacts = artifacts
        self.console_errors: list[str] = []
        self._allowed: list[re.Pattern[str]] = []
        page.set_default_timeout(DEFAULT_TIMEOUT_MS)
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.console_errors.append(f"uncaught: {exc}"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.page, name)

    def _on_console(self, message: Any) -> None:
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            self.console_errors.append(message.text)

    def allow_console_errors(self, *patterns: str) -> None:
        """Console errors matching any of these regexes (re.search) are expected, not failures."""
        self._allowed.extend(re.compile(p) for p in patterns)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.console_errors if not any(p.search(e) for p in self._allowed)]

    def save_screenshot(self, name: str, full_page: bool = True) -> Path:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


class _Chromium:
    """One Playwright driver and Chromium process, started on first use."""

    def __init__(self) -> None:
        self.playwright: Any = None
        self.browser: Any = None

    def get(self) -> Any:
        if self.browser is None:
            require_tool(CHROMIUM.exists(), f"Chromium at {CHROMIUM}")
            from playwright.sync_api import sync_playwright

            self.playwright = sync_playwright().start()
            self.browser = self.playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        return self.browser

    def close(self) -> None:
        if self.browser is not None:
            self.browser.close()
            self.browser = None
        if self.playwright is not None:
            self.playwright.stop()
            self.playwright = None


_shared = _Chromium()


def _shared_browser(config: pytest.Config) -> Any:
    if _shared.browser is None:
        browser = _shared.get()
        config.add_cleanup(_shared.close)
        return browser
    return _shared.browser


def _open_page(browser: Any, artifacts: Path, **context_options: Any) -> tuple[Any, BrowserPage]:
    # bypass_csp: page.wait_for_function("...") evaluates its string with eval(), which a strict
    # Content-Security-Policy (script-src 'self') would otherwise refuse.
    defaults = {"viewport": {"width": 1100, "height": 800}, "bypass_csp": True}
    context = browser.new_context(**{**defaults, **context_options})
    return context, BrowserPage(context.new_page(), artifacts)


def _check_errors(pages: list[BrowserPage]) -> None:
    errors = [e for p in pages for e in p.unexpected_errors()]
    assert not errors, f"browser console errors: {errors}"


def _page_factory(request: pytest.FixtureRequest, artifacts: Path) -> Iterator[Callable[..., BrowserPage]]:
    # Set up the test's other fixtures (e.g. ``live``) first, so pages close before servers stop
    # and a stream cut by teardown is not reported as a console error.
    for name in request.fixturenames:
        if name not in ("page", "make_page", "request", "artifacts"):
            request.getfixturevalue(name)
    browser = _shared_browser(request.config)
    opened: list[tuple[Any, BrowserPage]] = []

    def factory(**context_options: Any) -> BrowserPage:
        opened.append(_open_page(browser, artifacts, **context_options))
        return opened[-1][1]

    yield factory
    for context, _ in opened:
        context.close()
    _check_errors([p for _, p in opened])


@pytest.fixture
def make_page(request: pytest.FixtureRequest, artifacts: Path) -> Iterator[Callable[..., BrowserPage]]:
    """A factory of pages, each in a fresh context; keyword args go to ``browser.new_context``."""
    yield from _page_factory(request, artifacts)


@pytest.fixture
def page(request: pytest.FixtureRequest, artifacts: Path) -> Iterator[BrowserPage]:
    """One page in a fresh context (independent of ``make_page``, so importing ``page`` alone works)."""
    for factory in _page_factory(request, artifacts):
        yield factory()


@contextmanager
def browser_page(artifacts: Path = ARTIFACTS, **context_options: Any) -> Iterator[BrowserPage]:
    """The same outside pytest (scripts, benchmarks): its own Chromium, closed on exit."""
    chromium = _Chromium()
    try:
        context, bp = _open_page(chromium.get(), artifacts, **context_options)
        yield bp
        context.close()
        _check_errors([bp])
    finally:
        chromium.close()
