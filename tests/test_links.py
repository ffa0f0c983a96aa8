"""The hub's subscriber links on a real Redis Cluster (3 masters, 3 replicas): sharded
pub/sub over one connection per master per worker, every connection dropped mid-stream,
a slot moved to another master (Redis ends the subscription; a worker with an older slot
map gets ``MOVED``), and a master killed mid-stream with its replica promoted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from tests.failover import failover_under_load
from tests.support import SSEClient, WSClient, wait_until
from tools.cluster_group import ClusterGroup

pytestmark = pytest.mark.slow


def cluster_env(cluster: ClusterGroup, **extra: str) -> dict[str, str]:
    return {"REDIS_MODE": "cluster", "REDIS_URL": cluster.url, "PROBE_INTERVAL_SECONDS": "0.5", **extra}


def links_per_master(cluster: ClusterGroup, server: Any) -> dict[int, Counter[str]]:
    """Per live node, how many subscriber connections each worker of ``server`` has there."""
    pids = {str(pid) for pid in server.worker_pids()}
    found: dict[int, Counter[str]] = {}
    for port, node in cluster.nodes.items():
        if node.alive():
            subs = cluster.subscribers(port, "notify-sub:")
            found[port] = Counter(c["name"].split(":")[1] for c in subs if c["name"].split(":")[1] in pids)
    return found


def assert_one_link_per_master(cluster: ClusterGroup, server: Any) -> None:
    masters = set(cluster.master_ports())
    one_each = Counter({str(pid): 1 for pid in server.worker_pids()})
    nodes = links_per_master(cluster, server)
    expected = {port: one_each if port in masters else Counter() for port in nodes}
    wait_until(lambda: links_per_master(cluster, server) == expected, timeout=20)


def test_one_subscriber_connection_per_master_and_sharded_delivery(
    live: Any, redis_cluster: ClusterGroup, stack: Any
) -> None:
    cluster = redis_cluster
    server = live(workers=2, **cluster_env(cluster))
    users = cluster.users_per_master(stack.prefix, 2)
    transports = [SSEClient, WSClient]
    clients = {u: transports[i % 2](server.url, server.token(u)) for i, u in enumerate(users)}
    try:
        resp = server.post("/api/notifications", {"user_ids": users, "message": "hello"})
        assert resp.status_code == 201
        for client in clients.values():
            client.wait_count(1)
            assert client.messages() == ["hello"]
        assert_one_link_per_master(cluster, server)
        for user in users:  # subscribed on the master of the user's slot only, as a shard channel
            channel = f"{stack.prefix}u:{{{user}}}"
            owner = cluster.master_of(channel)
            for port in cluster.master_ports():
                assert cluster.shard_subscribers(port, channel) == (1 if port == owner else 0)
                assert cluster.ask(port, "PUBSUB", "NUMSUB", channel)[1] == 0
    finally:
        for client in clients.values():
            client.close()


def test_a_slot_moved_to_another_master_takes_its_subscriptions_along(
    live: Any, redis_cluster: ClusterGroup, stack: Any
) -> None:
    """Redis ends the shard subscriptions of a slot that leaves its master; the worker
    subscribes them on the new master and replays. A worker whose slot map is older sends
    SSUBSCRIBE to the old master, gets ``MOVED`` and subscribes on the new one."""
    cluster = redis_cluster
    a, b = live(workers=1, **cluster_env(cluster)), live(workers=1, **cluster_env(cluster))
    user = "mover"
    channel = f"{stack.prefix}u:{{{user}}}"
    slot = key_slot(channel.encode())
    source = cluster.master_of(channel)
    target = next(port for port in cluster.master_ports() if port != source)
    first = SSEClient(a.url, a.token(user))
    try:
        expected = [a.notify(user, "before")["message"]]
        first.wait_count(1)
        assert cluster.shard_subscribers(source, channel) == 1
        cluster.move_slot(slot, target)
        wait_until(lambda: cluster.shard_subscribers(target, channel) == 1, timeout=20)
        assert cluster.shard_subscribers(source, channel) == 0
        expected.append(a.notify(user, "after the move")["message"])
        second = WSClient(b.url, b.token(user))  # b's slot map still names the old master
        try:
            expected.append(a.notify(user, "both")["message"])
            second.wait_for(lambda: second.messages() == expected, timeout=20)
            first.wait_for(lambda: first.messages() == expected, timeout=20)
            assert cluster.shard_subscribers(target, channel) == 2
            assert cluster.shard_subscribers(source, channel) == 0
        finally:
            second.close()
    finally:
        first.close()


def test_every_subscriber_connection_dropped_mid_stream(live: Any, redis_cluster: ClusterGroup) -> None:
    """Every master drops the worker's subscriber connections during POSTs: each link
    subscribes its channels again and replays its users' gap."""
    cluster = redis_cluster
    server = live(workers=2, **cluster_env(cluster, PUBLISH_LEASE_SECONDS="3"))
    pids = {str(pid) for pid in server.worker_pids()}

    def drop() -> int:
        dropped = 0
        for port in cluster.master_ports():
            node = redis.Redis(port=port)
            for client in cluster.subscribers(port, "notify-sub:"):
                if client["name"].split(":")[1] in pids:
                    node.client_kill(client["addr"])
                    dropped += 1
        return dropped

    def check(ready: dict[str, Any], dropped: int) -> None:
        assert dropped == 2 * len(cluster.master_ports())
        assert_one_link_per_master(cluster, server)

    failover_under_load(server, "so", drop, check)


@pytest.fixture
def own_cluster() -> Iterator[ClusterGroup]:
    """A cluster of this test's own: it kills one of its masters."""
    with ClusterGroup() as started:
        yield started


def test_a_master_killed_mid_stream(live: Any, own_cluster: ClusterGroup) -> None:
    """SIGKILL the master of the user's slot during POSTs: its replica is promoted, every
    worker's link to it moves there; every 201 reaches every client once, in order."""
    cluster = own_cluster
    server = live(workers=2, **cluster_env(cluster, PUBLISH_LEASE_SECONDS="3", RELAY_INTERVAL_SECONDS="0.3"))
    channel = f"{server.stack.prefix}u:{{so}}"
    assert_one_link_per_master(cluster, server)

    def kill() -> int:
        return cluster.kill_master(cluster.master_of(channel))

    def check(ready: dict[str, Any], promoted: int) -> None:
        assert ready["redis_mode"] == "cluster" and f"127.0.0.1:{promoted}" in ready["redis_masters"]
        assert cluster.master_of(channel) == promoted
        assert cluster.shard_subscribers(promoted, channel) >= 1
        assert_one_link_per_master(cluster, server)

    failover_under_load(server, "so", kill, check)
