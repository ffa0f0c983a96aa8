"""The services' JSON API against real MongoDB-wire and Redis servers."""

from __future__ import annotations

from typing import Any

import gevent
import orjson
import pytest


def post(client, body: Any, auth: dict[str, str], **headers: str):
    return client.post(
        "/api/notifications",
        data=body if isinstance(body, (bytes, str)) else orjson.dumps(body),
        headers={**auth, "Content-Type": "application/json", **headers},
    )


def test_create_returns_the_stored_notification(client, auth):
    resp = post(
        client, {"user_id": "alice", "message": "hi", "title": "T", "category": "c", "data": {"k": 1}}, auth
    )
    assert resp.status_code == 201
    body = resp.get_json()
    assert set(body) == {
        *("id", "seq", "user_id", "title", "message", "category", "data", "created_at"),
        *("read", "seen", "archived", "priority", "actions"),
    }
    assert (body["seen"], body["archived"], body["priority"], body["actions"]) == (False, False, "normal", [])
    assert body["user_id"] == "alice" and body["message"] == "hi" and body["data"] == {"k": 1}
    assert body["read"] is False and body["created_at"].endswith("Z") and isinstance(body["seq"], int)
    history = client.get("/api/users/alice/notifications", headers=auth).get_json()
    assert history["notifications"] == [body]


def test_create_for_many_users(client, auth):
    users = [f"u{i}" for i in range(300)]
    resp = post(client, {"user_ids": users, "message": "broadcast"}, auth)
    assert resp.status_code == 201
    created = resp.get_json()["notifications"]
    assert [n["user_id"] for n in created] == users
    assert len({n["id"] for n in created}) == 300
    assert client.get("/api/users/u299/unread-count", headers=auth).get_json() == {
        "user_id": "u299",
        "unread": 1,
    }


@pytest.mark.parametrize(
    "body, field",
    [
        ({"message": "x"}, "user_id"),
        ({"user_id": "", "message": "x"}, "user_id"),
        ({"user_id": "a b", "message": "x"}, "user_id"),
        ({"user_id": "x" * 129, "message": "x"}, "user_id"),
        ({"user_id": 5, "message": "x"}, "user_id"),
        ({"user_id": "a"}, "message"),
        ({"user_id": "a", "message": ""}, "message"),
        ({"user_id": "a", "message": "x" * 4001}, "message"),
        ({"user_id": "a", "message": "x", "title": "t" * 201}, "title"),
        ({"user_id": "a", "message": "x", "category": "c" * 65}, "category"),
        ({"user_id": "a", "message": "x", "data": [1]}, "data"),
        ({"user_id": "a", "message": "x", "data": {"b": "x" * 9000}}, "data"),
        ({"user_ids": [], "message": "x"}, "user_ids"),
        ({"user_ids": ["a", "a"], "message": "x"}, "user_ids"),
        ({"user_ids": [f"u{i}" for i in range(1001)], "message": "x"}, "user_ids"),
        ({"user_ids": ["ok", "not ok"], "message": "x"}, "user_ids"),
        ({"user_id": "a", "user_ids": ["b"], "message": "x"}, "user_ids"),
        ({"user_id": "a", "message": "x", "priority": "urgent"}, "priority"),
        ({"user_ids": ["a"], "message": "x", "user": "b"}, "user"),
        ({"user_id": "a", "message": "x", "data": {"n": 2**63}}, "data.n"),
        ({"user_id": "a", "message": "x", "data": {"n": 2**64 - 1}}, "data.n"),
        ({"user_id": "a", "message": "x", "data": {"a": [0, 1, {"b": 2**64 - 1}]}}, "data.a[2].b"),
        ({"user_id": "a", "message": "x", "data": {"a": [[2**63]]}}, "data.a[0][0]"),
        ({"user_id": "a", "message": "x", "data": {"a": {"$set": 1}}}, "data.a.$set"),
    ],
)
def test_invalid_fields_are_named(client, auth, body, field):
    resp = post(client, body, auth)
    assert resp.status_code == 422
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_field" and error["field"] == field and error["message"]


def test_nothing_is_stored_for_invalid_input(client, auth):
    post(client, {"user_ids": ["a", "b b"], "message": "x"}, auth)
    assert client.get("/api/users/a/notifications", headers=auth).get_json()["notifications"] == []


@pytest.mark.parametrize(
    "data, content_type, status, code",
    [
        (b"{not json", "application/json", 400, "malformed_json"),
        (b"[1, 2]", "application/json", 400, "malformed_json"),
        (b"[" * 10000 + b"]" * 10000, "application/json", 400, "malformed_json"),
        (
            b'{"user_id": "a", "message": "x", "data": {"n": 1' + b"0" * 5000 + b"e400}}",
            "application/json",
            400,
            "malformed_json",
        ),
        (b"user_id=a", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"user_id":"a","message":"' + b"x" * 70000 + b'"}', "application/json", 413, "payload_too_large"),
    ],
)
def test_bad_bodies(client, auth, data, content_type, status, code):
    resp = client.post("/api/notifications", data=data, headers={**auth, "Content-Type": content_type})
    assert resp.status_code == status
    assert resp.get_json()["error"]["code"] == code
    assert client.get("/healthz").status_code == 200


def nested(levels: int) -> dict[str, Any]:
    """``data`` with ``levels`` levels of objects and lists, ``data`` itself included."""
    value: Any = 1
    for level in range(levels - 1):
        value = [value] if level % 2 else {"k": value}
    return {"d": value}


def test_data_depth_limit_is_the_one_the_message_names(client, auth):
    deepest = post(client, {"user_id": "deep", "message": "x", "data": nested(32)}, auth)
    assert deepest.status_code == 201 and deepest.get_json()["data"] == nested(32)
    refused = post(client, {"user_id": "deep", "message": "x", "data": nested(33)}, auth)
    assert refused.status_code == 422
    error = refused.get_json()["error"]
    assert error["field"].startswith("data.d") and "at most 32 levels" in error["message"]


def test_integers_at_the_int64_edges_are_stored(client, auth):
    data = {"max": 2**63 - 1, "min": -(2**63), "list": [2**63 - 1, {"x": -(2**63)}]}
    resp = post(client, {"user_id": "edge", "message": "x", "data": data}, auth)
    assert resp.status_code == 201 and resp.get_json()["data"] == data
    stored = client.get("/api/users/edge/notifications", headers=auth).get_json()["notifications"]
    assert stored[0]["data"] == data


@pytest.mark.parametrize("number", [b"1" + b"0" * 30, b"-9223372036854775809", b"1e30", b"9.3e18"])
def test_integers_beyond_64_bits_are_refused_however_spelled(client, auth, number):
    """orjson reads these as floats: stored, they would silently lose digits."""
    resp = post(client, b'{"user_id": "a", "message": "x", "data": {"a": [{"n": ' + number + b"}]}}", auth)
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == "data.a[0].n"
    assert post(client, b'{"user_id": "a", "message": "x", "data": {"n": 1.5e300}}', auth).status_code == 422
    assert post(client, b'{"user_id": "a", "message": "x", "data": {"n": 1.5e-300}}', auth).status_code == 201


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdA==", "Bearer"])
def test_api_key_required(client, header):
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("post", "/api/notifications"),
        ("get", "/api/users/a/notifications"),
        ("get", "/api/recent"),
    ]:
        resp = getattr(client, method)(path, headers=headers, json={"user_id": "a", "message": "x"})
        assert resp.status_code == 401
        assert resp.get_json()["error"]["code"] == "unauthorized"


def test_unknown_path_and_wrong_method_are_json(client, auth):
    resp = client.get("/api/nope", headers=auth)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "not_found"
    resp = client.delete("/api/notifications", headers=auth)
    assert resp.status_code == 405 and resp.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]


def test_history_paging_newest_first(client, auth):
    for i in range(7):
        assert post(client, {"user_id": "pager", "message": f"m{i}"}, auth).status_code == 201
    page1 = client.get("/api/users/pager/notifications?limit=3", headers=auth).get_json()
    assert [n["message"] for n in page1["notifications"]] == ["m6", "m5", "m4"]
    page2 = client.get(
        f"/api/users/pager/notifications?limit=3&before={page1['next']}", headers=auth
    ).get_json()
    assert [n["message"] for n in page2["notifications"]] == ["m3", "m2", "m1"]
    page3 = client.get(
        f"/api/users/pager/notifications?limit=3&before={page2['next']}", headers=auth
    ).get_json()
    assert [n["message"] for n in page3["notifications"]] == ["m0"] and page3["next"] is None
    seqs = [n["seq"] for page in (page1, page2, page3) for n in page["notifications"]]
    assert seqs == sorted(seqs, reverse=True)  # pages follow the stream cursor


def test_history_before_an_id_that_is_not_the_users_is_an_empty_page(client, auth):
    other = post(client, {"user_id": "pager-b", "message": "theirs"}, auth).get_json()
    post(client, {"user_id": "pager-a", "message": "mine"}, auth)
    for before in (other["id"], "0" * 24):  # another user's notification; one never stored
        page = client.get(f"/api/users/pager-a/notifications?before={before}", headers=auth).get_json()
        assert page == {"notifications": [], "next": None}


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("before=zzz", "before"),
        ("unread=maybe", "unread"),
    ],
)
def test_history_bad_query(client, auth, query, field):
    resp = client.get(f"/api/users/a/notifications?{query}", headers=auth)
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == field


def test_cache_miss_hit_and_invalidation(client, auth):
    post(client, {"user_id": "c", "message": "one"}, auth)
    first = client.get("/api/users/c/notifications", headers=auth)
    assert first.headers["X-Cache"] == "MISS"
    second = client.get("/api/users/c/notifications", headers=auth)
    assert second.headers["X-Cache"] == "HIT" and second.get_json() == first.get_json()
    post(client, {"user_id": "c", "message": "two"}, auth)
    third = client.get("/api/users/c/notifications", headers=auth)
    assert third.headers["X-Cache"] == "MISS"
    assert [n["message"] for n in third.get_json()["notifications"]] == ["two", "one"]
    ids = [n["id"] for n in third.get_json()["notifications"]]
    assert client.get("/api/users/c/notifications", headers=auth).headers["X-Cache"] == "HIT"
    client.post("/api/users/c/read", json={"ids": ids[:1]}, headers=auth)
    after_read = client.get("/api/users/c/notifications", headers=auth)
    assert after_read.headers["X-Cache"] == "MISS"
    assert [n["read"] for n in after_read.get_json()["notifications"]] == [True, False]


def test_cache_expires_after_ttl(make_app, auth):
    client = make_app(CACHE_TTL_SECONDS=1).test_client()
    post(client, {"user_id": "ttl", "message": "x"}, auth)
    assert client.get("/api/users/ttl/notifications", headers=auth).headers["X-Cache"] == "MISS"
    assert client.get("/api/users/ttl/notifications", headers=auth).headers["X-Cache"] == "HIT"
    app = client.application
    service = app.extensions["notifications"]
    key = [k for k in service.redis.scan_iter(service.key("cache", "ttl") + ":*")]
    assert key and 0 < service.redis.pttl(key[0]) <= 1000
    gevent.sleep(service.redis.pttl(key[0]) / 1000 + 0.05)
    assert client.get("/api/users/ttl/notifications", headers=auth).headers["X-Cache"] == "MISS"


def test_unread_count_and_mark_read(client, auth):
    ids = [post(client, {"user_id": "r", "message": f"m{i}"}, auth).get_json()["id"] for i in range(3)]
    assert client.get("/api/users/r/unread-count", headers=auth).get_json() == {"user_id": "r", "unread": 3}
    resp = client.post("/api/users/r/read", json={"ids": ids[:2]}, headers=auth)
    assert resp.get_json() == {"updated": 2}
    assert client.get("/api/users/r/unread-count", headers=auth).get_json()["unread"] == 1
    assert client.post("/api/users/r/read", json={"ids": ids[:2]}, headers=auth).get_json() == {"updated": 0}
    assert client.post("/api/users/r/read", json={"all": True}, headers=auth).get_json() == {"updated": 1}
    assert client.get("/api/users/r/unread-count", headers=auth).get_json()["unread"] == 0
    unread_page = client.get("/api/users/r/notifications?unread=true", headers=auth).get_json()
    assert unread_page["notifications"] == []


def test_mark_read_of_another_users_ids_changes_nothing(client, auth):
    nid = post(client, {"user_id": "owner", "message": "x"}, auth).get_json()["id"]
    assert client.post("/api/users/intruder/read", json={"ids": [nid]}, headers=auth).get_json() == {
        "updated": 0
    }
    assert client.get("/api/users/owner/unread-count", headers=auth).get_json()["unread"] == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "ids"),
        ({"ids": []}, "ids"),
        ({"ids": "x"}, "ids"),
        ({"ids": ["nope"]}, "ids"),
        ({"all": False}, "ids"),
    ],
)
def test_mark_read_bad_input(client, auth, body, field):
    resp = client.post("/api/users/r/read", json=body, headers=auth)
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == field


def test_recent_is_capped_and_equals_the_newest_50(client, auth):
    created = post(client, {"user_ids": [f"r{i}" for i in range(40)], "message": "batch"}, auth).get_json()[
        "notifications"
    ]

    def one(i: int) -> dict:
        resp = post(client, {"user_id": f"c{i}", "message": f"n{i}"}, auth)
        assert resp.status_code == 201
        return resp.get_json()

    created += [g.value for g in gevent.joinall([gevent.spawn(one, i) for i in range(30)], raise_error=True)]
    recent = client.get("/api/recent", headers=auth).get_json()["notifications"]
    assert len(recent) == 50 and len({n["id"] for n in recent}) == 50
    by_id = {n["id"]: n for n in created}
    assert all(by_id[n["id"]] == n for n in recent)  # the very objects the POSTs returned
    seqs = [n["seq"] for n in recent]
    assert seqs == sorted(seqs, reverse=True)  # newest first
    left_out = [n["seq"] for n in created if n["id"] not in {r["id"] for r in recent}]
    assert len(left_out) == 20 and max(left_out) <= min(seqs)  # nothing newer was dropped


def test_redis_down_posts_still_store_and_reads_use_mongodb(make_app, own_redis, auth):
    client = make_app(REDIS_URL=own_redis.url).test_client()
    assert post(client, {"user_id": "rd", "message": "before"}, auth).status_code == 201
    assert client.get("/api/users/rd/notifications", headers=auth).status_code == 200
    own_redis.kill()
    created = post(client, {"user_id": "rd", "message": "during"}, auth)
    assert created.status_code == 201 and created.get_json()["seq"] is None  # stored, not yet pushed
    page = client.get("/api/users/rd/notifications", headers=auth)
    assert page.status_code == 200 and page.headers["X-Cache"] == "MISS"
    assert [n["message"] for n in page.get_json()["notifications"]] == ["during", "before"]
    assert client.get("/api/users/rd/unread-count", headers=auth).get_json()["unread"] == 2
    assert len(client.get("/api/recent", headers=auth).get_json()["notifications"]) == 2
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["checks"]["redis"] == "down"


def test_idempotent_retry_returns_first_response(app, client, auth):
    body = {"user_id": "idem", "message": "once"}
    first = post(client, body, auth, **{"Idempotency-Key": "k-1"})
    assert app.extensions["notifications"].publisher.outbox.flush(5)  # the publish is recorded
    second = post(client, body, auth, **{"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 201
    assert first.get_json() == second.get_json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert client.get("/api/users/idem/unread-count", headers=auth).get_json()["unread"] == 1
    conflict = post(client, {"user_id": "idem", "message": "different"}, auth, **{"Idempotency-Key": "k-1"})
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "idempotency_conflict"
    bad = post(client, body, auth, **{"Idempotency-Key": "x" * 300})
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "Idempotency-Key"


def test_a_key_whose_notifications_are_being_stored_again_is_a_retry_not_a_conflict(app):
    """Between a batch removing its stored part (a neighbour was refused) and storing it
    again, a retry finds the key taken and its first notification gone: 503, not 409."""
    from app.errors import ApiError
    from app.store.idempotency import RequestKey, stored_under
    from app.store.models import notifications_collection
    from tests.support import docs_for

    key = RequestKey("owner:k-again", "hash")
    with app.app_context():
        second = docs_for("again", 1)[0]
        second["idem"] = key.names(2)[1]
        notifications_collection().insert_one(second)
        with pytest.raises(ApiError) as info:
            stored_under(key, 2)
    assert info.value.status == 503 and info.value.code == "unavailable"


def test_concurrent_idempotent_requests_create_one(client, auth):
    body = {"user_id": "idem2", "message": "once"}
    results = gevent.joinall(
        [gevent.spawn(post, client, body, auth, **{"Idempotency-Key": "same"}) for _ in range(5)]
    )
    statuses = sorted(g.value.status_code for g in results)
    assert statuses.count(201) >= 1 and set(statuses) <= {201, 503}  # 503: being stored, retry
    assert client.get("/api/users/idem2/unread-count", headers=auth).get_json()["unread"] == 1


def test_read_your_writes_under_concurrent_reads(client, auth):
    """Readers keep refilling the cache while writes land: no GET after a 201 misses it."""
    stop = False
    failures: list[str] = []

    def reader() -> None:
        while not stop:
            client.get("/api/users/ryw/notifications", headers=auth)

    readers = [gevent.spawn(reader) for _ in range(4)]
    try:
        for i in range(40):
            created = post(client, {"user_id": "ryw", "message": f"w{i}"}, auth).get_json()
            page = client.get("/api/users/ryw/notifications", headers=auth).get_json()
            if created["id"] not in {n["id"] for n in page["notifications"]}:
                failures.append(created["id"])
            gevent.sleep(0)
    finally:
        stop = True
        gevent.joinall(readers)
    assert failures == []


def test_tokens(client, auth):
    resp = client.post("/api/tokens", json={"user_id": "tok", "ttl_seconds": 60}, headers=auth)
    assert resp.status_code == 201
    token = resp.get_json()["token"]
    assert resp.get_json()["expires_at"].endswith("Z")
    post(client, {"user_id": "tok", "message": "mine"}, auth)
    post(client, {"user_id": "other", "message": "theirs"}, auth)
    me = client.get("/api/me/notifications", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert [n["message"] for n in me["notifications"]] == ["mine"]
    nid = me["notifications"][0]["id"]
    read = client.post("/api/me/read", json={"ids": [nid]}, headers={"Authorization": f"Bearer {token}"})
    assert read.get_json() == {"updated": 1}
    assert (
        client.get("/api/me/unread-count", headers={"Authorization": f"Bearer {token}"}).get_json()["unread"]
        == 0
    )
    # a subscriber token is not an API key, and an API key is not a subscriber token
    assert (
        client.get("/api/users/tok/notifications", headers={"Authorization": f"Bearer {token}"}).status_code
        == 401
    )
    assert client.get("/api/me/notifications", headers=auth).status_code == 401


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "user_id"),
        ({"user_id": "a", "ttl_seconds": 0}, "ttl_seconds"),
        ({"user_id": "a", "ttl_seconds": "60"}, "ttl_seconds"),
        ({"user_id": "a", "ttl_seconds": 10**9}, "ttl_seconds"),
    ],
)
def test_token_bad_input(client, auth, body, field):
    resp = client.post("/api/tokens", json=body, headers=auth)
    assert resp.status_code == 422 and resp.get_json()["error"]["field"] == field


def test_expired_and_forged_tokens_are_refused(client, auth, app):
    from app.access.tokens import mint_token

    with app.test_request_context():
        expired, _ = mint_token("x", -1)
    for token in [expired, "garbage", expired[:-2] + "aa"]:
        resp = client.get("/api/me/notifications", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401


def test_health(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["checks"] == {"mongodb": "ok", "redis": "ok", "indexes": "ok"}
