-- One operation on one shared quota, applied atomically (a Redis script runs alone).
--
-- A port of class _Txn in _sqlite.py, step by step: read it for the meaning of each step.
-- Loaded by _redis.py; every call carries the quota's configuration, so no state is kept here.
--
-- KEYS (all share one hash tag, so the quota lives in one Redis Cluster slot):
--   KEYS[1]          prefix:{ns}:meta    HASH: the quota's scalars (see "Fields" below)
--   KEYS[2]          prefix:{ns}:leases  ZSET: member = lease id, score = expiry (seconds)
--   KEYS[3 + 2*i]    prefix:{ns}:w:<i>   ZSET: member = send key k (decimal), score = k
--   KEYS[4 + 2*i]    prefix:{ns}:n:<i>   HASH: send key k -> sends filed under it
--   KEYS[3 + 2*n]    prefix:{ns}:done    ZSET: member = lease id completed or given back,
--                                        score = when it may be forgotten (TOMBSTONE_S later)
--   (i = 0, 1, ...: the configuration's windows in order; k = ceil(t / resolution); n windows)
--
-- ARGV:
--   1 op ('reserve', 'complete', 'rate_limited', 'remaining', 'drain', 'charge', 'usage')
--   2 now ('' = Redis TIME; a number only for tests with an injected clock)
--   3 the epoch the calling process last saw '@' the time it saw it '@' the server's uptime in
--     seconds ('' on its first call; the uptime is '' but in tests: then INFO says)
--   4 the configuration's signature   5 policy   6 count_rejected ('1'/'0')
--   7 lookback   8 ramp_up_to   9 episode   10 keep_for in ms   11 number of windows
--   then per window: capacity, span, resolution
--   then the op's arguments.
--
-- Fields of meta: config, epoch, drained, paused_until, pause_started, level, ramp,
-- reservations, rate_limited, tightened; per window i: c<i> (cum), b<i> (base),
-- top<i>, fa<i> (fill_at), fc<i> (fill_cum), tk<i> (tokens), t<i>, f<i> (filled).
-- A field that is absent is the NULL of the SQLite table (-inf / inf / none, by its meaning).
--
-- Numbers cross to and from Redis as strings formatted with %.17g (they round-trip exactly;
-- a Lua number handed to redis.call or returned would be rounded or truncated).
--
-- Reply: { epoch, now, ... } (strings), the op's results after the first two.

local INF = math.huge
local NEG_INF = -math.huge
local CHUNK = 512 -- entries fetched per command when walking or trimming a window

local function fmt(x)
  if x == INF then return 'inf' end
  if x == NEG_INF then return '-inf' end
  return string.format('%.17g', x)
end

local function num(s, default)
  if s == nil or s == false or s == '' then return default end
  if s == 'inf' then return INF end
  if s == '-inf' then return NEG_INF end
  local x = tonumber(s)
  if x == nil then return default end
  return x
end

-- --- the call -------------------------------------------------------------------------------
local op = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local known_epoch, seen_at, uptime_arg = ARGV[3], nil, ''
do
  local e, seen, up = string.match(ARGV[3], '^([^@]*)@([^@]*)@(.*)$')
  if e then known_epoch, seen_at, uptime_arg = e, tonumber(seen), up end
end
local signature = ARGV[4]
local sliding = ARGV[5] == 'sliding'
local count_rejected = ARGV[6] == '1'
local lookback = tonumber(ARGV[7])
local ramp_up_to = tonumber(ARGV[8])
local episode = tonumber(ARGV[9])
local keep_ms = ARGV[10]
local nwin = tonumber(ARGV[11])
local first_arg = 12 + 3 * nwin
if #KEYS ~= 3 + 2 * nwin then
  return redis.error_reply('ERR pangocdp quota: expected ' .. (3 + 2 * nwin) .. ' keys')
end
local meta_key, leases_key, done_key = KEYS[1], KEYS[2], KEYS[3 + 2 * nwin]
-- A lease id completed or given back is remembered this long, so that a reservation delayed on
-- the wire past its retry or its release cannot take it again (a reply times out in seconds).
local TOMBSTONE_S = 120
local keep_s = tonumber(keep_ms) / 1000

-- Could a record found gone (or replaced) be the loss of sends still in their windows? Yes if
-- this process saw it less than keep_for ago (it could not have expired on its own), or if the
-- server restarted within keep_for (a restart loses what every process sent). Otherwise every
-- process was away for keep_for: the keys expired, and every send they held left its window.
local function may_have_lost()
  if seen_at == nil or now - seen_at < keep_s - 15 then return true end
  local uptime = tonumber(uptime_arg)
  if uptime == nil then
    uptime = tonumber(string.match(redis.call('INFO', 'server'), 'uptime_in_seconds:(%d+)'))
  end
  return uptime == nil or uptime < keep_s
end

-- --- load -----------------------------------------------------------------------------------
local raw = redis.call('HGETALL', meta_key)
local m = {}
for i = 1, #raw, 2 do m[raw[i]] = raw[i + 1] end
local loaded = {} -- field -> the number read (nil: absent), so only changes are written back
local function get(field, default)
  local x = num(m[field], nil)
  loaded[field] = x
  if x == nil then return default end
  return x
end

local epoch, drained, paused_until, pause_started, level, ramp
local reservations, rate_limited, tightened
local lost = false
local windows = {}
local wrote = false -- a key other than meta was written (then every key's TTL is renewed)

if m.config == nil or m.epoch == nil then
  -- A new quota, or one whose record vanished (expired, flushed) while this process was using
  -- it: then the windows may be full for all it knows. Whatever is left of the old record has
  -- no totals to go with it: start clean.
  redis.call('DEL', unpack(KEYS))
  m = {}
  local t = redis.call('TIME')
  -- unique per microsecond (over ~9 years), which is all an epoch needs to be
  epoch = (tonumber(t[1]) * 1000000 + tonumber(t[2])) % 281474976710656
  drained = 0
  paused_until, pause_started = NEG_INF, NEG_INF
  level, ramp = 0, INF
  reservations, rate_limited, tightened = 0, 0, 0
  lost = known_epoch ~= '' and may_have_lost()
else
  if m.config ~= signature then
    return redis.error_reply('ERR PANGOCDP_CONFIG_MISMATCH ' .. m.config)
  end
  epoch = get('epoch', 0)
  drained = get('drained', 0)
  paused_until = get('paused_until', NEG_INF)
  pause_started = get('pause_started', NEG_INF)
  level = get('level', 0)
  ramp = get('ramp', INF)
  reservations = get('reservations', 0)
  rate_limited = get('rate_limited', 0)
  tightened = get('tightened', 0)
  lost = known_epoch ~= '' and tonumber(known_epoch) ~= epoch and drained == 0
    and may_have_lost()
end

for i = 1, nwin do
  local j = tostring(i - 1)
  local a = 11 + 3 * (i - 1)
  local cap, span, res = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local names = { cum = 'c' .. j, base = 'b' .. j, top = 'top' .. j, fill_at = 'fa' .. j,
                  fill_cum = 'fc' .. j, tokens = 'tk' .. j, t = 't' .. j, filled = 'f' .. j }
  windows[i] = {
    names = names, cap = cap, span = span, res = res,
    step = span / cap, rate = cap / span,
    zkey = KEYS[1 + 2 * i], nkey = KEYS[2 + 2 * i],
    changed = m[names.cum] == nil,
    cum = get(names.cum, 0),
    base = get(names.base, 0),
    top = get(names.top, nil),
    fill_at = get(names.fill_at, NEG_INF),
    fill_cum = get(names.fill_cum, 0),
    tokens = get(names.tokens, cap),
    t = get(names.t, NEG_INF),
    filled = m[names.filled] == '1',
  }
end

-- --- the sends of one window ------------------------------------------------------------------
-- Sends filed under the entries of ranks lo..hi (oldest first).
local function sum_ranks(w, lo, hi)
  local total = 0
  while lo <= hi do
    local upto = math.min(hi, lo + CHUNK - 1)
    local ks = redis.call('ZRANGE', w.zkey, fmt(lo), fmt(upto))
    if #ks == 0 then break end
    local ns = redis.call('HMGET', w.nkey, unpack(ks))
    for i = 1, #ns do total = total + (tonumber(ns[i]) or 0) end
    lo = lo + #ks
  end
  return total
end

-- The key of the entry at which `need` sends are reached, walking from the oldest entry (or
-- the newest). Each entry holds at least one send, so no more entries are read than needed.
local function walk(w, need, newest)
  local seen, start = 0, 0
  while true do
    local stop = start + math.min(need - seen, CHUNK) - 1
    local ks
    if newest then
      ks = redis.call('ZREVRANGE', w.zkey, fmt(start), fmt(stop))
    else
      ks = redis.call('ZRANGE', w.zkey, fmt(start), fmt(stop))
    end
    if #ks == 0 then return nil end
    local ns = redis.call('HMGET', w.nkey, unpack(ks))
    for i = 1, #ks do
      seen = seen + (tonumber(ns[i]) or 0)
      if seen >= need then return tonumber(ks[i]) end
    end
    start = start + #ks
  end
end

-- --- one window (as _Txn) -------------------------------------------------------------------
local function tokens_at(w, t)
  if t <= w.t then return w.tokens end
  return math.min(w.cap, w.tokens + (t - w.t) * w.rate)
end

local function record(w, t, n)
  w.changed = true
  if not sliding then
    w.tokens = tokens_at(w, t) - n
    w.t = math.max(t, w.t)
    return
  end
  local k = math.ceil(t / w.res)
  if w.top ~= nil and w.top > k and w.cum > w.base then
    k = w.top -- never file before the newest send on record (as locally: the tail)
  end
  local member = fmt(k)
  wrote = true
  redis.call('ZADD', w.zkey, member, member)
  redis.call('HINCRBY', w.nkey, member, fmt(n))
  w.top = k
  w.cum = w.cum + n
end

local function expire(w)
  if not sliding then return end
  local cutoff = fmt(math.floor((now - w.span - lookback) / w.res))
  local gone = 0
  while true do
    local ks = redis.call('ZRANGEBYSCORE', w.zkey, '-inf', cutoff, 'LIMIT', '0', fmt(CHUNK))
    if #ks == 0 then break end
    local ns = redis.call('HMGET', w.nkey, unpack(ks))
    for i = 1, #ns do gone = gone + (tonumber(ns[i]) or 0) end
    wrote = true
    redis.call('ZREM', w.zkey, unpack(ks))
    redis.call('HDEL', w.nkey, unpack(ks))
    if #ks < CHUNK then break end
  end
  if gone ~= 0 then
    w.base = w.base + gone
    w.changed = true
  end
end

local function earliest(w, in_flight)
  if not sliding then
    local need = 1 + in_flight
    if need > w.cap then return INF end
    if w.tokens >= need then return w.t end
    return w.t + (need - w.tokens) / w.rate
  end
  local room = w.cap - in_flight
  if room <= 0 then return INF end
  local retained = w.cum - w.base
  local due = NEG_INF
  if retained >= room then
    -- the room-th most recent send: the kth counted from the oldest. Walk from whichever end
    -- is nearer (SQLite walks from the oldest).
    local kth = retained - room + 1
    local k
    if room <= kth then k = walk(w, room, true) else k = walk(w, kth, false) end
    if k ~= nil then due = k * w.res + w.span end
  end
  if w.fill_at > NEG_INF then
    local after_fill = w.cum - w.fill_cum + in_flight + 1
    due = math.max(due, math.min(w.fill_at + after_fill * w.step, w.fill_at + w.span))
  end
  return due
end

-- Sends on record filed after `since`: cum - base - (sends with k <= floor(since / res)),
-- summed over whichever side of `since` holds fewer entries.
local function count_after(w, since)
  local retained = w.cum - w.base
  local total = redis.call('ZCARD', w.zkey)
  if total == 0 then return retained end
  local older = redis.call('ZCOUNT', w.zkey, '-inf', fmt(math.floor(since / w.res)))
  if older == 0 then return retained end
  if total - older <= older then return sum_ranks(w, older, total - 1) end
  return retained - sum_ranks(w, 0, older - 1)
end

local function count(w, since)
  local real = count_after(w, since)
  if w.fill_at == NEG_INF then return real end
  if now >= w.fill_at + w.span then
    w.fill_at = NEG_INF
    w.changed = true
    return real
  end
  local gone = math.floor((now - w.fill_at) / w.step)
  local phantoms = math.max(0, w.cap - math.max(0, gone))
  return math.max(real, phantoms + w.cum - w.fill_cum)
end

local function used(w)
  if not sliding then return w.cap - math.floor(tokens_at(w, now)) end
  return count(w, now - w.span)
end

local function remaining_in(w, lb)
  if not sliding then return math.floor(tokens_at(w, now)) end
  return w.cap - count(w, now - w.span - math.min(lb, lookback))
end

local function fill(w, at)
  w.changed = true
  if not sliding then
    local t = math.max(at, w.t)
    w.tokens = math.min(0, tokens_at(w, t))
    w.t = t
    w.filled = true
    return
  end
  w.fill_at = at
  w.fill_cum = w.cum
end

local function relax(w, server_remaining)
  if not sliding then
    if not w.filled then return false end
    w.filled = false
    w.changed = true
    if tokens_at(w, now) >= server_remaining then return false end
    w.tokens = math.min(w.cap, server_remaining)
    w.t = math.max(now, w.t)
    return true
  end
  if w.fill_at == NEG_INF then return false end
  if w.cap - count(w, now - w.span) >= server_remaining then return false end
  w.fill_at = NEG_INF
  w.changed = true
  return true
end

local function add_phantoms(w, n)
  if n <= 0 then return end
  if sliding then
    local tail = now
    if w.top ~= nil and w.cum > w.base then tail = w.top * w.res end
    record(w, math.max(now, tail), math.min(n, w.cap))
  else
    record(w, math.max(now, w.t), math.min(n, w.cap))
  end
end

-- --- lost state, leases ------------------------------------------------------------------------
if lost then
  for i = 1, nwin do fill(windows[i], now) end
  drained = 1
end

local now_s = fmt(now)
local expired = redis.call('ZRANGEBYSCORE', leases_key, '-inf', now_s, 'WITHSCORES')
if #expired > 0 then
  for i = 2, #expired, 2 do
    local at = tonumber(expired[i])
    for j = 1, nwin do record(windows[j], at, 1) end -- its process went quiet: counted at the end
  end
  redis.call('ZREMRANGEBYSCORE', leases_key, '-inf', now_s)
  wrote = true
end
local in_flight = redis.call('ZCARD', leases_key)

-- --- the scheduler's operations ------------------------------------------------------------
local function due()
  local d = paused_until
  if in_flight >= ramp then return INF end
  for i = 1, nwin do
    local e = earliest(windows[i], in_flight)
    if e > d then d = e end
  end
  return d
end

local reply = {}
local a = first_arg

if op == 'reserve' then
  local lease_ttl, lease = tonumber(ARGV[a]), ARGV[a + 1]
  local d = due()
  redis.call('ZREMRANGEBYSCORE', done_key, '-inf', now_s)
  if redis.call('ZSCORE', leases_key, lease) then
    -- an earlier try took it, its answer was lost: it lasts lease_ttl from now
    redis.call('ZADD', leases_key, 'XX', fmt(now + lease_ttl), lease)
    wrote = true
    reply = { lease, now_s }
  elseif redis.call('ZSCORE', done_key, lease) then
    reply = { '', now_s } -- completed or given back: a try that arrived late takes nothing
  elseif d > now then
    reply = { '', fmt(d) }
  else
    reservations = reservations + 1
    redis.call('ZADD', leases_key, fmt(now + lease_ttl), lease)
    wrote = true
    in_flight = in_flight + 1
    reply = { lease, now_s }
  end
elseif op == 'complete' then
  local stamp = num(ARGV[a + 1], NEG_INF)
  local counted, rejected = ARGV[a + 2] == '1', ARGV[a + 3] == '1'
  -- a lease no longer held was completed already (a retry), or expired and counted at its end
  local held = redis.call('ZREM', leases_key, ARGV[a]) > 0
  redis.call('ZADD', done_key, fmt(now + TOMBSTONE_S), ARGV[a])
  redis.call('ZREMRANGEBYSCORE', done_key, '-inf', now_s)
  wrote = true
  if held then
    wrote = true
    in_flight = in_flight - 1
  else
    counted = false
  end
  if counted and (count_rejected or not rejected) then
    for i = 1, nwin do
      expire(windows[i])
      record(windows[i], now, 1)
    end
  end
  if ramp < INF and counted and not rejected and stamp > pause_started then
    if ramp >= ramp_up_to then ramp = INF else ramp = ramp * 2 end
  end
elseif op == 'rate_limited' then
  local stamp = num(ARGV[a], nil)
  local pause = tonumber(ARGV[a + 1])
  rate_limited = rate_limited + 1
  if not (stamp ~= nil and stamp <= pause_started) then
    local continues = now - math.max(pause_started, paused_until) <= episode
    if continues then level = math.min(level + 1, nwin) else level = 1 end
    for i = 1, math.min(level, nwin) do fill(windows[i], now) end
    pause_started = now
    paused_until = math.max(paused_until, now + pause)
    ramp = 1
  end
  reply = { fmt(paused_until) }
elseif op == 'remaining' then
  local remaining = tonumber(ARGV[a])
  local stamp = num(ARGV[a + 1], nil)
  local deficit = 0
  if remaining >= 0 then
    local lb = 0
    if stamp ~= nil then lb = math.max(0, now - stamp) end
    for i = 1, nwin do relax(windows[i], remaining - in_flight) end
    local model = remaining
    if nwin > 0 then
      model = INF
      for i = 1, nwin do
        local r = remaining_in(windows[i], lb)
        if r < model then model = r end
      end
    end
    model = model - in_flight
    deficit = model - remaining
    if deficit > 0 then
      tightened = tightened + deficit
      for i = 1, nwin do add_phantoms(windows[i], deficit) end
    else
      deficit = 0
    end
  end
  reply = { fmt(deficit) }
elseif op == 'drain' then
  for i = 1, nwin do fill(windows[i], now) end
elseif op == 'charge' then
  for i = 1, math.min(nwin, #ARGV - a + 1) do add_phantoms(windows[i], tonumber(ARGV[a + i - 1])) end
elseif op == 'usage' then
  local counts = {}
  for i = 1, nwin do counts[i] = fmt(used(windows[i]) + in_flight) end
  reply = { fmt(in_flight), fmt(due()) }
  for i = 1, nwin do reply[2 + i] = counts[i] end
else
  return redis.error_reply('ERR pangocdp quota: unknown operation ' .. tostring(op))
end

-- --- write back what changed -----------------------------------------------------------------
local hset, hdel = {}, {}
local ALWAYS = false -- (never a value: the field is always stored)
-- `x` into `field`, stored as an absent field when it is `absent` (the NULL of the SQLite
-- table: -inf, inf or none, by the field's meaning); formatted only when it changed.
local function put(field, x, absent)
  if x == absent then
    if m[field] ~= nil then hdel[#hdel + 1] = field end
  elseif x ~= loaded[field] then
    hset[#hset + 1] = field
    hset[#hset + 1] = fmt(x)
  end
end

if m.config ~= signature then
  hset[#hset + 1] = 'config'
  hset[#hset + 1] = signature
end
put('epoch', epoch, ALWAYS)
put('drained', drained, ALWAYS)
put('paused_until', paused_until, NEG_INF)
put('pause_started', pause_started, NEG_INF)
put('level', level, ALWAYS)
put('ramp', ramp, INF)
put('reservations', reservations, ALWAYS)
put('rate_limited', rate_limited, ALWAYS)
put('tightened', tightened, ALWAYS)
for i = 1, nwin do
  local w = windows[i]
  if w.changed then
    local names = w.names
    put(names.cum, w.cum, ALWAYS)
    put(names.base, w.base, ALWAYS)
    put(names.top, w.top, nil)
    put(names.fill_at, w.fill_at, NEG_INF)
    put(names.fill_cum, w.fill_cum, ALWAYS)
    put(names.tokens, w.tokens, ALWAYS)
    put(names.t, w.t, NEG_INF)
    local filled = w.filled and '1' or '0'
    if m[names.filled] ~= filled then
      hset[#hset + 1] = names.filled
      hset[#hset + 1] = filled
    end
  end
end
if #hset > 0 then redis.call('HSET', meta_key, unpack(hset)) end
if #hdel > 0 then redis.call('HDEL', meta_key, unpack(hdel)) end
-- Every key's TTL is renewed together, so they all expire at one instant (a quota is never
-- found half gone) keep_for after the last operation: an abandoned quota goes away. An
-- operation that wrote nothing renews them only once they aged by a tenth of keep_for (at most
-- 10 s): the renewal costs as much as the rest of a reservation.
local renew = wrote or #hset > 0 or #hdel > 0
if not renew then
  local keep = tonumber(keep_ms)
  renew = redis.call('PTTL', meta_key) < keep - math.min(math.floor(keep / 10), 10000)
end
if renew then
  -- (never before the last lease ends: a send in flight keeps its quota)
  local last = redis.call('ZRANGE', leases_key, -1, -1, 'WITHSCORES')
  local keep = tonumber(keep_ms)
  if #last == 2 then keep = math.max(keep, math.ceil((tonumber(last[2]) - now + 60) * 1000)) end
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], keep) end
end

local out = { fmt(epoch), now_s }
for i = 1, #reply do out[2 + i] = reply[i] end
return out
