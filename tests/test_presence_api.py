"""GET /api/users/<id>/presence against two real instances, SSE and WebSocket clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import requests

from tests.support import SSEClient, WSClient, wait_until

FAST = {"PRESENCE_INTERVAL_SECONDS": "0.2", "RECEIPT_FLUSH_SECONDS": "0.1"}


def presence(server: Any, user_id: str, **headers: str) -> requests.Response:
    auth = {"Authorization": f"Bearer {server.stack.api_key}", **headers}
    return requests.get(f"{server.url}/api/users/{user_id}/presence", headers=auth, timeout=10)


def connections(server: Any, user_id: str) -> list[dict[str, Any]]:
    resp = presence(server, user_id)
    assert resp.status_code == 200, resp.text
    return resp.json()["connections"]


def test_presence_lists_each_connection_across_instances(live: Callable[..., Any]) -> None:
    one = live(INSTANCE_NAME="one", **FAST)
    two = live(INSTANCE_NAME="two", **FAST)
    never = presence(one, "pia").json()
    assert never == {"user_id": "pia", "online": False, "connections": [], "last_seen": None}

    sse = SSEClient(one.url, one.token("pia"))
    ws = WSClient(two.url, two.token("pia"))
    try:
        sse.wait_for(lambda: any(e["type"] == "connected" for e in sse.events))
        sse_id = next(e["data"]["connection"] for e in sse.events if e["type"] == "connected")
        wait_until(lambda: len(connections(two, "pia")) == 2, timeout=5)
        body = presence(two, "pia").json()
        assert body["online"] is True and body["last_seen"] is not None
        by_transport = {c["transport"]: c for c in body["connections"]}
        assert set(by_transport) == {"sse", "ws"}
        assert by_transport["sse"]["id"] == sse_id
        assert by_transport["sse"]["instance"] == "one" and by_transport["ws"]["instance"] == "two"
        assert all(c["worker"].isdigit() and c["since"].endswith("Z") for c in body["connections"])
        assert all(c["last_receipt"] is None for c in body["connections"])
        schema = requests.get(one.url + "/api/openapi.json", timeout=10).json()["components"]["schemas"]
        item = schema["Presence"]["properties"]["connections"]["items"]
        assert set(schema["Presence"]["required"]) == set(body)
        assert all(set(item["required"]) == set(c) for c in body["connections"])

        # Receipts: the WebSocket acks on its stream, the SSE client POSTs to the other instance.
        nid = one.notify("pia", "hello")["id"]
        sse.wait_count(1)
        ws.wait_count(1)
        ws.send({"type": "ack", "ids": [nid]})
        headers = {"Authorization": f"Bearer {one.token('pia')}"}
        acked = requests.post(
            two.url + "/api/me/ack", json={"ids": [nid], "connection": sse_id}, headers=headers, timeout=10
        )
        assert acked.status_code == 200, acked.text
        wait_until(lambda: all(c["last_receipt"] for c in connections(one, "pia")), timeout=5)
        for conn in connections(one, "pia"):
            assert conn["last_receipt"] >= conn["since"]

        ws.close()
        wait_until(lambda: [c["transport"] for c in connections(one, "pia")] == ["sse"], timeout=5)
    finally:
        ws.close()
        sse.close()
    wait_until(lambda: not presence(one, "pia").json()["online"], timeout=5)
    gone = presence(two, "pia").json()
    assert gone["connections"] == [] and gone["last_seen"] is not None


def test_presence_needs_an_api_key_and_a_valid_user(live: Callable[..., Any]) -> None:
    server = live()
    resp = requests.get(f"{server.url}/api/users/pia/presence", timeout=10)
    assert resp.status_code == 401
    bad = presence(server, "x" * 300)
    assert bad.status_code in (400, 422) and bad.json()["error"]["field"] == "user_id"
