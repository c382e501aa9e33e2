-- lockgate RedisBackend: the one script an instance runs, for everything it needs from Redis.
--
-- Every key is under one hash tag, so the script runs on one Redis Cluster slot:
--   KEYS[1..4]  {prefix:name}:seats:<lane>  ZSET  member <instance>:<seq>, score = lease expiry (ms)
--   KEYS[5]     {prefix:name}:wait          HASH  <instance>|<lane> -> <since>|<want>|<expiry>
--   KEYS[6]     {prefix:name}:instances     ZSET  member <instance>, score = expiry (ms)
-- Times are Redis's own (TIME), never a client's clock. Seat counts are ZCARDs of lease entries
-- pruned in this very call, never a counter.
--
-- ARGV: 1 instance  2 ttl_ms  3 C  4 seq (first free sequence number)  5 channel  6 leaving (0/1)
--       7..10 G  11..14 N  15..18 Max         (lane seats under C, lane order 0..3)
--       19..22 want  23..26 need  27..30 age  (per lane: seats asked for, of them for waiters
--                                              or unleased holders, age of the oldest waiter ms)
--       31 n, then n seats to give back, "<lane>|<member>" (lane '*': whichever lane holds it)
--       then m, then m seats to renew, "<lane>|<member>", or "<lane>!<member>" for a seat a
--       request still runs on: lost, it is leased again in this call (added to want and need)
-- Returns {granted lane 0..3, lost renewals, registry, nearest expiry ms (-1: none, or no
--          unmet need), live instances, seats leased in all}.
-- Granted seats are named <instance>:<seq>, <instance>:<seq+1>, ... in lane order (the client
-- reserves sum(want) plus one per "!" renewal).

local inst, ttl, C = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local seq, channel, leaving = tonumber(ARGV[4]), ARGV[5], ARGV[6] == '1'
local G, N, M, want, need, age = {}, {}, {}, {}, {}, {}
for i = 1, 4 do
  G[i] = tonumber(ARGV[6 + i])
  N[i] = tonumber(ARGV[10 + i])
  M[i] = tonumber(ARGV[14 + i])
  want[i] = tonumber(ARGV[18 + i])
  need[i] = tonumber(ARGV[22 + i])
  age[i] = tonumber(ARGV[26 + i])
end
local WAIT, INSTANCES = KEYS[5], KEYS[6]
local written = {false, false, false, false, false, true}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + ttl

-- 1. Leases past their expiry are gone, whoever held them (a killed instance's seats).
for i = 1, 4 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now) end
redis.call('ZREMRANGEBYSCORE', INSTANCES, '-inf', now)
if leaving then
  redis.call('ZREM', INSTANCES, inst)
else
  redis.call('ZADD', INSTANCES, expiry, inst)
end

-- 2. Give seats back. Idempotent: giving back a seat that is gone does nothing.
local pos, released = 31, 0
local count = tonumber(ARGV[pos])
for k = pos + 1, pos + count do
  local lane, id = string.sub(ARGV[k], 1, 1), string.sub(ARGV[k], 3)
  if lane == '*' then
    for i = 1, 4 do released = released + redis.call('ZREM', KEYS[i], id) end
  else
    released = released + redis.call('ZREM', KEYS[tonumber(lane) + 1], id)
  end
end
pos = pos + count + 1

-- 3. Renew. A lease that expired or was given back stays gone (a renewal racing a release
--    never resurrects it) and is reported lost; its request, if one still runs on it, asks
--    for a new seat in this very call, as a waiter (step 5), not as this lease renewed.
local lost = {}
count = tonumber(ARGV[pos])
for k = pos + 1, pos + count do
  local i, id = tonumber(string.sub(ARGV[k], 1, 1)) + 1, string.sub(ARGV[k], 3)
  if redis.call('ZSCORE', KEYS[i], id) then
    redis.call('ZADD', KEYS[i], expiry, id)
    written[i] = true
  else
    lost[#lost + 1] = ARGV[k]
    if string.sub(ARGV[k], 2, 2) == '!' then
      want[i] = want[i] + 1
      need[i] = need[i] + 1
    end
  end
end

-- 4. The waiters of other instances (lane, since, want), pruned by expiry.
local others, mine, changed = {}, {}, false
local raw = redis.call('HGETALL', WAIT)
for k = 1, #raw, 2 do
  local since, w, exp = string.match(raw[k + 1], '^(%d+)|(%d+)|(%d+)$')
  local who, lane = string.match(raw[k], '^(.*)|(%d)$')
  if not since or not who or tonumber(exp) <= now then
    redis.call('HDEL', WAIT, raw[k])
    changed = true
  elseif who == inst then
    mine[tonumber(lane) + 1] = tonumber(w)
  else
    others[#others + 1] = {lane = tonumber(lane) + 1, since = tonumber(since), want = tonumber(w),
                           who = who}
  end
end

local u, occupied = {}, 0
for i = 1, 4 do
  u[i] = redis.call('ZCARD', KEYS[i])
  occupied = occupied + math.max(u[i], G[i])
end

-- Seats owed to other instances' waiters served before a request of lane i whose oldest
-- waiter arrived at `since` (nil: no waiter, a prefetch, served after everyone). The order is
-- the in-process scheduler's hand-off order above the guarantees: by priority, then the
-- oldest waiter. Seats under a lane's guarantee and lanes at their Max are not owed against
-- the free seats.
local function owed(i, since)
  local total = 0
  for _, e in ipairs(others) do
    local j = e.lane
    if u[j] < M[j] then
      local ahead
      if since == nil then
        ahead = true
      elseif j ~= i then
        ahead = j < i
      else
        ahead = e.since < since or (e.since == since and e.who < inst)
      end
      if ahead then
        total = total + math.max(0, math.min(e.want, M[j] - u[j]) - math.max(0, G[j] - u[j]))
      end
    end
  end
  return total
end
local granted = {0, 0, 0, 0}
local function grant(i)
  if u[i] >= G[i] then occupied = occupied + 1 end
  u[i] = u[i] + 1
  granted[i] = granted[i] + 1
end

-- 5. Grant: guaranteed seats (no other lane ever uses them, I3), then the rest by priority
--    (as in-process: above the guarantees seats go by priority, decisions.md #1); never past
--    Max (I2) nor past C counting the seats owed to waiters ahead (I1). Seats for waiters
--    (need) of every lane first, then the rest of want (a block beyond the need): a block for
--    one lane must not take the last free seats from a waiter of a lower lane.
for i = 1, 4 do
  while granted[i] < want[i] and u[i] < G[i] do grant(i) end
end
for phase = 0, 1 do
  for i = 1, 4 do
    local upto = want[i]
    if phase == 0 then upto = math.min(want[i], need[i]) end
    local since = nil
    if need[i] > 0 then since = now - age[i] end
    local owed_waiters, owed_prefetch = nil, nil
    while granted[i] < upto and u[i] < M[i] do
      local debt
      if granted[i] < need[i] then
        owed_waiters = owed_waiters or owed(i, since)
        debt = owed_waiters
      else
        owed_prefetch = owed_prefetch or owed(i, nil)
        debt = owed_prefetch
      end
      if occupied + debt >= C then break end
      grant(i)
    end
  end
end

local next_seq = seq
for i = 1, 4 do
  for _ = 1, granted[i] do
    redis.call('ZADD', KEYS[i], expiry, inst .. ':' .. next_seq)
    next_seq = next_seq + 1
  end
  if granted[i] > 0 then written[i] = true end
end

-- 6. Record this instance's waiters that are still unserved, so that seats given back go to
--    the highest-priority, oldest waiter of any instance. The registry everyone gets is
--    who|lane|age_ms|want|eligible (eligible: the lane is under its Max, so free seats would
--    serve it; a lane at its Max waits for its own lane's seats only).
local function eligible(j) if u[j] < M[j] then return '1' else return '0' end end
local entries = {}
for _, e in ipairs(others) do
  entries[#entries + 1] = e.who .. '|' .. (e.lane - 1) .. '|' .. (now - e.since) .. '|' .. e.want
    .. '|' .. eligible(e.lane)
end
for i = 1, 4 do
  local field, rest = inst .. '|' .. (i - 1), need[i] - granted[i]
  if rest > 0 and not leaving then
    if mine[i] ~= rest then changed = true end
    redis.call('HSET', WAIT, field, (now - age[i]) .. '|' .. rest .. '|' .. expiry)
    written[5] = true
    entries[#entries + 1] = inst .. '|' .. (i - 1) .. '|' .. age[i] .. '|' .. rest .. '|'
      .. eligible(i)
  elseif mine[i] then
    redis.call('HDEL', WAIT, field)
    changed = true
  end
end
local registry = table.concat(entries, ';')

-- 7. Wake the other instances: waiters changed, or seats came back while someone waits.
if changed or (released > 0 and #others > 0) then
  redis.call('PUBLISH', channel, inst .. '#' .. registry)
end

-- The timer backstop of a refused waiter: when the next lease expires (a dead instance's
-- seats come back then without anyone publishing).
local nearest, unmet = -1, false
for i = 1, 4 do unmet = unmet or need[i] > granted[i] end
for i = 1, 4 do
  local first = unmet and redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES') or {}
  if first[2] then
    local d = tonumber(first[2]) - now
    if nearest < 0 or d < nearest then nearest = d end
  end
end
-- A key nobody writes for three lease lifetimes (every instance gone) vanishes on its own.
for i = 1, 6 do
  if written[i] then redis.call('PEXPIRE', KEYS[i], ttl * 3) end
end

return {granted[1], granted[2], granted[3], granted[4], lost, registry, nearest,
        redis.call('ZCARD', INSTANCES), u[1] + u[2] + u[3] + u[4]}
