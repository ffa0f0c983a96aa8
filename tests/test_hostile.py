"""Hostile input against a live gunicorn: what tests/test_api.py and tests/test_stream.py
do not already cover (those check the in-process cases, SSE injection, WebSocket 1009,
ALLOWED_ORIGINS, delivery isolation and expiry of open streams)."""

from __future__ import annotations

import base64
import socket
import time

import gevent
import orjson
import pytest
import requests
import websocket
from itsdangerous import URLSafeSerializer

from app.access.tokens import TOKEN_SALT
from tests.support import SSEClient, WSClient

JSON = {"Content-Type": "application/json"}


def _auth(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.stack.api_key}"}


HOSTILE_BODIES = [
    ("nested 10,000 deep", b'{"user_id":"h","message":"m","data":' + b"[" * 10000 + b"]" * 10000 + b"}", 400),
    ("5,000-digit number", b'{"user_id":"h","message":"m","data":{"n":' + b"9" * 5000 + b"}}", 400),
    ("5,000-digit float", b'{"user_id":"h","message":"m","data":{"n":1' + b"0" * 5000 + b"e400}}", 400),
    ("oversized", b'{"user_id":"h","message":"' + b"x" * 200_000 + b'"}', 413),
]


def test_hostile_bodies_are_refused_fast_and_the_worker_survives(live):
    server = live()
    workers = server.worker_pids()
    for name, body, status in HOSTILE_BODIES:
        started = time.monotonic()
        headers = {**_auth(server), **JSON}
        resp = requests.post(server.url + "/api/notifications", data=body, headers=headers, timeout=10)
        elapsed = time.monotonic() - started
        assert resp.status_code == status, (name, resp.text)
        assert resp.json()["error"]["code"] in ("malformed_json", "payload_too_large")
        assert elapsed < 1.0, f"{name} took {elapsed:.2f}s"
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    assert server.worker_pids() == workers  # no worker crashed or was recycled
    history = requests.get(server.url + "/api/users/h/notifications", headers=_auth(server), timeout=5)
    assert history.json() == {"notifications": [], "next": None}


def test_oversized_chunked_body_and_lying_content_length(live):
    server = live(MAX_BODY_BYTES="1024")
    chunks = (b"x" * 512 for _ in range(100))  # no Content-Length: 51 KB in chunks
    resp = requests.post(
        server.url + "/api/notifications", data=chunks, headers={**_auth(server), **JSON}, timeout=10
    )
    assert resp.status_code == 413
    # Claims 1 GB but sends nothing: refused from the header alone, without waiting for a body.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/notifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer "
            + server.stack.api_key.encode()
            + b"\r\nContent-Length: 1000000000\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")


def test_wrong_content_type_is_415(live):
    server = live()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None):
        headers = _auth(server) | ({"Content-Type": content_type} if content_type else {})
        for path in ("/api/notifications", "/api/tokens", "/api/users/h/read"):
            resp = requests.post(
                server.url + path, data=b'{"user_id":"h","message":"m"}', headers=headers, timeout=5
            )
            assert resp.status_code == 415, (content_type, path)
            assert resp.json()["error"]["code"] == "unsupported_media_type"


MALFORMED_HTTP = {
    "100 KB header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", b"431"),
    "500 headers": (
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(500)) + b"\r\n",
        b"431",
    ),
    "10 KB URL": (b"GET /healthz?" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    "Content-Length and chunked (smuggling)": (
        b"POST /api/notifications HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"400",
    ),
    "two Content-Lengths": (
        b"POST /api/notifications HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"400",
    ),
    "NUL in a header": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", b"400"),
    "binary garbage": (b"\x00\x01\x02garbage\r\n\r\n", b"400"),
}


def test_malformed_http_is_refused_before_the_app(live):
    server = live()
    workers = server.worker_pids()
    for name, (data, status) in MALFORMED_HTTP.items():
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(data)
            assert sock.recv(200).startswith(b"HTTP/1.1 " + status), name
    assert server.worker_pids() == workers
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


def test_a_token_only_ever_opens_its_own_users_data(live):
    server = live(workers=2)
    token_a = server.token("alice-h")
    sse = SSEClient(server.url, token_a)
    ws = WSClient(server.url, token_a)
    bob_note = server.notify("bob-h", "for bob only")
    server.notify("alice-h", "for alice")
    try:
        sse.wait_count(1)
        ws.wait_count(1)
        gevent.sleep(0.3)  # give a misrouted event the chance to show up
        assert sse.messages() == ["for alice"] and ws.messages() == ["for alice"]
        me = {"Authorization": f"Bearer {token_a}"}
        history = requests.get(server.url + "/api/me/notifications", headers=me, timeout=5).json()
        assert [n["user_id"] for n in history["notifications"]] == ["alice-h"]
        # Marking bob's notification read with alice's token changes nothing.
        marked = requests.post(
            server.url + "/api/me/read", json={"ids": [bob_note["id"]]}, headers=me, timeout=5
        )
        assert marked.json() == {"updated": 0}
        bob_unread = requests.get(
            server.url + "/api/users/bob-h/unread-count", headers=_auth(server), timeout=5
        )
        assert bob_unread.json()["unread"] == 1
        # A token is not an API key, and an API key is not a token.
        assert requests.get(server.url + "/api/recent", headers=me, timeout=5).status_code == 401
        key_as_token = {"Authorization": f"Bearer {server.stack.api_key}"}
        assert (
            requests.get(server.url + "/api/me/unread-count", headers=key_as_token, timeout=5).status_code
            == 401
        )
    finally:
        sse.close()
        ws.close()


def test_tampered_and_expired_tokens_are_refused_at_connect(live):
    server = live()
    token = server.token("carol-h")
    payload, sig = token.split(".", 1)
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(orjson.dumps({**claims, "u": "dave-h"})).rstrip(b"=").decode()
    signer = URLSafeSerializer(server.stack.secret, salt=TOKEN_SALT)
    expired = signer.dumps({"u": "carol-h", "exp": int(time.time()) - 1})  # correctly signed, expired
    other_secret = URLSafeSerializer("not-the-secret", salt=TOKEN_SALT).dumps(
        {"u": "carol-h", "exp": claims["exp"]}
    )
    for bad in (f"{forged}.{sig}", expired, other_secret):
        assert requests.get(server.url + "/stream", params={"token": bad}, timeout=5).status_code == 401
        me = {"Authorization": f"Bearer {bad}"}
        assert requests.get(server.url + "/api/me/notifications", headers=me, timeout=5).status_code == 401
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            WSClient(server.url, bad)
        assert info.value.status_code == 401


def test_tokens_and_api_keys_never_reach_the_logs(live):
    server = live(ACCESS_LOG="-", LOG_LEVEL="debug")
    token = server.token("logged-h")
    wrong_key = "wrong-key-" + "z" * 20
    sse = SSEClient(server.url, token)  # ?token= in the query string
    ws = WSClient(server.url, token)
    try:
        server.notify("logged-h", "hello")
        sse.wait_count(1)
        ws.wait_count(1)
    finally:
        sse.close()
        ws.close()
    requests.get(
        server.url + "/api/me/unread-count",
        params={"token": token},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    requests.get(server.url + "/api/recent", headers={"Authorization": f"Bearer {wrong_key}"}, timeout=5)
    requests.get(server.url + "/stream", params={"token": token + "x"}, timeout=5)
    server.stop()  # flush and close the log
    text = server.log_path.read_text(errors="replace")
    assert "/stream" in text  # the requests were logged ...
    for secret in (token, token[:20], server.stack.api_key, wrong_key):
        assert secret not in text  # ... without their secrets


def test_slowloris_does_not_block_other_clients(live):
    """200 clients each dribble one header byte every half second; others are served meanwhile,
    and the server drops the dribblers (gunicorn's gevent worker times out unfinished headers)."""
    server = live()  # one worker
    slow: list[socket.socket] = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        slow.append(s)
    dropped: dict[int, float] = {}
    started = time.monotonic()

    def dribble() -> None:
        while len(dropped) < len(slow) and time.monotonic() - started < 15:
            for i, s in enumerate(slow):
                if i not in dropped:
                    try:
                        s.sendall(b"x")
                    except OSError:
                        dropped[i] = time.monotonic() - started
            gevent.sleep(0.5)

    dribbler = gevent.spawn(dribble)
    try:
        timings = []
        for i in range(8):
            t0 = time.monotonic()
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
            assert server.notify("slow-h", f"n{i}")["message"] == f"n{i}"
            timings.append(time.monotonic() - t0)
            gevent.sleep(0.1)
        assert max(timings) < 1.0, timings
        assert len(dropped) < len(slow)  # the normal requests ran while dribblers were connected
        dribbler.join(20)
        assert len(dropped) == len(slow) and max(dropped.values()) < 15, dropped
    finally:
        dribbler.kill()
        for s in slow:
            s.close()
