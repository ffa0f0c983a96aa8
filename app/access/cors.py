"""CORS for the browser-facing routes: a page on another origin may use the service.

Only ``/stream`` and ``/api/me/*`` are offered, and only to the exact origins in
``ALLOWED_ORIGINS``: those routes authenticate with the subscriber token (a header or
``?token=``), never a cookie, so no response carries ``Access-Control-Allow-Credentials``
and the origin is echoed, never ``*``. Everything else (``/api/tokens`` and the other API
key routes, the dashboard) gets no CORS header at all: a browser on another origin cannot
read it, and its preflights fail.

``cors_headers`` returns the header lines for one request; the app's after-request hook
adds them to every response of those routes, errors and preflights included, and the
detached streams (app/delivery/connection.py) write the response's headers as they are
after the hooks, so they carry them too.
"""

from __future__ import annotations

from collections.abc import Collection

from flask import Flask, Response, current_app, request

ALLOW_METHODS = "GET, POST, PUT, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
EXPOSE_HEADERS = "X-Request-ID, Retry-After"
PREFLIGHT_MAX_AGE = "600"


def browser_facing(path: str) -> bool:
    return path == "/stream" or path.startswith("/api/me/")


def cors_headers(
    path: str, origin: str | None, allowed: Collection[str], preflight: bool = False
) -> list[tuple[str, str]]:
    """The CORS header lines for a request to ``path`` from ``origin``; none if refused."""
    if not browser_facing(path):
        return []
    if origin is None or origin not in allowed:
        return [("Vary", "Origin")] if allowed else []
    lines = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
    if preflight:
        lines += [
            ("Access-Control-Allow-Methods", ALLOW_METHODS),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
        ]
    else:
        lines.append(("Access-Control-Expose-Headers", EXPOSE_HEADERS))
    return lines


def init_app(app: Flask) -> None:
    app.after_request(_add_cors)


def _add_cors(resp: Response) -> Response:
    preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
    allowed = current_app.extensions["config"].ALLOWED_ORIGINS
    for name, value in cors_headers(request.path, request.headers.get("Origin"), allowed, preflight):
        if name == "Vary":
            resp.vary.add(value)
        else:
            resp.headers[name] = value
    return resp
