-- The backend operations (sidecar/backends/base.py), each one call of the library: one atomic
-- step in Redis. Appended to lib.lua; S.main dispatches. Every operation answers one JSON string.

-- The answer to an acquire: what the caller does not already know, and only what is set. The
-- request goes back only when it changed (queued: it got its sequence number).
function S.result(status, r, o)
  o = o or {}
  local out = '{"status":' .. S.enc(status)
  if (r.seq or 0) > 0 then out = out .. ',"request":' .. S.enc(r) end
  if o.grants and #o.grants > 0 then out = out .. ',"grants":' .. S.arr(o.grants) end
  if o.position then out = out .. ',"position":' .. o.position end
  if o.holders and #o.holders > 0 then out = out .. ',"holders":' .. S.arr(o.holders) end
  if o.waiting and #o.waiting > 0 then out = out .. ',"waiting":' .. S.arr(o.waiting) end
  if o.depth then out = out .. ',"depth":' .. o.depth end
  if o.change then out = out .. ',"change":' .. S.change_json(o.change) end
  return out .. '}'
end

-- A retried acquire whose first attempt did reach Redis: answer what that attempt did.
function S.repeated_acquire(r)
  local queued = S.get_request(r.id)
  if queued then
    local change = S.new_change()
    S.push(change.queued, queued)
    return S.result('queued', queued,
      { position = S.position(queued), depth = S.waiting_count(), change = change })
  end
  local o = S.claim(r.id)
  if o and o.ending == 'granted' then return S.result('granted', o.request, { grants = o.grants }) end
  if o then return S.result('queued', o.request, { position = 0 }) end  -- ended: its waiter is told
  return nil
end

function S.acquire(r, queue_if_busy, max_queue)
  if S.RETRY then
    local again = S.repeated_acquire(r)
    if again then return again end
  end
  local holders = {}
  local behind_waiter = false
  local known = {}
  for _, key in ipairs(r.keys) do
    local g = S.grant_of(key)
    known[key] = g or false
    if g and g.owner.id ~= r.owner.id then
      S.push(holders, g)
    elseif not g then
      local head, score = S.queue_head(key)
      -- A new request is younger than every waiter, so among equal scores it goes behind.
      if head and score <= tonumber(r.score) then behind_waiter = true end
    end
  end
  if #holders == 0 and not behind_waiter then
    return S.result('granted', r, { grants = S.grant_request(r, known) })
  end
  if not queue_if_busy then return S.result('busy', r, { holders = holders }) end
  if S.waiting_count() >= max_queue then
    return S.result('full', r, { holders = holders, waiting = S.waiting(max_queue) })
  end
  S.enqueue(r)
  local change = S.new_change()
  S.push(change.queued, r)
  return S.result('queued', r, {
    position = S.position(r), holders = holders, depth = S.waiting_count(), change = change,
  })
end

function S.enqueue_evicting(r, victim_id, max_queue)
  if S.RETRY then
    local again = S.repeated_acquire(r)
    if again then return again end
  end
  if redis.call('HEXISTS', S.K_REQUESTS, victim_id) == 0 or S.waiting_count() < max_queue then
    return '{"status":null}'
  end
  local change = S.end_request(victim_id, 'evicted', 'evicted by the queue overflow policy')
  S.enqueue(r)
  S.push(change.queued, r)
  -- The victim may have been at the head of a free key: the new request or another may go now.
  local keys = S.keys_of(change)
  for _, key in ipairs(r.keys) do keys[key] = true end
  change.granted = S.hand_on(keys)
  for _, h in ipairs(change.granted) do
    if h.request.id == r.id then
      local queued = {}
      for _, q in ipairs(change.queued) do
        if q.id ~= r.id then S.push(queued, q) end
      end
      change.queued = queued
      return S.result('granted', r, { grants = h.grants, change = change })
    end
  end
  return S.result('queued', r, { position = S.position(r), depth = S.waiting_count(), change = change })
end

-- Releases answer a retry with the first attempt's answer (kept OP_RECORD_SECONDS): repeating
-- a release could free a key that was meanwhile handed to someone else. The answers share one
-- hash: a key of its own with an expiry made a handoff across replicas 7% slower. Each call
-- forgets up to two answers past their time, so the hash cannot outgrow the releases of
-- OP_RECORD_SECONDS; the sweep forgets the rest when releases stop (S.forget_answers).
function S.recorded(op_id, answer)
  redis.call('HSET', S.K_OPS, op_id, answer)
  redis.call('ZADD', S.K_OP_TIMES, S.NOW_S, op_id)
  local oldest = redis.call('ZRANGE', S.K_OP_TIMES, 0, 1, 'WITHSCORES')
  for i = 1, #oldest, 2 do
    if tonumber(oldest[i + 1]) > S.NOW - S.OP_RECORD_SECONDS then break end
    redis.call('HDEL', S.K_OPS, oldest[i])
    redis.call('ZREM', S.K_OP_TIMES, oldest[i])
  end
  return answer
end

function S.forget_answers(limit)
  local old = redis.call('ZRANGEBYSCORE', S.K_OP_TIMES, '-inf',
    S.fmt(S.NOW - S.OP_RECORD_SECONDS), 'LIMIT', 0, math.min(limit, S.CHUNK))
  if #old > 0 then
    redis.call('HDEL', S.K_OPS, unpack(old))
    redis.call('ZREM', S.K_OP_TIMES, unpack(old))
  end
end

function S.release(op_id, owner_id, keys)
  local answer = #keys == 1
    and (S.release_straight(keys[1], owner_id) or S.release_one(keys[1], owner_id))
  if not answer then
    local grants, err = S.check_holder(owner_id, keys)
    if not grants then return S.enc(err) end
    answer = S.change_json(S.free(grants, false))
  end
  return S.recorded(op_id, answer)
end

-- The usual release, straight through: one key, let go by its holder, and either nobody waits
-- for it, or the next waiter has a form (S.put_form) and waits on another replica, which
-- waits for this script to end. It decodes and encodes nothing, and leaves the handed-on
-- request's indexes for later (S.unindex, run by S.claim or S.settle). Its message is plain
-- text, `g <token> <acquired_at> <request id>`: the waiting replica has the rest and parses no
-- JSON. On an idle server (as between handoffs) the whole call took 220-260 us the general way
-- and 160-180 us this way, one at a time (SLOWLOG). nil, having changed nothing, when it is not
-- that case.
function S.release_straight(key, owner_id)
  if redis.call('HGET', S.K_HOLDERS, key) ~= owner_id then return nil end
  local released = redis.call('HGET', S.K_GRANTS, key)
  if not released then return nil end
  local leased = not string.find(released, '"lease_expires_at":null', 1, true)
  local head = redis.call('ZRANGE', S.k_queue(key), 0, 0)[1]
  if not head then
    redis.call('HDEL', S.K_GRANTS, key)
    redis.call('HDEL', S.K_HOLDERS, key)
    redis.call('ZREM', S.K_GRANT_KEYS, key)
    redis.call('SREM', S.k_owner_grants(owner_id), key)
    if leased then redis.call('ZREM', S.K_LEASES, key) end
    return '{"released":[' .. released .. ']}'
  end
  local id = S.id_of(head)
  local form = redis.call('HMGET', S.k_form(id),
    'owner', 'replica', 'owner_json', 'key_json', 'id_json', 'replica_json')
  local owner, replica, key_json, id_json = form[1], form[2], form[4], form[5]
  if not owner or replica == S.ME then return nil end
  local stored = redis.call('HGET', S.K_REQUESTS, id)
  if not stored then return nil end
  local token = redis.call('HINCRBY', S.K_TOKENS, key, 1)
  local grants = '[{"key":' .. key_json .. ',"owner":' .. form[3] .. ',"token":' .. token
    .. ',"acquired_at":"' .. S.NOW_S .. '","lease_expires_at":null,"request_id":' .. id_json
    .. '}]'
  redis.call('HSET', S.K_GRANTS, key, string.sub(grants, 2, -2))
  redis.call('HSET', S.K_HOLDERS, key, owner)
  redis.call('SREM', S.k_owner_grants(owner_id), key)
  redis.call('SADD', S.k_owner_grants(owner), key)
  if leased then redis.call('ZREM', S.K_LEASES, key) end
  redis.call('ZREM', S.k_queue(key), head)
  redis.call('ZREM', S.K_WAITING, id)
  redis.call('HDEL', S.K_REQUESTS, id)
  redis.call('HSET', S.K_OUTCOMES, id, '{"request_id":' .. id_json
    .. ',"ending":"granted","finished_at":"' .. S.NOW_S .. '","tokens":{' .. key_json .. ':'
    .. token .. '},"detail":"","request":' .. stored .. ',"grants":' .. grants
    .. ',"replica":' .. form[6] .. '}')
  redis.call('ZADD', S.K_OUTCOME_TIMES, S.NOW_S, id)
  redis.call('ZADD', S.K_PICKUPS, S.NOW_S, id)
  redis.call('PUBLISH', S.channel(replica), 'g ' .. token .. ' ' .. S.NOW_S .. ' ' .. id)
  return '{"released":[' .. released .. '],"granted":[{"request":' .. stored .. ',"grants":'
    .. grants .. '}]}'
end

-- A release of one key by its holder that S.release_straight does not take: the steps S.free
-- and S.hand_on take for it, with fewer tables and loops. nil, having changed nothing, when the
-- head of the queue wants more keys than this one.
function S.release_one(key, owner_id)
  local raw = redis.call('HGET', S.K_GRANTS, key)
  if not raw then return nil end
  local g = cjson.decode(raw)
  if g.owner.id ~= owner_id then return nil end
  local head = redis.call('ZRANGE', S.k_queue(key), 0, 0)[1]
  local stored = head and redis.call('HGET', S.K_REQUESTS, S.id_of(head))
  local r = stored and cjson.decode(stored)
  if head and not (r and #r.keys == 1) then return nil end
  S.delete_grant(g)
  local answer = '{"released":[' .. raw .. ']'
  if r then
    S.remove_request(r.id, r)
    local handed = S.handed(r, stored, S.grant_request(r, { [key] = false }))
    answer = answer .. ',"granted":[' .. handed .. ']'
  end
  return answer .. '}'
end

function S.release_owner(op_id, owner_id)
  S.settle()
  local change = S.new_change()
  for _, id in ipairs(S.sorted(redis.call('SMEMBERS', S.k_owner_requests(owner_id)))) do
    S.merge(change, S.end_request(id, 'cancelled', 'owner released all its locks'))
  end
  for _, key in ipairs(S.sorted(redis.call('SMEMBERS', S.k_owner_grants(owner_id)))) do
    local g = S.grant_of(key)
    if g then
      S.delete_grant(g)
      S.push(change.released, g)
    end
  end
  change.granted = S.hand_on(S.keys_of(change))
  return S.recorded(op_id, S.change_json(change))
end

function S.force_release(op_id, keys)
  local grants = {}
  for _, key in ipairs(keys) do
    local g = S.grant_of(key)
    if g then S.push(grants, g) end
  end
  return S.recorded(op_id, S.change_json(S.free(grants, false)))
end

function S.cancel(id, ending, detail)
  local change = S.end_request(id, ending, detail)
  change.granted = S.hand_on(S.keys_of(change))
  local outcome = S.NULL
  if #change.ended == 0 then
    -- Not waiting any more. If it was this replica's request, say how it ended, so a grant
    -- that raced with the cancel still reaches (and is released by) the one who asked.
    local o = S.get_outcome(id)
    if o and o.replica == S.ME then outcome = S.claim(id) end
  end
  return '{"change":' .. S.change_json(change) .. ',"outcome":' .. S.enc(outcome) .. '}'
end

function S.renew(owner_id, lease_seconds, keys)
  local grants, err = S.check_holder(owner_id, keys)
  if not grants then return S.enc(err) end
  local lease = S.fmt(S.NOW + tonumber(lease_seconds))
  for _, g in ipairs(grants) do
    g.lease_expires_at = lease
    S.put_grant(g)
  end
  return S.arr(grants)
end

function S.sweep(promote_before, batch, promoted_offset)
  S.settle()
  local change = S.new_change()
  local expired = {}
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', S.K_LEASES, '-inf', S.NOW_S, 'LIMIT', 0, batch)) do
    local g = S.grant_of(key)
    if g then
      S.delete_grant(g)
      S.push(expired, g)
    else
      redis.call('ZREM', S.K_LEASES, key)
    end
  end
  change.expired = expired
  local due = redis.call('ZRANGEBYSCORE', S.K_DEADLINES, '-inf', S.NOW_S, 'LIMIT', 0, batch)
  for _, id in ipairs(due) do
    S.merge(change, S.end_request(id, 'timed_out', 'queue-timeout passed'))
  end
  local unclaimed = redis.call('ZRANGEBYSCORE', S.K_PICKUPS, '-inf',
    S.fmt(S.NOW - S.PICKUP_SECONDS), 'LIMIT', 0, batch)
  for _, id in ipairs(unclaimed) do S.merge(change, S.revoke_unclaimed(id, batch)) end
  local affected = S.keys_of(change)
  if promote_before ~= '' then
    local ids = redis.call('ZRANGEBYSCORE', S.K_ARRIVALS, '-inf', '(' .. promote_before,
      'LIMIT', 0, batch)
    for _, r in ipairs(S.get_requests(ids)) do
      S.remove_request(r.id)
      local promoted = cjson.decode(S.enc(r))
      promoted.score = S.fmt(tonumber(r.enqueued_at) - promoted_offset)
      promoted.promoted = true
      S.add_request(promoted)
      S.push(change.promoted, r)
      for _, key in ipairs(r.keys) do affected[key] = true end
    end
  end
  change.granted = S.hand_on(affected)
  S.forget_answers(batch)
  return S.change_json(change)
end

function S.request_state(id)
  local r = S.get_request(id)
  if r then
    local positions = {}
    local worst = 0
    for _, key in ipairs(r.keys) do
      local p = S.queue_rank(key, r) + 1
      positions[key] = p
      if p > worst then worst = p end
    end
    return '{"state":"waiting","request":' .. S.enc(r) .. ',"position":' .. worst
      .. ',"positions":' .. S.enc(positions) .. '}'
  end
  local o = S.claim(id)
  if not o then return 'null' end
  return '{"state":' .. S.enc(o.ending) .. ',"outcome":' .. S.enc(o) .. '}'
end

function S.key_state(key, max_waiting)
  local ids = {}
  if max_waiting > 0 then
    for i, m in ipairs(redis.call('ZRANGE', S.k_queue(key), 0, max_waiting - 1)) do
      ids[i] = S.id_of(m)
    end
  end
  return '{"grant":' .. S.enc(S.grant_of(key) or S.NULL) .. ',"waiting":' .. S.arr(S.get_requests(ids))
    .. ',"last_token":' .. (tonumber(redis.call('HGET', S.K_TOKENS, key)) or 0) .. '}'
end

function S.list_grants(owner_id, prefix, after, limit)
  local keys
  if owner_id then
    keys = {}
    for _, key in ipairs(redis.call('SMEMBERS', S.k_owner_grants(owner_id))) do
      if (not prefix or string.sub(key, 1, #prefix) == prefix)
        and (not after or S.byte_less(after, key)) then
        S.push(keys, key)
      end
    end
    S.sorted(keys)
    while #keys > limit do table.remove(keys) end
  else
    local low, high = '-', '+'
    if prefix then
      low, high = '[' .. prefix, '(' .. prefix .. '\255'  -- UTF-8 never has a 0xFF byte
    end
    if after and (not prefix or not S.byte_less(after, prefix)) then low = '(' .. after end
    keys = redis.call('ZRANGEBYLEX', S.K_GRANT_KEYS, low, high, 'LIMIT', 0, limit)
  end
  local grants = {}
  if #keys > 0 then
    for _, raw in ipairs(redis.call('HMGET', S.K_GRANTS, unpack(keys))) do
      if raw then S.push(grants, cjson.decode(raw)) end
    end
  end
  return S.arr(grants)
end

function S.queue_summary()
  S.settle()
  local by_priority = {}
  local counts = redis.call('HGETALL', S.K_PRIORITIES)
  for i = 1, #counts, 2 do
    local n = tonumber(counts[i + 1])
    if n > 0 then by_priority[counts[i]] = n end
  end
  local oldest = redis.call('ZRANGE', S.K_ENQUEUED, 0, 0, 'WITHSCORES')[2] or S.NULL
  return '{"depth":' .. S.waiting_count() .. ',"by_priority":' .. S.enc(by_priority)
    .. ',"oldest_enqueued_at":' .. S.enc(oldest)
    .. ',"keys_with_waiters":' .. redis.call('SCARD', S.K_QUEUED_KEYS) .. '}'
end

function S.snapshot(max_waiting)
  local grants = {}
  for _, raw in ipairs(redis.call('HVALS', S.K_GRANTS)) do S.push(grants, cjson.decode(raw)) end
  return '{"grants":' .. S.arr(grants) .. ',"waiting":' .. S.arr(S.waiting(max_waiting)) .. '}'
end

function S.prune_outcomes(before, batch)
  local ids = redis.call('ZRANGEBYSCORE', S.K_OUTCOME_TIMES, '-inf', '(' .. before, 'LIMIT', 0, batch)
  for first = 1, #ids, S.CHUNK do
    local last = math.min(first + S.CHUNK - 1, #ids)
    redis.call('HDEL', S.K_OUTCOMES, unpack(ids, first, last))
    redis.call('ZREM', S.K_OUTCOME_TIMES, unpack(ids, first, last))
  end
  return tostring(#ids)
end

-- This replica stops: the requests it still has queued were asked to stay queued, so nobody
-- waits on it for them any more; they are no longer cancelled when it does not answer.
function S.detach()
  S.settle()
  local set = S.k_replica_requests(S.ME)
  for _, id in ipairs(redis.call('SMEMBERS', set)) do
    local raw = redis.call('HGET', S.K_REQUESTS, id)
    if raw then
      local r = cjson.decode(raw)
      r.replica = ''
      redis.call('HSET', S.K_REQUESTS, id, S.enc(r))
      redis.call('DEL', S.k_form(id))
    end
  end
  redis.call('DEL', set)
  return 'null'
end

-- The wait-for edges of one waiting request (rules._edges_of_request).
function S.edges_of_request(r)
  local edges = {}
  for _, key in ipairs(r.keys) do
    local g = S.grant_of(key)
    if not (g and g.owner.id == r.owner.id) then
      if g then S.push(edges, { waiter = r, key = key, blocker = g.owner, held = true }) end
      local rank = redis.call('ZRANK', S.k_queue(key), S.member(r))
      if rank and rank > 0 then
        local ahead = S.get_request(S.id_of(redis.call('ZRANGE', S.k_queue(key), rank - 1, rank - 1)[1]))
        if ahead and ahead.owner.id ~= r.owner.id then
          S.push(edges, { waiter = r, key = key, blocker = ahead.owner, held = false })
        end
      end
    end
  end
  return edges
end

function S.wait_edges_from(owner_id, max_owners)
  S.settle()
  local edges = {}
  local seen = { [owner_id] = true }
  local seen_count = 1
  local frontier = { owner_id }
  while #frontier > 0 and seen_count <= max_owners do
    local owner = table.remove(frontier)
    local ids = S.sorted(redis.call('SMEMBERS', S.k_owner_requests(owner)))
    for _, r in ipairs(S.get_requests(ids)) do
      for _, edge in ipairs(S.edges_of_request(r)) do
        S.push(edges, edge)
        if not seen[edge.blocker.id] then
          seen[edge.blocker.id] = true
          seen_count = seen_count + 1
          S.push(frontier, edge.blocker.id)
        end
      end
    end
  end
  return S.arr(edges)
end

-- What the sweep needs to find every wait-for edge (backend.py applies the rule of
-- waitgraph.edges_in_queues): every wait, by key and in queue order (all-waits), the keys with
-- a queue and their holders' owner ids (false: free), and the seq from which waiting requests
-- are past `limit` (false: none is). Bulk reads only: a read per queue, or decoding stored JSON,
-- costs more here than anything the sweep does in Python.
function S.wait_graph(limit)
  S.settle()
  local cutoff = false
  if S.waiting_count() > limit then
    cutoff = tonumber(redis.call('ZRANGE', S.K_WAITING, limit, limit, 'WITHSCORES')[2])
  end
  local keys = redis.call('SMEMBERS', S.K_QUEUED_KEYS)
  if #keys == 0 then return '{"cutoff":false,"keys":[],"holders":[],"waits":[]}' end
  local holders = {}
  for first = 1, #keys, S.CHUNK do
    local last = math.min(first + S.CHUNK - 1, #keys)
    S.extend(holders, redis.call('HMGET', S.K_HOLDERS, unpack(keys, first, last)))
  end
  return '{"cutoff":' .. S.enc(cutoff) .. ',"keys":' .. S.enc(keys) .. ',"holders":'
    .. S.enc(holders) .. ',"waits":[' .. table.concat(redis.call('ZRANGE', S.K_ALL_WAITS, 0, -1), ',')
    .. ']}'
end

function S.edges_present(edges)
  local present = {}
  for i, e in ipairs(edges) do
    present[i] = false
    local r = S.get_request(e.request_id)
    if r then
      for _, now in ipairs(S.edges_of_request(r)) do
        if now.key == e.key and now.blocker.id == e.blocker and now.held == e.held then
          present[i] = true
        end
      end
    end
  end
  return S.arr(present)
end

-- This replica has answered the callers of these handed-on requests: their grants are claimed.
-- Answers the ids whose grant had already been revoked (claimed too late).
function S.confirm(ids)
  local late = {}
  for _, id in ipairs(ids) do
    local o = S.claim(id)
    if not o or o.ending ~= 'granted' then S.push(late, id) end
  end
  return S.arr(late)
end

function S.rest(from)
  local out = {}
  for i = from, #S.ARGV do out[#out + 1] = S.ARGV[i] end
  return out
end

function S.optional(i)
  if S.ARGV[i] == '1' then return S.ARGV[i + 1] end
  return nil
end

-- One call: what it is about (S.begin), the operation it names, then S.finish.
function S.main(argv)
  S.begin(argv)
  local answer = S.operation(argv)
  S.finish()
  return answer
end

function S.operation(ARGV)
  if S.OP == 'ping' then
    return 'true'
  elseif S.OP == 'acquire' then
    return S.acquire(cjson.decode(ARGV[S.A]), ARGV[S.A + 1] == '1', tonumber(ARGV[S.A + 2]))
  elseif S.OP == 'enqueue_evicting' then
    return S.enqueue_evicting(cjson.decode(ARGV[S.A]), ARGV[S.A + 1], tonumber(ARGV[S.A + 2]))
  elseif S.OP == 'release' or S.OP == 'release_owner' or S.OP == 'force_release' then
    if S.RETRY then
      local first = redis.call('HGET', S.K_OPS, ARGV[S.A])
      if first then return first end
    end
    if S.OP == 'release' then return S.release(ARGV[S.A], ARGV[S.A + 1], S.rest(S.A + 2)) end
    if S.OP == 'release_owner' then return S.release_owner(ARGV[S.A], ARGV[S.A + 1]) end
    return S.force_release(ARGV[S.A], S.rest(S.A + 1))
  elseif S.OP == 'cancel' then
    return S.cancel(ARGV[S.A], ARGV[S.A + 1], ARGV[S.A + 2])
  elseif S.OP == 'renew' then
    return S.renew(ARGV[S.A], ARGV[S.A + 1], S.rest(S.A + 2))
  elseif S.OP == 'sweep' then
    return S.sweep(ARGV[S.A], tonumber(ARGV[S.A + 1]), tonumber(ARGV[S.A + 2]))
  elseif S.OP == 'request_state' then
    return S.request_state(ARGV[S.A])
  elseif S.OP == 'claim' then
    return S.enc(S.claim(ARGV[S.A]) or S.NULL)
  elseif S.OP == 'confirm' then
    return S.confirm(S.rest(S.A))
  elseif S.OP == 'key_state' then
    return S.key_state(ARGV[S.A], tonumber(ARGV[S.A + 1]))
  elseif S.OP == 'list_grants' then
    return S.list_grants(S.optional(S.A), S.optional(S.A + 2), S.optional(S.A + 4), tonumber(ARGV[S.A + 6]))
  elseif S.OP == 'queue_summary' then
    return S.queue_summary()
  elseif S.OP == 'snapshot' then
    return S.snapshot(tonumber(ARGV[S.A]))
  elseif S.OP == 'prune_outcomes' then
    return S.prune_outcomes(ARGV[S.A], tonumber(ARGV[S.A + 1]))
  elseif S.OP == 'detach' then
    return S.detach()
  elseif S.OP == 'wait_edges_from' then
    return S.wait_edges_from(ARGV[S.A], tonumber(ARGV[S.A + 1]))
  elseif S.OP == 'wait_graph' then
    return S.wait_graph(tonumber(ARGV[S.A]))
  elseif S.OP == 'waiting_requests' then
    return S.arr(S.get_requests(S.rest(S.A)))
  elseif S.OP == 'edges_present' then
    return S.edges_present(cjson.decode(ARGV[S.A]))
  end
  return redis.error_reply('unknown lock operation ' .. tostring(S.OP))
end
