"""Rate limits kept in Redis, so every worker and instance shares them.

* POSTs per API key: a fixed one-minute window (``INCR`` + expiry in one Lua call);
  over ``RATE_LIMIT_POSTS_PER_MINUTE`` the caller gets 429 with ``Retry-After``.
* Concurrent streams per user: a sorted set of slot leases per user. A slot is added
  atomically only while fewer than ``MAX_STREAMS_PER_USER`` live leases exist, released
  when its stream closes, and kept alive by one refresher greenlet per worker; a crashed
  worker's slots simply expire after ``SLOT_TTL_SECONDS``.

Redis down means no limiting (fail open, logged): refusing all traffic because the
limiter cannot count would turn a cache outage into a full outage.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
import uuid
from typing import Any

import gevent
import redis
from flask import current_app

from app.config import Config
from app.errors import ApiError
from app.extensions import RedisBudget

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
SLOT_TTL_SECONDS = 60
REFRESH_SECONDS = 20
_WARN_EVERY = 10.0

# KEYS[1] counter; ARGV[1] window seconds. Returns the count in this window.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""

# KEYS[1] the user's slot set; ARGV: now, lease expiry, cap, member, key ttl. 1 if taken.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class StreamSlot:
    """One stream's place under its user's cap; ``release`` is idempotent."""

    __slots__ = ("limiter", "key", "member")

    def __init__(self, limiter: RateLimiter | None, key: str, member: str) -> None:
        self.limiter = limiter
        self.key = key
        self.member = member

    def release(self) -> None:
        limiter, self.limiter = self.limiter, None
        if limiter is not None:
            limiter._release(self)


class RateLimiter:
    def __init__(self, config: Config, redis_client: redis.Redis) -> None:
        self.config = config
        self.redis = redis_client
        self.prefix = config.KEY_PREFIX + "rl:"
        self._count = redis_client.register_script(_COUNT)
        self._acquire = redis_client.register_script(_ACQUIRE)
        self._slots: dict[str, StreamSlot] = {}  # this worker's live slots, by member
        self._refresher: gevent.Greenlet | None = None
        self._releasing: list[tuple[str, str]] = []  # (key, member) of closed streams, not yet removed
        self._releaser: gevent.Greenlet | None = None
        self._ids = itertools.count()
        self._warned = 0.0

    # -- POSTs per API key -------------------------------------------------------------
    def check_post(self, key_id: str, budget: RedisBudget) -> None:
        """Count one POST for ``key_id``; ApiError 429 when over the per-minute limit.

        The count waits for Redis no longer than ``budget`` allows (then fails open)."""
        limit = self.config.RATE_LIMIT_POSTS_PER_MINUTE
        if limit <= 0:
            return
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        key = f"{self.prefix}post:{key_id}:{window}"
        try:
            count = int(budget.call(lambda: self._count(keys=[key], args=[WINDOW_SECONDS * 2])))
        except redis.RedisError as exc:
            self._fail_open("POST rate limit", exc)
            return
        if count > limit:
            retry = max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))
            raise ApiError(
                429,
                "rate_limited",
                f"more than {limit} notifications per minute for this API key; retry in {retry}s",
                headers={"Retry-After": str(retry)},
            )

    # -- concurrent streams per user ---------------------------------------------------
    def acquire_stream(self, user_id: str) -> StreamSlot | None:
        """A slot for one more stream of ``user_id``; ApiError 429 when the user is at the cap."""
        cap = self.config.MAX_STREAMS_PER_USER
        if cap <= 0:
            return None
        key = f"{self.prefix}streams:{user_id}"
        member = f"{os.getpid()}:{uuid.uuid4().hex[:12]}:{next(self._ids)}"
        now = time.time()
        try:
            lease = now + SLOT_TTL_SECONDS
            taken = self._acquire(keys=[key], args=[now, lease, cap, member, SLOT_TTL_SECONDS * 2])
        except redis.RedisError as exc:
            self._fail_open("stream cap", exc)
            return None
        if not taken:
            raise ApiError(
                429,
                "too_many_streams",
                f"user already has {cap} open streams; close one first",
                headers={"Retry-After": "5"},
            )
        slot = StreamSlot(self, key, member)
        self._slots[member] = slot
        if self._refresher is None or self._refresher.dead:
            self._refresher = gevent.spawn(self._refresh_loop)
        return slot

    def open_slots(self, user_id: str) -> int:
        """How many live stream slots ``user_id`` holds across all instances (for tests/ops)."""
        key = f"{self.prefix}streams:{user_id}"
        return int(self.redis.zcount(key, time.time(), "+inf"))

    def _release(self, slot: StreamSlot) -> None:
        self._slots.pop(slot.member, None)
        self._releasing.append((slot.key, slot.member))
        if self._releaser is None or self._releaser.dead:
            self._releaser = gevent.spawn(self._release_loop)

    def _release_loop(self) -> None:
        """Remove closed streams' slots, all that closed meanwhile in one pipelined round trip.

        Thousands of streams can close at once (a deploy, a network blip, a load balancer
        reset); a ``ZREM`` round trip each cost more worker CPU than the rest of the close.
        """
        while self._releasing:
            batch, self._releasing = self._releasing, []
            by_key: dict[str, list[str]] = {}
            for key, member in batch:
                by_key.setdefault(key, []).append(member)
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key, members in by_key.items():
                    pipe.zrem(key, *members)
                pipe.execute()
            except redis.RedisError as exc:
                self._fail_open("stream slot release (it expires by itself)", exc)

    def wait_released(self, timeout: float | None = None) -> bool:
        """Block until the slots of closed streams are removed from Redis (for tests/ops)."""
        releaser = self._releaser
        if releaser is not None:
            releaser.join(timeout)
        return not self._releasing and (releaser is None or releaser.dead)

    def _refresh_loop(self) -> None:
        """Extend this worker's leases until it holds none (then exit; the next acquire restarts it)."""
        while self._slots:
            gevent.sleep(REFRESH_SECONDS)
            slots = list(self._slots.values())
            if not slots:
                return
            expiry = time.time() + SLOT_TTL_SECONDS
            try:
                pipe = self.redis.pipeline(transaction=False)
                for slot in slots:
                    pipe.zadd(slot.key, {slot.member: expiry}, xx=True)
                    pipe.expire(slot.key, SLOT_TTL_SECONDS * 2)
                pipe.execute()
            except redis.RedisError as exc:
                self._fail_open("stream slot refresh", exc)

    def _fail_open(self, what: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning("%s not enforced, Redis unavailable (failing open): %s", what, exc)


def limiter(extensions: dict[str, Any] | None = None) -> RateLimiter:
    """This app's limiter, built on first use from the notification service's Redis client."""
    ext = current_app.extensions if extensions is None else extensions
    found = ext.get("ratelimit")
    if found is None:
        found = ext["ratelimit"] = RateLimiter(ext["config"], ext["notifications"].redis)
    return found


def stream_slot(user_id: str) -> StreamSlot | None:
    """Take one of ``user_id``'s stream slots or raise 429; None when the cap is off or Redis is down."""
    return limiter().acquire_stream(user_id)
