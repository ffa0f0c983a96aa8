"""Who is connected, across every instance and worker, kept in Redis.

Each worker runs one greenlet that every ``PRESENCE_INTERVAL_SECONDS`` writes its own
snapshot: ``presence:w:<worker>`` (hash user -> open connections), ``presence:c:<worker>``
(hash user -> that user's connections here: id and since when) and ``presence:m:<worker>``
(this worker's totals), all expiring after three intervals, and its id into the
``presence:workers`` index. A worker that dies simply stops refreshing its keys, so its
connections drop out of every total within three intervals; readers treat a worker whose
keys are gone as gone, and prune it from the index. Only what changed is rewritten.

The same write carries what is not worth a Redis write of its own: the latest receipt of
each connection this worker was told about (``Receipts.take_last_receipts``, a client's
POSTed receipt may reach any worker) into ``presence:r``, and when each user who came or
left was last connected into ``presence:seen``.

Connections are a client's own streams: a staff viewer's stream (the dashboard's live
feed) names no connection, so staff never count as the user being online.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import gevent
import orjson
import redis
from gevent.event import Event as Wakeup

from app.config import Config
from app.store.receipts import Receipts
from app.store.serialization import iso_ms

log = logging.getLogger(__name__)

SEEN_TTL_SECONDS = 90 * 86400  # last seen, refreshed whenever a user comes or goes
RECEIPTS_TTL_SECONDS = 86400


@dataclass(frozen=True)
class Summary:
    workers: int
    connections: int
    online_users: int


class Presence:
    def __init__(
        self, config: Config, redis_client: redis.Redis, hub: Any, receipts: Receipts | None = None
    ) -> None:
        self.redis = redis_client
        self.hub = hub
        self.receipts = receipts  # the latest receipt per connection
        self.prefix = config.KEY_PREFIX + "{all}:presence:"  # one slot on a cluster: one MULTI
        self.interval = max(float(config.PRESENCE_INTERVAL_SECONDS), 0.05)
        self.instance = config.instance
        self.worker_id = f"{self.instance}:{os.getpid()}:{hub.hub_id}"
        self._greenlet: gevent.Greenlet | None = None
        self._wake = Wakeup()
        self._last: dict[str, int] | None = None
        self._last_conns: dict[str, bytes] | None = None

    def local_connections(self) -> dict[str, list[list[Any]]]:
        """This worker's users and their open connections: ``[[id, since (ms)], ...]``."""
        out: dict[str, list[list[Any]]] = {}
        for user_id, subs in list(self.hub.users.items()):
            conns = [[s.connection, int(s.since * 1000)] for s in subs if s.connection and not s.closed]
            if conns:
                out[user_id] = sorted(conns)
        return out

    # -- writer ----------------------------------------------------------------------
    def _key(self, kind: str, worker: str = "") -> str:
        return f"{self.prefix}{kind}:{worker}" if worker else self.prefix + kind

    def publish_once(self) -> None:
        """Write this worker's snapshot; rewrites only the users whose connections changed."""
        local = self.local_connections()
        conns = {u: orjson.dumps(c) for u, c in local.items()}
        users = {u: len(c) for u, c in local.items()}
        ttl_ms = int(self.interval * 3000)
        wkey, ckey, mkey = (self._key(k, self.worker_id) for k in ("w", "c", "m"))
        meta = {"pid": os.getpid(), "connections": sum(users.values()), "users": len(users)}
        now_ms = int(time.time() * 1000)
        receipts = self.receipts.take_last_receipts() if self.receipts is not None else {}
        last_conns = self._last_conns
        pipe = self.redis.pipeline(transaction=True)
        if users != self._last:
            pipe.delete(wkey)
            if users:
                pipe.hset(wkey, mapping=users)
        if last_conns is None:
            pipe.delete(ckey)
            last_conns = {}
        changed = {u: c for u, c in conns.items() if last_conns.get(u) != c}
        if changed:
            pipe.hset(ckey, mapping=changed)
        gone = [u for u in last_conns if u not in conns]
        if gone:
            pipe.hdel(ckey, *gone)
        for key in (wkey, ckey) if users else ():
            pipe.pexpire(key, ttl_ms)
        self._record_seen(pipe, [u for u in changed if u not in last_conns] + gone, now_ms)
        self._record_receipts(pipe, receipts, last_conns, conns)
        pipe.set(mkey, orjson.dumps(meta), px=ttl_ms)
        pipe.zadd(self.prefix + "workers", {self.worker_id: time.time()})
        pipe.expire(self.prefix + "workers", 86400)
        pipe.execute()
        self._last, self._last_conns = users, conns

    def _record_seen(self, pipe: Any, users: list[str], now_ms: int) -> None:
        if users:
            pipe.hset(self._key("seen"), mapping=dict.fromkeys(users, now_ms))
            pipe.expire(self._key("seen"), SEEN_TTL_SECONDS)

    def _record_receipts(
        self,
        pipe: Any,
        receipts: dict[tuple[str, str], float],
        before: dict[str, bytes],
        now: dict[str, bytes],
    ) -> None:
        """New receipt times in; the receipts of this worker's connections that ended out."""
        rkey = self._key("r")
        if receipts:
            pipe.hset(rkey, mapping={f"{c} {u}": int(t * 1000) for (c, u), t in receipts.items()})
            pipe.expire(rkey, RECEIPTS_TTL_SECONDS)
        ended = []
        for user_id, raw in before.items():
            fresh = now.get(user_id)
            if fresh == raw:
                continue
            still = {c[0] for c in orjson.loads(fresh)} if fresh is not None else set()
            ended += [f"{c[0]} {user_id}" for c in orjson.loads(raw) if c[0] not in still]
        if ended:
            pipe.hdel(rkey, *ended)

    def refresh_soon(self) -> None:
        """Write the snapshot now rather than at the next interval (a connection was closed)."""
        self._wake.set()

    def start(self) -> None:
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop refreshing and remove this worker's snapshot (a clean exit)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
            try:
                keys = [self._key(k, self.worker_id) for k in ("w", "c", "m")]
                self.redis.delete(*keys)
                self.redis.zrem(self.prefix + "workers", self.worker_id)
            except redis.RedisError:
                pass

    def _run(self) -> None:
        while True:
            self._wake.clear()  # before writing: a connection closed meanwhile wakes the next
            try:
                self.publish_once()
            except redis.RedisError as exc:
                self._last = self._last_conns = None  # rewrite everything once Redis is back
                log.warning("presence update failed: %s", exc)
            self._wake.wait(self.interval)  # a closed connection (``refresh_soon``) ends it early

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
        return self.users_connections([user_id])[user_id]

    def users_connections(self, user_ids: list[str]) -> dict[str, int]:
        """Open connections of each user across every live worker: one ``HMGET`` per worker."""
        counts = dict.fromkeys(user_ids, 0)
        workers = self.live_workers()
        if not workers or not user_ids:
            return counts
        pipe = self.redis.pipeline(transaction=False)
        for w in workers:
            pipe.hmget(self._key("w", w), user_ids)
        for values in pipe.execute():
            for user, n in zip(user_ids, values, strict=True):
                if n is not None:
                    counts[user] += int(n)
        return counts

    def user_presence(self, user_id: str) -> dict[str, Any]:
        """``{"online", "connections": [...], "last_seen"}`` of one user, from every live
        worker's snapshot; ``last_seen`` is now while online, else when the user's last
        connection ended (or, if its worker died, began)."""
        workers = self.live_workers()
        pipe = self.redis.pipeline(transaction=False)
        for w in workers:
            pipe.hget(self._key("c", w), user_id)
        pipe.hget(self._key("seen"), user_id)
        *snapshots, seen = pipe.execute()
        connections = []
        for worker, raw in zip(workers, snapshots, strict=True):
            instance, pid, _ = worker.rsplit(":", 2)
            for conn, since in orjson.loads(raw) if raw else ():
                transport = conn.split("~", 1)[0]
                connections.append(
                    {"id": conn, "transport": transport, "instance": instance, "worker": pid, "since": since}
                )
        connections.sort(key=lambda c: (c["since"], c["id"]))
        if connections:
            fields = [f"{c['id']} {user_id}" for c in connections]
            receipts = self.redis.hmget(self._key("r"), fields)
        else:
            receipts = []
        for conn, receipt in zip(connections, receipts, strict=True):
            conn["since"] = iso_ms(conn["since"])
            conn["last_receipt"] = iso_ms(int(receipt)) if receipt is not None else None
        if connections:
            last_seen: str | None = iso_ms(int(time.time() * 1000))
        else:
            last_seen = iso_ms(int(seen)) if seen is not None else None
        return {
            "user_id": user_id,
            "online": bool(connections),
            "connections": connections,
            "last_seen": last_seen,
        }
