"""Lua run by `RedisStore`: the audit entry inside its MULTI/EXEC transactions, and
the scripts of events, decisions and leases (each one atomic call)."""

from __future__ import annotations

# Appends one audit entry. It runs inside the MULTI of the write it records, so the
# id is taken in commit order and without gaps: an aborted transaction takes none.
# The entry arrives as JSON without its id ("{...}"); the id is spliced in front.
#
# KEYS[1] audit:seq   KEYS[2] audit (hash)   KEYS[3] audit:key:<target>
# KEYS[4] audit:env:<env> (only when the entry has an environment)
# ARGV[1] the entry's JSON without "id"
APPEND_AUDIT = """
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], id, '{"id":' .. id .. ',' .. string.sub(ARGV[1], 2))
redis.call('ZADD', KEYS[3], id, id)
if #KEYS >= 4 then
  redis.call('ZADD', KEYS[4], id, id)
end
return id
"""


# Counts one batch of events (docs/storage-events.md). A Lua script is atomic in
# isolation but not in failure: writes made before a runtime error stay. So the
# script checks every argument and computes every change first, and writes only
# at the end, with commands that cannot fail on data this store wrote (SET,
# HSET, HDEL, HINCRBY). A batch therefore counts entirely or not at all.
#
# KEYS[1] envs   KEYS[2] batch:<n>:<env>:<id>   KEYS[3] stages:<env>
# KEYS[4] exposed:<env>   KEYS[5] names:<env>
# ARGV[1] env   ARGV[2] seconds the batch id is kept   ARGV[3] prefix of stage keys
# ARGV[4] the events as one JSON array, in the order they apply (time, exposures
# first at ties), each an array:
#   [0, flag, variant, comparable (bool), flag_version, user, "at"]   an exposure
#   [1, event, user, value (number or null), at]                      a conversion
# An exposure's time is a string, Python's repr of the float: the shortest text
# that reads back as the same number, stored as it comes. (One argument rather
# than thousands: redis-py's packing of arguments costs more than the script.)
# Returns 1 (counted), 0 (a known batch id: nothing counted), -1 (no such environment).
#
# One user's exposures in the environment are one field of KEYS[4]: an entry per
# stage, "stage id,arm id,flags,first_at[,event id...]" joined by ";" (flags:
# 1 randomized + 2 mixed; the event ids are those the user converted on there).
# Arm and event names are small ids from KEYS[5] ("n:<name>" -> id, "i:<id>" ->
# name, "#" the last id). Counters of stage <id> are the hash <prefix><id>, fields
# <kind><population><#arm>:<arm><event>: kind x exposed, m mixed, u users who
# converted, v value sum; population a (all) or r (randomized); <event> only for
# u and v; #arm in bytes. An entry whose stage hash is gone (its flag was
# deleted) is dropped when its user is next written.
RECORD_EVENTS = r"""
local env, prefix = ARGV[1], ARGV[3]
if redis.call('HEXISTS', KEYS[1], env) == 0 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end

local huge, type, tonumber = math.huge, type, tonumber
local function finite(x) return type(x) == 'number' and x == x and x ~= huge and x ~= -huge end

-- 1. Every argument checked before anything is written (the exposure's checks
-- inline: they run 500 times a batch, and Lua function calls are not free).
local ok, events = pcall(cjson.decode, ARGV[4])
if not ok or type(events) ~= 'table' then return redis.error_reply('ERR the events are not a JSON array') end
local user_list, flag_list = {}, {}
local listed = {[user_list] = {}, [flag_list] = {}}
local function list(into, name)
  local seen = listed[into]
  if not seen[name] then seen[name] = true; into[#into + 1] = name end
end
for k, ev in ipairs(events) do
  if type(ev) ~= 'table' then return redis.error_reply('ERR bad event ' .. k) end
  if ev[1] == 0 then
    local at, version = type(ev[7]) == 'string' and tonumber(ev[7]), ev[5]
    if not (type(ev[2]) == 'string' and type(ev[3]) == 'string' and type(ev[4]) == 'boolean'
            and type(version) == 'number' and version == version and version ~= huge and version ~= -huge
            and type(ev[6]) == 'string' and at and at == at and at ~= huge and at ~= -huge) then
      return redis.error_reply('ERR bad exposure, event ' .. k)
    end
    ev[8] = at
    list(flag_list, ev[2])
    list(user_list, ev[6])
  elseif ev[1] == 1 then
    if ev[4] == cjson.null then ev[4] = false end
    if not (type(ev[2]) == 'string' and type(ev[3]) == 'string' and (ev[4] == false or finite(ev[4]))
            and finite(ev[5])) then
      return redis.error_reply('ERR bad conversion, event ' .. k)
    end
    list(user_list, ev[3])
  else
    return redis.error_reply('ERR bad event ' .. k)
  end
end

-- 2. Read what the batch needs (in bulk) and apply it in memory, in order.
local function hmget(key, fields)
  local out = {}
  for first = 1, #fields, 1000 do
    local chunk = {}
    for k = first, math.min(first + 999, #fields) do chunk[#chunk + 1] = fields[k] end
    local got = redis.call('HMGET', key, unpack(chunk))
    for k = 1, #chunk do out[chunk[k]] = got[k] end
  end
  return out
end

local stages = {}     -- flag -> {{start_version, stage id}, ...} | false (no such flag)
for flag, raw in pairs(hmget(KEYS[3], flag_list)) do
  local found = false
  if raw then
    found = {}
    for _, stage in ipairs(cjson.decode(raw)) do
      found[#found + 1] = {stage.start_version, string.format('%d', stage.id)}
    end
  end
  stages[flag] = found
end
local function stage_of(flag, version)
  local found = stages[flag]
  if not found then return nil end
  for k = #found, 2, -1 do
    if found[k][1] <= version then return found[k][2] end
  end
  return found[1][2]
end

local ids, names, new_names, last_id = {}, {}, {}, nil
local function find_id(name)            -- nil when the name has none yet
  local id = ids[name]
  if id == nil then
    id = redis.call('HGET', KEYS[5], 'n:' .. name) or false
    ids[name] = id
    if id then names[id] = name end
  end
  return id or nil
end
local function id_of(name)              -- allocates
  local id = find_id(name)
  if id == nil then
    last_id = (last_id or tonumber(redis.call('HGET', KEYS[5], '#') or '0')) + 1
    id = string.format('%d', last_id)
    ids[name], names[id] = id, name
    new_names[#new_names + 1] = name
  end
  return id
end
local function name_of(id)
  local name = names[id]
  if name == nil then
    name = redis.call('HGET', KEYS[5], 'i:' .. id)
    names[id] = name
  end
  return name
end

local alive = {}      -- stage id -> whether its stage still exists
local function is_alive(sid)
  local a = alive[sid]
  if a == nil then
    a = redis.call('EXISTS', prefix .. sid) == 1
    alive[sid] = a
  end
  return a
end

local stored = hmget(KEYS[4], user_list)
local users = {}      -- user -> {entries, dirty}
local function user_of(user)
  local u = users[user]
  if u == nil then
    u = {entries = {}, dirty = false}
    local raw = stored[user]
    if raw then
      for part in string.gmatch(raw, '[^;]+') do
        local f = {}
        for x in string.gmatch(part, '[^,]+') do f[#f + 1] = x end
        if is_alive(f[1]) then
          local flags = tonumber(f[3])
          local entry = {sid = f[1], arm = f[2], r = flags % 2 == 1, m = flags >= 2, at = tonumber(f[4]),
                         at_s = f[4]}
          if #f >= 5 then
            entry.evs, entry.evl = {}, {}
            for k = 5, #f do entry.evs[f[k]] = true; entry.evl[#entry.evl + 1] = f[k] end
          end
          u.entries[#u.entries + 1] = entry
        else
          u.dirty = true
        end
      end
    end
    users[user] = u
  end
  return u
end

-- Counter deltas per stage and arm: {exposed all, exposed randomized, mixed all,
-- mixed randomized, ev = {event -> {users all, users randomized, sum all, sum
-- randomized}}}; the field names are built once, when written.
local tallies = {}
local function tally(sid, arm)
  local by_arm = tallies[sid]
  if by_arm == nil then by_arm = {}; tallies[sid] = by_arm end
  local t = by_arm[arm]
  if t == nil then t = {0, 0, 0, 0}; by_arm[arm] = t end
  return t
end
local function event_tally(t, event)
  local by_event = t.ev
  if by_event == nil then by_event = {}; t.ev = by_event end
  local e = by_event[event]
  if e == nil then e = {0, 0, false, false}; by_event[event] = e end
  return e
end

for _, ev in ipairs(events) do
  if ev[1] == 0 then
    local sid = stage_of(ev[2], ev[5])
    if sid then
      local u = user_of(ev[6])
      local entry = nil
      for _, e in ipairs(u.entries) do if e.sid == sid then entry = e; break end end
      local variant = ev[3]
      if entry == nil then
        entry = {sid = sid, arm = id_of(variant), r = ev[4], m = false, at = ev[8], at_s = ev[7]}
        u.entries[#u.entries + 1] = entry
        u.dirty, alive[sid] = true, true
        local t = tally(sid, variant)
        t[1] = t[1] + 1
        if entry.r then t[2] = t[2] + 1 end
      else
        if not entry.m and find_id(variant) ~= entry.arm then
          local t = tally(sid, name_of(entry.arm))
          entry.m, u.dirty = true, true
          t[3] = t[3] + 1
          if entry.r then t[4] = t[4] + 1 end
        end
        if ev[8] < entry.at then
          entry.at, entry.at_s, u.dirty = ev[8], ev[7], true
        end
      end
    end
  else
    local u = user_of(ev[3])
    local event, value, at = ev[2], ev[4], ev[5]
    for _, entry in ipairs(u.entries) do
      if entry.at <= at then
        local e = event_tally(tally(entry.sid, name_of(entry.arm)), event)
        local eid = find_id(event)
        if eid == nil or not (entry.evs and entry.evs[eid]) then
          eid = id_of(event)
          if entry.evs == nil then entry.evs, entry.evl = {}, {} end
          entry.evs[eid] = true
          entry.evl[#entry.evl + 1] = eid
          u.dirty = true
          e[1] = e[1] + 1
          if entry.r then e[2] = e[2] + 1 end
        end
        if value then
          e[3] = (e[3] or 0) + value
          if entry.r then e[4] = (e[4] or 0) + value end
        end
      end
    end
  end
end

-- The shortest of 15, 16 or 17 significant digits that reads back as the same number.
local function exact(x)
  for _, digits in ipairs({'%.15g', '%.16g'}) do
    local s = string.format(digits, x)
    if tonumber(s) == x then return s end
  end
  return string.format('%.17g', x)
end

-- 3. Write.
redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2])
if #new_names > 0 then
  local args = {}
  for _, name in ipairs(new_names) do
    local id = ids[name]
    args[#args + 1] = 'n:' .. name; args[#args + 1] = id
    args[#args + 1] = 'i:' .. id; args[#args + 1] = name
  end
  args[#args + 1] = '#'; args[#args + 1] = string.format('%d', last_id)
  redis.call('HSET', KEYS[5], unpack(args))
end
local sets, dels = {}, {}
local function flush()
  if #sets > 0 then redis.call('HSET', KEYS[4], unpack(sets)); sets = {} end
  if #dels > 0 then redis.call('HDEL', KEYS[4], unpack(dels)); dels = {} end
end
for user, u in pairs(users) do
  if u.dirty then
    if #u.entries == 0 then
      dels[#dels + 1] = user
    else
      local parts = {}
      for k, e in ipairs(u.entries) do
        local flags = (e.r and 1 or 0) + (e.m and 2 or 0)
        local part = e.sid .. ',' .. e.arm .. ',' .. flags .. ',' .. e.at_s
        if e.evl then part = part .. ',' .. table.concat(e.evl, ',') end
        parts[k] = part
      end
      sets[#sets + 1] = user; sets[#sets + 1] = #parts == 1 and parts[1] or table.concat(parts, ';')
    end
    if #sets >= 1000 or #dels >= 1000 then flush() end
  end
end
flush()
-- Sums as doubles, the batch's own sum added to the stored one: the same
-- arithmetic as the SQLite backend, and no HINCRBYFLOAT error (an infinite
-- sum) to stop the script half-way.
local function add_sum(key, field, delta)
  local before = tonumber(redis.call('HGET', key, field) or '0')
  redis.call('HSET', key, field, exact(before + delta))
end
local function add_count(key, field, delta)
  if delta > 0 then redis.call('HINCRBY', key, field, delta) end
end
for sid, by_arm in pairs(tallies) do
  local key = prefix .. sid
  for arm, t in pairs(by_arm) do
    local head = #arm .. ':' .. arm
    add_count(key, 'xa' .. head, t[1]); add_count(key, 'xr' .. head, t[2])
    add_count(key, 'ma' .. head, t[3]); add_count(key, 'mr' .. head, t[4])
    for event, e in pairs(t.ev or {}) do
      add_count(key, 'ua' .. head .. event, e[1]); add_count(key, 'ur' .. head .. event, e[2])
      if e[3] then add_sum(key, 'va' .. head .. event, e[3]) end
      if e[4] then add_sum(key, 'vr' .. head .. event, e[4]) end
    end
  end
end
return 1
"""

# Appends a decision to a rollout, or overwrites its newest, keeping the newest
# `DECISIONS_KEPT`; refuses when the environment, flag or rollout is missing,
# atomically with a delete of the flag.
#
# KEYS[1] envs   KEYS[2] flags:<env>   KEYS[3] rollouts:<env>   KEYS[4] decisions:<n>:<env>:<flag>
# ARGV[1] env   ARGV[2] flag   ARGV[3] the decision's JSON   ARGV[4] "1" to replace the newest
# ARGV[5] how many to keep
# Returns 1, or -1 / -2 / -3 for no environment / flag / rollout.
RECORD_DECISION = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return -2 end
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0 then return -3 end
if ARGV[4] == '1' and redis.call('LLEN', KEYS[4]) > 0 then
  redis.call('LSET', KEYS[4], 0, ARGV[3])
else
  redis.call('LPUSH', KEYS[4], ARGV[3])
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
end
return 1
"""

# Takes or renews a lease. The value is "<expires_at> <holder>"; the lease is
# another holder's while its expires_at is after `now`. Who holds it is decided by
# that value and the caller's clock (which tests may set); the key's own TTL,
# longer than the lease, only clears leases nobody renews.
#
# KEYS[1] lease:<name>   ARGV[1] holder   ARGV[2] now   ARGV[3] expires_at (now + ttl)
# ARGV[4] the key's TTL in milliseconds
# Returns 1 (held by the caller until expires_at) or 0 (another holder's).
ACQUIRE_LEASE = """
local current = redis.call('GET', KEYS[1])
if current then
  local space = string.find(current, ' ', 1, true)
  local expires_at, holder = tonumber(string.sub(current, 1, space - 1)), string.sub(current, space + 1)
  if holder ~= ARGV[1] and expires_at > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3] .. ' ' .. ARGV[1], 'PX', ARGV[4])
return 1
"""

# Deletes a lease if `holder` holds it (expired or not).
# KEYS[1] lease:<name>   ARGV[1] holder
RELEASE_LEASE = """
local current = redis.call('GET', KEYS[1])
if current then
  local space = string.find(current, ' ', 1, true)
  if string.sub(current, space + 1) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
end
return 0
"""
