"""Redis Lua scripts: each is one atomic round trip.

Every document is stored once, with its cursor: the worker proposes one before the
insert (``max(last proposed + 1, clock in microseconds)``, see ``app/publishing.py``).
PUBLISH then publishes a batch in one atomic step and keeps every user's published
cursors strictly increasing on every instance: a proposed cursor that is not above the
user's last published one (another worker published a later one first), that is older
than the publish lease or too far in the future (a skewed clock), is replaced by
``max(last + 1, Redis server time in microseconds)``, which the caller writes back to
MongoDB (rare). Cursors keep increasing even after a Redis restart wipes the counters.
"""

# ARGV: prefix, recent limit, replay buffer size, replay buffer TTL, oldest acceptable
# age (µs), furthest acceptable future (µs), then (user id, proposed cursor, JSON without
# seq) per notification. Returns the cursors published, in order.
PUBLISH = r"""
redis.replicate_commands()
local prefix = ARGV[1]
local recent_limit = tonumber(ARGV[2])
local replay_size = tonumber(ARGV[3])
local replay_ttl = tonumber(ARGV[4])
local max_age = tonumber(ARGV[5])
local max_ahead = tonumber(ARGV[6])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local channel = prefix .. 'events'
local recent = prefix .. 'recent'
local seqs = {}
for i = 7, #ARGV, 3 do
  local user = ARGV[i]
  local s = ARGV[i + 1]
  local body = ARGV[i + 2]
  local ckey = prefix .. 'seq:' .. user
  local seq = tonumber(s)
  local last = tonumber(redis.call('GET', ckey) or '0')
  if seq == nil or seq <= last or seq < now_us - max_age or seq > now_us + max_ahead then
    seq = last + 1
    if seq < now_us then seq = now_us end
    s = string.format('%.0f', seq)
  end
  redis.call('SET', ckey, s, 'EX', 2592000)
  local json = '{"seq":' .. s .. ',' .. string.sub(body, 2)
  redis.call('PUBLISH', channel, 'n\t' .. user .. '\t' .. s .. '\t' .. json)
  local rkey = prefix .. 'replay:' .. user
  redis.call('RPUSH', rkey, s .. '\t' .. json)
  redis.call('LTRIM', rkey, -replay_size, -1)
  redis.call('EXPIRE', rkey, replay_ttl)
  redis.call('LPUSH', recent, json)
  local vkey = prefix .. 'ver:' .. user
  redis.call('INCR', vkey)
  redis.call('EXPIRE', vkey, 86400)
  seqs[#seqs + 1] = s
end
redis.call('LTRIM', recent, 0, recent_limit - 1)
local skey = prefix .. 'stats:' .. t[1]
redis.call('INCRBY', skey, #seqs)
redis.call('EXPIRE', skey, 3700)
return seqs
"""

# KEYS[1] = version key; ARGV[1] .. version .. ARGV[2] = cache key.
# Returns {version, cached value or nil, ttl}: the version is read first, so a value
# written under an older version can never be served after an invalidation.
CACHE_GET = r"""
local v = redis.call('GET', KEYS[1]) or '0'
local key = ARGV[1] .. v .. ARGV[2]
return {v, redis.call('GET', key), redis.call('TTL', key)}
"""
