"""Redis Lua scripts: each is one atomic round trip.

PUBLISH assigns every notification its user's cursor and publishes it in the same
atomic step, so all subscribers on all instances see one user's events in cursor order.
The cursor is ``max(previous + 1, Redis server time in microseconds)``: strictly
increasing per user, and still increasing after a Redis restart wipes the counter.
"""

PUBLISH = r"""
redis.replicate_commands()
local prefix = ARGV[1]
local recent_limit = tonumber(ARGV[2])
local replay_size = tonumber(ARGV[3])
local replay_ttl = tonumber(ARGV[4])
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local channel = prefix .. 'events'
local recent = prefix .. 'recent'
local seqs = {}
for i = 5, #ARGV, 2 do
  local user = ARGV[i]
  local body = ARGV[i + 1]
  local ckey = prefix .. 'seq:' .. user
  local seq = tonumber(redis.call('GET', ckey) or '0') + 1
  if seq < now_us then seq = now_us end
  local s = string.format('%.0f', seq)
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
