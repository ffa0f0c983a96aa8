"""Delivery receipts and the trace (app/store/receipts.py): writes per connection and
receipts from both transports reach ``GET /api/notifications/<id>``, through Redis and
then MongoDB, with no MongoDB write per delivery."""

from __future__ import annotations

import orjson
import requests

from app.store.receipts import deliveries_collection
from tests.support import SSEClient, WSClient, wait_until


def trace(server, nid: str) -> dict:
    resp = requests.get(
        f"{server.url}/api/notifications/{nid}",
        headers={"Authorization": f"Bearer {server.stack.api_key}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_receipts_from_sse_and_websocket_reach_the_trace(live, make_app, redis_mode):
    env = {"RECEIPT_FLUSH_SECONDS": "0.2", "RECEIPT_FOLD_SECONDS": "0.5", "RECEIPT_FOLD_DELAY_SECONDS": "1"}
    env |= redis_mode
    one, two = live(**env), live(**env)
    token = one.token("traced")
    sse, ws = SSEClient(one.url, token), WSClient(two.url, token)
    try:
        sse.wait_for(lambda: any(e["type"] == "connected" for e in sse.events))
        connection = next(e for e in sse.events if e["type"] == "connected")["data"]["connection"]
        assert connection.startswith("sse~")
        note = two.notify("traced", "hello")
        sse.wait_count(1)
        ws.wait_count(1)
        first = trace(one, note["id"])
        assert first["message"] == "hello" and first["delivery"]["received_at"] is None

        ws.send({"type": "ack", "ids": [note["id"]]})
        ack = requests.post(
            one.url + "/api/me/ack",
            data=orjson.dumps({"ids": [note["id"]], "connection": connection}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert ack.status_code == 200 and ack.json() == {"acked": 1}

        def both_received() -> bool:
            sent = trace(one, note["id"])["delivery"]["sent"]
            return len(sent) == 2 and all(s["received_at"] for s in sent)

        wait_until(both_received)
        delivery = trace(two, note["id"])["delivery"]
        assert {s["transport"] for s in delivery["sent"]} == {"sse", "ws"}
        assert all(s["instance"] and s["worker"] and s["at"] for s in delivery["sent"])
        assert delivery["stored_at"] <= delivery["published_at"] <= min(s["at"] for s in delivery["sent"])
        assert delivery["received_at"] == min(s["received_at"] for s in delivery["sent"])
        assert (delivery["seen_at"], delivery["read_at"], delivery["archived_at"]) == (None, None, None)

        app = make_app()  # to read MongoDB as the instances see it
        with app.app_context():
            wait_until(lambda: deliveries_collection().count_documents({}) == 1)
            folded = deliveries_collection().find_one({})
            assert folded["user_id"] == "traced" and len(folded["sent"]) == 2 and len(folded["received"]) == 2
        assert trace(one, note["id"])["delivery"] == delivery, "the same trace from MongoDB as from Redis"

        ws.send({"type": "read", "ids": [note["id"]]})
        wait_until(lambda: trace(one, note["id"])["delivery"]["read_at"] is not None)  # then archived
        assert two.post("/api/users/traced/archive", {"ids": [note["id"]]}).status_code == 200
        wait_until(lambda: trace(one, note["id"])["delivery"]["archived_at"] is not None)
        after = trace(one, note["id"])["delivery"]
        assert after["read_at"] and after["seen_at"] and after["archived_at"] >= after["read_at"]
    finally:
        sse.close()
        ws.close()


def test_a_receipt_counts_only_for_the_user_who_sent_it_and_later_ones_merge(make_app, auth):
    app = make_app(RECEIPT_FOLD_DELAY_SECONDS=0)
    client = app.test_client()
    nid = client.post(
        "/api/notifications", json={"user_id": "victim", "message": "m"}, headers=auth
    ).get_json()["id"]
    service = app.extensions["notifications"]
    with app.app_context():
        service.receipts.sent(nid, "ws~h~1~2")
        service.acknowledge("intruder", [nid], "ws~h~1~1")
        service.acknowledge("victim", [nid], "ws~h~1~2")
        service.receipts.flush()
        sent = client.get(f"/api/notifications/{nid}", headers=auth).get_json()["delivery"]
        assert sent["received_at"] is not None
        assert service.receipts.fold() == 1
        folded = deliveries_collection().find_one({})
        assert list(folded["received"]) == ["ws~h~1~2"] and folded["published"]
        service.receipts.sent(nid, "sse~h~1~3")  # a later write: a second fold merges it
        service.acknowledge("victim", [nid], "sse~h~1~3")
        service.receipts.flush()
        assert service.receipts.fold() == 1
        merged = deliveries_collection().find_one({})
        assert set(merged["sent"]) == {"ws~h~1~2", "sse~h~1~3"} and set(merged["received"]) == set(
            merged["sent"]
        )
        assert merged["published"] == folded["published"]
        after = client.get(f"/api/notifications/{nid}", headers=auth).get_json()["delivery"]
        assert after["received_at"] == sent["received_at"] and len(after["sent"]) == 2


def test_ack_and_trace_bad_input(client, auth):
    token = client.post("/api/tokens", json={"user_id": "acker"}, headers=auth).get_json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    cases = [
        ({"ids": ["nope"]}, "ids"),
        ({"ids": []}, "ids"),
        ({"ids": ["6650f0c2a1b2c3d4e5f60718"] * 1001}, "ids"),
        ({"ids": ["6650f0c2a1b2c3d4e5f60718"], "connection": "a b"}, "connection"),
        ({"ids": ["6650f0c2a1b2c3d4e5f60718"], "extra": 1}, "extra"),
    ]
    for body, field in cases:
        resp = client.post("/api/me/ack", json=body, headers=bearer)
        assert resp.status_code == 422 and resp.get_json()["error"]["field"] == field, body
    assert client.post("/api/me/ack", json={"ids": ["6650f0c2a1b2c3d4e5f60718"]}).status_code == 401
    assert client.get("/api/notifications/6650f0c2a1b2c3d4e5f60718", headers=auth).status_code == 404
    assert client.get("/api/notifications/nope", headers=auth).get_json()["error"]["field"] == "id"
    assert client.get("/api/notifications/6650f0c2a1b2c3d4e5f60718", headers=bearer).status_code == 401


def test_an_unreceived_notification_has_nulls_and_no_mongodb_write_per_delivery(app, client, auth):
    note = client.post(
        "/api/notifications", json={"user_id": "quiet", "message": "m"}, headers=auth
    ).get_json()
    body = client.get(f"/api/notifications/{note['id']}", headers=auth).get_json()
    assert body["id"] == note["id"]
    assert set(body["delivery"]) == {
        "stored_at", "published_at", "sent", "received_at", "seen_at", "read_at", "archived_at"
    }  # fmt: skip
    assert body["delivery"]["sent"] == [] and body["delivery"]["received_at"] is None
    with app.app_context():
        assert deliveries_collection().count_documents({}) == 0, "nothing folded before the flush"


def test_the_latest_receipt_per_stream_is_kept_for_presence(app):
    receipts = app.extensions["notifications"].receipts
    stream = receipts.connection("ws")
    nid = "6650f0c2a1b2c3d4e5f60718"
    receipts.acked("ann", [nid], stream)
    receipts.acked("ann", [nid], stream)
    receipts.acked("ann", [nid], "http")  # a receipt naming no stream: nothing to show in presence
    receipts.acked("ann", [nid], "made~up")
    receipts.acked("ann", [], stream)
    taken = receipts.take_last_receipts()
    assert list(taken) == [(stream, "ann")]
    assert receipts.take_last_receipts() == {}
