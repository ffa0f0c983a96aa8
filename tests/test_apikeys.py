"""API keys in MongoDB: hashed at rest, cached for auth, last use recorded, revocable."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

import pytest

from app.access import apikeys
from app.access.apikeys import ApiKey, ApiKeyChecker, ApiKeyProblem


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _post(client: Any, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    body = {"user_id": "k", "message": "hi"}
    return client.post("/api/notifications", json=body, headers=headers).status_code


def test_key_is_hashed_at_rest_and_works(app: Any, client: Any) -> None:
    with app.app_context():
        created = apikeys.create_key("billing")
        raw = ApiKey._get_collection().find_one({"name": "billing"})
    key = created.key
    assert key.startswith("nk_") and len(key) >= 40
    assert raw["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in repr(raw) and key[3:] not in repr(raw)
    assert raw["hint"] == key[:7] and raw.get("last_used") is None and raw["revoked"] is False

    assert _post(client, key) == 201
    assert _post(client, key + "x") == 401
    assert _post(client, "nk_" + "a" * 43) == 401
    with app.app_context():
        assert ApiKey.objects.get(name="billing").last_used is not None
        with pytest.raises(ApiKeyProblem):
            apikeys.create_key("billing")
        apikeys.revoke_key("billing", app.extensions["api_key_checker"])
    assert _post(client, key) == 401  # at once in this process


def test_checker_caches_and_limits_last_used_writes(app: Any) -> None:
    clock = Clock()
    checker = ApiKeyChecker(ttl=30, clock=clock)
    with app.app_context():
        key = apikeys.create_key("svc").key
        fp = checker(key)
        assert fp == hashlib.sha256(key.encode()).hexdigest()[:16]
        assert checker.lookups == 1
        for _ in range(50):
            assert checker(key) == fp
        assert checker.lookups == 1  # no MongoDB query per request
        assert checker("not-ours") is None and checker.lookups == 1

        coll = ApiKey._get_collection()
        marker = datetime(2000, 1, 1, tzinfo=timezone.utc)
        coll.update_one({"name": "svc"}, {"$set": {"last_used": marker}})
        clock.now += 59
        checker(key)
        assert coll.find_one({"name": "svc"})["last_used"].year == 2000  # at most once a minute
        clock.now += 2
        checker(key)
        assert coll.find_one({"name": "svc"})["last_used"].year > 2000

        # Revoked elsewhere (another process): honoured once the cache entry expires.
        coll.update_one({"name": "svc"}, {"$set": {"revoked": True}})
        assert checker(key) == fp
        clock.now += 31
        assert checker(key) is None
        assert checker.lookups == 3


def test_find_by_id_and_unknown(app: Any) -> None:
    with app.app_context():
        record = apikeys.create_key("by-id").record
        assert apikeys.find_key(str(record.id)).name == "by-id"
        with pytest.raises(ApiKeyProblem):
            apikeys.find_key("nope")
        with pytest.raises(ApiKeyProblem):
            apikeys.create_key("   ")


def test_cli_key_works_on_a_live_server_and_revocation_spreads(live: Any, app: Any) -> None:
    """Created and revoked by another process (the CLI), honoured by gunicorn workers."""
    import time

    import requests

    server = live(workers=2, API_KEY_CACHE_SECONDS="0.5")
    with app.app_context():
        key = apikeys.create_key("live-svc").key

    def post() -> int:
        headers = {"Authorization": f"Bearer {key}"}
        body = {"user_id": "live-key-user", "message": "hi"}
        resp = requests.post(server.url + "/api/notifications", json=body, headers=headers, timeout=5)
        return resp.status_code

    assert [post() for _ in range(4)] == [201] * 4
    with app.app_context():
        apikeys.revoke_key("live-svc")
    deadline = time.monotonic() + 5
    statuses: list[int] = []
    while time.monotonic() < deadline and statuses[-4:] != [401] * 4:
        statuses.append(post())
    assert statuses[-4:] == [401] * 4  # every worker stopped accepting it
