"""The subscriber connection's channels (app/delivery/channels.py), on a real Redis: many
per SUBSCRIBE, confirmed, given up when no stream needs them, written again on reconnect."""

from __future__ import annotations

from typing import Any

import redis

from app.delivery.events import NOTIFICATION, Event
from tests.support import wait_until


def numsub(client: redis.Redis, channel: str) -> int:
    return dict(client.pubsub_numsub(channel)).get(channel.encode(), 0)


def test_the_feed_is_subscribed_only_while_staff_watch(make_app: Any, stack: Any) -> None:
    hub = make_app(UNSUBSCRIBE_LINGER_SECONDS=0).extensions["hub"]
    r = redis.Redis.from_url(stack.redis_url)
    feed = f"{stack.prefix}{{all}}:events"
    first, second = hub.watch(), hub.watch()
    assert numsub(r, feed) == 1
    hub.unsubscribe(first)
    r.publish(feed, Event(NOTIFICATION, "anyone", 7, b"{}").to_wire())
    event = second.get(5)
    assert event is not None and event.seq == 7
    hub.unsubscribe(second)
    wait_until(lambda: numsub(r, feed) == 0)


def test_channels_are_confirmed_in_batches_and_written_again_after_a_reconnect(
    make_app: Any, stack: Any
) -> None:
    hub = make_app().extensions["hub"]
    r = redis.Redis.from_url(stack.redis_url)
    users = [f"c{i}" for i in range(700)]  # more than one SUBSCRIBE names
    subs = [hub.subscribe(u) for u in users]
    assert all(hub.confirmed(u, 5) for u in users)
    assert hub.subscribed() == 700 and numsub(r, f"{stack.prefix}u:{{c699}}") == 1
    reconnects = hub.stats["reconnects"]
    hub.force_reconnect()
    wait_until(lambda: hub.stats["reconnects"] == reconnects + 1)
    assert all(hub.confirmed(u, 5) for u in users)
    r.publish(f"{stack.prefix}u:{{c5}}", Event(NOTIFICATION, "c5", 9, b"{}").to_wire())
    event = subs[5].get(30)  # after the resync: one replay read per user
    assert event is not None and event.seq == 9 and not subs[4].queue
    for sub in subs:
        hub.unsubscribe(sub)
    assert hub.subscribed() == 700  # the linger (5 s by default) keeps them
