-- Admit one request for one realm, atomically: cool-down, breaker, concurrency, rate.
-- The same algorithm as admission_memory.py (one behaviour suite runs against both).
-- All times are integer microseconds; one clock for every replica: Redis TIME, or
-- ARGV[1] when the caller injects a clock (tests).
-- KEYS: breaker (hash), rate (list), batch (list), inflight (zset), cooldown (string)
-- ARGV: now_us|'', lease_id, is_batch, per_minute, per_second, concurrency,
--       batch_per_minute, max_wait_us, lease_us, poll_us, breaker_ttl_ms
-- Returns: {verdict, delay_us, reason, retry_after_us, lease_id, generation, probe, transition}
local breaker, rate, batch, inflight, cooldown = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local lease_id = ARGV[2]
local is_batch = ARGV[3] == '1'
local per_minute = tonumber(ARGV[4])
local per_second = tonumber(ARGV[5])
local concurrency = tonumber(ARGV[6])
local batch_per_minute = tonumber(ARGV[7])
local max_wait = tonumber(ARGV[8])
local lease = tonumber(ARGV[9])
local poll = tonumber(ARGV[10])
local breaker_ttl = tonumber(ARGV[11])
local MINUTE, SECOND = 60000000, 1000000

local b = redis.call('HMGET', breaker, 'state', 'gen', 'open_until', 'probe_id', 'probe_until')
local state = b[1] or 'closed'
local gen = tonumber(b[2] or '0')

local cd = tonumber(redis.call('GET', cooldown) or '0')
if cd > now then
  return {'refuse', 0, 'throttled', cd - now, '', gen, 0, ''}
end

local becomes_probe = false
if state == 'open' then
  local open_until = tonumber(b[3] or '0')
  if open_until > now then
    return {'refuse', 0, 'circuit_open', open_until - now, '', gen, 0, ''}
  end
  becomes_probe = true
elseif state == 'half_open' then
  local probe_until = tonumber(b[5] or '0')
  if b[4] and b[4] ~= '' and probe_until > now then
    return {'refuse', 0, 'circuit_open', probe_until - now, '', gen, 0, ''}
  end
  becomes_probe = true -- the previous probe never reported: its lease lapsed
end

redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
if redis.call('ZCARD', inflight) >= concurrency then
  return {'wait', math.min(poll, max_wait), '', 0, '', gen, 0, ''}
end

local function prune(key)
  while true do
    local head = redis.call('LINDEX', key, 0)
    if not head or tonumber(head) > now - MINUTE then return end
    redis.call('LPOP', key)
  end
end

local function bound(key, limit, window, t)
  local last = redis.call('LINDEX', key, -1)
  if last then t = math.max(t, tonumber(last)) end
  local nth = redis.call('LINDEX', key, -limit)
  if nth then t = math.max(t, tonumber(nth) + window) end
  return t
end

prune(rate)
local t = bound(rate, per_minute, MINUTE, now)
t = bound(rate, per_second, SECOND, t)
local reason = 'rate'
if is_batch then
  prune(batch)
  local by_rate = t
  t = bound(batch, batch_per_minute, MINUTE, t)
  if t > by_rate then reason = 'batch' end -- the batch budget is the tighter one
end
local delay = t - now
if delay > max_wait then
  return {'refuse', 0, reason, delay, '', gen, 0, ''}
end

local keep_ms = math.floor((MINUTE + max_wait) / 1000) + 1000
local stamp = string.format('%.0f', t)
redis.call('RPUSH', rate, stamp)
redis.call('PEXPIRE', rate, keep_ms)
if is_batch then
  redis.call('RPUSH', batch, stamp)
  redis.call('PEXPIRE', batch, keep_ms)
end
redis.call('ZADD', inflight, now + lease + delay, lease_id)
redis.call('PEXPIRE', inflight, math.floor((lease + max_wait) / 1000) + 1000)

local transition = ''
local probe = 0
if becomes_probe then
  if state ~= 'half_open' then transition = 'half_open' end
  gen = gen + 1
  probe = 1
  redis.call('HSET', breaker, 'state', 'half_open', 'gen', gen, 'probe_id', lease_id,
    'probe_until', string.format('%.0f', now + lease + delay))
  redis.call('PEXPIRE', breaker, breaker_ttl)
end
return {'admit', delay, '', 0, lease_id, gen, probe, transition}
