-- Lease a slice of one realm's budget to one replica, and take back what it did not use.
-- One round trip covers a replica's whole exchange with the shared state for a realm: the
-- slots it hands back (unused rate stamps, concurrency members it no longer holds), the
-- members it still holds (kept alive), and the new slice.
--
-- Why the slice is exact: every leased rate slot is stamped at the lease's end S (never
-- before the newest stamp, so the list stays sorted), and a slot may be spent only between
-- the grant and S. A slot spent at s <= S is then counted by every window the spend falls in,
-- and a grant at `now` is made only while fewer than `limit` stamps are later than
-- now - window (the same rule admit.lua applies to its reservations). Concurrency is leased
-- as members of the in-flight set, so every replica's slots are in one count.
-- Leases are granted only while the breaker is closed and no cool-down runs: an open or
-- half-open realm (the single probe) and a throttled one go through admit.lua.
-- Times are integer microseconds; ARGV[1] is now, or '' for Redis TIME.
-- KEYS: breaker (hash), rate (list), batch (list), inflight (zset), cooldown (string),
--       leasers (zset: holder -> lease end)
-- ARGV: now_us|'', holder, want_rate, want_batch, want_members, per_minute, per_second,
--       concurrency, batch_per_minute, lease_us, member_us, keep_ms,
--       returned stamps "S:k:Sb:kb;..." , returned members "m,m", held members "m,m",
--       new member id prefix, generation of unreported successes|''
-- Returns: {refusal ('' when leased), generation, stamp, rate slots, batch stamp,
--           batch slots, {new members}, {lost members}, lease end}
local breaker, rate, batch, inflight, cooldown, leasers =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local holder = ARGV[2]
local want_rate = tonumber(ARGV[3])
local want_batch = tonumber(ARGV[4])
local want_members = tonumber(ARGV[5])
local per_minute = tonumber(ARGV[6])
local per_second = tonumber(ARGV[7])
local concurrency = tonumber(ARGV[8])
local batch_per_minute = tonumber(ARGV[9])
local lease = tonumber(ARGV[10])
local member_us = tonumber(ARGV[11])
local keep_ms = tonumber(ARGV[12])
local prefix = ARGV[16]
local MINUTE, SECOND = 60000000, 1000000

-- What the replica hands back is no longer spendable there: remove it first.
for group in string.gmatch(ARGV[13], '[^;]+') do
  local s, k, sb, kb = string.match(group, '^(%d+):(%d+):(%d*):(%d+)$')
  if s and tonumber(k) > 0 then redis.call('LREM', rate, tonumber(k), s) end
  if sb and sb ~= '' and tonumber(kb) > 0 then redis.call('LREM', batch, tonumber(kb), sb) end
end
for m in string.gmatch(ARGV[14], '[^,]+') do redis.call('ZREM', inflight, m) end

local b = redis.call('HMGET', breaker, 'state', 'gen', 'failures')
local state = b[1] or 'closed'
local gen = tonumber(b[2] or '0')
-- Successes reported with the lease: as record.lua, a success of the current generation
-- ends a run of consecutive failures (leased requests are never the half-open probe).
local succeeded = tonumber(ARGV[17])
if succeeded and succeeded == gen and tonumber(b[3] or '0') ~= 0 then
  redis.call('HSET', breaker, 'failures', 0)
end
local cd = tonumber(redis.call('GET', cooldown) or '0')
local refusal = ''
if cd > now then refusal = 'throttled' elseif state ~= 'closed' then refusal = 'circuit_open' end

local lease_end = now + lease
redis.call('ZREMRANGEBYSCORE', inflight, '-inf', now)
local held, lost = {}, {}
for m in string.gmatch(ARGV[15], '[^,]+') do
  if redis.call('ZSCORE', inflight, m) then held[#held + 1] = m else lost[#lost + 1] = m end
end
if refusal ~= '' then
  redis.call('ZREM', leasers, holder)
  return {refusal, gen, '', 0, '', 0, {}, lost, 0}
end
if want_rate <= 0 and want_members <= 0 then
  return {'', gen, '', 0, '', 0, {}, lost, 0} -- only handing back
end

redis.call('ZREMRANGEBYSCORE', leasers, '-inf', now)
redis.call('ZADD', leasers, lease_end, holder)
redis.call('PEXPIRE', leasers, math.floor(lease / 1000) + 1000)
local holders = redis.call('ZCARD', leasers)

-- A fair share of what remains: what is left divided among the replicas leasing it now,
-- never more than asked for, at least one when anything is left.
local function share(left, want)
  if left <= 0 or want <= 0 then return 0 end
  return math.min(want, math.max(1, math.floor(left / holders)))
end

local member_score = lease_end + member_us
for _, m in ipairs(held) do redis.call('ZADD', inflight, member_score, m) end
local new_members = {}
local n_members = share(concurrency - redis.call('ZCARD', inflight), want_members)
for i = 1, n_members do
  local m = prefix .. i
  redis.call('ZADD', inflight, member_score, m)
  new_members[#new_members + 1] = m
end
if n_members > 0 then
  redis.call('PEXPIRE', inflight, math.floor((lease + member_us) / 1000) + 1000)
end

local function prune(key)
  while true do
    local head = redis.call('LINDEX', key, 0)
    if not head or tonumber(head) > now - MINUTE then return end
    redis.call('LPOP', key)
  end
end

-- Stamps later than `since`, counted from the newest (the list is sorted) a chunk at a
-- time, so a realm with a large per-second limit costs no more than its last second.
local function later_than(key, since, limit)
  local n, last = 0, -1
  while true do
    local chunk = redis.call('LRANGE', key, last - 63, last)
    for i = #chunk, 1, -1 do
      if n >= limit or tonumber(chunk[i]) <= since then return n end
      n = n + 1
    end
    if #chunk < 64 then return n end
    last = last - 64
  end
end

local function stamp_for(key)
  local last = redis.call('LINDEX', key, -1)
  local s = lease_end
  if last and tonumber(last) > s then s = tonumber(last) end
  return string.format('%.0f', s)
end

local n_rate = 0
local stamp = ''
if #held + n_members > 0 then
  prune(rate)
  local left = math.min(
    per_minute - redis.call('LLEN', rate),
    per_second - later_than(rate, now - SECOND, per_second))
  n_rate = share(left, want_rate)
end
local n_batch = 0
local batch_stamp = ''
if n_rate > 0 and want_batch > 0 then
  prune(batch)
  n_batch = math.min(n_rate, share(batch_per_minute - redis.call('LLEN', batch), want_batch))
end
if n_rate > 0 then
  stamp = stamp_for(rate)
  for _ = 1, n_rate do redis.call('RPUSH', rate, stamp) end
  redis.call('PEXPIRE', rate, keep_ms)
end
if n_batch > 0 then
  batch_stamp = stamp_for(batch)
  for _ = 1, n_batch do redis.call('RPUSH', batch, batch_stamp) end
  redis.call('PEXPIRE', batch, keep_ms)
end
return {'', gen, stamp, n_rate, batch_stamp, n_batch, new_members, lost, lease_end}
