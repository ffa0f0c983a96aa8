"""Log lines cannot be forged, and compressed subscriber tokens are redacted anywhere."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import requests
from flask import Flask

from app.access.tokens import mint_token
from app.ops.logs import JsonFormatter, TextFormatter, redact

FORGED = "12:00:00.000 INFO    app.requests: request  path=/admin status=200"


def _record(path: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("app.requests", logging.INFO, __file__, 1, "request", None, exc_info)
    record.path, record.status = path, 404
    return record


def test_every_format_keeps_a_record_on_its_lines() -> None:
    hostile = f"/x\n{FORGED}\r\n{FORGED}\x1b[2J\u2028{FORGED}"
    try:
        raise ValueError(f"bad value\n{FORGED}")
    except ValueError as exc:
        error = exc
    text = TextFormatter().format(_record(hostile, error))
    first, *traceback = text.split("\n")
    assert "\r" not in text and "\x1b" not in text and "\u2028" not in text
    assert first.endswith("status=404") and "\\n12:00:00.000 INFO" in first
    assert traceback and all(line.startswith("    ") for line in traceback)
    line = JsonFormatter().format(_record(hostile, error))
    assert "\n" not in line and "\r" not in line and "\u2028" not in line and "\x1b" not in line
    assert orjson.loads(line)["path"] == hostile


def test_text_field_values_cannot_pass_for_more_fields() -> None:
    text = TextFormatter().format(_record("/a status=200 user_id=root"))
    assert 'path="/a status=200 user_id=root" status=404' in text


def test_newline_in_url_path_does_not_forge_a_line(live: Callable[..., Any]) -> None:
    """``%0a`` in a path reaches the app as a real LF: the text log keeps it on one line."""
    server = live(workers=1, LOG_FORMAT="text")
    marker = "forged-by-client"
    path = f"/nope%0a12:00:00.000%20INFO%20%20%20%20app.requests:%20{marker}%0d%0a{marker}"
    assert requests.get(server.url + path, timeout=5).status_code == 404
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200  # a later line
    server.stop()
    lines = [line for line in server.log_path.read_text().splitlines() if marker in line]
    assert len(lines) == 1, lines
    assert "status=404" in lines[0] and "app.requests: request" in lines[0]


def test_compressed_tokens_are_redacted_anywhere(app: Flask, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    with app.app_context():
        token, _ = mint_token("u" * 120, 600)  # a long user id: itsdangerous compresses it
    assert token.startswith(".eJ")
    signature = token.rsplit(".", 1)[1]
    for text in (f"user sent {token} twice", f"cookie:{token};", f'{{"t": "{token}"}}'):
        assert signature not in redact(text), text
        assert token[:20] not in redact(text)
    logging.getLogger("somewhere").warning("header X-Token: %s", token)
    assert token[:20] not in caplog.text and signature not in caplog.text
    assert redact("version 1.eJunk.and.more") == "version 1.eJunk.and.more"  # not a token: kept
