"""Which of the hub's subscriber connections a channel is on, and moving it when its slot
moves (part of ``Hub``, app/delivery/hub.py).

Outside a cluster there is one link and every channel is on it. On a Redis Cluster a
channel is on the link to the master serving its slot, as the command client's slot map
says. A channel leaves its link when that link's node does not serve its slot any more:
the node answered its SSUBSCRIBE with ``MOVED``, ended the subscription itself (the slot
was migrated), or the node serves no slot at all (a master replaced by its replica; found
before each reconnect, with the slot map refreshed). Then the slot map is refreshed, the
channel subscribed on the right link (one is opened to a master that has none yet), and
once Redis confirmed it there, its user's gap replayed; the user's live events are held
until then, so each client sees one ordered stream with nothing lost and nothing twice.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
import redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from app.delivery.links import Link

if TYPE_CHECKING:
    from app.delivery.hub import Subscription

log = logging.getLogger(__name__)

CATCH_UP_SECONDS = 30.0  # how long a moved channel's user waits for its new subscription


class Routing:
    """The hub's channels-to-links bookkeeping (``Hub`` provides the rest)."""

    service: Any
    cluster: bool
    hub_id: str
    stopping: bool
    links: dict[str, Link]
    _where: dict[str, Link]
    users: dict[str, set[Subscription]]
    stats: dict[str, int]

    def needed(self, user_id: str | None) -> bool:
        raise NotImplementedError

    def confirmed(self, user_id: str, timeout: float) -> bool:
        raise NotImplementedError

    def hold(self, users: set[str]) -> None:
        raise NotImplementedError

    def release(self, users: set[str], deliver: bool) -> None:
        raise NotImplementedError

    def resync(self, users: set[str], caught_up_us: int) -> None:
        raise NotImplementedError

    def _wait_confirmed(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:  # the channel may move to another link meanwhile
            link = self._where.get(name)
            left = deadline - time.monotonic()
            if link is not None and link.channels.wait_confirmed(name, max(min(left, 0.5), 0)):
                return True
            if deadline - time.monotonic() <= 0:
                return False
            gevent.sleep(0.02)

    def _want(self, name: str, owner: str | None) -> None:
        """Subscribe ``name`` on the link of its slot's master; while no master serves the
        slot (a failover under way), keep trying in the background."""
        try:
            self._want_now(name, owner)
        except (redis.RedisError, RedisClusterException) as exc:
            log.warning("hub %s: channel not placed yet: %s", self.hub_id, exc)
            gevent.spawn(self._rehome, {name: (owner, False)}, set(), 0)

    def _want_now(self, name: str, owner: str | None) -> None:
        link = self._where.get(name)
        if link is None or link.retired:
            link = self._route(name)
        self._where[name] = link
        link.channels.want(name, owner)

    def _release(self, name: str) -> None:
        link = self._where.pop(name, None)
        if link is not None:
            link.channels.release(name)

    def _route(self, name: str) -> Link:
        """The link to the node serving ``name``'s slot (raises if no master serves it)."""
        if not self.cluster:
            return self._link(None)
        node = self.service.redis.nodes_manager.get_node_from_slot(key_slot(name.encode()))
        return self._link((node.host, node.port))

    def _link(self, node: tuple[str, int] | None) -> Link:
        name = f"{node[0]}:{node[1]}" if node else "redis"
        link = self.links.get(name)
        if link is None or link.retired:
            link = self.links[name] = Link(self, node)
            if not self.stopping:
                link.start()
        return link

    def _refresh(self) -> None:
        """Ask the cluster for its slot map again (the command client's, which follows it too)."""
        self.service.redis.nodes_manager.initialize()

    def _link_every_master(self) -> None:
        """One link per master serving slots, as the slot map says now (a promoted replica
        gets one even when no channel of this worker is in its slots yet)."""
        nodes = self.service.redis.nodes_manager.nodes_cache
        for name in self._serving():
            node = nodes.get(name)
            if node is not None:
                self._link((node.host, node.port))

    def _serving(self) -> set[str]:
        """The names of the masters serving at least one slot, as the slot map says."""
        slots = self.service.redis.nodes_manager.slots_cache
        return {nodes[0].name for nodes in slots.values() if nodes}

    def probe_channel_for(self, link: Link) -> str:
        """The loop-back probe channel of ``link``: on a cluster, in a slot its master serves."""
        if not self.cluster:
            return self.service.probe_channel(self.hub_id)
        manager = self.service.redis.nodes_manager
        for n in range(10_000):
            name = self.service.probe_channel(f"{{{self.hub_id}.{n}}}")
            if manager.get_node_from_slot(key_slot(name.encode())).name == link.name:
                return name
        raise redis.ConnectionError(f"{link.name} serves no slot")

    def still_serving(self, link: Link) -> bool:
        """Before a link reconnects (cluster): the slot map refreshed; a link whose node
        serves no slot is retired and its channels moved; channels whose slot another
        master serves now move there. False: the link is retired."""
        if not self.cluster:
            return True
        try:
            self._refresh()
        except (redis.RedisError, RedisClusterException) as exc:
            log.warning("hub %s: cluster slot map not refreshed: %s", self.hub_id, exc)
            return True
        self._link_every_master()
        if link.name not in self._serving():
            link.retired = True
            if self.links.get(link.name) is link:
                del self.links[link.name]
            self.move(link, link.channels.names())
            return False
        elsewhere = []
        for name in link.channels.names():
            try:
                if self._route(name) is not link:
                    elsewhere.append(name)
            except RedisClusterException:  # a slot no master serves yet: stays, retried
                continue
        if elsewhere:
            self.move(link, elsewhere)
        return True

    def move(self, old: Link, names: list[str]) -> None:
        """Channels whose slot ``old``'s node does not serve: subscribed where it is served
        now, then their users' gap replayed (their live events held until then)."""
        moved: dict[str, tuple[str | None, bool]] = {}
        for name in names:
            got = old.channels.forget(name)
            if got is not None:
                moved[name] = got
        users = {owner for owner, _ in moved.values() if owner is not None and owner in self.users}
        if not moved:
            return
        self.stats["moved"] += len(moved)
        log.info("hub %s: %d channels moved from %s", self.hub_id, len(moved), old.name)
        self.hold(users)
        gevent.spawn(self._rehome, moved, users, old.caught_up_us)

    def _rehome(self, moved: dict[str, tuple[str | None, bool]], users: set[str], caught_up_us: int) -> None:
        delivered = False
        try:
            backoff, todo = 0.05, dict(moved)
            while todo and not self.stopping:
                try:
                    self._refresh()
                    self._link_every_master()
                    for name, (owner, lingering) in list(todo.items()):
                        if self.needed(owner):
                            self._where.pop(name, None)  # routed afresh, not to the old link
                            self._want_now(name, owner)
                        elif lingering:  # a reconnecting client may still find it subscribed
                            link = self._route(name)
                            link.channels.want(name, owner)
                            link.channels.release(name)
                        del todo[name]
                except (redis.RedisError, RedisClusterException) as exc:
                    log.warning("hub %s: channels not moved yet: %s", self.hub_id, exc)
                    gevent.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
            deadline = time.monotonic() + CATCH_UP_SECONDS
            for user in users:
                self.confirmed(user, max(deadline - time.monotonic(), 0))
            self.resync(users, caught_up_us)
            delivered = True
        finally:
            self.release(users, deliver=delivered)
