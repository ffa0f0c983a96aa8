"""A MongoDB that stops answering (SIGSTOP): quick 503s, /readyz and a metric say so, and
the service comes back by itself once it answers again, with nothing accepted lost."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import gevent
import requests
from pymongo import MongoClient

from tests.support import SSEClient, wait_until
from tests.test_metrics import sample

BOUND_MS = 1500  # MONGO_OP_TIMEOUT_MS for this test


def timed_post(server: Any, user: str, message: str) -> tuple[int, float, dict[str, Any]]:
    started = time.monotonic()
    resp = server.post("/api/notifications", {"user_id": user, "message": message})
    return resp.status_code, time.monotonic() - started, resp.json()


def readyz(server: Any) -> dict[str, Any]:
    resp = requests.get(server.url + "/readyz", timeout=5)
    return {**resp.json(), "http": resp.status_code}


def mongo_errors(server: Any) -> float:
    return sample(requests.get(server.url + "/metrics", timeout=5).text, "notify_mongodb_errors_total")


def test_stalled_mongodb_answers_503_quickly_and_recovers(live: Any, own_mongo: Any, stack_on: Any) -> None:
    stack = stack_on(mongo_url=own_mongo.url)
    server = live(workers=2, on=stack, MONGO_OP_TIMEOUT_MS=BOUND_MS)
    wait_until(lambda: readyz(server)["http"] == 200, timeout=15)
    client = SSEClient(server.url, server.token("stall"))
    accepted = [server.notify("stall", "before")["message"]]
    errors_before = mongo_errors(server)
    os.kill(own_mongo.process.pid, signal.SIGSTOP)
    try:
        posts = [gevent.spawn(timed_post, server, "stall", f"during{i}") for i in range(8)]
        gevent.joinall(posts, raise_error=True)
        for status, took, body in (p.value for p in posts):
            assert status == 503 and body["error"]["code"] == "unavailable", body
            assert took < BOUND_MS / 1000 + 1.0, took

        # A call waiting on its connection shows as "stalled". Once a new connection's
        # handshake timed out, pymongo takes the server for unknown and calls wait in server
        # selection, before any connection: then the ping fails and it shows as "down".
        def unready() -> bool:
            gevent.spawn(timed_post, server, "stall", "probe")  # keeps a call in flight
            ready = readyz(server)
            return ready["http"] == 503 and ready["checks"]["mongodb"] in ("stalled", "down")

        wait_until(unready, timeout=10)
        assert readyz(server)["http"] == 503

        def metric_says_so() -> bool:  # a call waiting, or failed commands and heartbeats
            gevent.spawn(timed_post, server, "stall", "probe")
            text = requests.get(server.url + "/metrics", timeout=5).text
            oldest = sample(text, "notify_mongodb_oldest_call_seconds")
            return oldest > 0 or sample(text, "notify_mongodb_errors_total") > errors_before

        wait_until(metric_says_so, timeout=10)
    finally:
        os.kill(own_mongo.process.pid, signal.SIGCONT)

    resumed = time.monotonic()

    def accepts() -> bool:
        status, _took, body = timed_post(server, "stall", f"after{len(accepted)}")
        if status == 201:
            accepted.append(body["message"])
        return status == 201

    wait_until(accepts, timeout=15)
    assert time.monotonic() - resumed < 10
    for i in range(5):
        status, took, body = timed_post(server, "stall", f"later{i}")
        assert status == 201 and took < 2.0, (status, took)
        accepted.append(body["message"])
    wait_until(lambda: readyz(server)["http"] == 200, timeout=10)
    try:
        client.wait_for(lambda: set(accepted) <= set(client.messages()), timeout=30)
    finally:
        client.close()
    coll = MongoClient(stack.mongo_uri, directConnection=True).get_database().notifications
    stored = {d["message"] for d in coll.find({"user_id": "stall"}, {"message": 1})}
    assert set(accepted) <= stored
