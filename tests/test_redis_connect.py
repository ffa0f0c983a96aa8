"""REDIS_MODE=sentinel against real processes: a primary, a replica and three Sentinels.

A failover (``SENTINEL FAILOVER``, or the primary killed) during POSTs and open SSE and
WebSocket streams: every notification answered 201 reaches every client exactly once, in
cursor order; commands and the hub's subscriber follow the new primary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.config import Config
from app.store.redis_connect import RedisConnector
from tests.failover import failover_under_load
from tools.sentinel_group import SentinelGroup

pytestmark = pytest.mark.slow


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup() as started:
        yield started


def sentinel_env(group: SentinelGroup) -> dict[str, str]:
    return {
        "REDIS_MODE": "sentinel",
        "REDIS_SENTINELS": group.addresses,
        "REDIS_SENTINEL_MASTER": group.name,
        "PROBE_INTERVAL_SECONDS": "1",
        "PUBLISH_LEASE_SECONDS": "3",
        "RELAY_INTERVAL_SECONDS": "0.3",
    }


def test_command_client_follows_a_failover_and_a_readonly_primary(group: SentinelGroup) -> None:
    """A pooled connection still open to the demoted primary gets READONLY on a write:
    the connection is replaced and the write lands on the new primary."""
    sentinels = tuple(group.addresses.split(","))
    connector = RedisConnector(
        Config(REDIS_MODE="sentinel", REDIS_SENTINELS=sentinels, REDIS_SENTINEL_MASTER=group.name)
    )
    client = connector.command_client(max_connections=1, retry=Retry(NoBackoff(), 1))
    old = group.primary_port()
    client.set("k", "before")
    assert connector.describe(client) == {"redis_mode": "sentinel", "redis_primary": f"127.0.0.1:{old}"}
    new = group.failover()
    group.wait(lambda: group.role(old) == "slave", 30, "the old primary demoted")
    # The demotion killed the pool's one connection; open it to the old primary again,
    # as a connection that survived the demotion would be.
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.disconnect()
        conn.host, conn.port = "127.0.0.1", old
        conn.connect_check_health(check_health=False, retry_socket_connect=False)
        pool.proxy.master_address = ("127.0.0.1", old)
    finally:
        pool.release(conn)
    client.set("k", "after")  # READONLY on the old primary, retried on the new one
    assert connector.describe(client)["redis_primary"] == f"127.0.0.1:{new}"
    assert redis.Redis(port=new).get("k") == b"after"
    assert "errorstat_READONLY" in redis.Redis(port=old).info("errorstats")  # it was asked first
    client.close()


def test_an_old_primary_fenced_by_min_replicas_is_left_for_the_new_one(group: SentinelGroup) -> None:
    """With ``min-replicas-to-write 1`` the old primary refuses writes (NOREPLICAS) as soon
    as its replica is promoted, before the Sentinels demote it: the write is retried on the
    new primary, not lost there nor failed."""
    sentinels = tuple(group.addresses.split(","))
    connector = RedisConnector(
        Config(REDIS_MODE="sentinel", REDIS_SENTINELS=sentinels, REDIS_SENTINEL_MASTER=group.name)
    )
    client = connector.command_client(max_connections=1, retry=Retry(NoBackoff(), 1))
    old = group.primary_port()
    redis.Redis(port=old).config_set("min-replicas-to-write", 1)
    client.set("k", "before")  # the pool's one connection, to the old primary
    new = group.failover()
    assert group.role(old) == "master"  # not demoted yet: it would still take writes
    client.set("k", "after")
    assert connector.describe(client)["redis_primary"] == f"127.0.0.1:{new}"
    assert redis.Redis(port=new).get("k") == b"after"
    assert "errorstat_NOREPLICAS" in redis.Redis(port=old).info("errorstats")
    client.close()


def _failover_under_load(live: Any, group: SentinelGroup, fault: Callable[[], int]) -> None:
    def check(ready: dict[str, Any], moved: int) -> None:
        assert ready["redis_mode"] == "sentinel" and ready["redis_primary"] == f"127.0.0.1:{moved}"

    failover_under_load(live(workers=2, **sentinel_env(group)), "so", fault, check)


def test_sentinel_failover_during_posts_and_streams(live: Any, group: SentinelGroup) -> None:
    def failover() -> int:
        old = group.primary_port()
        # The fence deploy/README.md asks for: until Sentinel demotes it (about 10 s), the
        # old primary would take a worker's writes that the other workers, already on the
        # new one, never hear of. Fenced, it refuses them and the outbox publishes later.
        for port in group.nodes:
            node = redis.Redis(port=port)
            node.config_set("min-replicas-max-lag", 1)
            node.config_set("min-replicas-to-write", 1)
        new = group.failover()
        group.wait(lambda: group.role(old) == "slave", 30, "the old primary demoted")
        return new

    _failover_under_load(live, group, failover)


def test_primary_killed_during_posts_and_streams(live: Any, group: SentinelGroup) -> None:
    def kill() -> int:
        old = group.primary_port()
        group.nodes[old].kill()
        return group.wait_new_primary(old, timeout=30)

    _failover_under_load(live, group, kill)
