"""The Lua scripts of the Redis health store: each decision that must be atomic.

The probe lease ("busy / held / acquired" against the realm's last live success) and the
alert lifecycle (one active episode per realm and kind; resolve; acknowledge) each run as
one script, so two replicas never both raise, resolve or probe the same thing.
"""

ACQUIRE = """
local last = redis.call('GET', KEYS[2])
local now = tonumber(ARGV[2])
if last and tonumber(last) > now - tonumber(ARGV[3]) then return 'busy' end
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if tonumber(string.sub(cur, 1, sep - 1)) > now then return 'held' end
end
redis.call('SET', KEYS[1], ARGV[4] .. '|' .. ARGV[1], 'PX', ARGV[5])
return 'acquired'
"""

# ARGV: active field, new id, new json. Returns {created, changed, json}.
UPSERT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local doc = redis.call('HGET', KEYS[1], 'alert:' .. cur)
  if doc then
    local a = cjson.decode(doc)
    local n = cjson.decode(ARGV[3])
    if a['severity'] == n['severity'] and a['message'] == n['message'] then
      return {0, 0, doc}
    end
    local escalated = 0
    if a['severity'] ~= n['severity'] then escalated = 1 end
    a['severity'] = n['severity']
    a['message'] = n['message']
    a['value'] = n['value']
    a['updated_at'] = n['updated_at']
    doc = cjson.encode(a)
    redis.call('HSET', KEYS[1], 'alert:' .. cur, doc)
    return {0, escalated, doc}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'alert:' .. ARGV[2], ARGV[3])
return {1, 1, ARGV[3]}
"""

RESOLVE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
local doc = redis.call('HGET', KEYS[1], 'alert:' .. cur)
if not doc then return false end
local a = cjson.decode(doc)
a['state'] = 'resolved'
a['resolved_at'] = tonumber(ARGV[2])
a['updated_at'] = tonumber(ARGV[2])
doc = cjson.encode(a)
redis.call('HSET', KEYS[1], 'alert:' .. cur, doc)
return doc
"""

ACK = """
local doc = redis.call('HGET', KEYS[1], 'alert:' .. ARGV[1])
if not doc then return false end
local a = cjson.decode(doc)
if a['state'] ~= 'resolved' then a['state'] = 'acknowledged' end
a['acknowledged_at'] = tonumber(ARGV[2])
a['acknowledged_by'] = ARGV[3]
doc = cjson.encode(a)
redis.call('HSET', KEYS[1], 'alert:' .. ARGV[1], doc)
return doc
"""
