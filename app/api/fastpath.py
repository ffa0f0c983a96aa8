"""Lean POST path: ``POST /api/notifications`` served in front of Flask's dispatch.

Why: a notification POST is the one request services send at volume, and under load
Flask's request context, routing, hooks and response object cost the worker about as
much CPU as storing and publishing the notification (bench/README.md, "The lean POST
path"). This WSGI middleware serves that request with the same steps the view takes, from
the same functions: API key (``tokens.check_api_key``), then the one create path
(``app/api/create.py``: rate limit, validation, ``Idempotency-Key``, store), the error
body (``errors.error_body``), the request's log line and metrics. The response is the
view's, header for header (tests/test_fastpath.py sends the same requests through both).

Anything unusual goes to Flask untouched, so it keeps the view's behaviour without a copy
here: a body that is not declared JSON, a chunked body, one over ``MAX_BODY_BYTES`` or
without a length. ``LEAN_API=0`` turns the path off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from app.access.headers import NOSNIFF
from app.access.tokens import bearer_from, check_api_key, unknown_api_key
from app.api import validation as v
from app.api.create import create_notification
from app.errors import ApiError, error_body
from app.ops.logs import log_request, request_id_from
from app.ops.metrics import observe_request

log = logging.getLogger(__name__)

PATH = "/api/notifications"
ENDPOINT = "api.create_notification"  # the view's endpoint: one name in logs and metrics
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def init_app(app: Flask) -> None:
    """Put the lean path in front of ``app.wsgi_app`` (inside ProxyFix, which wraps later)."""
    if app.extensions["config"].LEAN_API:
        app.wsgi_app = LeanPost(app.wsgi_app, app.extensions, app.config["MAX_CONTENT_LENGTH"])  # type: ignore[method-assign]


class LeanPost:
    """Serves plain notification POSTs; passes every other request to ``wsgi_app``."""

    def __init__(self, wsgi_app: WSGIApp, extensions: dict[str, Any], max_body: int | None) -> None:
        self.wsgi_app = wsgi_app
        self.extensions = extensions
        self.max_body = max_body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = self.plain_length(environ)
        if length is None:
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        request_id = request_id_from(environ.get("HTTP_X_REQUEST_ID", ""))
        key_id: str | None = None
        headers: list[tuple[str, str]] = []
        try:
            key_id = check_api_key(bearer_from(environ.get("HTTP_AUTHORIZATION", "")), self.extensions)
            if key_id is None:
                raise unknown_api_key()
            status, data, headers = create_notification(
                self.extensions,
                key_id,
                environ.get("HTTP_IDEMPOTENCY_KEY"),
                lambda: _read_object(environ["wsgi.input"], length),
            )
        except ApiError as err:
            status, data = err.status, error_body(err.code, err.message, err.field)
            headers = [*err.headers.items()]
        except Exception:
            log.exception("unhandled error on POST %s", PATH)
            status, data = 500, error_body("internal_error", "internal server error")
        start_response(
            f"{status} {HTTP_STATUS_CODES[status].upper()}",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                *headers,
                ("X-Request-ID", request_id),
                NOSNIFF,
            ],
        )
        log_request(
            "POST",
            PATH,
            ENDPOINT,
            status,
            started,
            api_key=key_id,
            client=environ.get("REMOTE_ADDR"),
            request_id=request_id,
        )
        observe_request(ENDPOINT, "POST", status, started)
        return [data]

    def plain_length(self, environ: dict[str, Any]) -> int | None:
        """The body length of a request this path serves; None for anything else."""
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return None
        if "HTTP_TRANSFER_ENCODING" in environ:
            return None
        mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        length = environ.get("CONTENT_LENGTH", "")
        if not v.is_json_mimetype(mimetype) or not (length.isascii() and length.isdigit()):
            return None
        size = int(length)
        return size if self.max_body is None or size <= self.max_body else None


def _read_object(stream: Any, length: int) -> tuple[dict[str, Any], bytes]:
    raw = stream.read(length)
    return v.json_object(raw), raw
