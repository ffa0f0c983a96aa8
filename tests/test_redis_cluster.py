"""REDIS_MODE=cluster against a real local Redis Cluster: 3 masters, 3 replicas.

One cluster per test session (``redis_cluster`` in tests/conftest.py); each test has its own key
prefix and database. Keys of one user share the user's hash tag, so every publish script
runs on one node; a bulk POST to users on every node is published with one pipeline per
node, and the global keys (recent list, stats) live in the slot of ``{all}``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask
from redis.crc import key_slot

from app.config import Config, ConfigError
from tools.cluster_group import ClusterGroup

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(redis_cluster: ClusterGroup) -> ClusterGroup:
    return redis_cluster


@pytest.fixture
def cluster_app(make_app: Callable[..., Flask], cluster: ClusterGroup) -> Flask:
    return make_app(REDIS_MODE="cluster", REDIS_URL=cluster.url)


def test_cluster_mode_needs_seed_node_urls() -> None:
    config = Config(REDIS_MODE="cluster", REDIS_URL="redis://a:7000, redis://b:7001")
    config.validate()
    assert config.cluster_seeds() == [("a", 7000), ("b", 7001)]
    with pytest.raises(ConfigError, match="REDIS_URL.*'b:7001'"):
        Config(REDIS_MODE="cluster", REDIS_URL="redis://a:7000,b:7001").validate()


def test_a_users_keys_share_one_slot_and_global_keys_another(cluster_app: Flask) -> None:
    service = cluster_app.extensions["notifications"]
    user_keys = [service.key(kind, "ada") for kind in ("seq", "replay", "ver", "cache")]
    assert {key_slot(k.encode()) for k in [*user_keys, service.user_channel("ada")]} == {key_slot(b"{ada}")}
    global_keys = [service.key("recent"), service.feed_channel, f"{service.prefix}{{all}}:stats:1"]
    assert {key_slot(k.encode()) for k in global_keys} == {key_slot(b"{all}")}


def test_bulk_post_history_cache_and_read_on_a_cluster(
    cluster_app: Flask, cluster: ClusterGroup, auth: dict[str, str]
) -> None:
    client = cluster_app.test_client()
    prefix = cluster_app.extensions["config"].KEY_PREFIX
    users = cluster.users_per_master(prefix)
    resp = client.post("/api/notifications", json={"user_ids": users, "message": "hello"}, headers=auth)
    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()["notifications"]
    assert [n["user_id"] for n in created] == users and all(isinstance(n["seq"], int) for n in created)
    for user in users:  # the cursor and the replay list on the master of the user's slot
        node = redis.Redis(port=cluster.master_of(f"{prefix}seq:{{{user}}}"))
        assert node.get(f"{prefix}seq:{{{user}}}") is not None
        assert node.llen(f"{prefix}replay:{{{user}}}") == 1
    recent = client.get("/api/recent", headers=auth).get_json()["notifications"]
    assert sorted(n["id"] for n in recent) == sorted(n["id"] for n in created)

    user = users[0]
    first = client.get(f"/api/users/{user}/notifications", headers=auth)
    assert first.status_code == 200 and first.headers.get("X-Cache") == "MISS"
    again = client.get(f"/api/users/{user}/notifications", headers=auth)
    assert again.headers.get("X-Cache") == "HIT" and again.get_json() == first.get_json()
    read = client.post(f"/api/users/{user}/read", json={"all": True}, headers=auth)
    assert read.status_code == 200, read.get_json()
    after = client.get(f"/api/users/{user}/notifications", headers=auth)
    assert after.headers.get("X-Cache") == "MISS"
    assert [n["read"] for n in after.get_json()["notifications"]] == [True]


def test_the_publish_scripts_are_loaded_again_on_nodes_that_forgot_them(
    cluster_app: Flask, cluster: ClusterGroup, auth: dict[str, str]
) -> None:
    client = cluster_app.test_client()
    users = cluster.users_per_master(cluster_app.extensions["config"].KEY_PREFIX, 1)
    assert (
        client.post("/api/notifications", json={"user_ids": users, "message": "a"}, headers=auth).status_code
        == 201
    )
    for port in cluster.master_ports():
        redis.Redis(port=port).script_flush()
    resp = client.post("/api/notifications", json={"user_ids": users, "message": "b"}, headers=auth)
    assert resp.status_code == 201 and all(
        isinstance(n["seq"], int) for n in resp.get_json()["notifications"]
    )
