"""/metrics: Prometheus text summed over gunicorn workers, protected, labelled by endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from prometheus_client import REGISTRY
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.support import SSEClient, WSClient


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_metric(url: str, predicate: Callable[[str], bool], timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(url + "/metrics", timeout=5).text
        if predicate(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def created_per_worker(directory: Path) -> dict[str, float]:
    """Each worker's own count, read from its multiprocess file."""
    counts: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "notify_notifications_created_total":
                pid = path.stem.split("_", 1)[1]
                counts[pid] = counts.get(pid, 0.0) + value
    return counts


def test_metrics_add_up_over_two_gunicorn_workers(live: Any, tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_99999.db").write_bytes(b"stale values of a previous run")
    server = live(workers=2, HEARTBEAT_SECONDS="0.3", PROMETHEUS_MULTIPROC_DIR=str(prom))
    assert not (prom / "counter_99999.db").exists()  # cleaned at start
    token = server.token("metrics-user")
    client = SSEClient(server.url, token)
    ws = WSClient(server.url, token)
    try:
        assert client.status == 200
        # Post until both workers have stored some (connections are spread by the kernel).
        n = 0
        while n < 6 or (n < 60 and len([v for v in created_per_worker(prom).values() if v]) < 2):
            server.notify("metrics-user", f"m{n}")
            n += 1
        assert len([v for v in created_per_worker(prom).values() if v]) == 2
        client.wait_count(n)
        ws.wait_count(n)
        history = requests.get(
            server.url + "/api/users/metrics-user/notifications",
            headers={"Authorization": f"Bearer {server.stack.api_key}"},
            timeout=5,
        )
        assert history.status_code == 200

        def all_delivered(text: str) -> bool:  # each worker adds its deliveries once a second
            name = "notify_notifications_delivered_total"
            counts = [sample(text, name, transport=t) for t in ("sse", "ws")]
            return counts == [n, n]

        wait_metric(server.url, all_delivered)
        # Each scrape may land on either worker: every one must report the same sums.
        texts = [requests.get(server.url + "/metrics", timeout=5).text for _ in range(6)]
    finally:
        client.close()
        ws.close()
    for text in texts:
        assert sample(text, "notify_notifications_created_total") == n
        assert sample(text, "notify_notifications_published_total") == n
        assert sample(text, "notify_notifications_delivered_total", transport="sse") == n
        assert sample(text, "notify_notifications_delivered_total", transport="ws") == n
        assert sample(text, "notify_open_connections", transport="sse") == 1
        assert sample(text, "notify_open_connections", transport="ws") == 1
        latency = "notify_http_request_duration_seconds_count"
        posts = sample(text, latency, endpoint="api.create_notification", method="POST")
        assert posts == n
        assert sample(text, "notify_http_requests_total", endpoint="api.user_history", status="200") == 1
        assert "metrics-user" not in text  # labels are endpoints, never raw paths
    # The closed stream is noticed at the next heartbeat and the gauge drops to 0.
    text = wait_metric(server.url, lambda t: sample(t, "notify_open_connections") == 0)
    assert sample(text, "notify_open_connections", transport="sse") == 0
    assert sample(text, "notify_open_connections", transport="ws") == 0


def test_metrics_token_and_production_default(make_app: Callable[..., Any]) -> None:
    app = make_app(METRICS_TOKEN="metrics-secret")
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer metrics-secret"})
    assert ok.status_code == 200
    assert ok.mimetype == "text/plain"
    assert b"notify_notifications_created_total" in ok.data

    prod = make_app(APP_ENV="production").test_client()
    refused = prod.get("/metrics")
    assert refused.status_code == 403
    assert "METRICS_TOKEN" in refused.get_json()["error"]["message"]


def test_latency_labelled_by_endpoint(client: Any, auth: dict[str, str]) -> None:
    def count() -> float:
        labels = {"endpoint": "api.user_unread", "method": "GET"}
        return REGISTRY.get_sample_value("notify_http_request_duration_seconds_count", labels) or 0.0

    before = count()
    for user in ("alice", "bob", "carol"):
        assert client.get(f"/api/users/{user}/unread-count", headers=auth).status_code == 200
    assert count() == before + 3
    unmatched = {"endpoint": "unmatched", "method": "GET", "status": "404"}
    before_404 = REGISTRY.get_sample_value("notify_http_requests_total", unmatched) or 0.0
    client.get("/no/such/path")
    assert REGISTRY.get_sample_value("notify_http_requests_total", unmatched) == before_404 + 1


def test_redis_and_mongodb_errors_counted(make_app: Callable[..., Any], auth: dict[str, str]) -> None:
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens: publish fails
    before = REGISTRY.get_sample_value("notify_redis_errors_total", {"where": "publish"}) or 0.0
    resp = app.test_client().post("/api/notifications", json={"user_id": "u1", "message": "hi"}, headers=auth)
    assert resp.status_code == 201  # stored; the relay publishes it later
    assert REGISTRY.get_sample_value("notify_redis_errors_total", {"where": "publish"}) == before + 1

    from app.store.models import notifications_collection

    before = REGISTRY.get_sample_value("notify_mongodb_errors_total", {"kind": "command"}) or 0.0
    with app.app_context(), contextlib.suppress(Exception):  # the failure is the point
        notifications_collection().database.command("noSuchCommandHere")
    assert REGISTRY.get_sample_value("notify_mongodb_errors_total", {"kind": "command"}) == before + 1


def test_killed_worker_counters_kept_and_gauges_dropped(live: Any) -> None:
    """child_exit marks a dead worker: its counters still count, its open streams do not."""
    server = live(workers=1)
    token = server.token("crash-user")
    client = SSEClient(server.url, token)
    try:
        server.notify("crash-user", "before")
        client.wait_count(1)
        (old_pid,) = server.worker_pids()
        os.kill(old_pid, signal.SIGKILL)
        client.closed.wait(10)
        deadline = time.monotonic() + 15
        while server.worker_pids() in ([], [old_pid]) and time.monotonic() < deadline:
            time.sleep(0.1)
        text = wait_metric(server.url, lambda t: "notify_open_connections" in t)
    finally:
        client.close()
    assert sample(text, "notify_notifications_created_total") == 1
    assert sample(text, "notify_open_connections", transport="sse") == 0


def test_hub_reconnects_and_slow_consumers_counted(make_app: Callable[..., Any]) -> None:
    from app.delivery.events import NOTIFICATION, Event

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    hub = make_app(CLIENT_QUEUE_SIZE=1).extensions["hub"]
    watcher = hub.watch()  # the dashboard's feed has no replay: a full queue is a slow viewer
    assert hub.connected.wait(5)
    dropped = value("notify_slow_consumers_dropped_total")
    for seq in range(1, 6):  # the fifth overflows its queue of four
        hub.dispatch(hub._feed_b, Event(NOTIFICATION, "any-user", seq, b"{}").to_wire())
    assert watcher.closed and watcher.reason == "slow consumer"
    assert value("notify_slow_consumers_dropped_total") == dropped + 1
    hub.unsubscribe(watcher)

    reconnects = value("notify_hub_reconnects_total")
    errors = value("notify_redis_errors_total", {"where": "hub"})
    hub.connected.clear()
    hub.force_reconnect()
    deadline = time.monotonic() + 10
    while value("notify_hub_reconnects_total") == reconnects and time.monotonic() < deadline:
        hub.connected.wait(0.1)
    assert value("notify_hub_reconnects_total") == reconnects + 1
    assert value("notify_redis_errors_total", {"where": "hub"}) == errors + 1


def test_relayed_counted(app: Any) -> None:
    from datetime import datetime, timedelta, timezone

    from app.store.serialization import new_document

    from .support import store_unpublished

    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    before = REGISTRY.get_sample_value("notify_notifications_relayed_total") or 0.0
    with app.app_context():
        store_unpublished([new_document("late", "never published", "", "", {}, past)], lease_seconds=-60)
        assert app.extensions["notifications"].publisher.outbox.relay_once() == 1
    assert REGISTRY.get_sample_value("notify_notifications_relayed_total") == before + 1
