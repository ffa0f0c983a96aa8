"""Security headers: nosniff on every response, CSP forbidding framing on every HTML page,
HSTS from the nginx recipe."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

from tests.support import LiveServer
from tests.test_deploy import nginx  # noqa: F401 - the nginx fixture

HTML_PAGES = ("/demo", "/dashboard/login", "/dashboard/no-such-page", "/api/docs")


def _get(server: LiveServer, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(server.url + path, timeout=5, allow_redirects=False, **kwargs)


def test_nosniff_on_every_response(live: Callable[..., Any]) -> None:
    server = live(workers=1)
    token = server.token("hdr-user")
    responses = {
        "json": _get(server, "/healthz"),
        "json 404": _get(server, "/no-such-route"),
        "openapi": _get(server, "/api/openapi.json"),
        "static": _get(server, "/static/notify.js"),
        "redirect": _get(server, "/dashboard"),
        "post (lean path)": server.post("/api/notifications", {"user_id": "hdr-user", "message": "m"}),
        "post refused (lean path)": requests.post(
            server.url + "/api/notifications", json={}, headers={"Authorization": "Bearer nope"}, timeout=5
        ),
        "post via the view": server.post("/api/tokens", {"user_id": "hdr-user"}),
        "me": _get(server, "/api/me/unread-count", headers={"Authorization": f"Bearer {token}"}),
        **{path: _get(server, path) for path in HTML_PAGES},
    }
    with requests.get(server.url + "/stream", params={"token": token}, stream=True, timeout=5) as sse:
        assert sse.status_code == 200
        responses["sse (detached socket)"] = sse
    missing = {
        name: r.status_code
        for name, r in responses.items()
        if r.headers.get("X-Content-Type-Options") != "nosniff"
    }
    assert not missing, missing


def test_every_html_page_forbids_framing(live: Callable[..., Any]) -> None:
    server = live(workers=1)
    for path in HTML_PAGES:
        resp = _get(server, path)
        assert resp.headers["Content-Type"].startswith("text/html"), path
        policy = resp.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in policy, (path, resp.status_code, policy)
        assert "script-src 'self'" in policy, path
    assert _get(server, "/dashboard/no-such-page").status_code == 404
    assert "default-src 'none'" in _get(server, "/api/docs").headers["Content-Security-Policy"]


def test_nginx_recipe_sends_hsts(nginx: Any) -> None:  # noqa: F811
    url, _instance, _logs = nginx
    for path, status in (("/healthz", 200), ("/no-such-route", 404)):
        resp = requests.get(url + path, timeout=5)
        assert resp.status_code == status
        hsts = resp.headers.get("Strict-Transport-Security", "")
        assert "max-age=31536000" in hsts and "includeSubDomains" in hsts, path
