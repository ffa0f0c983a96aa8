"""Across hosts: two instances and Redis in network namespaces of their own
(tools/netns.py), and the link between one instance and Redis cut for a few seconds.

The streams open on the cut instance stay open; what was published meanwhile through
the other instance reaches them once the link is back, exactly once and in order, after
their worker's subscriber noticed the silence and reconnected.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import gevent
import pytest
import requests

from tests.support import SSEClient, WSClient, require_tool, wait_until
from tests.test_metrics import sample
from tools.devservers import ManagedServer, mongo_server, redis_server
from tools.netns import Host, Link, Network, unavailable

pytestmark = pytest.mark.slow

CUT_SECONDS = 4.0  # several probe intervals (0.5 s) and more than REDIS_SOCKET_TIMEOUT (2 s)


@dataclass
class Hosts:
    """Redis and two instance hosts, each instance with a link of its own to Redis."""

    redis: ManagedServer
    mongo: ManagedServer
    a: Host
    b: Host
    link_a: Link
    link_b: Link

    def redis_url(self, link: Link) -> str:
        """Redis as reached over ``link``."""
        return f"redis://{link.far_address}:{self.redis.port}/0"


@pytest.fixture
def network() -> Iterator[Network]:
    missing = unavailable()
    require_tool(missing is None, missing or "")
    with Network() as net:
        yield net


@pytest.fixture
def hosts(network: Network) -> Iterator[Hosts]:
    redis_host, a, b = network.host("redis"), network.host("a"), network.host("b")
    link_a, link_b = network.link(a, redis_host), network.link(b, redis_host)
    bind = (redis_host.address, link_a.far_address, link_b.far_address)
    redis = redis_server(bind=bind, prefix=tuple(redis_host.command([])))
    mongo = mongo_server(host=network.gateway)  # in the root namespace, on the bridge
    try:
        redis.start()
        mongo.start()
        yield Hosts(redis, mongo, a, b, link_a, link_b)
    finally:
        redis.kill()
        mongo.kill()


def metric(server, name: str) -> float:
    return sample(requests.get(server.url + "/metrics", timeout=5).text, name)


def redis_check(server) -> tuple[int, str]:
    resp = requests.get(server.url + "/readyz", timeout=10)
    return resp.status_code, resp.json()["checks"]["redis"]


def test_streams_on_an_instance_cut_from_redis_resume_with_nothing_lost(hosts, stack_on, live):
    def instance(host: Host, link: Link):
        return live(
            on=stack_on(redis_url=hosts.redis_url(link), mongo_url=hosts.mongo.url),
            host=host.address,
            prefix=tuple(host.command([])),
            PROBE_INTERVAL_SECONDS="0.5",
        )

    a, b = instance(hosts.a, hosts.link_a), instance(hosts.b, hosts.link_b)
    token = b.token("cut")
    clients = [SSEClient(a.url, token), WSClient(a.url, token), SSEClient(b.url, token)]
    try:
        expected = [b.notify("cut", "before")["message"]]
        for client in clients:
            client.wait_count(1)
        reconnects = metric(a, "notify_hub_reconnects_total")

        hosts.link_a.cut()
        try:
            assert redis_check(a) == (503, "down")  # a no longer reaches Redis ...
            assert redis_check(b) == (200, "ok")  # ... b does
            started, i = time.monotonic(), 0
            while time.monotonic() - started < CUT_SECONDS:
                expected.append(b.notify("cut", f"during{i}")["message"])
                i += 1
                gevent.sleep(0.1)
            clients[2].wait_for(lambda: clients[2].messages() == expected)  # live on b
            assert clients[0].messages() == clients[1].messages() == ["before"]  # nothing on a yet
            assert not any(c.closed.is_set() for c in clients)
        finally:
            hosts.link_a.heal()

        expected += [b.notify("cut", f"after{i}")["message"] for i in range(3)]
        for client in clients:
            client.wait_for(lambda c=client: len(c.messages()) >= len(expected), timeout=30)
            assert client.messages() == expected  # every 201, once, in the order answered
            seqs = [int(e["id"]) for e in client.notifications()]
            assert seqs == sorted(set(seqs))
        wait_until(lambda: redis_check(a) == (200, "ok"), timeout=10)
        assert metric(a, "notify_hub_reconnects_total") > reconnects
    finally:
        for client in clients:
            client.close()
