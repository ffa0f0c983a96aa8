"""CORS: a page on another origin uses the service through static/notify.js, in Chromium.

The page is served from a second port of 127.0.0.1 (a second origin) by an in-process
server; the service runs under gunicorn with that origin in ``ALLOWED_ORIGINS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from gevent.pywsgi import WSGIServer

from app.config import Config, ConfigError
from tests.browser import make_page, page  # noqa: F401
from tests.support import LiveServer

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>app on another origin</title>
<script src="{service}/static/notify.js"></script></head><body><script>
window.seen = {{status: null, history: null, received: [], unread: null, errors: []}};
window.client = Notify.connect({{
  url: "{service}", token: "{token}", transport: "{transport}",
  onStatus: (s) => {{ window.seen.status = s; }},
  onHistory: (list) => {{ window.seen.history = list.map((n) => n.id); }},
  onNotification: (n) => {{ window.seen.received.push(n.id); }},
  onUnread: (n) => {{ window.seen.unread = n; }},
  onError: (e) => {{ window.seen.errors.push(String(e)); }},
}});
</script></body></html>"""


class OtherOrigin:
    """Serves ``template`` (PAGE unless told, filled from ``fill``) on its own port."""

    def __init__(self, template: str = PAGE) -> None:
        self.template = template
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None)
        self.server.start()
        self.origin = f"http://127.0.0.1:{self.server.server_port}"
        self.fill: dict[str, str] = {}

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = self.template.format(**self.fill).encode()
        start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture
def other_origin() -> Iterator[OtherOrigin]:
    site = OtherOrigin()
    yield site
    site.server.stop()


def _open(page: Any, site: OtherOrigin, server: LiveServer, user: str, transport: str) -> None:  # noqa: F811
    site.fill = {"service": server.url, "token": server.token(user), "transport": transport}
    page.goto(site.origin + "/")
    page.wait_for_function("window.seen.status === 'open'")


@pytest.mark.browser
@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_page_on_another_origin_streams_reads_and_marks_read(
    page: Any,  # noqa: F811
    live: Callable[..., Any],
    other_origin: OtherOrigin,
    transport: str,
) -> None:
    server = live(workers=1, ALLOWED_ORIGINS=f"https://app.example,{other_origin.origin}")
    before = server.notify("cora", "from before")
    _open(page, other_origin, server, "cora", transport)
    assert page.evaluate("window.seen.history") == [before["id"]]  # GET /api/me/notifications
    live_one = server.notify("cora", "live")
    page.wait_for_function("id => window.seen.received.includes(id)", arg=live_one["id"])
    page.wait_for_function("window.seen.unread === 2")
    page.evaluate(f"window.client.markRead(['{live_one['id']}'])")  # POST /api/me/read: a preflight
    page.wait_for_function("window.seen.unread === 1")
    bearer = {"Authorization": f"Bearer {server.token('cora')}"}
    assert requests.get(server.url + "/api/me/unread-count", headers=bearer, timeout=5).json()["unread"] == 1
    assert page.evaluate("window.seen.errors") == []


@pytest.mark.browser
def test_page_on_an_origin_not_allowed_cannot_read(
    page: Any,  # noqa: F811
    live: Callable[..., Any],
    other_origin: OtherOrigin,
) -> None:
    server = live(workers=1, ALLOWED_ORIGINS="https://app.example")
    page.allow_console_errors(r"CORS policy", r"net::ERR_FAILED", r"Failed to fetch")
    other_origin.fill = {"service": server.url, "token": server.token("dora"), "transport": "sse"}
    page.goto(other_origin.origin + "/")
    page.wait_for_function("window.seen.errors.length > 0 || window.seen.status === 'reconnecting'")
    assert page.evaluate("window.seen.status") != "open"


def test_cors_headers_only_on_browser_routes(live: Callable[..., Any]) -> None:
    allowed = "https://app.example"
    server = live(workers=1, ALLOWED_ORIGINS=allowed)
    token = server.token("ed")

    def preflight(path: str, origin: str = allowed, method: str = "POST") -> requests.Response:
        headers = {
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        return requests.options(server.url + path, headers=headers, timeout=5)

    ok = preflight("/api/me/read")
    assert ok.status_code < 300 and ok.headers["Access-Control-Allow-Origin"] == allowed
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    assert "authorization" in ok.headers["Access-Control-Allow-Headers"].lower()
    assert "Origin" in ok.headers["Vary"]
    for path in ("/api/tokens", "/api/notifications", "/api/recent", "/dashboard/api/overview"):
        closed = preflight(path)
        assert "Access-Control-Allow-Origin" not in closed.headers, path
    assert (
        "Access-Control-Allow-Origin" not in preflight("/api/me/read", origin="https://evil.example").headers
    )

    bearer = {"Authorization": f"Bearer {token}", "Origin": allowed}
    me = requests.get(server.url + "/api/me/unread-count", headers=bearer, timeout=5)
    assert me.headers["Access-Control-Allow-Origin"] == allowed
    assert "Access-Control-Allow-Credentials" not in me.headers
    refused = requests.get(server.url + "/api/me/unread-count", headers={"Origin": allowed}, timeout=5)
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == allowed
    with requests.get(
        server.url + "/stream", params={"token": token}, headers={"Origin": allowed}, stream=True, timeout=5
    ) as sse:  # the detached-socket stream writes the same headers
        assert sse.status_code == 200 and sse.headers["Access-Control-Allow-Origin"] == allowed
    tokens = requests.post(
        server.url + "/api/tokens",
        json={"user_id": "ed"},
        headers={"Authorization": f"Bearer {server.stack.api_key}", "Origin": allowed},
        timeout=5,
    )
    assert tokens.status_code == 201 and "Access-Control-Allow-Origin" not in tokens.headers


@pytest.mark.parametrize("origin", ["*", "https://app.example/", "app.example", "null"])
def test_allowed_origins_are_exact_origins(origin: str) -> None:
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        Config.from_env({"ALLOWED_ORIGINS": origin}).validate()
