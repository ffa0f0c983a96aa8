"""Who is connected, across every instance and worker, kept in Redis.

Each worker runs one greenlet that every ``PRESENCE_INTERVAL_SECONDS`` writes its own
snapshot: ``presence:w:<worker>`` (hash user -> open connections) and
``presence:m:<worker>`` (this worker's totals), both expiring after three intervals, and
its id into the ``presence:workers`` index. A worker that dies simply stops refreshing its
keys, so its connections drop out of every total within three intervals; readers treat a
worker whose keys are gone as gone, and prune it from the index.

Dashboard staff watching a user's live feed also hold a hub subscription for that user;
they are tracked here and left out, so staff never count as the user being online.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import gevent
import orjson
import redis

from app.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Summary:
    workers: int
    connections: int
    online_users: int


class Presence:
    def __init__(self, config: Config, redis_client: redis.Redis, hub: Any) -> None:
        self.redis = redis_client
        self.hub = hub
        self.prefix = config.KEY_PREFIX + "{all}:presence:"  # one slot on a cluster: one MULTI
        self.interval = max(float(config.PRESENCE_INTERVAL_SECONDS), 0.05)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{hub.hub_id}"
        self.staff: dict[str, set[Any]] = {}  # user id -> staff subscriptions
        self._greenlet: gevent.Greenlet | None = None
        self._last: dict[str, int] | None = None

    # -- staff subscriptions are not the user ----------------------------------------
    def add_staff(self, sub: Any) -> None:
        self.staff.setdefault(sub.user_id, set()).add(sub)

    def remove_staff(self, sub: Any) -> None:
        subs = self.staff.get(sub.user_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.staff[sub.user_id]

    def local_users(self) -> dict[str, int]:
        """This worker's users and their open connections, staff viewers excluded."""
        counts: dict[str, int] = {}
        for user_id, subs in list(self.hub.users.items()):
            n = len(subs) - len(self.staff.get(user_id, ()))
            if n > 0:
                counts[user_id] = n
        return counts

    # -- writer ----------------------------------------------------------------------
    def _key(self, kind: str, worker: str) -> str:
        return f"{self.prefix}{kind}:{worker}"

    def publish_once(self) -> None:
        """Write this worker's snapshot; rewrites the user hash only when it changed."""
        users = self.local_users()
        ttl_ms = int(self.interval * 3000)
        wkey, mkey = self._key("w", self.worker_id), self._key("m", self.worker_id)
        meta = {"pid": os.getpid(), "connections": sum(users.values()), "users": len(users)}
        pipe = self.redis.pipeline(transaction=True)
        if users != self._last:
            pipe.delete(wkey)
            if users:
                pipe.hset(wkey, mapping=users)
        if users:
            pipe.pexpire(wkey, ttl_ms)
        pipe.set(mkey, orjson.dumps(meta), px=ttl_ms)
        pipe.zadd(self.prefix + "workers", {self.worker_id: time.time()})
        pipe.expire(self.prefix + "workers", 86400)
        pipe.execute()
        self._last = users

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop refreshing and remove this worker's snapshot (a clean exit)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
            try:
                self.redis.delete(self._key("w", self.worker_id), self._key("m", self.worker_id))
                self.redis.zrem(self.prefix + "workers", self.worker_id)
            except redis.RedisError:
                pass

    def _run(self) -> None:
        while True:
            try:
                self.publish_once()
            except redis.RedisError as exc:
                self._last = None  # rewrite everything once Redis is back
                log.warning("presence update failed: %s", exc)
            gevent.sleep(self.interval)

    # -- readers ---------------------------------------------------------------------
    def live_workers(self) -> list[str]:
        """Workers whose snapshot has not expired; prunes long-gone ones from the index."""
        index = self.prefix + "workers"
        workers = [w.decode() for w in self.redis.zrange(index, 0, -1)]
        if not workers:
            return []
        metas = self.redis.mget([self._key("m", w) for w in workers])
        live = [w for w, m in zip(workers, metas, strict=True) if m is not None]
        self.redis.zremrangebyscore(index, "-inf", time.time() - max(60.0, self.interval * 10))
        return live

    def summary(self) -> Summary:
        workers = self.live_workers()
        if not workers:
            return Summary(0, 0, 0)
        pipe = self.redis.pipeline(transaction=False)
        for w in workers:
            pipe.hgetall(self._key("w", w))
        users: set[bytes] = set()
        connections = 0
        for snapshot in pipe.execute():
            users.update(snapshot)
            connections += sum(int(n) for n in snapshot.values())
        return Summary(len(workers), connections, len(users))

    def user_connections(self, user_id: str) -> int:
        """Open connections of one user across every live worker."""
        workers = self.live_workers()
        if not workers:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for w in workers:
            pipe.hget(self._key("w", w), user_id)
        return sum(int(n) for n in pipe.execute() if n is not None)
