"""Issue 25's reproduction, shortened: a burst of single POSTs from 32 keep-alive clients,
then bulk POSTs of 1,000 users 4 at a time, twice, on a real SecantusDB. It used to end
with every POST answering 503 after 20 s; now each answers 201 (99% within 2 s) or a
clear 503, none later than MONGO_OP_TIMEOUT_MS, and everything accepted is stored and
published. At this size (about 3,000 POSTs in 25 s) the unbounded id lists did not yet
stall (it passed with them); tests/test_id_lists.py and tests/test_db_stall.py hold the
two causes, this guards the whole path."""

from __future__ import annotations

import time
from typing import Any

import gevent
import orjson
import pytest
import requests
from gevent.pool import Pool
from pymongo import MongoClient

from app.store.models import MARKERS
from tests.support import REAL_USERS, wait_until

pytestmark = pytest.mark.solo

BOUND_MS = 3000  # MONGO_OP_TIMEOUT_MS, the default
CLIENTS = 32
BURST_SECONDS = 4.0
BULKS = 8  # per round, 4 at a time
ROUNDS = 2


def post(session: requests.Session, server: Any, body: dict[str, Any]) -> tuple[int, float, dict[str, Any]]:
    started = time.monotonic()
    resp = session.post(
        server.url + "/api/notifications",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {server.stack.api_key}", "Content-Type": "application/json"},
        timeout=30,
    )
    return resp.status_code, time.monotonic() - started, resp.json()


def burst(server: Any, results: list[tuple[int, float, dict[str, Any]]], tag: str) -> None:
    deadline = time.monotonic() + BURST_SECONDS

    def client(n: int) -> None:
        with requests.Session() as session:
            i = 0
            while time.monotonic() < deadline:
                results.append(post(session, server, {"user_id": f"b{n}", "message": f"{tag}-{n}-{i}"}))
                i += 1

    gevent.joinall([gevent.spawn(client, n) for n in range(CLIENTS)], raise_error=True)


def bulks(server: Any, results: list[tuple[int, float, dict[str, Any]]], tag: str) -> None:
    users = [f"bulk-{i}" for i in range(1000)]

    def one(n: int) -> None:
        with requests.Session() as session:
            results.append(post(session, server, {"user_ids": users, "message": f"{tag}-bulk-{n}"}))

    Pool(4).map(one, range(BULKS))


def test_burst_then_bulks_answer_in_time_and_lose_nothing(live: Any, own_mongo: Any, stack_on: Any) -> None:
    stack = stack_on(mongo_url=own_mongo.url)
    server = live(
        workers=2,
        on=stack,
        RATE_LIMIT_POSTS_PER_MINUTE=0,
        RETENTION_DAYS=0,
        MAX_STREAMS_PER_USER=0,
        LOG_LEVEL="warning",
    )
    wait_until(lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 200, timeout=15)
    results: list[tuple[int, float, dict[str, Any]]] = []
    for r in range(ROUNDS):
        burst(server, results, f"r{r}")
        bulks(server, results, f"r{r}")
    for status, took, body in results:  # nothing waits past the bound, whatever the answer
        assert status in (201, 503), (status, body)
        assert status == 201 or body["error"]["code"] == "unavailable", body
        assert took < BOUND_MS / 1000 + 1.0, f"a POST took {took:.2f} s"
    # The 2 s target holds for 99% here; the slowest 1,000-user bulks reached 2.2 s while
    # other test suites shared the 2 cores (load average 3.5), none past 3 s.
    times = sorted(took for status, took, _b in results if status == 201)
    assert times[int(len(times) * 0.99)] < 2.0, times[-10:]
    accepted = [b for status, _took, b in results if status == 201]
    refused = len(results) - len(accepted)
    # A clear 503 is an allowed answer (issue 25); what this guards against is the wedge, where
    # every POST was refused. On a loaded machine up to 1.1% were refused, never near 5%.
    assert refused <= len(results) // 20, f"{refused} of {len(results)} POSTs answered 503"
    ids = {n["id"] for b in accepted for n in b.get("notifications", [b])}
    coll = MongoClient(stack.mongo_uri, directConnection=True).get_database().notifications
    wait_until(lambda: coll.count_documents(MARKERS) == 0, timeout=30)  # all published
    stored = {str(d["_id"]) for d in coll.find(REAL_USERS, {"_id": 1})}
    assert ids <= stored, f"{len(ids - stored)} accepted notifications are not stored"
    assert len(ids) >= ROUNDS * BULKS * 1000 * 0.99
