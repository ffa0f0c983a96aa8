"""The subscriber connections' channels (app/delivery/channels.py), on a real Redis and a
real Redis Cluster: many per (S)SUBSCRIBE (one slot per SSUBSCRIBE), confirmed, given up
when no stream needs them, written again on reconnect."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from app.delivery.events import NOTIFICATION, Event
from tests.support import wait_until


@pytest.fixture(params=["standalone", "cluster"])
def on_redis(request: pytest.FixtureRequest, make_app: Any, stack: Any) -> tuple[Callable[..., Any], Any]:
    """(make an app on this Redis mode, count a channel's subscribers, publish on a channel)"""
    if request.param == "standalone":
        r = redis.Redis.from_url(stack.redis_url)

        def count(channel: str) -> int:
            return dict(r.pubsub_numsub(channel)).get(channel.encode(), 0)

        return make_app, (count, r.publish)
    cluster = request.getfixturevalue("redis_cluster")

    def count_sharded(channel: str) -> int:
        return cluster.shard_subscribers(cluster.master_of(channel), channel)

    def spublish(channel: str, message: bytes) -> None:
        redis.Redis(port=cluster.master_of(channel)).execute_command("SPUBLISH", channel, message)

    def cluster_app(**overrides: Any) -> Any:
        return make_app(REDIS_MODE="cluster", REDIS_URL=cluster.url, **overrides)

    return cluster_app, (count_sharded, spublish)


def test_the_feed_is_subscribed_only_while_staff_watch(on_redis: Any, stack: Any) -> None:
    make, (numsub, publish) = on_redis
    hub = make(UNSUBSCRIBE_LINGER_SECONDS=0).extensions["hub"]
    feed = f"{stack.prefix}{{all}}:events"
    first, second = hub.watch(), hub.watch()
    assert numsub(feed) == 1
    hub.unsubscribe(first)
    publish(feed, Event(NOTIFICATION, "anyone", 7, b"{}").to_wire())
    event = second.get(5)
    assert event is not None and event.seq == 7
    hub.unsubscribe(second)
    wait_until(lambda: numsub(feed) == 0)


def test_channels_are_confirmed_in_batches_and_written_again_after_a_reconnect(
    on_redis: Any, stack: Any
) -> None:
    make, (numsub, publish) = on_redis
    hub = make().extensions["hub"]
    users = [f"c{i}" for i in range(700)]  # more than one SUBSCRIBE names
    subs = [hub.subscribe(u) for u in users]
    assert all(hub.confirmed(u, 5) for u in users)
    assert hub.subscribed() == 700 and numsub(f"{stack.prefix}u:{{c699}}") == 1
    reconnects = hub.stats["reconnects"]
    links = len(hub.links)
    hub.force_reconnect()
    wait_until(lambda: hub.stats["reconnects"] == reconnects + links)
    assert all(hub.confirmed(u, 5) for u in users)
    publish(f"{stack.prefix}u:{{c5}}", Event(NOTIFICATION, "c5", 9, b"{}").to_wire())
    event = subs[5].get(30)  # after the resync: one replay read per user
    assert event is not None and event.seq == 9 and not subs[4].queue
    for sub in subs:
        hub.unsubscribe(sub)
    assert hub.subscribed() == 700  # the linger (5 s by default) keeps them
