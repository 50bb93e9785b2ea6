-- impush presence in Redis: one script, one operation per call (ARGV[1]), so every change
-- that touches several keys is atomic. ARGV[2] is the key prefix; keys are built here, so
-- this targets a single Redis (or a primary with replicas), not Redis Cluster.
--
-- Keys under prefix P:
--   P:nodes            ZSET  node -> lease expiry (unix ms)
--   P:draining         SET   nodes whose last heartbeat said they are draining
--   P:node:{node}      HASH  connection -> client   (what a node holds)
--   P:conns:{client}   HASH  connection -> node     (a client's connections)
--   P:online           SET   clients with at least one connection
--   P:cchans:{client}  SET   channels of a client
--   P:chan:{channel}   SET   members of a channel
--   P:channels         SET   channels with at least one member

local op, p = ARGV[1], ARGV[2]

local function leave_all(client)
  local key = p .. ':cchans:' .. client
  for _, ch in ipairs(redis.call('SMEMBERS', key)) do
    redis.call('SREM', p .. ':chan:' .. ch, client)
    if redis.call('SCARD', p .. ':chan:' .. ch) == 0 then
      redis.call('SREM', p .. ':channels', ch)
    end
  end
  redis.call('DEL', key)
end

-- Removes every connection of `node`; returns a flat list client, connection, offline ("1" when
-- the client has no connection left). The caller picks which dropped connection was the last.
local function drop_node(node, clear)
  local held = redis.call('HGETALL', p .. ':node:' .. node)
  local out = {}
  for i = 1, #held, 2 do
    redis.call('HDEL', p .. ':conns:' .. held[i + 1], held[i])
  end
  local gone = {}
  for i = 1, #held, 2 do
    local conn, client = held[i], held[i + 1]
    if gone[client] == nil then
      gone[client] = redis.call('HLEN', p .. ':conns:' .. client) == 0
      if gone[client] then
        redis.call('SREM', p .. ':online', client)
        if clear == '1' then leave_all(client) end
      end
    end
    out[#out + 1] = client
    out[#out + 1] = conn
    out[#out + 1] = gone[client] and '1' or '0'
  end
  redis.call('DEL', p .. ':node:' .. node)
  redis.call('ZREM', p .. ':nodes', node)
  redis.call('SREM', p .. ':draining', node)
  return out
end

if op == 'connect' then
  local node, client, conn = ARGV[3], ARGV[4], ARGV[5]
  redis.call('HSET', p .. ':node:' .. node, conn, client)
  redis.call('HSET', p .. ':conns:' .. client, conn, node)
  redis.call('SADD', p .. ':online', client)
  return redis.call('HLEN', p .. ':conns:' .. client)

elseif op == 'disconnect' then
  local node, client, conn, clear = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  redis.call('HDEL', p .. ':node:' .. node, conn)
  redis.call('HDEL', p .. ':conns:' .. client, conn)
  local left = redis.call('HLEN', p .. ':conns:' .. client)
  if left == 0 then
    redis.call('SREM', p .. ':online', client)
    if clear == '1' then leave_all(client) end
  end
  return left

elseif op == 'leave_if_offline' then
  -- ARGV[3] client; returns 1 if it had no connection (and left its channels)
  local client = ARGV[3]
  if redis.call('HLEN', p .. ':conns:' .. client) > 0 then return 0 end
  local had = redis.call('SCARD', p .. ':cchans:' .. client)
  leave_all(client)
  if had > 0 then return 1 end
  return 0

elseif op == 'clear_node' then
  return drop_node(ARGV[3], ARGV[4])

elseif op == 'sync_node' then
  -- ARGV[3] node, ARGV[4] clear, then client, connection pairs: what the node really holds.
  -- Returns {removed, added}: removed = client, connection, offline triples (connections the
  -- store had and the node does not); added = client, connection, first triples. Additions go
  -- first, so a client whose ghost is replaced by a live connection never counts as gone.
  local node, clear = ARGV[3], ARGV[4]
  local want = {}
  for i = 5, #ARGV, 2 do want[ARGV[i + 1]] = ARGV[i] end
  local held = redis.call('HGETALL', p .. ':node:' .. node)
  local have = {}
  for i = 1, #held, 2 do have[held[i]] = true end
  local added = {}
  for i = 5, #ARGV, 2 do
    local client, conn = ARGV[i], ARGV[i + 1]
    if not have[conn] then
      local before = redis.call('HLEN', p .. ':conns:' .. client)
      redis.call('HSET', p .. ':node:' .. node, conn, client)
      redis.call('HSET', p .. ':conns:' .. client, conn, node)
      redis.call('SADD', p .. ':online', client)
      added[#added + 1] = client
      added[#added + 1] = conn
      added[#added + 1] = before == 0 and '1' or '0'
    end
  end
  local ghosts = {}
  for i = 1, #held, 2 do
    local conn, client = held[i], held[i + 1]
    if want[conn] == nil then
      redis.call('HDEL', p .. ':node:' .. node, conn)
      redis.call('HDEL', p .. ':conns:' .. client, conn)
      ghosts[#ghosts + 1] = { client, conn }
    end
  end
  local removed, gone = {}, {}
  for _, g in ipairs(ghosts) do
    local client = g[1]
    if gone[client] == nil then
      gone[client] = redis.call('HLEN', p .. ':conns:' .. client) == 0
      if gone[client] then
        redis.call('SREM', p .. ':online', client)
        if clear == '1' then leave_all(client) end
      end
    end
    removed[#removed + 1] = client
    removed[#removed + 1] = g[2]
    removed[#removed + 1] = gone[client] and '1' or '0'
  end
  return { removed, added }

elseif op == 'heartbeat' then
  -- ARGV[3] node, ARGV[4] now (ms), ARGV[5] expiry (ms); returns 1 if the node was known (not
  -- reaped or cleared since its last heartbeat, even if that lease ran out meanwhile: a stalled
  -- store is no reason for a live node to announce itself again)
  -- ARGV[6] is the node's state: 'draining' or 'live'.
  local old = redis.call('ZSCORE', p .. ':nodes', ARGV[3])
  redis.call('ZADD', p .. ':nodes', ARGV[5], ARGV[3])
  if ARGV[6] == 'draining' then
    redis.call('SADD', p .. ':draining', ARGV[3])
  else
    redis.call('SREM', p .. ':draining', ARGV[3])
  end
  if old then return 1 end
  return 0

elseif op == 'live_nodes' then
  -- ARGV[3] now (ms); returns node, state, ... for every lease that has not run out
  local out = {}
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', p .. ':nodes', '(' .. ARGV[3], '+inf')) do
    out[#out + 1] = node
    out[#out + 1] = redis.call('SISMEMBER', p .. ':draining', node) == 1 and 'draining' or 'live'
  end
  return out

elseif op == 'reap' then
  -- ARGV[3] now (ms), ARGV[4] clear; returns node, client, connection, offline, ... per dropped connection
  local out = {}
  for _, node in ipairs(redis.call('ZRANGEBYSCORE', p .. ':nodes', '-inf', ARGV[3])) do
    local dropped = drop_node(node, ARGV[4])
    for i = 1, #dropped, 3 do
      out[#out + 1] = node
      out[#out + 1] = dropped[i]
      out[#out + 1] = dropped[i + 1]
      out[#out + 1] = dropped[i + 2]
    end
  end
  return out

elseif op == 'join' then
  local ch = ARGV[3]
  for i = 4, #ARGV do
    redis.call('SADD', p .. ':chan:' .. ch, ARGV[i])
    redis.call('SADD', p .. ':cchans:' .. ARGV[i], ch)
  end
  if #ARGV >= 4 then redis.call('SADD', p .. ':channels', ch) end
  return 0

elseif op == 'leave' then
  local ch = ARGV[3]
  for i = 4, #ARGV do
    redis.call('SREM', p .. ':chan:' .. ch, ARGV[i])
    redis.call('SREM', p .. ':cchans:' .. ARGV[i], ch)
  end
  if redis.call('SCARD', p .. ':chan:' .. ch) == 0 then
    redis.call('SREM', p .. ':channels', ch)
  end
  return 0

elseif op == 'channel_online' then
  local n = 0
  for _, c in ipairs(redis.call('SMEMBERS', p .. ':chan:' .. ARGV[3])) do
    if redis.call('SISMEMBER', p .. ':online', c) == 1 then n = n + 1 end
  end
  return n

elseif op == 'channels' then
  -- name, members, online, ...
  local out = {}
  for _, ch in ipairs(redis.call('SMEMBERS', p .. ':channels')) do
    local members = redis.call('SMEMBERS', p .. ':chan:' .. ch)
    local online = 0
    for _, c in ipairs(members) do
      if redis.call('SISMEMBER', p .. ':online', c) == 1 then online = online + 1 end
    end
    out[#out + 1] = ch
    out[#out + 1] = #members
    out[#out + 1] = online
  end
  return out

elseif op == 'online' then
  local out = {}
  for i = 3, #ARGV do
    out[#out + 1] = redis.call('SISMEMBER', p .. ':online', ARGV[i])
  end
  return out
end

return redis.error_reply('unknown presence operation ' .. tostring(op))
