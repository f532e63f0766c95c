-- The lock store and the lock rules, in Lua; each call (FCALL or EVALSHA) is one atomic step.
--
-- This is a line-by-line port of sidecar/engine/rules.py (the reference) onto Redis structures;
-- engine.lua, appended after this file, holds the operations and their dispatch. Every key is
-- B .. something, where B = key-prefix .. "{locks}:" (one hash tag: one Cluster slot).
--
-- Numbers that must survive exactly (times, scores, leases) travel as strings: Python writes
-- them with repr(), Lua with "%.17g", and cjson (which keeps only 14 digits) only ever sees the
-- strings. Tokens and sequence numbers are integers far below 2^53.

-- Everything this library defines lives in the one table S, and every function reaches the rest
-- through it. Run as a script (EVALSHA), the library defines all its functions again on every
-- call, and a Lua 5.1 closure pays for each upvalue it captures: with plain locals that was about
-- 35 us per call, with one table about 5 us. Run as a Redis Function (FCALL), they are defined
-- once, at FUNCTION LOAD.
local S = {}

-- A grant handed to a request waiting on another replica must be claimed by that replica
-- within this many seconds; otherwise the replica is taken for dead and the grant is revoked.
S.PICKUP_SECONDS = 5
S.SETTLE_LIMIT = 1000     -- at most this many handed-on requests are settled per call
S.OP_RECORD_SECONDS = 120 -- how long a retried release finds its first answer
S.A = 6                   -- the first argument of the operation itself

-- What this call is about, from its arguments: set first, read by everything below.
function S.begin(argv)
  S.ARGV = argv
  S.ME = argv[2]            -- the calling replica
  S.OP = argv[3]
  S.NOW_S = argv[4]
  S.NOW = tonumber(S.NOW_S)
  S.RETRY = argv[5] == '1'  -- this call repeats one whose answer was lost
  S.NULL = cjson.null
  S.GONE = {}               -- lock key -> true: its grant was deleted by this call (S.finish)
  S.JSON = {}               -- grant -> its JSON, as read or written by this call (S.arr)
  if argv[1] == S.B then return end  -- a Function's last call had this prefix: names are set
  S.B = argv[1]
  S.K_GRANTS = S.B .. 'grants'            -- hash: lock key -> grant (JSON)
  S.K_HOLDERS = S.B .. 'holders'          -- hash: lock key -> holder's owner id (for the sweep)
  S.K_GRANT_KEYS = S.B .. 'grant-keys'    -- zset (score 0): held lock keys, in byte order
  S.K_LEASES = S.B .. 'leases'            -- zset: lock key by lease expiry
  S.K_TOKENS = S.B .. 'tokens'            -- hash: lock key -> last fencing token (never deleted)
  S.K_SEQ = S.B .. 'seq'                  -- counter: FIFO order among equal scores
  S.K_REQUESTS = S.B .. 'requests'        -- hash: request id -> waiting request (JSON)
  S.K_ALL_WAITS = S.B .. 'all-waits'      -- zset (score 0): every wait of every key (S.wait_member)
  S.K_WAITING = S.B .. 'waiting'          -- zset: waiting request ids by seq
  S.K_DEADLINES = S.B .. 'deadlines'      -- zset: waiting request ids by deadline
  S.K_ENQUEUED = S.B .. 'enqueued'        -- zset: waiting request ids by enqueue time
  S.K_ARRIVALS = S.B .. 'arrivals'        -- zset: not yet promoted request ids by enqueue time
  S.K_PRIORITIES = S.B .. 'by-priority'   -- hash: priority label -> waiting requests
  S.K_QUEUED_KEYS = S.B .. 'queued-keys'  -- set: lock keys with a non-empty queue
  S.K_OUTCOMES = S.B .. 'outcomes'        -- hash: request id -> how it ended (JSON)
  S.K_OUTCOME_TIMES = S.B .. 'outcome-times'  -- zset: request ids by end time
  S.K_PICKUPS = S.B .. 'pickups'          -- zset: handed-on, unclaimed request ids by handoff time
  S.K_OPS = S.B .. 'ops'                  -- hash: release id -> its answer (S.recorded)
  S.K_OP_TIMES = S.B .. 'op-times'        -- zset: release ids by time
end

function S.k_queue(key) return S.B .. 'q:' .. key end
function S.k_owner_grants(owner) return S.B .. 'owner-grants:' .. owner end
function S.k_owner_requests(owner) return S.B .. 'owner-requests:' .. owner end
function S.k_replica_requests(replica) return S.B .. 'replica-requests:' .. replica end
function S.k_form(id) return S.B .. 'form:' .. id end   -- hash: S.put_form
function S.channel(replica) return S.B .. 'replica:' .. replica end


function S.fmt(x) return string.format('%.17g', x) end
function S.enc(x) return cjson.encode(x) end

-- JSON arrays are joined by hand: cjson encodes an empty table as {} rather than []. A grant
-- this call read or wrote is not encoded again.
function S.arr(items)
  local out = {}
  for i, v in ipairs(items) do out[i] = S.JSON[v] or S.enc(v) end
  return '[' .. table.concat(out, ',') .. ']'
end

function S.push(list, item) list[#list + 1] = item end

function S.extend(list, items)
  for _, item in ipairs(items) do list[#list + 1] = item end
end

-- Byte order, as Python sorts str (UTF-8 keeps code point order). Lua's own < follows the
-- server's locale (strcoll), which Redis sets from its environment.
function S.byte_less(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

function S.sorted(list)
  table.sort(list, S.byte_less)
  return list
end

function S.sorted_keys(set)
  local out = {}
  for key in pairs(set) do out[#out + 1] = key end
  return S.sorted(out)
end

function S.new_change()
  return { granted = {}, released = {}, expired = {}, ended = {}, queued = {}, promoted = {} }
end

function S.merge(into, other)
  for _, name in ipairs({ 'granted', 'released', 'expired', 'ended', 'queued', 'promoted' }) do
    S.extend(into[name], other[name])
  end
end

-- Only the non-empty parts: the answer is parsed on every call, so it is kept small.
function S.change_json(c)
  local parts = {}
  if #c.granted > 0 then
    local granted = {}
    for i, h in ipairs(c.granted) do
      granted[i] = h.json or ('{"request":' .. S.enc(h.request) .. ',"grants":' .. S.arr(h.grants) .. '}')
    end
    parts[1] = '"granted":[' .. table.concat(granted, ',') .. ']'
  end
  for _, name in ipairs({ 'released', 'expired', 'ended', 'queued', 'promoted' }) do
    if #c[name] > 0 then parts[#parts + 1] = '"' .. name .. '":' .. S.arr(c[name]) end
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- grants ----------------------------------------------------------------------------------------

function S.grant_of(key)
  if S.GONE[key] then return nil end
  local raw = redis.call('HGET', S.K_GRANTS, key)
  if not raw then return nil end
  local g = cjson.decode(raw)
  S.JSON[g] = raw
  return g
end

-- (A new grant has no lease entry to remove: delete_grant removed its predecessor's; a renewed
-- one always has a lease.) A key whose grant this call deleted is still in grant-keys.
function S.put_grant(g)
  local text = S.enc(g)
  S.JSON[g] = text
  redis.call('HSET', S.K_GRANTS, g.key, text)
  redis.call('HSET', S.K_HOLDERS, g.key, g.owner.id)
  if S.GONE[g.key] then
    S.GONE[g.key] = nil
  else
    redis.call('ZADD', S.K_GRANT_KEYS, 0, g.key)
  end
  redis.call('SADD', S.k_owner_grants(g.owner.id), g.key)
  if g.lease_expires_at ~= S.NULL then
    redis.call('ZADD', S.K_LEASES, g.lease_expires_at, g.key)
  end
end

-- The grant's entries stay until S.finish: a key handed straight on to the next waiter is then
-- overwritten rather than deleted and written again (four calls fewer per handoff). S.grant_of
-- sees it gone at once.
function S.delete_grant(g)
  S.GONE[g.key] = true
  redis.call('SREM', S.k_owner_grants(g.owner.id), g.key)
  if g.lease_expires_at ~= S.NULL then redis.call('ZREM', S.K_LEASES, g.key) end
end

-- The end of every operation: delete what delete_grant left for later and nothing took since.
function S.finish()
  for key in pairs(S.GONE) do
    redis.call('HDEL', S.K_GRANTS, key)
    redis.call('HDEL', S.K_HOLDERS, key)
    redis.call('ZREM', S.K_GRANT_KEYS, key)
  end
end

function S.blocking_grant(key, owner_id)
  local g = S.grant_of(key)
  if g and g.owner.id ~= owner_id then return g end
  return nil
end

-- requests and queues ---------------------------------------------------------------------------

function S.member(r) return string.format('%016d', r.seq) .. ':' .. r.id end
function S.id_of(m) return string.sub(m, 18) end

function S.get_request(id)
  local raw = redis.call('HGET', S.K_REQUESTS, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

S.CHUNK = 500  -- unpack() of many thousands of values overflows Lua's C stack

function S.get_requests(ids)
  local out = {}
  for first = 1, #ids, S.CHUNK do
    local last = math.min(first + S.CHUNK - 1, #ids)
    for _, raw in ipairs(redis.call('HMGET', S.K_REQUESTS, unpack(ids, first, last))) do
      if raw then out[#out + 1] = cjson.decode(raw) end
    end
  end
  return out
end

function S.has_lease(r)
  return r.lease_seconds ~= S.NULL and r.lease_seconds ~= nil and tonumber(r.lease_seconds) > 0
end

-- The id and score of the head of a key's queue, or nil.
function S.queue_head(key)
  local head = redis.call('ZRANGE', S.k_queue(key), 0, 0, 'WITHSCORES')
  if #head == 0 then return nil end
  return S.id_of(head[1]), tonumber(head[2])
end

function S.queue_rank(key, r)
  return redis.call('ZRANK', S.k_queue(key), S.member(r)) or 0
end

function S.add_request(r)
  redis.call('HSET', S.K_REQUESTS, r.id, S.enc(r))
  local m = S.member(r)
  for _, key in ipairs(r.keys) do
    redis.call('ZADD', S.k_queue(key), r.score, m)
    redis.call('ZADD', S.K_ALL_WAITS, 0, S.wait_member(key, r))
    redis.call('SADD', S.K_QUEUED_KEYS, key)
  end
  redis.call('ZADD', S.K_WAITING, r.seq, r.id)
  redis.call('ZADD', S.K_DEADLINES, r.deadline, r.id)
  redis.call('ZADD', S.K_ENQUEUED, r.enqueued_at, r.id)
  if not r.promoted then redis.call('ZADD', S.K_ARRIVALS, r.enqueued_at, r.id) end
  redis.call('HINCRBY', S.K_PRIORITIES, r.priority, 1)
  redis.call('SADD', S.k_owner_requests(r.owner.id), r.id)
  if r.replica ~= '' then redis.call('SADD', S.k_replica_requests(r.replica), r.id) end
  S.put_form(r)
end

-- A request for one key, without a lease, whose caller waits on a replica: when another
-- replica's release hands it the key, that release takes the straight path (S.release_straight),
-- which reads these pieces of its grant, outcome and message, encoded once, here, and so
-- decodes and encodes nothing. (On Redis, every piece of code a call runs for the first time
-- in a while costs several microseconds, and the waiter waits for all of it.)
function S.put_form(r)
  if #r.keys ~= 1 or S.has_lease(r) or (r.replica or '') == '' then return end
  redis.call('HSET', S.k_form(r.id), 'owner', r.owner.id, 'replica', r.replica,
    'owner_json', S.enc(r.owner), 'key_json', S.enc(r.keys[1]), 'id_json', S.enc(r.id),
    'replica_json', S.enc(r.replica))
end

-- A double as 16 hex digits whose byte order is the numbers' order: its big-endian bits with the
-- sign bit set (0 and above) or all bits flipped (below 0).
function S.sortable(x)
  if x == 0 then x = 0 end  -- -0 sorts as 0, as in a sorted set
  local bytes = { string.byte(struct.pack('>d', x), 1, 8) }
  if x < 0 then
    for i = 1, 8 do bytes[i] = 255 - bytes[i] end
  else
    bytes[1] = bytes[1] + 128
  end
  return string.format('%02x%02x%02x%02x%02x%02x%02x%02x', unpack(bytes))
end

-- A wait in all-waits, as a JSON array: [key, sortable score, seq (16 digits), request id,
-- owner]. In byte order the waits of one key stand together (the key's closing quote ends it)
-- and in the key's queue order, so the deadlock sweep reads every queue with one ZRANGE and
-- Python's JSON parser splits the members.
function S.wait_member(key, r)
  return S.enc({ key, S.sortable(tonumber(r.score)), string.format('%016d', r.seq), r.id, r.owner.id })
end

-- `loaded`: the request, when this call has already read it.
function S.remove_request(id, loaded)
  local r = loaded or S.get_request(id)
  if not r then return nil end
  redis.call('HDEL', S.K_REQUESTS, id)
  local m = S.member(r)
  for _, key in ipairs(r.keys) do redis.call('ZREM', S.k_queue(key), m) end
  redis.call('ZREM', S.K_WAITING, id)
  S.unindex(r)
  return r
end

-- The rest of removing a request that has left its queues and `waiting`: the indexes that only
-- the sweep, the queue summary, the deadlock search and per-owner or per-replica reads use.
-- S.release_straight leaves this for later (S.settle); a request has a deadline until it ran.
function S.unindex(r)
  if redis.call('ZREM', S.K_DEADLINES, r.id) == 0 then return end
  for _, key in ipairs(r.keys) do
    redis.call('ZREM', S.K_ALL_WAITS, S.wait_member(key, r))
    if redis.call('EXISTS', S.k_queue(key)) == 0 then redis.call('SREM', S.K_QUEUED_KEYS, key) end
  end
  redis.call('ZREM', S.K_ENQUEUED, r.id)
  redis.call('ZREM', S.K_ARRIVALS, r.id)
  redis.call('HINCRBY', S.K_PRIORITIES, r.priority, -1)
  redis.call('SREM', S.k_owner_requests(r.owner.id), r.id)
  if (r.replica or '') ~= '' then redis.call('SREM', S.k_replica_requests(r.replica), r.id) end
  redis.call('DEL', S.k_form(r.id))
end

-- Finish removing the requests S.release_straight handed on (those still with a deadline): called
-- first by every operation that reads the indexes S.unindex keeps. Normally there are none:
-- their replicas claim them (S.claim) within milliseconds.
function S.settle()
  for _, id in ipairs(redis.call('ZRANGE', S.K_PICKUPS, 0, S.SETTLE_LIMIT - 1)) do
    if redis.call('ZSCORE', S.K_DEADLINES, id) then
      local o = S.get_outcome(id)
      if o then S.unindex(o.request) end
    end
  end
end

function S.waiting_count() return redis.call('ZCARD', S.K_WAITING) end

function S.waiting(limit)
  if limit <= 0 then return {} end
  return S.get_requests(redis.call('ZRANGE', S.K_WAITING, 0, limit - 1))
end

-- outcomes and notifications --------------------------------------------------------------------

function S.record_outcome(o)
  redis.call('HSET', S.K_OUTCOMES, o.request_id, S.enc(o))
  redis.call('ZADD', S.K_OUTCOME_TIMES, o.finished_at, o.request_id)
end

function S.get_outcome(id)
  local raw = redis.call('HGET', S.K_OUTCOMES, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

-- Another replica waits for this request: tell it now (its sweep catches up if it misses this).
function S.remote(r) return r.replica ~= nil and r.replica ~= '' and r.replica ~= S.ME end

-- the rules (sidecar/engine/rules.py) -----------------------------------------------------------

-- `known`: key -> its grant (or false: free), as read earlier in this same call.
function S.grant_request(r, known)
  local lease = S.NULL
  if S.has_lease(r) then lease = S.fmt(S.NOW + tonumber(r.lease_seconds)) end
  local grants = {}
  for _, key in ipairs(r.keys) do
    local held = known[key]
    if held == nil then held = S.grant_of(key) end
    if held then  -- re-entrant: the owner keeps its grant and token as they are
      S.push(grants, held)
    else
      local g = {
        key = key, owner = r.owner, token = redis.call('HINCRBY', S.K_TOKENS, key, 1),
        acquired_at = S.NOW_S, lease_expires_at = lease, request_id = r.id,
      }
      S.put_grant(g)
      S.push(grants, g)
    end
  end
  return grants
end

function S.position(r)
  local worst = 0
  for _, key in ipairs(r.keys) do
    local rank = S.queue_rank(key, r)
    if rank > worst then worst = rank end
  end
  return worst + 1
end

function S.enqueue(r)
  r.seq = redis.call('INCR', S.K_SEQ)
  S.add_request(r)
  return r
end

-- `settled`: a key already known to be free with `r` at the head of its queue.
function S.grantable(r, known, settled)
  for _, key in ipairs(r.keys) do
    if key == settled then
      known[key] = false
    else
      local g = S.grant_of(key)
      known[key] = g or false
      if g and g.owner.id ~= r.owner.id then return false end
      if not g then
        local head = S.queue_head(key)
        if head and head ~= r.id then return false end
      end
    end
  end
  return true
end

function S.tokens_of(grants)
  local tokens = {}
  for _, g in ipairs(grants) do tokens[g.key] = g.token end
  return tokens
end

-- `r` (read as `stored`) has just been granted `grants`: record how it ended, tell its replica
-- if another one waits for it, and answer the handoff's JSON. The request as stored and its
-- grants are encoded once, for the outcome and the answer; the waiting replica has the request
-- and is sent the grants only.
function S.handed(r, stored, grants)
  local grants_json = S.arr(grants)
  local body = '"request":' .. stored .. ',"grants":' .. grants_json
  local id = S.enc(r.id)
  redis.call('HSET', S.K_OUTCOMES, r.id, '{"request_id":' .. id
    .. ',"ending":"granted","finished_at":' .. S.enc(S.NOW_S) .. ',"tokens":'
    .. S.enc(S.tokens_of(grants)) .. ',"detail":"",' .. body .. ',"replica":'
    .. S.enc(r.replica or '') .. '}')
  redis.call('ZADD', S.K_OUTCOME_TIMES, S.NOW_S, r.id)
  if S.remote(r) then
    redis.call('ZADD', S.K_PICKUPS, S.NOW_S, r.id)
    redis.call('PUBLISH', S.channel(r.replica), '{"t":"g","id":' .. id .. ',"grants":' .. grants_json .. '}')
  end
  return '{' .. body .. '}'
end

-- Grant the head of each key's queue if every key of that head is now grantable.
function S.hand_on(keyset)
  local handoffs = {}
  for _, key in ipairs(S.sorted_keys(keyset)) do
    if not S.grant_of(key) then
      local head = S.queue_head(key)
      local stored = head and redis.call('HGET', S.K_REQUESTS, head)
      local r = stored and cjson.decode(stored)
      local known = {}
      if r and S.grantable(r, known, key) then
        S.remove_request(r.id, r)
        local grants = S.grant_request(r, known)
        S.push(handoffs, { request = r, grants = grants, json = S.handed(r, stored, grants) })
      end
    end
  end
  return handoffs
end

function S.end_request(id, ending, detail)
  local change = S.new_change()
  local r = S.remove_request(id)
  if not r then return change end
  S.record_outcome({
    request_id = id, ending = ending, finished_at = S.NOW_S, tokens = {}, detail = detail,
    request = r, grants = {}, replica = r.replica or '',
  })
  if S.remote(r) then
    redis.call('PUBLISH', S.channel(r.replica),
      S.enc({ t = 'e', id = id, ending = ending, detail = detail, request = r }))
  end
  S.push(change.ended, { request = r, ending = ending, detail = detail })
  return change
end

function S.keys_of(change)
  local keys = {}
  for _, g in ipairs(change.released) do keys[g.key] = true end
  for _, g in ipairs(change.expired) do keys[g.key] = true end
  for _, e in ipairs(change.ended) do
    for _, key in ipairs(e.request.keys) do keys[key] = true end
  end
  return keys
end

-- The owner's grants of `keys`, or nil and an error naming the first key that is not its own.
function S.check_holder(owner_id, keys)
  local grants = {}
  for _, key in ipairs(keys) do
    local g = S.grant_of(key)
    if not g then return nil, { error = 'not_found', key = key } end
    if g.owner.id ~= owner_id then return nil, { error = 'denied', key = key } end
    S.push(grants, g)
  end
  return grants
end

function S.free(grants, expired)
  local change = S.new_change()
  local keys = {}
  for _, g in ipairs(grants) do
    S.delete_grant(g)
    keys[g.key] = true
  end
  if expired then change.expired = grants else change.released = grants end
  change.granted = S.hand_on(keys)
  return change
end

-- The grants a handed-on request still holds from its handoff (not those it held before).
function S.handed_grants(o)
  local held = {}
  for _, g in ipairs(o.grants or {}) do
    local now = S.grant_of(g.key)
    if now and now.request_id == o.request_id then S.push(held, now) end
  end
  return held
end

-- A handoff that its replica never claimed: that replica is gone. Revoke the grant (the keys go
-- on to the next waiters) and cancel the other requests that replica was waiting for.
function S.revoke_unclaimed(id, batch)
  local change = S.new_change()
  redis.call('ZREM', S.K_PICKUPS, id)
  local o = S.get_outcome(id)
  if not o or o.ending ~= 'granted' then return change end
  S.unindex(o.request)
  local replica = o.replica or ''
  local detail = 'granted, but replica ' .. replica .. ' did not claim it within '
    .. S.PICKUP_SECONDS .. 's; revoked'
  local grants = S.handed_grants(o)
  for _, g in ipairs(grants) do S.delete_grant(g) end
  S.extend(change.expired, grants)
  o.ending = 'cancelled'
  o.detail = detail
  S.record_outcome(o)
  S.push(change.ended, { request = o.request, ending = 'cancelled', detail = detail })
  if replica ~= '' then
    local others = S.sorted(redis.call('SRANDMEMBER', S.k_replica_requests(replica), batch))
    for _, other in ipairs(others) do
      S.merge(change, S.end_request(other, 'cancelled',
        'replica ' .. replica .. ' stopped answering while this request waited'))
    end
  end
  return change
end

-- The outcome of a handed-on request, claimed: whoever reads a grant has picked it up.
function S.claim(id)
  local o = S.get_outcome(id)
  if o and o.ending == 'granted' and redis.call('ZREM', S.K_PICKUPS, id) == 1 then
    S.unindex(o.request)
  end
  return o
end
