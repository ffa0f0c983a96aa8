"""Structured logs: request ids, one line per request and stream, and no secret ever written."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import requests

from app.config import Config
from app.ops.logs import JsonFormatter, TextFormatter, log_format, redact
from tests.support import SSEClient, WSClient


def test_redact_patterns() -> None:
    text = redact(
        "GET /stream?token=eyJ1IjoiYSJ9.abc&x=1 Authorization: Bearer sk-live-123 "
        "key=nk_abcdefghijklmnopqrstuvwxyz mongodb://app:hunter2@db1,db2/notify?replicaSet=rs0 "
        "tok eyJ1IjoiYWxpY2UiLCJleHAiOjE3fQ.Zm9vYmFyYmF6cXV4"
    )
    for secret in ("eyJ1IjoiYSJ9.abc", "sk-live-123", "nk_abcdefghijklmnop", "hunter2", "Zm9vYmFyYmF6cXV4"):
        assert secret not in text
    assert "x=1" in text and "replicaSet=rs0" in text and "db1,db2/notify" in text


def test_request_id_is_generated_kept_and_echoed(client: Any) -> None:
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/healthz").headers["X-Request-ID"] != generated
    kept = client.get("/healthz", headers={"X-Request-ID": "edge-42.a"})
    assert kept.headers["X-Request-ID"] == "edge-42.a"
    for hostile in ("bad id <script>", "y" * 200):
        replaced = client.get("/healthz", headers={"X-Request-ID": hostile}).headers["X-Request-ID"]
        assert replaced != hostile and len(replaced) == 32


def test_secrets_never_reach_log_records(client: Any, auth: dict[str, str], caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    secret_token = "SECRETtoken0123456789"
    assert client.get(f"/stream?token={secret_token}").status_code == 401
    resp = client.post("/api/tokens", json={"user_id": "log-user"}, headers=auth)
    minted = resp.get_json()["token"]
    me = client.get("/api/me/unread-count", headers={"Authorization": f"Bearer {minted}"})
    assert me.status_code == 200
    assert client.get("/api/users/log-user/unread-count", headers=auth).status_code == 200
    # Whatever a library or a careless line writes, the record is redacted when created.
    careless = logging.getLogger("somewhere")
    careless.warning("GET /stream?token=%s with %s", secret_token, auth["Authorization"])
    logging.getLogger("somewhere").warning("token was %s", minted)
    for secret in (secret_token, minted, auth["Authorization"].split()[1]):
        assert secret not in caplog.text
    requests_logged = [r for r in caplog.records if r.getMessage() == "request"]
    assert {r.status for r in requests_logged} >= {401, 200, 201}
    assert any(getattr(r, "user_id", None) == "log-user" for r in requests_logged)


def test_redis_passwords_never_reach_log_records(make_app: Callable[..., Any], caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    make_app(
        REDIS_MODE="sentinel",
        REDIS_SENTINELS=("127.0.0.1:1",),
        REDIS_SENTINEL_MASTER="notify",
        REDIS_PASSWORD="data-node-pass-1",
        REDIS_SENTINEL_PASSWORD="sentinel-pass-2",
    )
    logging.getLogger("somewhere").warning("AUTH data-node-pass-1, then sentinel-pass-2")
    assert "data-node-pass-1" not in caplog.text and "sentinel-pass-2" not in caplog.text


def test_every_request_line_carries_its_request_id(client: Any, auth: dict[str, str], caplog: Any) -> None:
    """The formatter adds the id of the request being served: each request's line has the
    id its response echoed, a generated one as much as one the client sent."""
    caplog.set_level(logging.INFO)
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    try:
        echoed = [
            client.get("/stream?token=forged").headers["X-Request-ID"],
            client.post("/api/tokens", json={"user_id": "id-user"}, headers=auth).headers["X-Request-ID"],
            client.get("/healthz", headers={"X-Request-ID": "edge-42.a"}).headers["X-Request-ID"],
        ]
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [orjson.loads(line) for line in written.getvalue().splitlines()]
    logged = [line.get("request_id") for line in lines if line["msg"] == "request"]
    assert logged == echoed
    assert len(echoed[0]) == 32 and len(echoed[1]) == 32 and echoed[0] != echoed[1]
    assert echoed[2] == "edge-42.a"


def test_client_address_behind_proxy(make_app: Callable[..., Any], caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    client = make_app(PROXY_HOPS=1).test_client()
    client.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    lines = [r for r in caplog.records if r.getMessage() == "request"]
    assert lines[-1].client == "203.0.113.9"
    direct = make_app().test_client()
    direct.get("/healthz", headers={"X-Forwarded-For": "203.0.113.9"})  # not trusted without PROXY_HOPS
    lines = [r for r in caplog.records if r.getMessage() == "request"]
    assert lines[-1].client == "127.0.0.1"


def test_formats_json_and_text() -> None:
    record = logging.LogRecord("app.requests", logging.INFO, __file__, 1, "request", None, None)
    record.status, record.user_id = 201, "u1"
    line = orjson.loads(JsonFormatter().format(record))
    assert line["msg"] == "request" and line["status"] == 201 and line["user_id"] == "u1"
    assert line["level"] == "info" and line["ts"].endswith("+00:00")
    assert "status=201" in TextFormatter().format(record)
    assert log_format(Config(APP_ENV="development")) == "text"
    assert log_format(Config(APP_ENV="production")) == "json"
    assert log_format(Config(APP_ENV="development", LOG_FORMAT="json")) == "json"


def test_live_json_logs_have_no_secrets(live: Callable[..., Any]) -> None:
    """A real gunicorn process: every line it writes is checked for the secrets it saw."""
    server = live(workers=1, LOG_FORMAT="json", HEARTBEAT_SECONDS="0.3")
    token = server.token("live-log-user")
    sse = SSEClient(server.url, token)
    ws = WSClient(server.url, token)
    try:
        assert sse.status == 200
        server.notify("live-log-user", "hello")
        sse.wait_count(1)
        ws.wait_count(1)
        bad = requests.get(server.url + "/stream", params={"token": "FORGEDsecret987654"}, timeout=5)
        assert bad.status_code == 401
        body = {"user_id": "x", "message": "m"}
        echoed = server.post("/api/notifications", body, **{"X-Request-ID": "trace-7"})
        assert echoed.headers["X-Request-ID"] == "trace-7"
    finally:
        sse.close()
        ws.close()
    # The SSE close is noticed at the next heartbeat; wait for both close lines.
    deadline_lines: list[dict[str, Any]] = []
    for _ in range(100):
        deadline_lines = _json_lines(server.log_path.read_text())
        if sum(1 for line in deadline_lines if line["msg"] == "stream close") >= 2:
            break
        sse.closed.wait(0.1)
    server.stop()
    text = server.log_path.read_text()
    for secret in (token, "FORGEDsecret987654", server.stack.api_key):
        assert secret not in text
    lines = _json_lines(text)
    traced = [line for line in lines if line.get("request_id") == "trace-7"]
    assert traced and traced[0]["msg"] == "request" and traced[0]["status"] == 201
    assert traced[0]["endpoint"] == "api.create_notification" and traced[0]["duration_ms"] >= 0
    opens = {line["transport"] for line in lines if line["msg"] == "stream open"}
    closes = [line for line in lines if line["msg"] == "stream close"]
    assert opens == {"sse", "ws"}
    assert {line["transport"] for line in closes} == {"sse", "ws"}
    assert all(line["user_id"] == "live-log-user" and "duration_ms" in line for line in closes)


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for raw in text.splitlines():
        if raw.startswith("{"):
            try:
                lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                continue
    return lines


@pytest.fixture(autouse=True)
def _restore_root_level() -> Any:
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)
