"""One way to say what went wrong: ``error_response(status, code, message)``.

API clients get ``{"error": {"code", "message", "field"?}}``; dashboard pages get HTML.
``ApiError`` lets service code and validators raise an error that becomes that response.
"""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response, render_template, request
from pymongo.errors import ConnectionFailure, PyMongoError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

# Werkzeug's HTTP status names, turned into stable machine-readable codes.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error with an HTTP status, a stable code and, for validation, the field."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The JSON error every API and stream endpoint answers with."""
    resp = Response(error_body(code, message, field), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def error_body(code: str, message: str, field: str | None = None) -> bytes:
    body: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return orjson.dumps({"error": body})


def _wants_html() -> bool:
    return request.blueprint == "dashboard" or request.path.startswith("/dashboard")


def _html_error(status: int, message: str) -> Response:
    html = render_template("error.html", status=status, message=message)
    return Response(html, status=status, mimetype="text/html")


class FieldInvalid(ValueError):
    """A value of one field is wrong, found below the view (a push subscription, a
    preference set): the view answers it as a 422 naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError) -> Response:
        if _wants_html():
            return _html_error(err.status, err.message)
        return error_response(err.status, err.code, err.message, err.field, err.headers)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        message = err.description or err.name
        if status == 413:
            message = f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        if _wants_html():
            return _html_error(status, message)
        resp = error_response(status, _CODES.get(status, "error"), message)
        if status == 405 and err.valid_methods:  # type: ignore[attr-defined]
            resp.headers["Allow"] = ", ".join(err.valid_methods)  # type: ignore[attr-defined]
        return resp

    @app.errorhandler(PyMongoError)
    def _database_error(err: PyMongoError) -> Response:
        """A view that did not say what MongoDB failing means for it: a timeout or a lost
        connection is the database being unavailable (503, retry), anything else a bug."""
        if not (isinstance(err, ConnectionFailure) or err.timeout):
            return _unexpected(err)
        log.error("MongoDB unavailable on %s %s: %s", request.method, request.path, err)
        message = "the database is unavailable, retry later"
        if _wants_html():
            return _html_error(503, message)
        return error_response(503, "unavailable", message)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if _wants_html():
            return _html_error(500, "Something went wrong on our side.")
        return error_response(500, "internal_error", "internal server error")
