"""Structured logs: one line per request and per stream open/close, secrets never written.

JSON lines in production and testing, readable text in development (``LOG_FORMAT``
overrides). Every record passes through ``redact`` when it is created, whichever logger
made it (ours, werkzeug, gunicorn, libraries), so a token in a URL, a Bearer header, an
API key or a password in a connection string never reaches a handler, not even pytest's.

Requests carry an id: a sane ``X-Request-ID`` from the client (or nginx) is kept,
otherwise one is generated; it is echoed in the response and on every log line.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import orjson
from flask import Flask, Response, g, has_request_context, request

from app.config import Config, ConfigError

log = logging.getLogger("app.requests")

REDACTED = "[REDACTED]"
# (pattern, replacement, cheap lowercase triggers: the regex runs only if one occurs)
_PATTERNS = (
    # token=..., api_key=..., password=... in query strings and key=value text
    (
        re.compile(
            r"(?i)\b((?:access_|id_|refresh_)?token|api[_-]?key|key|password|passwd|secret)=([^&\s\"',;]+)"
        ),
        r"\1=" + REDACTED,
        ("=",),
    ),
    # Authorization: Bearer/Basic credentials
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED, ("bearer", "basic")),
    # user:password@ in MongoDB / Redis URLs
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s/]+@"), r"\1:" + REDACTED + "@", ("://",)),
    # API keys minted by the CLI
    (re.compile(r"\bnk_[A-Za-z0-9_-]{16,}"), REDACTED, ("nk_",)),
    # itsdangerous subscriber tokens: base64 of '{"u":...' then a signature
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), REDACTED, ("eyj",)),
    # ... and their compressed form (long user ids): '.' then base64 of zlib data ('eJ')
    (re.compile(r"(?<![A-Za-z0-9_-])\.eJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), REDACTED, (".ej",)),
)
# Control characters (and Unicode line breaks) in a text line: a CR or LF from a URL path
# or a header would otherwise start a forged log line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_secrets: set[str] = set()
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    lower = text.lower()
    for pattern, replacement, triggers in _PATTERNS:
        if any(t in lower for t in triggers):
            text = pattern.sub(replacement, text)
    return text


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters as escapes (``\\n``, ``\\u001b``), which
    are valid inside a JSON string too."""
    return _CONTROL.sub(_escape, text) if _CONTROL.search(text) else text


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    return _ESCAPES.get(char) or f"\\u{ord(char):04x}"


def add_secrets(*values: str) -> None:
    """Literal values (configured API keys, tokens, passwords) to blank out anywhere."""
    _secrets.update(v for v in values if v and len(v) >= 4)


def current_request_id() -> str | None:
    return g.get("request_id") if has_request_context() else None


# -- record creation: redact every message ---------------------------------------------
_base_factory = logging.getLogRecordFactory()


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not lose the record
        message = str(record.msg)
    record.msg, record.args = redact(message), None
    return record


def _install_factory() -> None:
    if getattr(logging.getLogRecordFactory(), "_notify_redacting", False):
        return
    _record_factory._notify_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(_record_factory)


# -- formatters --------------------------------------------------------------------------
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's extra fields; the request id of the current request if it has none."""
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and v is not None}
    if "request_id" not in fields:
        request_id = current_request_id()
        if request_id is not None:
            fields["request_id"] = request_id
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        # orjson escapes C0 controls; DEL, C1 and U+2028/9 break lines in some readers
        return redact(escape_controls(orjson.dumps(line, default=str).decode()))


class TextFormatter(logging.Formatter):
    """One line per record (a traceback follows, indented): nothing a client sends can
    start a line of its own."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        extra = " ".join(f"{k}={_text_value(v)}" for k, v in _fields(record).items())
        text = f"{stamp} {record.levelname:<7} {record.name}: {escape_controls(record.getMessage())}"
        text += f"  {extra}" if extra else ""
        if record.exc_info:
            lines = self.formatException(record.exc_info).splitlines()
            text += "".join("\n    " + escape_controls(line) for line in lines)
        return redact(text)


def _text_value(value: Any) -> str:
    """A field value that cannot pass for more fields: quoted when it holds a space or quote."""
    text = str(value)
    if not text or any(c in text for c in ' "='):
        text = orjson.dumps(text).decode()
    return escape_controls(text)


def log_format(config: Config) -> str:
    fmt = (config.LOG_FORMAT or ("text" if config.APP_ENV == "development" else "json")).lower()
    if fmt not in ("json", "text"):
        raise ConfigError("LOG_FORMAT must be 'json' or 'text'")
    return fmt


def configure_logging(config: Config) -> None:
    """Install the redacting record factory and one stderr handler on the root logger."""
    _install_factory()
    add_secrets(
        *config.api_keys(),
        config.SECRET_KEY,
        config.METRICS_TOKEN,
        config.ADMIN_PASSWORD,
        config.REDIS_PASSWORD,
        config.REDIS_SENTINEL_PASSWORD,
    )
    formatter = JsonFormatter() if log_format(config) == "json" else TextFormatter()
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_notify", False)]
    if ours:
        ours[0].setFormatter(formatter)
    elif not any(type(h) is logging.StreamHandler for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler._notify = True  # type: ignore[attr-defined]
        handler.setFormatter(formatter)
        root.addHandler(handler)
    # gunicorn's own worker-side lines (worker exit, request errors) in the same format;
    # the master's few start-up lines keep gunicorn's text format.
    for handler in logging.getLogger("gunicorn.error").handlers:
        handler.setFormatter(formatter)
    level = logging.getLevelName(config.LOG_LEVEL.upper())
    root.setLevel(level if isinstance(level, int) else logging.INFO)


def log_event(message: str, **fields: Any) -> None:
    log.info(message, extra={k: v for k, v in fields.items() if v is not None})


# -- per request -----------------------------------------------------------------------
def init_app(app: Flask) -> None:
    app.before_request(_begin)
    app.after_request(_end)


def _begin() -> None:
    g.request_id = request_id_from(request.headers.get("X-Request-ID", ""))
    g.log_started = time.perf_counter()


def request_id_from(given: str) -> str:
    """The client's (or nginx's) X-Request-ID if it is sane, else a new one."""
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


def _user_id() -> str | None:
    subscriber = g.get("subscriber")
    if subscriber is not None:
        return subscriber.user_id
    user = g.get("stream_user")
    if user:
        return user
    view_args = request.view_args or {}
    value = view_args.get("user_id")
    return value if isinstance(value, str) else None


def _end(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id is None:
        return response
    response.headers["X-Request-ID"] = request_id
    log_request(
        request.method,
        request.path,
        request.endpoint,
        response.status_code,
        g.get("log_started", time.perf_counter()),
        user_id=_user_id(),
        api_key=g.get("api_key_id"),
        client=request.remote_addr,
    )
    return response


def log_request(
    method: str, path: str, endpoint: str | None, status: int, started: float, **fields: Any
) -> None:
    """The one line per request (``started``: its ``time.perf_counter()``)."""
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    log_event(
        "request",
        method=method,
        path=path,
        endpoint=endpoint,
        status=status,
        duration_ms=duration_ms,
        **fields,
    )
