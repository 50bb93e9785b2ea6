-- impush offline inboxes in Redis: one script, one operation per call (ARGV[1]), so each change
-- is atomic. ARGV[2] is the key prefix, ARGV[3] the client.
--
-- Keys under prefix P, per client C:
--   P:inbox:C    ZSET  message id, scored by send time (equal scores order by id: inbox order)
--   P:inboxm:C   HASH  id -> message JSON
--   P:inboxs:C   HASH  id -> size counted against max_bytes
--   P:inboxb:C   STRING total size
-- Every store refreshes the keys' expiry to the TTL, so an inbox nobody reads again vanishes.

local op, p, c = ARGV[1], ARGV[2], ARGV[3]
local zs, ms, ss, bs = p .. ':inbox:' .. c, p .. ':inboxm:' .. c, p .. ':inboxs:' .. c, p .. ':inboxb:' .. c

local function drop(id)
  local size = tonumber(redis.call('HGET', ss, id) or '0')
  redis.call('ZREM', zs, id)
  redis.call('HDEL', ms, id)
  redis.call('HDEL', ss, id)
  redis.call('DECRBY', bs, size)
end

-- Drops messages sent before `cutoff` (unix ms).
local function expire(cutoff)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zs, '-inf', '(' .. cutoff)) do drop(id) end
end

local function tidy()
  if redis.call('ZCARD', zs) == 0 then redis.call('DEL', zs, ms, ss, bs) end
end

if op == 'store' then
  -- ARGV[4] id, ARGV[5] ts, ARGV[6] json, ARGV[7] size, ARGV[8] cutoff, ARGV[9] max count,
  -- ARGV[10] max bytes, ARGV[11] ttl ms; returns {evicted, kept}
  local id, ts, size = ARGV[4], ARGV[5], tonumber(ARGV[7])
  expire(ARGV[8])
  if redis.call('ZSCORE', zs, id) then return { 0, 1 } end
  redis.call('ZADD', zs, ts, id)
  redis.call('HSET', ms, id, ARGV[6])
  redis.call('HSET', ss, id, size)
  redis.call('INCRBY', bs, size)
  local evicted = 0
  while redis.call('ZCARD', zs) > tonumber(ARGV[9]) or tonumber(redis.call('GET', bs) or '0') > tonumber(ARGV[10]) do
    local oldest = redis.call('ZRANGE', zs, 0, 0)
    if #oldest == 0 then break end
    drop(oldest[1])
    evicted = evicted + 1
  end
  local kept = redis.call('ZSCORE', zs, id) and 1 or 0
  for _, k in ipairs({ zs, ms, ss, bs }) do redis.call('PEXPIRE', k, ARGV[11]) end
  tidy()
  return { evicted, kept }

elseif op == 'fetch' then
  -- ARGV[4] cutoff, ARGV[5] limit; returns the JSON of up to limit messages, oldest first
  expire(ARGV[4])
  local ids = redis.call('ZRANGE', zs, 0, tonumber(ARGV[5]) - 1)
  tidy()
  -- In slices: unpack() of a few thousand values overflows Lua's stack.
  local out = {}
  for i = 1, #ids, 1000 do
    local slice = {}
    for j = i, math.min(i + 999, #ids) do slice[#slice + 1] = ids[j] end
    for _, m in ipairs(redis.call('HMGET', ms, unpack(slice))) do out[#out + 1] = m end
  end
  return out

elseif op == 'remove' then
  for i = 4, #ARGV do
    if redis.call('ZSCORE', zs, ARGV[i]) then drop(ARGV[i]) end
  end
  tidy()
  return 0

elseif op == 'stats' then
  -- ARGV[4] cutoff; returns {count, bytes, oldest ts or -1}
  expire(ARGV[4])
  local count = redis.call('ZCARD', zs)
  local oldest = redis.call('ZRANGE', zs, 0, 0, 'WITHSCORES')
  local bytes = tonumber(redis.call('GET', bs) or '0')
  tidy()
  if count == 0 then return { 0, 0, -1 } end
  return { count, bytes, tonumber(oldest[2]) }

elseif op == 'clear' then
  -- ARGV[4] cutoff; returns how many unexpired messages there were
  expire(ARGV[4])
  local count = redis.call('ZCARD', zs)
  redis.call('DEL', zs, ms, ss, bs)
  return count
end

return redis.error_reply('unknown offline operation ' .. tostring(op))
