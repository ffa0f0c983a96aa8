"""Rate limits: POSTs per API key per minute, concurrent streams per user (across workers)."""

from __future__ import annotations

import time

import gevent
import pytest
import requests
import websocket

from app.access import ratelimit
from app.access.ratelimit import limiter
from tests.support import SSEClient, WSClient
from tools.devservers import find_free_port


def _post(client, key: str):
    return client.post("/api/notifications", json={"user_id": "rl", "message": "m"},
                       headers={"Authorization": f"Bearer {key}"})  # fmt: skip


def _not_near_window_end(margin: float = 3.0) -> None:
    """Start a fixed-window test well inside one window (a deterministic wait, at most `margin` s)."""
    left = ratelimit.WINDOW_SECONDS - time.time() % ratelimit.WINDOW_SECONDS
    if left < margin:
        gevent.sleep(left + 0.05)


def test_posts_per_api_key_get_429_with_retry_after(make_app):
    app = make_app(API_KEYS=("key-one", "key-two"), RATE_LIMIT_POSTS_PER_MINUTE=3)
    client = app.test_client()
    _not_near_window_end()
    assert [_post(client, "key-one").status_code for _ in range(3)] == [201] * 3
    refused = _post(client, "key-one")
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert _post(client, "key-two").status_code == 201  # the limit is per key
    history = client.get("/api/users/rl/notifications", headers={"Authorization": "Bearer key-one"})
    assert len(history.get_json()["notifications"]) == 4  # the refused POST stored nothing


def test_post_limit_is_shared_by_all_workers(live):
    server = live(workers=2, RATE_LIMIT_POSTS_PER_MINUTE="6")
    _not_near_window_end()
    # requests.post opens a fresh connection each time: the kernel spreads them over both workers.
    bodies = [{"user_id": "rlw", "message": f"m{i}"} for i in range(8)]
    statuses = [server.post("/api/notifications", body).status_code for body in bodies]
    assert statuses == [201] * 6 + [429] * 2


def test_zero_disables_the_post_limit(make_app):
    client = make_app(RATE_LIMIT_POSTS_PER_MINUTE=0).test_client()
    assert all(_post(client, "test-api-key").status_code == 201 for _ in range(5))


def test_rate_limits_fail_open_when_redis_is_down(make_app):
    dead = f"redis://127.0.0.1:{find_free_port()}/0"
    app = make_app(REDIS_URL=dead, RATE_LIMIT_POSTS_PER_MINUTE=1, MAX_STREAMS_PER_USER=1)
    client = app.test_client()
    assert [_post(client, "test-api-key").status_code for _ in range(3)] == [201] * 3
    with app.app_context():
        assert limiter().acquire_stream("u") is None and limiter().acquire_stream("u") is None


def test_stream_cap_counts_sse_and_ws_across_workers(live):
    server = live(workers=2, MAX_STREAMS_PER_USER="2", HEARTBEAT_SECONDS="0.3")
    token = server.token("capped")
    first, second = SSEClient(server.url, token), WSClient(server.url, token)
    other = SSEClient(server.url, server.token("uncapped"))
    try:
        assert first.status == 200 and other.status == 200
        refused = requests.get(server.url + "/stream", params={"token": token}, timeout=10)
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        assert refused.json()["error"]["code"] == "too_many_streams"
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            WSClient(server.url, token)
        assert info.value.status_code == 429
        server.notify("capped", "still live")
        first.wait_count(1)
        second.wait_count(1)
        second.close()
        third = _open_when_slot_frees(server.url, token)
        assert third.status == 200
        third.close()
    finally:
        for client in (first, second, other):
            client.close()


def _open_when_slot_frees(url: str, token: str, timeout: float = 10.0) -> SSEClient:
    """The server frees a slot once it notices the close; poll for it, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        client = SSEClient(url, token)
        if client.status == 200 or time.monotonic() > deadline:
            return client
        gevent.sleep(0.1)


def test_slot_of_a_dead_worker_expires_and_live_slots_are_refreshed(app, monkeypatch):
    monkeypatch.setattr(ratelimit, "SLOT_TTL_SECONDS", 1)
    monkeypatch.setattr(ratelimit, "REFRESH_SECONDS", 0.2)
    with app.app_context():
        lim = limiter()
        lim.config = lim.config.with_overrides(MAX_STREAMS_PER_USER=1)
        crashed = lim.acquire_stream("lease")
        lim._slots.clear()  # as if its worker died: nobody refreshes or releases it
        with pytest.raises(Exception) as info:
            lim.acquire_stream("lease")
        assert info.value.status == 429
        gevent.sleep(1.1)
        live_slot = lim.acquire_stream("lease")
        assert live_slot is not None and crashed is not None
        gevent.sleep(1.5)  # longer than the lease: only the refresher keeps it
        assert lim.open_slots("lease") == 1
        live_slot.release()
        live_slot.release()  # idempotent
        assert lim.wait_released(timeout=5)
        assert lim.open_slots("lease") == 0


def test_slots_of_streams_closing_together_go_in_one_round_trip(app, monkeypatch):
    with app.app_context():
        lim = limiter()
        slots = [lim.acquire_stream(f"closing{i % 7}") for i in range(70)]
        assert lim.open_slots("closing0") == 10
        rounds = []
        real_pipeline = lim.redis.pipeline

        def counted(*args, **kwargs):
            rounds.append(1)
            return real_pipeline(*args, **kwargs)

        monkeypatch.setattr(lim.redis, "pipeline", counted)
        for slot in slots:
            slot.release()
        assert lim.wait_released(timeout=5)
        assert rounds == [1]
        assert [lim.open_slots(f"closing{i}") for i in range(7)] == [0] * 7
