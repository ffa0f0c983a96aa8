"""A Redis failover while POSTs keep coming and streams stay open, for every mode that
has one (Sentinel, Cluster): every notification answered 201 reaches every client exactly
once, in cursor order."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import pymongo
import requests

from tests.support import SSEClient, WSClient


def post_during(server: Any, user: str, fault: Callable[[], None], posters: int = 2) -> list[dict[str, Any]]:
    """POST to ``user`` from ``posters`` loops while ``fault`` runs, and one second after;
    the notifications answered 201."""
    accepted: list[dict[str, Any]] = []
    stop = gevent.event.Event()

    def loop(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                resp = server.post("/api/notifications", {"user_id": user, "message": f"p{n}-{i:04d}"})
            except requests.RequestException:
                resp = None
            if resp is not None and resp.status_code == 201:
                accepted.append(resp.json())
            i += 1
            gevent.sleep(0.01)

    loops = [gevent.spawn(loop, n) for n in range(posters)]
    try:
        gevent.sleep(0.5)
        fault()
        gevent.sleep(1.0)
    finally:
        stop.set()
        gevent.joinall(loops, timeout=30, raise_error=True)
    return accepted


def check_exactly_once_in_order(clients: list[Any], expected: list[str], mongo_uri: str, user: str) -> None:
    for client in clients:
        try:
            client.wait_for(lambda c=client: set(expected) <= set(c.messages()), timeout=30)
        except AssertionError:  # say what is missing, with the cursors it was stored with
            stored = pymongo.MongoClient(mongo_uri).get_default_database().notifications
            seqs = {d["message"]: d.get("seq") for d in stored.find({"user_id": user})}
            missing = [(m, seqs.get(m)) for m in sorted(set(expected) - set(client.messages()))]
            received = [(e["notification"]["message"], e["id"]) for e in client.notifications()]
            raise AssertionError(f"{type(client).__name__} misses {missing}; received {received}") from None
    time.sleep(0.5)  # a duplicate would arrive right behind
    for client in clients:
        assert sorted(client.messages()) == sorted(expected), "a duplicate or an extra"
        cursors = [int(e["id"]) for e in client.notifications()]
        assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors), "not in cursor order"


def failover_under_load(
    server: Any, user: str, fault: Callable[[], Any], check: Callable[[dict[str, Any], Any], None]
) -> None:
    """Two SSE and two WebSocket clients of ``user`` on ``server`` while ``fault`` runs
    during POSTs; ``check(readyz, what fault returned)`` afterwards."""
    token = server.token(user)
    clients = [transport(server.url, token) for transport in (SSEClient, WSClient, SSEClient, WSClient)]
    try:
        expected = [server.notify(user, "before")["message"]]
        for client in clients:
            client.wait_count(1)
        outcome: list[Any] = []
        accepted = post_during(server, user, lambda: outcome.append(fault()))
        assert len(accepted) > 20, "too few POSTs answered 201"
        expected += [n["message"] for n in accepted]
        expected.append(server.notify(user, "after")["message"])
        check_exactly_once_in_order(clients, expected, server.stack.mongo_uri, user)
        ready = requests.get(server.url + "/readyz", timeout=10).json()
        assert ready.get("checks", {}).get("redis") == "ok", ready
        check(ready, outcome[0])
    finally:
        for client in clients:
            client.close()
