"""Request bodies: one that never arrives is cut off in time, a malformed one is a 400.

Over raw sockets against gunicorn, because both faults live below any HTTP client library.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from app.config import Config, ConfigError
from tests.support import LiveServer

# The lean POST path, a Flask view reading JSON, a dashboard form (read by the CSRF check).
BODY_ROUTES = ("/api/notifications", "/api/tokens", "/dashboard/login")


def _exchange(server: LiveServer, path: str, head: str, body: bytes, wait: float) -> tuple[bytes, float]:
    """Send a request head and ``body``; everything the server sends until it closes, and when."""
    started = time.monotonic()
    kind = "application/x-www-form-urlencoded" if path.startswith("/dashboard") else "application/json"
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
            f"Authorization: Bearer {server.stack.api_key}\r\n{head}\r\n".encode()
            + body
        )
        received = b""
        while chunk := sock.recv(65536):  # socket.timeout (a test failure) if it is held
            received += chunk
    return received, time.monotonic() - started


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _each_route(probe: Callable[[str], Any]) -> dict[str, Any]:
    jobs = {path: gevent.spawn(probe, path) for path in BODY_ROUTES}
    gevent.joinall(list(jobs.values()), raise_error=True)
    return {path: job.value for path, job in jobs.items()}


def test_body_that_never_arrives_is_cut_off(live: Callable[..., Any]) -> None:
    """Content-Length: 5000 and 10 bytes sent: 408 after the deadline, then the connection closes."""
    server = live(workers=1, BODY_READ_TIMEOUT_SECONDS="1")
    head = "Content-Length: 5000\r\n"
    results = _each_route(lambda path: _exchange(server, path, head, b'{"user_id"', wait=15))
    for path, (response, elapsed) in results.items():
        assert _status(response) == 408, (path, response[:200])
        assert b"request body not received within 1 s" in response, path
        assert elapsed < 6, (path, elapsed)  # the deadline, then gunicorn's keep-alive of 2 s
    assert server.notify("after-slow-bodies", "still serving")["message"] == "still serving"


def test_bad_chunk_size_is_400(live: Callable[..., Any]) -> None:
    server = live(workers=1)
    head = "Transfer-Encoding: chunked\r\n"
    results = _each_route(lambda path: _exchange(server, path, head, b"zz\r\n", wait=10))
    for path, (response, _elapsed) in results.items():
        assert _status(response) == 400, (path, response[:200])
        assert b"malformed or incomplete request body" in response, path
        assert response.count(b"HTTP/1.1 ") == 1, (path, response)
    assert b"internal_error" not in b"".join(r for r, _ in results.values())
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("value", ["0", "-1", "301", "soon"])
def test_body_read_timeout_is_validated(value: str) -> None:
    with pytest.raises(ConfigError, match="BODY_READ_TIMEOUT_SECONDS"):
        Config.from_env({"BODY_READ_TIMEOUT_SECONDS": value}).validate()
