"""Redis Lua scripts: each is one atomic round trip.

Every document is stored once, with its cursor: the worker proposes one before the
insert (``max(last proposed + 1, clock in microseconds)``, see ``app/store/publishing.py``).
PUBLISH then publishes a batch in one atomic step and keeps every user's published
cursors strictly increasing on every instance: a proposed cursor that is not above the
user's last published one (another worker published a later one first), that is older
than the publish lease or too far in the future (a skewed clock), is replaced by
``max(last + 1, Redis server time in microseconds)``, which the caller writes back to
MongoDB (rare). Cursors keep increasing even after a Redis restart wipes the counters.

``LeanScript`` runs PUBLISH, the one Redis call on every notification's path.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis
from redis.exceptions import NoScriptError


class LeanScript:
    """A Lua script run with EVALSHA straight on a pooled redis-py connection.

    Why: redis-py's ``Script`` passes every call through the client's command machinery
    (retry wrapper, response callbacks, observability hooks). For the publish that cost
    0.2-0.5 ms of a single notification's latency at the latency measure's pace
    (bench/README.md, "The publish script over a pooled connection"). This keeps what the
    service relies on: the pool and its health checks, one immediate retry on a connection
    that died (as the client's ``Retry(NoBackoff(), 1)``), and the script loaded again after
    ``NOSCRIPT`` (a restarted or flushed Redis). Errors are redis-py's.
    """

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.pool = client.connection_pool
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, args: list[Any]) -> Any:
        conn = self.pool.get_connection()
        try:
            try:
                return self._run(conn, args)
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()  # reconnects on the next send
                return self._run(conn, args)
        finally:
            self.pool.release(conn)

    def _run(self, conn: Any, args: list[Any]) -> Any:
        try:
            conn.send_command("EVALSHA", self.sha, 0, *args)
            return conn.read_response()
        except NoScriptError:
            conn.send_command("SCRIPT", "LOAD", self.source)
            conn.read_response()
            conn.send_command("EVALSHA", self.sha, 0, *args)
            return conn.read_response()


# Each notification is published twice: on its user's channel (``u:{<user>}``, which only
# the workers holding a stream of that user subscribe to) and on the feed channel (the
# dashboard overview, which shows new notifications only, so state events skip it;
# without a subscriber a PUBLISH costs Redis a dictionary lookup and sends nothing). One
# message per user, never one for many. A user's part (cursor, replay
# list, cache version, the user's channel) touches only keys tagged ``{<user>}``; the
# global part (recent list, stats, feed channel) only keys tagged ``{all}``. A standalone
# Redis runs both in one PUBLISH call; on a cluster (``global`` 0) each slot's users are
# one PUBLISH call on their node, and the global part is one GLOBAL call. The publish
# command is an argument: PUBLISH, or on a cluster SPUBLISH (sharded pub/sub: the channel
# is in the slot of the call's keys, and only that master's subscribers get it).
_GLOBAL_PART = r"""
local function publish_global(prefix, recent_limit, pubcmd, sec, wires)
  local recent = prefix .. '{all}:recent'
  local feed = prefix .. '{all}:events'
  for _, wire in ipairs(wires) do
    redis.call(pubcmd, feed, wire)
    local json = string.match(wire, '^n\t[^\t]*\t[^\t]*\t(.*)$')
    redis.call('LPUSH', recent, json)
  end
  redis.call('LTRIM', recent, 0, recent_limit - 1)
  local skey = prefix .. '{all}:stats:' .. sec
  redis.call('INCRBY', skey, #wires)
  redis.call('EXPIRE', skey, 3700)
end
"""

# ARGV: prefix, recent limit, replay buffer size, replay buffer TTL, oldest acceptable
# age (µs), furthest acceptable future (µs), the events' kind ('n' notifications, 's' an
# inbox state change, 'u' a notification updated in place: on the same channel, cursors
# and replay list, not in the global part), publish command, global (1 / 0), then
# (user id, proposed cursor or '', JSON without seq, live '1' / '0') per event. An event
# with live '0' (its category's ``live`` channel is off, app/preferences/) gets its cursor
# and its place in the replay list like any other but is not published on the user's
# channel: open streams do not receive it, a stream that resumes from an earlier cursor
# replays it, as the inbox lists it. Returns the cursors
# published, in order, and (global 0) the wire messages for the GLOBAL call (none for
# state and update events).
PUBLISH = (
    r"""
redis.replicate_commands()
"""
    + _GLOBAL_PART
    + r"""
local prefix = ARGV[1]
local recent_limit = tonumber(ARGV[2])
local replay_size = tonumber(ARGV[3])
local replay_ttl = tonumber(ARGV[4])
local max_age = tonumber(ARGV[5])
local max_ahead = tonumber(ARGV[6])
local kind = ARGV[7]
local notes = kind == 'n'
local pubcmd = ARGV[8]
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local seqs = {}
local wires = {}
for i = 10, #ARGV, 4 do
  local user = ARGV[i]
  local s = ARGV[i + 1]
  local body = ARGV[i + 2]
  local live = ARGV[i + 3] == '1'
  local tag = ':{' .. user .. '}'
  local ckey = prefix .. 'seq' .. tag
  local seq = tonumber(s)
  local last = tonumber(redis.call('GET', ckey) or '0')
  if seq == nil or seq <= last or seq < now_us - max_age or seq > now_us + max_ahead then
    seq = last + 1
    if seq < now_us then seq = now_us end
    s = string.format('%.0f', seq)
  end
  redis.call('SET', ckey, s, 'EX', 2592000)
  local json = '{"seq":' .. s .. ',' .. string.sub(body, 2)
  local wire = kind .. '\t' .. user .. '\t' .. s .. '\t' .. json
  if live then redis.call(pubcmd, prefix .. 'u' .. tag, wire) end
  local rkey = prefix .. 'replay' .. tag
  redis.call('RPUSH', rkey, s .. '\t' .. (notes and '' or kind) .. json)
  redis.call('LTRIM', rkey, -replay_size, -1)
  redis.call('EXPIRE', rkey, replay_ttl)
  local vkey = prefix .. 'ver' .. tag
  redis.call('INCR', vkey)
  redis.call('EXPIRE', vkey, 86400)
  seqs[#seqs + 1] = s
  if notes then wires[#wires + 1] = wire end
end
if ARGV[9] == '1' then
  if notes then publish_global(prefix, recent_limit, pubcmd, t[1], wires) end
  return {seqs}
end
return {seqs, wires}
"""
)

# The global part on a cluster. KEYS[1]: the recent list (routes the call to its slot).
# ARGV: prefix, recent limit, publish command, then the wire messages in order.
GLOBAL = (
    _GLOBAL_PART
    + r"""
local wires = {}
for i = 4, #ARGV do wires[#wires + 1] = ARGV[i] end
publish_global(ARGV[1], tonumber(ARGV[2]), ARGV[3], redis.call('TIME')[1], wires)
return #wires
"""
)

# KEYS[1] = version key; ARGV[1] .. version .. ARGV[2] = cache key.
# Returns {version, cached value or nil, ttl}: the version is read first, so a value
# written under an older version can never be served after an invalidation.
CACHE_GET = r"""
local v = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. v .. ARGV[2]
return {v, redis.call('GET', key), redis.call('TTL', key)}
"""
