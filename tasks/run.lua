-- Runs: which updates a bulk run holds, line by line, and how many of them
-- have ended. Every key of one run shares its hash tag, so the script runs on
-- one Redis Cluster slot. KEYS[1] is the run's meta hash, KEYS[2] its lines,
-- KEYS[3] its ids.
--
--   meta   HASH name, started (ms), total (updates in the run), completed,
--          dead, purged (counts by end state), next_line (the highest line
--          number used), sealed (1: every line is in), finished (ms, when
--          the run became done), announcing (ms: a writer claimed its
--          run_done event), announced (1: its run_done event is out)
--   lines  HASH line number -> task id .. "\t" .. idempotency key
--   ids    HASH task id -> line number .. "|" .. state, where state is ""
--          (not ended), "c" (completed), "d" (dead) or "p" (purged)
--
-- A task id is in a run once, at the line where it was first added; a line
-- holds one task id, the last added there (a line edited in place and enqueued
-- again under the same run replaces its earlier update in the run).
local META, LINES, IDS = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local now = ARGV[2]
local ttl = tonumber(ARGV[3])
local counter = {c = 'completed', d = 'dead', p = 'purged'}

local function split(v)
  local bar = string.find(v, '|', 1, true)
  if not bar then return v, '' end
  return string.sub(v, 1, bar - 1), string.sub(v, bar + 1)
end

local function num(f)
  return tonumber(redis.call('HGET', META, f) or '0') or 0
end

-- done reports whether the run just became done and its event is not out yet
-- (again after a crash before the event was written: at least once).
local function done()
  if num('sealed') ~= 1 then return 0 end
  local total = num('total')
  if total == 0 or num('completed') + num('dead') + num('purged') < total then return 0 end
  if redis.call('HEXISTS', META, 'finished') == 0 then
    redis.call('HSET', META, 'finished', now)
  end
  if redis.call('HEXISTS', META, 'announced') == 1 then return 0 end
  return 1
end

local function keep()
  redis.call('PEXPIRE', META, ttl)
  redis.call('PEXPIRE', LINES, ttl)
  redis.call('PEXPIRE', IDS, ttl)
end

local function reopen()
  redis.call('HDEL', META, 'finished', 'announced', 'announcing')
end

if op == 'add' then
  -- ARGV[4] the run's name, then triples: line (0: the next free one), task id, key.
  -- Returns, per entry: its line and its state before ("new" if it was not in the run).
  -- The same answers and state as adding the entries one at a time, with the
  -- hashes read in one HMGET each and written once at the end: what this call
  -- has read or written of lines and ids is kept in seen (false: absent), the
  -- fields it changed in changed (in order); next_line and the counts here
  -- too. Lines are numbers throughout, as Redis was always given them.
  if redis.call('EXISTS', META) == 0 then
    redis.call('HSET', META, 'name', ARGV[4], 'started', now, 'total', 0, 'next_line', 0)
  end
  local seen = {[LINES] = {}, [IDS] = {}}
  local changed, order = {[LINES] = {}, [IDS] = {}}, {[LINES] = {}, [IDS] = {}}
  local function get(h, f)
    local v = seen[h][f]
    if v == nil then
      v = redis.call('HGET', h, f)
      seen[h][f] = v
    end
    return v
  end
  local function put(h, f, v)
    if not changed[h][f] then
      changed[h][f] = true
      table.insert(order[h], f)
    end
    seen[h][f] = v
  end
  local function prefetch(h, fields)
    for i = 1, #fields, 1000 do
      local part = {unpack(fields, i, math.min(i + 999, #fields))}
      local vs = redis.call('HMGET', h, unpack(part))
      for j, f in ipairs(part) do
        if seen[h][f] == nil then seen[h][f] = vs[j] end
      end
    end
  end
  local nextLine = num('next_line')
  local nextValue = nil -- next_line's new value, as the per-entry writes would have left it
  local delta, deltas = {}, {} -- counter -> change; counters changed, in order
  local function count(f, d)
    if not delta[f] then
      delta[f] = 0
      table.insert(deltas, f)
    end
    delta[f] = delta[f] + d
  end
  -- Read ahead: every entry's id, every line given, and the next free lines
  -- the entries without one take unless a line given moves next_line. Any
  -- other field (a replaced line's old id, a free line past a line given) is
  -- read when needed.
  local idFields, lineFields, free = {}, {}, 0
  for i = 5, #ARGV, 3 do
    table.insert(idFields, ARGV[i + 1])
    local line = tonumber(ARGV[i])
    if line <= 0 then
      free = free + 1
      table.insert(lineFields, nextLine + free)
    else
      table.insert(lineFields, line)
    end
  end
  prefetch(IDS, idFields)
  prefetch(LINES, lineFields)
  local out = {}
  local added = false
  for i = 5, #ARGV, 3 do
    local line, id, key = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
    local cur = get(IDS, id)
    if cur then
      local l, st = split(cur)
      table.insert(out, tonumber(l))
      table.insert(out, st)
    else
      if line <= 0 then
        nextLine = nextLine + 1
        line = nextLine
        nextValue = string.format('%d', nextLine)
      elseif line > nextLine then
        nextLine = line
        nextValue = line
      end
      local old = get(LINES, line)
      if old then
        local tab = string.find(old, '\t', 1, true)
        local oldid = string.sub(old, 1, tab - 1)
        local oc = get(IDS, oldid)
        if oc then
          local _, ost = split(oc)
          if counter[ost] then count(counter[ost], -1) end
          put(IDS, oldid, false)
          count('total', -1)
        end
      end
      put(LINES, line, id .. '\t' .. key)
      put(IDS, id, line .. '|')
      count('total', 1)
      added = true
      table.insert(out, line)
      table.insert(out, 'new')
    end
  end
  if nextValue then redis.call('HSET', META, 'next_line', nextValue) end
  for _, f in ipairs(deltas) do redis.call('HINCRBY', META, f, delta[f]) end
  for _, h in ipairs({LINES, IDS}) do
    local set, del = {}, {}
    for _, f in ipairs(order[h]) do
      local v = seen[h][f]
      if v then
        table.insert(set, f)
        table.insert(set, v)
      else
        table.insert(del, f)
      end
    end
    for j = 1, #set, 1000 do redis.call('HSET', h, unpack(set, j, math.min(j + 999, #set))) end
    for j = 1, #del, 1000 do redis.call('HDEL', h, unpack(del, j, math.min(j + 999, #del))) end
  end
  if added then
    redis.call('HSET', META, 'sealed', 0)
    reopen()
  end
  keep()
  return out
end

-- set records task id's state now: "c", "d", "p", or "" (waiting again:
-- replayed, or enqueued again after a purge). It returns 1 when that changed
-- something, 0 when not, -1 when the task id is not in the run.
local function set(id, new)
  local cur = redis.call('HGET', IDS, id)
  if not cur then return -1 end
  local line, st = split(cur)
  if st == new then return 0 end
  if counter[st] then redis.call('HINCRBY', META, counter[st], -1) end
  if counter[new] then redis.call('HINCRBY', META, counter[new], 1) end
  redis.call('HSET', IDS, id, line .. '|' .. new)
  if new == '' then reopen() end
  return 1
end

if op == 'set' then
  -- ARGV[4] task id, ARGV[5] its state. Returns {changed, became done}.
  local changed = set(ARGV[4], ARGV[5])
  if changed < 0 then return {-1, 0} end
  keep()
  return {changed, done()}
end

if op == 'setmany' then
  -- Pairs of task id and state from ARGV[4]. Returns {changed, became done}.
  local changed = 0
  for i = 4, #ARGV, 2 do
    if set(ARGV[i], ARGV[i + 1]) > 0 then changed = changed + 1 end
  end
  keep()
  return {changed, done()}
end

if op == 'seal' then
  -- Every line is in. Returns {exists, became done}.
  if redis.call('EXISTS', META) == 0 then return {0, 0} end
  redis.call('HSET', META, 'sealed', 1)
  keep()
  return {1, done()}
end

if op == 'claim' then
  -- Whoever finds the run done claims writing its run_done event: one writer
  -- at a time (two would write it twice). A claim older than ARGV[4] ms is
  -- taken as its writer's crash, so the event still goes out (at least once).
  if redis.call('HEXISTS', META, 'finished') == 0 or redis.call('HEXISTS', META, 'announced') == 1 then return 0 end
  local c = tonumber(redis.call('HGET', META, 'announcing') or '0')
  if c > 0 and tonumber(now) - c < tonumber(ARGV[4]) then return 0 end
  redis.call('HSET', META, 'announcing', now)
  return 1
end

if op == 'announced' then
  redis.call('HSET', META, 'announced', 1)
  redis.call('HDEL', META, 'announcing')
  return 1
end

return redis.error_reply('run.lua: unknown op ' .. tostring(op))
