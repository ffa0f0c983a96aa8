"""The first ``expires_at`` among a user's notifications, kept in Redis.

A cached history page or count must not outlive the first expiry in its user's inbox
(``app/store/notifications.py``). Finding that expiry in MongoDB means reading every
notification of the user (``expires_at`` is in no index, and most notifications have
none), so doing it on every cache fill would make each one cost what the user has stored.
Instead each create with ``expires_at`` lowers the user's mark here, and MongoDB is asked
only once that mark has passed, for the next one: users with no expiring notification
never pay for the feature.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

LOWER = """
local current = redis.call('GET', KEYS[1])
if (not current) or tonumber(ARGV[1]) < tonumber(current) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
"""

# Replace a mark that has passed, unless a create lowered it meanwhile.
REPLACE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
end
"""

KEEP_MS = 86_400_000  # a mark outlives its expiry by this: past it, MongoDB is asked again


def epoch_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


class ExpiryMarks:
    def __init__(self, redis_client: Any, key: Any) -> None:
        self.redis = redis_client
        self.key = key  # user id -> the mark's key (a hash tag of the user: one slot)
        self._lower = redis_client.register_script(LOWER)
        self._replace = redis_client.register_script(REPLACE)

    def note(self, user_ids: list[str], expires_at: datetime, now: datetime) -> None:
        """``expires_at`` of notifications being stored for ``user_ids``; raises RedisError."""
        at = epoch_ms(expires_at)
        keep = max(at - epoch_ms(now), 0) + KEEP_MS
        pipe = self.redis.pipeline(transaction=False)
        for user_id in user_ids:
            self._lower(keys=[self.key(user_id)], args=[at, keep], client=pipe)
        pipe.execute()

    def first(self, user_id: str) -> int | None:
        """The mark (epoch ms), None if the user has no expiring notification; raises RedisError."""
        value = self.redis.get(self.key(user_id))
        return None if value is None else int(value)

    def replace(self, user_id: str, passed: int, following: datetime | None, now: datetime) -> None:
        """The mark ``passed`` is over: ``following`` (from MongoDB) is the next, or none."""
        if following is None:
            args = [passed, "", 0]
        else:
            at = epoch_ms(following)
            args = [passed, at, max(at - epoch_ms(now), 0) + KEEP_MS]
        self._replace(keys=[self.key(user_id)], args=args)
