-- Record one admitted request's outcome: free its concurrency lease, set a throttle
-- cool-down, feed the breaker. An outcome from an earlier breaker generation (a slow
-- request that started before the circuit moved) never flips the current state.
-- Same algorithm as MemoryAdmission.record. Times are integer microseconds.
-- KEYS: breaker (hash), inflight (zset), cooldown (string)
-- ARGV: now_us|'', lease_id, generation, outcome, probe, retry_after_us|'', jitter (0..1),
--       failure_threshold, recovery_us, throttle_cooldown_us, breaker_ttl_ms,
--       max_recovery_us
-- Returns: the breaker state this outcome moved the realm to, or ''.
local breaker, inflight, cooldown = KEYS[1], KEYS[2], KEYS[3]
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local lease_id = ARGV[2]
local generation = tonumber(ARGV[3])
local outcome = ARGV[4]
local probe = ARGV[5] == '1'
local retry_after = tonumber(ARGV[6])
local threshold = tonumber(ARGV[8])
local recovery = tonumber(ARGV[9])
local throttle_cooldown = tonumber(ARGV[10])
local breaker_ttl = tonumber(ARGV[11])
local jitter = tonumber(ARGV[7])
local max_recovery = tonumber(ARGV[12])

if lease_id ~= '' then redis.call('ZREM', inflight, lease_id) end

if outcome == 'throttle' then
  local pause = throttle_cooldown
  if retry_after and retry_after > 0 then pause = retry_after end
  local untl = now + pause
  local current = tonumber(redis.call('GET', cooldown) or '0')
  if untl > current then
    redis.call('SET', cooldown, string.format('%.0f', untl), 'PX', math.floor(pause / 1000) + 1000)
  end
end

local b = redis.call('HMGET', breaker, 'state', 'gen', 'failures', 'failed_probes', 'probe_id')
local state = b[1] or 'closed'
local gen = tonumber(b[2] or '0')
local is_current = generation == gen
local is_probe = is_current and probe and b[5] == lease_id

if outcome == 'throttle' or outcome == 'abandoned' then
  if is_probe then
    redis.call('HSET', breaker, 'probe_id', '')
  end
  return ''
end
if not is_current then return '' end

if outcome == 'success' then
  if state == 'half_open' and is_probe then
    redis.call('HSET', breaker, 'state', 'closed', 'gen', gen + 1, 'failures', 0,
      'failed_probes', 0, 'probe_id', '')
    redis.call('PEXPIRE', breaker, breaker_ttl)
    return 'closed'
  end
  if tonumber(b[3] or '0') ~= 0 then
    redis.call('HSET', breaker, 'failures', 0)
  end
  return ''
end

-- failure
if state == 'half_open' then
  if not is_probe then return '' end
  local failed = tonumber(b[4] or '0') + 1
  -- doubling, capped, up to 20% jitter off, never below the recovery time
  local grown = math.min(max_recovery, recovery * math.pow(2, failed))
  local open_for = math.floor(math.max(recovery, grown * (1 - 0.2 * jitter)))
  redis.call('HSET', breaker, 'state', 'open', 'gen', gen + 1,
    'open_until', string.format('%.0f', now + open_for), 'failed_probes', failed, 'probe_id', '')
  redis.call('PEXPIRE', breaker, breaker_ttl)
  return 'open'
end
if state == 'closed' then
  local failures = tonumber(b[3] or '0') + 1
  if failures >= threshold then
    redis.call('HSET', breaker, 'state', 'open', 'gen', gen + 1, 'failures', failures,
      'open_until', string.format('%.0f', now + recovery), 'failed_probes', 0)
    redis.call('PEXPIRE', breaker, breaker_ttl)
    return 'open'
  end
  redis.call('HSET', breaker, 'failures', failures)
  redis.call('PEXPIRE', breaker, breaker_ttl)
end
return ''
