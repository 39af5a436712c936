-- Admission: updates wait here, in Redis, until they can be sent now.
--
-- Every key of a shard is under one hash tag (KEYS[1] is "<prefix>:{adm}:accts"
-- for shard 0, "<prefix>:{adm:<i>}:accts" for shard i), so each call runs on
-- one Redis Cluster slot. An account lives in one shard; the API token's
-- schedule lives in shard 0 (ops tokens/untokens). Times are milliseconds, from
-- Redis's clock unless the caller passes one (tests).
--
--   accts          ZSET account -> when it may next send (only accounts with
--                  a ready organization and no park)
--   lane:<a>       ZSET org -> when its head update may go (orgs whose head
--                  waits; an org whose head is admitted or running is absent)
--   org:<o>        ZSET update id -> sequence number: the organization's line
--   upd:<id>       HASH a, o, q (queue), nb (not before), pl (payload), seq,
--                  og (origin: the sequence number of its first enqueue, kept
--                  by replays), gen (admission generation), state, owner
--   acct:<a>       HASH n (updates held), tat (next slot), iv (learned
--                  interval), known (interval at the last 429), lcut (until
--                  when a 429 is the last one's burst), until, hwhy,
--                  hstatus, hsince (a hold), parked, pstatus, psince (a park)
--   token          STRING the API token's next slot (pushed out by a 429 of the token's)
--   acct:          HASH (the empty account name) the token's learned rate
--   admitted       ZSET id -> lease end: admitted, not yet started by a worker
--   running        ZSET id -> lease end: started, heartbeated by its worker
--   parked         SET parked accounts;  held  ZSET account -> hold end
--   failing        SET accounts whose lane is held for failures in a row
--   parked_all     HASH why, status, since: every account parked
--   plan           STRING when the sleeping admitters look next
--   notify         LIST one token wakes one sleeping admitter
--   seq            STRING the last sequence number given out
--   shards         STRING how many shards admission has (absent: 1); adds
--                  naming another count are refused
local ACCTS = KEYS[1]
local B = string.sub(ACCTS, 1, -6)
local op = ARGV[1]
local now = tonumber(ARGV[2])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NEVER = 1e15
-- SLACK: a time this close to now counts as now (milliseconds).
local SLACK = 1

-- num renders a time for storing: tostring would keep only 14 digits.
local function num(x) return string.format('%.3f', x) end

local function akey(a) return B .. 'acct:' .. a end
local function lkey(a) return B .. 'lane:' .. a end
local function okey(o) return B .. 'org:' .. o end
local function ukey(id) return B .. 'upd:' .. id end

local function wake()
  redis.call('LPUSH', B .. 'notify', '1')
  redis.call('LTRIM', B .. 'notify', 0, 0)
end

-- schedule places account a at the time it may next send: its earliest ready
-- organization, its next rate-limit slot, the end of its hold, whichever is
-- last. An account with nothing ready, or parked, leaves the schedule. An
-- admitter is woken when the time is sooner than any of them plans to look,
-- unless quiet (the caller wakes one for all the accounts it scheduled, or is
-- an admitter itself). st is the account's parked, until, tat and funtil when
-- the caller has just read them.
local function schedule(a, quiet, st)
  st = st or redis.call('HMGET', akey(a), 'parked', 'until', 'tat', 'funtil')
  local first = redis.call('ZRANGE', lkey(a), 0, 0, 'WITHSCORES')
  if st[1] or #first == 0 then
    redis.call('ZREM', ACCTS, a)
    return nil
  end
  local at = math.max(tonumber(first[2]), tonumber(st[2] or '0'), tonumber(st[3] or '0'), tonumber(st[4] or '0'))
  redis.call('ZADD', ACCTS, at, a)
  if not quiet and at < tonumber(redis.call('GET', B .. 'plan') or NEVER) then wake() end
  return at
end

-- ready puts organization o of account a in a's lane when id heads its line.
local function ready(a, o, id, at)
  if redis.call('ZRANK', okey(o), id) == 0 then
    redis.call('ZADD', lkey(a), at, o)
    schedule(a)
  end
end

-- forget lets an account's record expire once it holds no updates and is
-- not parked: after its next slot and hold have passed, and, when it has a
-- learned rate, an hour later, so the lesson outlives a short lull.
local function forget(a, n)
  if n and n > 0 then return end -- n: its count of updates, when the caller just changed it
  local st = redis.call('HMGET', akey(a), 'n', 'parked', 'until', 'tat', 'iv')
  if tonumber(st[1] or '0') <= 0 and not st[2] then
    local keep = math.max(tonumber(st[3] or '0'), tonumber(st[4] or '0'), now) - now + 1000
    if st[5] then keep = keep + 3600000 end
    redis.call('PEXPIRE', akey(a), math.ceil(keep))
  end
end

-- accepted learns from a request of account a that was not refused for rate
-- (civ is its ceiling's interval, base where learning starts): the account
-- is healthy, so a lane held for its failures goes again (the probe that just
-- succeeded may have come from it), and a learned rate grows back, quickly
-- to 85 % of where it last hurt, slowly past it. It returns 1 when the
-- learned rate changed.
local function accepted(a, civ, base)
  local ak = akey(a)
  local st = redis.call('HMGET', ak, 'iv', 'known', 'fails', 'funtil')
  if st[3] then redis.call('HDEL', ak, 'fails') end
  if redis.call('SREM', B .. 'failing', a) == 1 and st[4] then
    redis.call('HDEL', ak, 'funtil')
    schedule(a)
  end
  local iv = math.max(tonumber(st[1] or '0'), civ)
  if st[1] == false or iv <= civ then return 0 end
  local known = tonumber(st[2] or '0')
  local ceil = 1 / math.max(civ, base / 10)
  local r = 1 / iv
  local target = 0
  if known > 0 then target = 0.85 / known end
  if r < target then r = math.min(r + ceil / 32, target) else r = r + ceil / 1024 end
  iv = 1 / r
  if iv <= civ then
    redis.call('HDEL', ak, 'iv', 'known')
  else
    redis.call('HSET', ak, 'iv', num(iv))
  end
  return 1
end

-- tokenWait says when the API token's next slot (tat, at interval tiv,
-- allowing burst requests at once) comes, or nil if it has come.
local function tokenWait(tat, tiv, burst)
  local slack = (burst - 1) * tiv
  if tat - now > slack then return tat - slack end
  return nil
end

-- tokenTake takes the token's next slot and returns the one after; a late
-- taker makes up to credit of an interval.
local function tokenTake(tat, tiv, credit)
  return math.max(tat, now - credit * tiv) + tiv
end

-- add puts update id in account a's lane, behind organization o's earlier
-- updates; it returns its sequence number, or 0 when id is already in.
local function add(id, a, o, q, nb, pl, origin)
  local uk = ukey(id)
  if redis.call('EXISTS', uk) == 1 then return 0 end
  -- Sequence numbers count up from the clock's milliseconds, so they are
  -- larger than any counted before (a restarted counter, an older version's
  -- per-organization numbers) and still strictly increasing.
  local seq = math.max(tonumber(redis.call('GET', B .. 'seq') or '0') + 1, math.floor(now))
  redis.call('SET', B .. 'seq', string.format('%d', seq))
  local og = tonumber(origin)
  if og == 0 then og = seq end
  redis.call('ZADD', okey(o), seq, id)
  redis.call('HSET', uk, 'a', a, 'o', o, 'q', q, 'nb', nb, 'pl', pl,
    -- Generations start at the sequence number, so a run task id
    -- ("<id>.<gen>") of this life never meets one of an earlier life (a
    -- replay, or a purge and re-enqueue, of the same id).
    'seq', seq, 'og', og, 'gen', seq, 'state', 'waiting')
  redis.call('HINCRBY', akey(a), 'n', 1)
  redis.call('PERSIST', akey(a))
  ready(a, o, id, math.max(now, tonumber(nb)))
  return seq
end

-- spread runs cmd on key with args (field and value pairs) in calls of at
-- most 1,000 arguments: Lua's unpack has a limit.
local function spread(cmd, key, args)
  for i = 1, #args, 1000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 999, #args)))
  end
end

-- addMany adds the updates whose arguments (those of add, seven each) start
-- at ARGV[from], in order: the same answers and the same state as add called
-- once per update, with what add repeats per update done once per call. The
-- sequence counter is read and written once; each account's record is
-- counted and persisted once; an organization's line is looked at for its
-- first update of the call only (a later one comes after it, so never heads
-- the line); the organizations that became ready enter their lane in one
-- ZADD per account, each such account is scheduled once, after all of them
-- (nothing else here moves its schedule), and at most one admitter is woken.
local function addMany(from)
  local out = {}
  local seq0 = tonumber(redis.call('GET', B .. 'seq') or '0')
  local last = seq0
  local added = {} -- id -> true: added by this call
  local lined = {} -- org -> true: this call added to its line
  local accts, count, lanes = {}, {}, {} -- accounts in first-added order; updates added; {at, org, ...}
  for i = from, #ARGV, 7 do
    local id, a, o, nb, origin = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 4], ARGV[i + 6]
    local uk = ukey(id)
    if added[id] or redis.call('EXISTS', uk) == 1 then
      out[#out + 1] = 0
    else
      -- As in add: up from the clock's milliseconds, strictly increasing.
      local seq = math.max(last + 1, math.floor(now))
      last = seq
      local og = tonumber(origin)
      if og == 0 then og = seq end
      redis.call('ZADD', okey(o), seq, id)
      redis.call('HSET', uk, 'a', a, 'o', o, 'q', ARGV[i + 3], 'nb', nb, 'pl', ARGV[i + 5],
        'seq', seq, 'og', og, 'gen', seq, 'state', 'waiting')
      added[id] = true
      if not count[a] then
        count[a] = 0
        accts[#accts + 1] = a
      end
      count[a] = count[a] + 1
      if not lined[o] then
        lined[o] = true
        if redis.call('ZRANK', okey(o), id) == 0 then -- ready, as add's ready()
          local l = lanes[a] or {}
          lanes[a] = l
          l[#l + 1] = math.max(now, tonumber(nb))
          l[#l + 1] = o
        end
      end
      out[#out + 1] = seq
    end
  end
  if last ~= seq0 then redis.call('SET', B .. 'seq', string.format('%d', last)) end
  local soonest = nil
  for _, a in ipairs(accts) do
    redis.call('HINCRBY', akey(a), 'n', count[a])
    redis.call('PERSIST', akey(a))
    if lanes[a] then
      spread('ZADD', lkey(a), lanes[a])
      local at = schedule(a, true)
      if at and (not soonest or at < soonest) then soonest = at end
    end
  end
  if soonest and soonest < tonumber(redis.call('GET', B .. 'plan') or NEVER) then wake() end
  return out
end

-- sharded refuses an add routed under another shard count than the one in
-- force (a producer that read it before an operator changed it).
local function sharded(n)
  local cur = redis.call('GET', B .. 'shards') or '1'
  if cur ~= n then
    return redis.error_reply('SHARDS admission has ' .. cur .. ' shards, not ' .. n)
  end
  return nil
end

-- empty says whether the shard holds no update and no hold: every update is
-- in a scheduled account's lane, admitted, running, or in a parked
-- account's; a 429's hold in force would be lost to an account that moves.
local function empty()
  for _, k in ipairs({'admitted', 'running'}) do
    if redis.call('ZCARD', B .. k) > 0 then return false end
  end
  return redis.call('ZCARD', ACCTS) == 0 and redis.call('SCARD', B .. 'parked') == 0
    and redis.call('ZCOUNT', B .. 'held', '(' .. num(now), '+inf') == 0
end

if op == 'add' then
  -- shards, id, account, org, queue, not_before, payload, origin (0: this enqueue)
  local bad = sharded(ARGV[3])
  if bad then return bad end
  return add(ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])

elseif op == 'addmany' then
  -- shards, then the arguments of add, seven per update, in enqueue order;
  -- returns the sequence number (or 0) of each: as add once per update.
  local bad = sharded(ARGV[3])
  if bad then return bad end
  return addMany(4)

elseif op == 'admit' then
  -- n, max_admitted, lease_ms, token_iv, account_iv, token_burst, owner,
  -- token_credit, account_credit (the fraction of an interval a late
  -- admitter may make up: what the headroom leaves room for), probe ('1':
  -- the open circuit's probe, which may go from a lane held for failures
  -- when nothing else is ready). token_iv < 0:
  -- the token's slots were taken from shard 0 for this pass (op tokens), n
  -- of them, and this pass does not pace the token itself.
  -- Returns {next, ready, id, gen, queue, payload, ...}: next is when to
  -- look again (now: more may be ready; NEVER: nothing is waiting, or only
  -- on a worker starting an admitted update, or on an operator); ready is
  -- how many accounts are left with an update ready now (the shard's demand
  -- for the token's slots).
  local pass = {n = tonumber(ARGV[3]), maxAdm = tonumber(ARGV[4]), lease = tonumber(ARGV[5]),
    tiv = tonumber(ARGV[6]), civ = tonumber(ARGV[7]), burst = tonumber(ARGV[8]), owner = ARGV[9],
    tcredit = tonumber(ARGV[10]), acredit = tonumber(ARGV[11]), probe = ARGV[12] == '1', count = 0, out = {}}
  redis.call('SET', B .. 'plan', 0) -- awake: scheduling below wakes no one
  pass.inAdm = redis.call('ZCARD', B .. 'admitted')
  pass.paced = pass.tiv >= 0
  pass.ttat = 0
  if pass.paced then
    pass.ttat = tonumber(redis.call('GET', B .. 'token') or '0')
    pass.tiv = math.max(pass.tiv, tonumber(redis.call('HGET', akey(''), 'iv') or '0'))
  else
    pass.tiv = 0
  end

  -- What stops a pass, checked in this order before each admission. Each
  -- returns when to look again (NEVER: only an event can change it), or
  -- nil to go on; head is the schedule's first account and its time.
  -- Nothing in a pass parks every account: looked at once.
  local parkedAll = redis.call('EXISTS', B .. 'parked_all') == 1
  local function everyAccountParked()
    if parkedAll then return NEVER end
  end
  local function maxAdmittedWaiting() -- for a worker to start one
    if pass.inAdm >= pass.maxAdm then
      redis.call('SET', B .. 'cap', 1)
      return NEVER
    end
  end
  local function nothingScheduled(head)
    if not head then return NEVER end
  end
  local function firstAccountNotDue(head) -- its slot, hold or earliest organization
    if head.at > now + SLACK then return head.at end
  end
  local function tokenSlotNotDue()
    return tokenWait(pass.ttat, pass.tiv, pass.burst)
  end
  local stops = {everyAccountParked, maxAdmittedWaiting, nothingScheduled, firstAccountNotDue, tokenSlotNotDue}

  -- The accounts this pass has scheduled: their place in the schedule is
  -- fresh, and need not be recomputed before it is trusted.
  local fresh = {}

  -- admitHead admits the head update of account a's first organization,
  -- taking a slot of the account's limit and of the token's.
  local function admitHead(a)
    local ak = akey(a)
    local o = redis.call('ZPOPMIN', lkey(a))[1]
    local id = o and redis.call('ZRANGE', okey(o), 0, 0)[1]
    -- The account's record, read once for its slot and its schedule.
    local st = redis.call('HMGET', ak, 'parked', 'until', 'tat', 'funtil', 'iv')
    if id then
      local uk = ukey(id)
      local u = redis.call('HMGET', uk, 'gen', 'q', 'pl')
      local gen = tonumber(u[1]) + 1
      redis.call('HSET', uk, 'gen', gen, 'state', 'admitted', 'owner', pass.owner)
      redis.call('ZADD', B .. 'admitted', now + pass.lease, id)
      pass.inAdm = pass.inAdm + 1
      local iv = math.max(tonumber(st[5] or '0'), pass.civ)
      -- An admitter that comes late to a slot makes up to a fraction of an
      -- interval of it (the headroom absorbs the requests that then come
      -- closer than one interval); without this every late wake-up would
      -- push every later slot back.
      local tat = math.max(tonumber(st[3] or '0'), now - pass.acredit * iv) + iv
      if iv < SLACK then
        -- No limit: a step of a microsecond, never past the slack, still
        -- makes the accounts with work take turns.
        tat = math.min(math.max(tonumber(st[3] or '0'), now) + 0.001, now + SLACK / 2)
      end
      st[3] = num(tat)
      redis.call('HSET', ak, 'tat', st[3])
      if pass.tiv > 0 then pass.ttat = tokenTake(pass.ttat, pass.tiv, pass.tcredit) end
      for _, v in ipairs({id, gen, u[2], u[3]}) do pass.out[#pass.out + 1] = v end
      pass.count = pass.count + 1
    end
    schedule(a, true, st)
    fresh[a] = true
  end

  local nxt, stopped = nil, nil
  for _ = 1, 4 * pass.n + 4 do
    if pass.count >= pass.n then break end
    local first = redis.call('ZRANGE', ACCTS, 0, 0, 'WITHSCORES')
    local head = nil
    if #first > 0 then head = {a = first[1], at = tonumber(first[2])} end
    for _, stop in ipairs(stops) do
      nxt = stop(head)
      if nxt then stopped = stop; break end
    end
    if nxt then break end
    local at = head.at
    if not fresh[head.a] then
      at = schedule(head.a, true) -- its score may be stale: recompute before trusting it
      fresh[head.a] = true
    end
    if at ~= nil and at <= now + SLACK then admitHead(head.a) end
  end
  -- The open circuit's probe may go from a lane held for failures in a row
  -- when nothing else is ready: those failures were most likely the
  -- upstream's, and a probe finding every lane so held would keep the
  -- circuit open until the holds end (up to a minute).
  local function probeFailingLane()
    for _, a in ipairs(redis.call('SMEMBERS', B .. 'failing')) do
      local st = redis.call('HMGET', akey(a), 'parked', 'until', 'tat')
      local first = redis.call('ZRANGE', lkey(a), 0, 0, 'WITHSCORES')
      if not st[1] and tonumber(st[2] or '0') <= now + SLACK and tonumber(st[3] or '0') <= now + SLACK
          and #first > 0 and tonumber(first[2]) <= now + SLACK then
        admitHead(a)
        if pass.count > 0 then return true end
      end
    end
    return false
  end
  -- Only when the pass found nothing ready, not when it stopped for a park,
  -- --max-admitted or the token.
  if pass.probe and pass.count == 0 and (stopped == nil or stopped == nothingScheduled or stopped == firstAccountNotDue)
      and probeFailingLane() then
    nxt = now
  end
  nxt = nxt or now -- stopped at n, or at the loop's bound: more may be ready
  if pass.paced and pass.tiv > 0 and pass.ttat > now then
    redis.call('SET', B .. 'token', num(pass.ttat), 'PX', math.ceil(pass.ttat - now) + 1000)
  end
  redis.call('SET', B .. 'plan', num(nxt))
  table.insert(pass.out, 1, redis.call('ZCOUNT', ACCTS, '-inf', now + SLACK))
  table.insert(pass.out, 1, num(nxt))
  return pass.out

elseif op == 'start' then
  -- id, gen, owner, lease_ms. {1, seq, origin}: the caller runs it; {0}: a
  -- stale ticket; {2}: its account was held or parked since: it went back.
  local id = ARGV[3]
  local uk = ukey(id)
  local h = redis.call('HMGET', uk, 'gen', 'state', 'seq', 'og', 'a', 'o')
  if h[1] ~= ARGV[4] or (h[2] ~= 'admitted' and h[2] ~= 'running') then return {0} end
  local ast = redis.call('HMGET', akey(h[5]), 'parked', 'until')
  if h[2] == 'admitted' and (ast[1] or tonumber(ast[2] or '0') > now
      or redis.call('EXISTS', B .. 'parked_all') == 1) then
    -- Held or parked since it was admitted (a 429 of an update admitted
    -- before it): back to its lane, under a new generation, unsent.
    redis.call('ZREM', B .. 'admitted', id)
    redis.call('HINCRBY', uk, 'gen', 1)
    redis.call('HSET', uk, 'state', 'waiting')
    ready(h[5], h[6], id, now)
    if redis.call('DEL', B .. 'cap') == 1 then wake() end
    return {2}
  end
  redis.call('ZREM', B .. 'admitted', id)
  redis.call('ZADD', B .. 'running', now + tonumber(ARGV[6]), id)
  redis.call('HSET', uk, 'state', 'running', 'owner', ARGV[5])
  if redis.call('DEL', B .. 'cap') == 1 then wake() end
  return {1, tonumber(h[3]), tonumber(h[4] or h[3])}

elseif op == 'extend' then
  -- owner, lease_ms, id...: extends the leases the owner still holds and
  -- returns the ids it no longer does.
  -- An admitted update's lease is not renewed: if no worker has started it
  -- within one lease (a worker took its task from the queue and died before
  -- starting it, its queue is unserved or paused, its task was lost), it goes
  -- back and is admitted again; the old task, if it ever runs, is stale.
  local owner, lease = ARGV[3], tonumber(ARGV[4])
  local lost = {}
  for i = 5, #ARGV do
    local h = redis.call('HMGET', ukey(ARGV[i]), 'owner', 'state')
    if h[1] == owner and h[2] == 'running' then
      redis.call('ZADD', B .. h[2], 'XX', now + lease, ARGV[i])
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
  return lost

elseif op == 'finish' then
  -- id: completed or dead. The organization's next update becomes ready.
  -- gen: the finishing run's generation ('' for any: a payload that could
  -- not be read). A run whose update went back and was admitted again since
  -- (its lease ran out) finishes nothing: the newer run decides.
  -- Then optionally 'ok', account, ceiling_iv, base_iv: the finishing
  -- run's request was accepted, learned as the learn op's "ok" would.
  local id = ARGV[3]
  if ARGV[5] == 'ok' then accepted(ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])) end
  local uk = ukey(id)
  local h = redis.call('HMGET', uk, 'a', 'o', 'gen', 'state')
  if h[1] and ARGV[4] ~= '' and h[3] ~= ARGV[4] then return 0 end
  -- Out of the leases: the one its state names, or both when it has none.
  if h[4] ~= 'admitted' then redis.call('ZREM', B .. 'running', id) end
  if h[4] ~= 'running' then redis.call('ZREM', B .. 'admitted', id) end
  if not h[1] then return 0 end
  local a, o = h[1], h[2]
  local rank = redis.call('ZRANK', okey(o), id)
  redis.call('ZREM', okey(o), id)
  redis.call('DEL', uk)
  local n = redis.call('HINCRBY', akey(a), 'n', -1)
  if rank == 0 then
    redis.call('ZREM', lkey(a), o)
    local nid = redis.call('ZRANGE', okey(o), 0, 0)[1]
    if nid then
      redis.call('ZADD', lkey(a), math.max(now, tonumber(redis.call('HGET', ukey(nid), 'nb') or '0')), o)
    end
    schedule(a)
  end
  forget(a, n)
  return 1

elseif op == 'retry' then
  -- id, gen, not_before: back to its lane, if gen is still its generation.
  local id = ARGV[3]
  local uk = ukey(id)
  local h = redis.call('HMGET', uk, 'a', 'o', 'gen', 'state')
  if not h[1] or h[3] ~= ARGV[4] or (h[4] ~= 'admitted' and h[4] ~= 'running') then return 0 end
  redis.call('ZREM', B .. 'running', id)
  redis.call('ZREM', B .. 'admitted', id)
  redis.call('HSET', uk, 'state', 'waiting', 'nb', ARGV[5])
  ready(h[1], h[2], id, math.max(now, tonumber(ARGV[5])))
  return 1

elseif op == 'unadmit' then
  -- id, gen: an admitted update that could not be handed to the queue goes
  -- back to its lane, under a new generation.
  local id = ARGV[3]
  local uk = ukey(id)
  local h = redis.call('HMGET', uk, 'a', 'o', 'gen', 'state')
  if not h[1] or h[3] ~= ARGV[4] or h[4] ~= 'admitted' then return 0 end
  redis.call('ZREM', B .. 'admitted', id)
  redis.call('HINCRBY', uk, 'gen', 1)
  redis.call('HSET', uk, 'state', 'waiting')
  ready(h[1], h[2], id, now)
  if redis.call('DEL', B .. 'cap') == 1 then wake() end
  return 1

elseif op == 'hold' then
  -- account, until_ms, reason, status: its lane waits until then, as a
  -- whole. A hold only ever extends.
  local a = ARGV[3]
  if a == '' then
    -- The token's own limit: every account waits.
    local cur = tonumber(redis.call('GET', B .. 'token') or '0')
    local u = tonumber(ARGV[4])
    if u > cur and u > now then redis.call('SET', B .. 'token', num(u), 'PX', math.ceil(u - now) + 1000) end
    return 1
  end
  if tonumber(ARGV[4]) > tonumber(redis.call('HGET', akey(a), 'until') or '0') then
    redis.call('HSET', akey(a), 'until', ARGV[4], 'hwhy', ARGV[5], 'hstatus', ARGV[6], 'hsince', num(now))
    redis.call('ZADD', B .. 'held', ARGV[4], a)
    redis.call('ZREMRANGEBYSCORE', B .. 'held', '-inf', now)
  end
  schedule(a)
  forget(a)
  return 1

elseif op == 'park' then
  -- account, reason, status: its lane is frozen until resumed. Account ""
  -- parks every account.
  if ARGV[3] == '' then
    redis.call('HSET', B .. 'parked_all', 'why', ARGV[4], 'status', ARGV[5], 'since', num(now))
    return 1
  end
  local ak = akey(ARGV[3])
  if not redis.call('HGET', ak, 'parked') then
    redis.call('HSET', ak, 'parked', ARGV[4], 'pstatus', ARGV[5], 'psince', num(now))
    redis.call('PERSIST', ak)
  end
  redis.call('SADD', B .. 'parked', ARGV[3])
  schedule(ARGV[3])
  return 1

elseif op == 'resume' then
  -- account ("" for the all-accounts park): lifts a park and a hold.
  local a = ARGV[3]
  if a == '' then
    local n = redis.call('DEL', B .. 'parked_all')
    wake()
    return n
  end
  local n = redis.call('HDEL', akey(a), 'parked', 'until', 'funtil')
  redis.call('HDEL', akey(a), 'pstatus', 'psince', 'hwhy', 'hstatus', 'hsince', 'fails')
  redis.call('SREM', B .. 'failing', a)
  redis.call('SREM', B .. 'parked', a)
  redis.call('ZREM', B .. 'held', a)
  schedule(a)
  forget(a)
  return n

elseif op == 'learn' then
  -- account, kind, ceiling_iv, base_iv, max_iv, value. kind: "limited" (a
  -- 429: halve the rate, remember where it hurt), "ok" (a success: grow back,
  -- quickly up to 85 % of where it hurt, slowly past it), "limit" (the
  -- upstream said its limit: value is the interval it allows).
  local a, kind = ARGV[3], ARGV[4]
  local civ, base, maxIv, value = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  if kind == 'ok' then return accepted(a, civ, base) end
  local ak = akey(a)
  local st = redis.call('HMGET', ak, 'iv', 'known', 'until', 'lcut')
  local iv = math.max(tonumber(st[1] or '0'), civ)
  local known = tonumber(st[2] or '0')
  if kind == 'limited' then
    -- One halving per burst: the other 429s of requests sent before it (the
    -- account is held, or the new interval has not passed yet) say nothing new.
    if tonumber(st[3] or '0') > now or tonumber(st[4] or '0') > now then return 0 end
    if iv <= 0 then iv = base end
    local niv = math.min(iv * 2, maxIv)
    redis.call('HSET', ak, 'known', num(iv), 'iv', num(niv), 'lcut', num(now + niv))
  elseif kind == 'limit' then
    if value > civ then
      redis.call('HSET', ak, 'iv', num(math.max(value, iv)), 'known', num(value * 0.85))
      -- The token's lesson is kept an hour past the last answer that taught it.
      if a == '' then redis.call('PEXPIRE', ak, 3600000) end
    end
  elseif kind == 'failed' then
    -- value: failures in a row that hold the lane; base: the first hold
    -- (ms), doubling, up to max_iv.
    local fails = redis.call('HINCRBY', ak, 'fails', 1)
    if fails < value then return 0 end
    local hold = math.min(base * 2 ^ (fails - value), maxIv)
    -- A lane held for failures admits nothing new until funtil; updates
    -- admitted before still go (unlike a 429's hold, which they would only meet).
    redis.call('HSET', ak, 'funtil', num(now + hold))
    redis.call('SADD', B .. 'failing', a)
    schedule(a)
    return math.ceil(hold)
  end
  return 1

elseif op == 'clearfails' then
  -- The upstream is healthy again (the circuit closed): the lanes held for
  -- failures that were Truto's, not their accounts', go at once.
  local n = 0
  for _, a in ipairs(redis.call('SMEMBERS', B .. 'failing')) do
    redis.call('HDEL', akey(a), 'funtil', 'fails')
    schedule(a)
    n = n + 1
  end
  redis.call('DEL', B .. 'failing')
  return n

elseif op == 'reap' then
  -- max: updates whose lease ran out (their worker died, or the admitter
  -- died before handing them to the queue) go back to their lanes, under a
  -- new generation so the old ticket is refused if it ever runs.
  local n = 0
  for _, set in ipairs({'running', 'admitted'}) do
    local ids = redis.call('ZRANGEBYSCORE', B .. set, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
    for _, id in ipairs(ids) do
      redis.call('ZREM', B .. set, id)
      local uk = ukey(id)
      local h = redis.call('HMGET', uk, 'a', 'o')
      if h[1] then
        redis.call('HINCRBY', uk, 'gen', 1)
        redis.call('HSET', uk, 'state', 'waiting')
        ready(h[1], h[2], id, now)
        n = n + 1
      end
    end
  end
  return n

elseif op == 'account' then
  -- account: {n, tat, iv, known, until, parked, lane size, scheduled at}
  local a = ARGV[3]
  local st = redis.call('HMGET', akey(a), 'n', 'tat', 'iv', 'known', 'until', 'parked', 'funtil')
  local sc = redis.call('ZSCORE', ACCTS, a)
  local held = math.max(tonumber(st[5] or '0'), tonumber(st[7] or '0'))
  return {st[1] or '0', st[2] or '0', st[3] or '0', st[4] or '0', num(held), st[6] or '',
    redis.call('ZCARD', lkey(a)), sc or ''}

elseif op == 'holds' then
  -- {kind, account, reason, status, since, until, ...}: the all-accounts
  -- park, parked accounts, then accounts held until a time.
  local out = {}
  local all = redis.call('HMGET', B .. 'parked_all', 'why', 'status', 'since')
  if all[1] then
    for _, v in ipairs({'parked', '', all[1], all[2], all[3], ''}) do out[#out + 1] = v end
  end
  for _, a in ipairs(redis.call('SMEMBERS', B .. 'parked')) do
    local h = redis.call('HMGET', akey(a), 'parked', 'pstatus', 'psince')
    for _, v in ipairs({'parked', a, h[1] or '', h[2] or '', h[3] or '', ''}) do out[#out + 1] = v end
  end
  redis.call('ZREMRANGEBYSCORE', B .. 'held', '-inf', now)
  for _, a in ipairs(redis.call('ZRANGE', B .. 'held', 0, -1)) do
    local h = redis.call('HMGET', akey(a), 'hwhy', 'hstatus', 'hsince', 'until', 'parked')
    if not h[5] then
      for _, v in ipairs({'rate_limited', a, h[1] or '', h[2] or '', h[3] or '', h[4] or ''}) do out[#out + 1] = v end
    end
  end
  return out

elseif op == 'update' then
  -- id: {state, gen, account, seq, origin, not_before, ahead, queue,
  -- payload}: ahead is how many updates of its organization go before it.
  local h = redis.call('HMGET', ukey(ARGV[3]), 'state', 'gen', 'a', 'seq', 'og', 'nb', 'o', 'q', 'pl')
  if not h[1] then return {} end
  return {h[1], h[2], h[3], h[4], h[5] or h[4], h[6], redis.call('ZRANK', okey(h[7]), ARGV[3]) or 0, h[8], h[9]}

elseif op == 'line' then
  -- org: {id, seq, origin, ...}: its line, in order.
  local out = {}
  local ids = redis.call('ZRANGE', okey(ARGV[3]), 0, -1, 'WITHSCORES')
  for i = 1, #ids, 2 do
    out[#out + 1] = ids[i]
    out[#out + 1] = ids[i + 1]
    out[#out + 1] = redis.call('HGET', ukey(ids[i]), 'og') or ids[i + 1]
  end
  return out

elseif op == 'tokens' then
  -- n, token_iv, token_burst, token_credit, shard, demand (shard 0 only):
  -- takes up to n of the API token's slots due now, for one admission pass
  -- of a shard whose last pass left demand accounts ready. Returns
  -- {granted, tat, iv, next}: give the unused ones back with untokens(tat,
  -- iv, shard, demand); next is when to ask again (none granted).
  --
  -- Fair shares: when the token's limit binds, the shards take its slots in
  -- proportion to their accounts with work, as one shard's accounts take
  -- turns. Each shard has a virtual clock (tshare v<i>); each slot it takes
  -- moves it on by 1/demand, and it may take one only while its clock is no
  -- more than one own step ahead of the slowest other shard that asked
  -- lately with accounts ready (d<i> > 0, s<i> recent); alone, it takes
  -- what is due.
  local n, tiv, burst, tcredit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local me, demand = ARGV[7], tonumber(ARGV[8])
  if redis.call('EXISTS', B .. 'parked_all') == 1 then return {0, '0', '0', num(NEVER)} end
  local ttat = tonumber(redis.call('GET', B .. 'token') or '0')
  tiv = math.max(tiv, tonumber(redis.call('HGET', akey(''), 'iv') or '0'))
  local wait = tokenWait(ttat, tiv, burst)
  if wait or n <= 0 then return {0, '0', '0', num(wait or now)} end
  if tiv <= 0 then return {n, '0', '0', num(now)} end
  local SH = B .. 'tshare'
  local share = redis.call('HGETALL', SH)
  local f = {}
  for i = 1, #share, 2 do f[share[i]] = tonumber(share[i + 1]) end
  local active = math.max(2000, 4 * tiv)
  local function isActive(id) return (f['d' .. id] or 0) > 0 and (f['s' .. id] or 0) >= now - active end
  local vmin = nil
  for k in pairs(f) do
    local id = string.match(k, '^d(.*)$')
    if id and id ~= me and isActive(id) then
      local v = f['v' .. id] or 0
      if vmin == nil or v < vmin then vmin = v end
    end
  end
  local step = 1 / math.max(demand, 1)
  local v = f['v' .. me] or 0
  -- A shard that was idle starts level with the others, not with the
  -- credit of the time it asked for nothing.
  if vmin ~= nil and not isActive(me) then v = math.max(v, vmin) end
  redis.call('HSET', SH, 'd' .. me, demand, 's' .. me, num(now))
  redis.call('PEXPIRE', SH, 60000)
  if vmin ~= nil and v > vmin + step + 1e-9 then
    -- Ahead of its share: the slot is left to the others; ask again at the next.
    return {0, '0', '0', num(math.max(ttat, now) + tiv)}
  end
  local g = 0
  repeat
    ttat = tokenTake(ttat, tiv, tcredit)
    g = g + 1
    v = v + step
    wait = tokenWait(ttat, tiv, burst)
  until g >= n or wait or (vmin ~= nil and v > vmin + step + 1e-9)
  redis.call('HSET', SH, 'v' .. me, num(v))
  redis.call('SET', B .. 'token', num(ttat), 'PX', math.ceil(ttat - now) + 1000)
  return {g, num(ttat), num(tiv), num(wait or now)}

elseif op == 'untokens' then
  -- k, tat, iv, shard, demand, ready: gives back k slots of a tokens call that
  -- left the token's next slot at tat, if no one has taken one since (else
  -- they are lost: the pass sends less, never more). Either way the shard's
  -- virtual clock goes back: it did not use them.
  local k, tat, tiv = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
  local vkey = 'v' .. ARGV[6]
  local v = tonumber(redis.call('HGET', B .. 'tshare', vkey) or '0')
  -- The pass's own count of ready accounts replaces the one it asked with:
  -- a shard that found nothing ready stops counting as one with work.
  redis.call('HSET', B .. 'tshare', vkey, num(v - k / math.max(tonumber(ARGV[7]), 1)), 'd' .. ARGV[6], ARGV[8])
  local cur = redis.call('GET', B .. 'token')
  if cur == tat and tiv > 0 then
    local back = tonumber(tat) - k * tiv
    if back > now then
      redis.call('SET', B .. 'token', num(back), 'PX', math.ceil(back - now) + 1000)
    else
      redis.call('DEL', B .. 'token')
    end
    return k
  end
  return 0

elseif op == 'setshards' then
  -- n: the shard count in force. Changed only while the shard holds no
  -- update (returns 1), or already n (1); 0: refused.
  local cur = redis.call('GET', B .. 'shards') or '1'
  if cur == ARGV[3] then return 1 end
  if not empty() then return 0 end
  if ARGV[3] == '1' then redis.call('DEL', B .. 'shards') else redis.call('SET', B .. 'shards', ARGV[3]) end
  return 1

elseif op == 'stats' then
  local first = redis.call('ZRANGE', ACCTS, 0, 0, 'WITHSCORES')
  return {redis.call('ZCARD', ACCTS), redis.call('ZCARD', B .. 'admitted'), redis.call('ZCARD', B .. 'running'),
    redis.call('SCARD', B .. 'parked'), redis.call('HGET', B .. 'parked_all', 'why') or '', first[2] or '', num(now)}
end
return redis.error_reply('admission: unknown operation ' .. tostring(op))
