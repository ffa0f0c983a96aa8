"""Live delivery over SSE and WebSocket from real gunicorn workers."""

from __future__ import annotations

import orjson
import pytest
import requests

from tests.support import SSEClient, WSClient

TRANSPORTS = [SSEClient, WSClient]


@pytest.mark.parametrize("transport", TRANSPORTS, ids=["sse", "ws"])
def test_live_delivery_and_isolation(live, redis_mode, transport):
    server = live(workers=2, **redis_mode)
    alice = transport(server.url, server.token("alice"))
    bob = transport(server.url, server.token("bob"))
    try:
        for i in range(5):
            server.notify("alice", f"a{i}")
        server.notify("bob", "b0")
        alice.wait_count(5)
        bob.wait_count(1)
        assert alice.messages() == [f"a{i}" for i in range(5)]
        assert bob.messages() == ["b0"]
        ids = [int(e["id"]) for e in alice.notifications()]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert all(e["notification"]["user_id"] == "alice" for e in alice.notifications())
    finally:
        alice.close()
        bob.close()


def test_sse_headers_and_framing(live):
    server = live()
    token = server.token("hdr")
    resp = requests.get(
        server.url + "/stream", headers={"Authorization": f"Bearer {token}"}, stream=True, timeout=10
    )
    try:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        first = next(resp.iter_lines(decode_unicode=True))
        assert first.startswith("retry: ")
    finally:
        resp.close()


@pytest.mark.parametrize("token", [None, "bad-token"])
def test_stream_refuses_missing_or_bad_token(live, token):
    server = live()
    params = {"token": token} if token else {}
    resp = requests.get(server.url + "/stream", params=params, timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "unauthorized"


def test_sse_heartbeat_comment(live):
    server = live(HEARTBEAT_SECONDS="0.3")
    resp = requests.get(server.url + "/stream", params={"token": server.token("hb")}, stream=True, timeout=10)
    try:
        lines = resp.iter_lines(decode_unicode=True)
        # retry and a comment, the `connected` event, then pings
        seen = [next(lines) for _ in range(9)]
        assert ": ping" in seen
    finally:
        resp.close()


def test_sse_field_injection_yields_one_event(live):
    server = live()
    client = SSEClient(server.url, server.token("inj"))
    try:
        created = server.notify("inj", "evil\r\nid: 9\r\nevent: x\n\ndata: y")
        client.wait_count(1)
        assert client.raw_frames.count("notification") == 1 and "x" not in client.raw_frames
        event = client.notifications()[0]
        assert event["id"] == str(created["seq"])
        assert event["notification"]["message"] == "evil\r\nid: 9\r\nevent: x\n\ndata: y"
    finally:
        client.close()


def test_read_events_reach_every_tab(live, redis_mode):
    server = live(workers=2, **redis_mode)
    token = server.token("reader")
    sse, ws = SSEClient(server.url, token), WSClient(server.url, token)
    try:
        created = [server.notify("reader", f"m{i}") for i in range(2)]
        sse.wait_count(2)
        ws.wait_count(2)
        ws.send({"type": "read", "ids": [created[0]["id"]]})
        for client in (sse, ws):
            client.wait_for(lambda c=client: any(e["type"] == "state" for e in c.events))
            read = [e for e in client.events if e["type"] == "state"][0]
            body = read["data"] if client is sse else read
            assert body["change"] == "read" and body["ids"] == [created[0]["id"]] and body["unread"] == 1
    finally:
        sse.close()
        ws.close()


def test_ws_client_frames_errors(live):
    server = live()
    ws = WSClient(server.url, server.token("frames"))
    try:
        ws.send("not json")
        ws.send({"type": "subscribe"})
        ws.send({"type": "read", "ids": "x"})
        ws.wait_for(lambda: len([e for e in ws.events if e["type"] == "error"]) == 3)
        codes = [e["code"] for e in ws.events if e["type"] == "error"]
        assert codes == ["malformed_json", "unknown_type", "invalid_field"]
        ws.send("x" * 20000)
        ws.closed.wait(10)
        assert ws.close_code == 1009
    finally:
        ws.close()


def test_ws_origin_check(live):
    server = live(ALLOWED_ORIGINS="https://app.example")
    token = server.token("origin")
    ok = WSClient(server.url, token, origin="https://app.example")
    ok.close()
    import websocket

    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WSClient(server.url, token, origin="https://evil.example")
    assert info.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WSClient(server.url, "forged")
    assert info.value.status_code == 401


@pytest.mark.parametrize("transport", TRANSPORTS, ids=["sse", "ws"])
def test_resume_gets_exactly_what_was_missed(live, redis_mode, transport):
    server = live(workers=2, **redis_mode)
    token = server.token("resumer")
    first = transport(server.url, token)
    for i in range(3):
        server.notify("resumer", f"before{i}")
    first.wait_count(3)
    cursor = first.last_id()
    first.close()
    for i in range(4):
        server.notify("resumer", f"gap{i}")
    second = transport(server.url, token, last_event_id=cursor)
    try:
        server.notify("resumer", "after")
        second.wait_count(5)
        assert second.messages() == [f"gap{i}" for i in range(4)] + ["after"]
    finally:
        second.close()


@pytest.mark.parametrize("transport", TRANSPORTS, ids=["sse", "ws"])
def test_unknown_cursor_gets_reset(live, transport):
    server = live()
    server.notify("resetme", "x")
    for cursor in ["123", "99999999999999999"]:
        client = transport(server.url, server.token("resetme"), last_event_id=cursor)
        try:
            client.wait_for(lambda c=client: any(e["type"] == "reset" for e in c.events))
            server.notify("resetme", f"live-{cursor}")
            client.wait_count(1)
            assert client.messages() == [f"live-{cursor}"]
        finally:
            client.close()


def test_resume_from_zero_replays_everything_from_mongodb(live):
    server = live()
    for i in range(3):
        server.notify("zero", f"z{i}")
    client = SSEClient(server.url, server.token("zero"), last_event_id="0")
    try:
        client.wait_count(3)
        assert client.messages() == ["z0", "z1", "z2"]
    finally:
        client.close()


def test_expired_token_ends_streams(live):
    server = live()
    # 2 s, not 1: a token's expiry is whole seconds, so a 1 s token minted late in a second
    # can expire before a slow machine has opened the stream (a 401, no stream to end).
    sse = SSEClient(server.url, server.token("exp", ttl=2))
    ws = WSClient(server.url, server.token("exp", ttl=2))
    try:
        assert sse.status == 200
        sse.closed.wait(10)
        ws.closed.wait(10)
        assert sse.closed.is_set() and any(e["type"] == "expired" for e in sse.events)
        assert ws.close_code == 4401
    finally:
        sse.close()
        ws.close()


def test_payload_json_is_one_line(live):
    server = live()
    client = SSEClient(server.url, server.token("json"))
    try:
        server.notify("json", "line1\nline2")
        client.wait_count(1)
        assert client.messages() == ["line1\nline2"]
        assert (
            orjson.loads(orjson.dumps(client.notifications()[0]["notification"]))["message"] == "line1\nline2"
        )
    finally:
        client.close()
