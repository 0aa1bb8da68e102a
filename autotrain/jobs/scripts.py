"""Every Lua script autotrain runs, in one place: the concurrency contract.

Each is headed by its KEYS and ARGV and called by its SHA (`Lua`): a server receives a script's
source once, not with every call. Job ownership (CREATE, MOVE, REOPEN, RENEW), batch slots (ACQUIRE_SLOT,
RELEASE_SLOT), GPU reservations (RESERVE) and the start order of waiting messages (REORDER).

A job is owned by exactly one of (autotrain.jobs.owners): the queue (`owner` = "queue:<message
id>", the message for its next phase is in a broker queue, its send confirmed or its deadline in
`autotrain:dispatch`), a live worker (`owner` = "worker:<token>", its deadline in
`autotrain:leases`), its batch (`owner` = "parked", waiting for a slot), `train hold` (`owner` =
"held", out of every queue until released), or nobody (`owner` = "") once final.
Every change of owner goes through MOVE, guarded by the owner the caller expects, so a stale
message, a re-sent one or a worker that lost its job changes nothing; every change of state goes
along autotrain.jobs.states.ALLOWED, which MOVE and REOPEN are given as a table. The moves
themselves (hand-offs to a queue, final moves) are made in one place, autotrain.jobs.dispatch. Field values are
JSON-encoded in the job hash, so owners and states are compared in their JSON form.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis
from redis.exceptions import NoScriptError

from autotrain.jobs.states import ALLOWED, FINAL_STATES

__all__ = [
    "CREATE",
    "MOVE",
    "REOPEN",
    "RENEW",
    "ACQUIRE_SLOT",
    "RELEASE_SLOT",
    "RESERVE",
    "REORDER",
    "FINAL_STATES_LUA",
    "ALLOWED_LUA",
    "Lua",
]


class Lua:
    """A script called by its SHA (EVALSHA): its source goes to a server once, when that server
    lacks it (first use, a restart, SCRIPT FLUSH), never with every call."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, client: redis.Redis, keys: list[str], args: list[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)


def _lua_set(values: list[str]) -> str:
    """A Lua table literal with each (JSON-encoded, as stored in the job hash) value as a key."""
    return "{" + ", ".join(f"['{json.dumps(v)}']=1" for v in values) + "}"


# The final states as the job hash stores them (JSON strings), from the Python FINAL_STATES.
FINAL_STATES_LUA = _lua_set(sorted(str(s) for s in FINAL_STATES))

# The allowed moves (autotrain.jobs.states.ALLOWED): from-state -> set of next states, JSON-encoded.
ALLOWED_LUA = (
    "{"
    + ", ".join(
        f"['{json.dumps(str(old))}']={_lua_set(sorted(str(n) for n in new))}"
        for old, new in ALLOWED.items()
    )
    + "}"
)

# KEYS: job hash, all-jobs index, name key, active index, batch index (or the all-jobs index),
# dispatch, profile index, the 'indexes complete' marker (set with the store's first job: a new
# store needs no backfill, autotrain.jobs.store.JobStore._ensure_indexes). ARGV: job id, created_at, dispatch deadline or '', then field/value pairs.
# Refuses an id that exists (never merge two jobs) and a name a job in progress holds.
# Returns {1} when created, {0} on an id collision, {-1, holder} when the name is taken.
CREATE = Lua(
    "local final = "
    + FINAL_STATES_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then
  local state = redis.call('HGET', KEYS[1]:sub(1, #KEYS[1] - #ARGV[1]) .. holder, 'state')
  if state and not final[state] then return {-1, holder} end
end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('SET', KEYS[8], '1') end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1]) end
redis.call('ZADD', KEYS[7], ARGV[2], ARGV[1])
return {1}
"""
)

# KEYS: job hash, leases, dispatch, active index, name key, the index of the final state it moves
# to (or any key), the all-jobs index, then the keys to expire once final (events, bulky data).
# ARGV: [1] job id, [2] expected owner (JSON, or '*' for any), [3] new owner (JSON, or '*' to
# keep), [4] lease deadline or '', [5] dispatch deadline or '', [6] '' or a time: move only if
# the lease deadline is older (the reaper), [7] retention seconds, [8] new state (JSON) or '',
# then field/value pairs.
# Returns 1 when moved, 0 when the owner (or lease) is not as expected, -1 when the job is final,
# -2 when there is no such job, -3 when the new state is not an allowed move from the job's
# state (ALLOWED; a move to the same state needs an entry too). A job that becomes final leaves the active index and the leases,
# lets go of its name, its bulky keys start to expire and its plan is dropped (run.json has it).
# A job the new owner already holds, when that owner is a message ("queue:<id>") or a worker's
# token (each unique to one move), was moved by this very call: the client retried it after its
# answer was lost with the connection (Redis killed as it ran), and it returns 1 again.
MOVE = Lua(
    "local final = "
    + FINAL_STATES_LUA
    + "\nlocal allowed = "
    + ALLOWED_LUA
    + """
local got = redis.call('HMGET', KEYS[1], 'owner', 'state')
local owner, state = got[1] or '""', got[2]
if not state then return -2 end
if ARGV[2] ~= '*' and owner ~= ARGV[2] then
  if owner == ARGV[3] and (owner:find('^"queue:') or owner:find('^"worker:')) then return 1 end
  return 0
end
if ARGV[6] ~= '' then
  local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if not deadline or tonumber(deadline) > tonumber(ARGV[6]) then return 0 end
end
if final[state] then return -1 end
local set = {}
if ARGV[8] ~= '' then
  if not (allowed[state] and allowed[state][ARGV[8]]) then return -3 end
  set[#set + 1] = 'state'; set[#set + 1] = ARGV[8]
end
if ARGV[3] ~= '*' and ARGV[3] ~= owner then set[#set + 1] = 'owner'; set[#set + 1] = ARGV[3] end
for i = 9, #ARGV do set[#set + 1] = ARGV[i] end
if #set > 0 then redis.call('HSET', KEYS[1], unpack(set)) end
-- only a worker holds a lease and only the queue a dispatch deadline: each goes when its owner
-- lets go of the job (the reaper drops entries left stale any other way)
local letting_go = ARGV[3] ~= '*' or final[ARGV[8]]
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
elseif letting_go and owner:find('^"worker:') then redis.call('ZREM', KEYS[2], ARGV[1]) end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
elseif letting_go and owner:find('^"queue:') then redis.call('ZREM', KEYS[3], ARGV[1]) end
if final[ARGV[8]] then
  redis.call('ZREM', KEYS[4], ARGV[1])
  redis.call('ZADD', KEYS[6], redis.call('ZSCORE', KEYS[7], ARGV[1]) or 0, ARGV[1])
  if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
  for i = 8, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
  redis.call('HDEL', KEYS[1], 'plan')
end
return 1
"""
)

# KEYS: job hash, active index, name key, dispatch, the three final-state indexes, then the keys
# that expire once final.
# ARGV: [1] job id, [2] created_at, [3] dispatch deadline, [4] new owner (JSON), [5] new state
# (JSON), then field/value pairs.
# A user's retry: a final job becomes the queue's again, takes its name back (refused, as at
# creation, while another job in progress holds it) and its bulky keys stop expiring.
# Returns {1} when reopened, {0} when the job is not final, {-1, holder} when the name is
# taken, {-2} when there is no such job.
REOPEN = Lua(
    "local final = "
    + FINAL_STATES_LUA
    + "\nlocal allowed = "
    + ALLOWED_LUA
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-2} end
if not final[state] or not allowed[state][ARGV[5]] then return {0} end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then
  local other = redis.call('HGET', KEYS[1]:sub(1, #KEYS[1] - #ARGV[1]) .. holder, 'state')
  if other and not final[other] then return {-1, holder} end
end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'state', ARGV[5], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
for i = 5, 7 do redis.call('ZREM', KEYS[i], ARGV[1]) end
for i = 8, #KEYS do redis.call('PERSIST', KEYS[i]) end
return {1}
"""
)

# KEYS: job hash, leases. ARGV: job id, owner (JSON), new deadline.
# Extends the lease only while this worker still owns the job; 0 tells it that it lost it.
RENEW = Lua(
    """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""
)


# Batch slots: at most `max_concurrent` jobs of a batch train at once. A job that finds the batch
# full is parked (ordered by submission); a finishing job hands its slot to the first parked one.
# KEYS: the batch's training set, its parked zset, its settings hash.
# ARGV: [1] job id, [2] its order (submission time).
# Returns 1 when the job holds a slot (taken now or before), 0 when it is parked.
ACQUIRE_SLOT = Lua(
    """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
local limit = tonumber(redis.call('HGET', KEYS[3], 'max_concurrent') or '1')
if redis.call('SCARD', KEYS[1]) < limit then
  redis.call('SADD', KEYS[1], ARGV[1]); redis.call('ZREM', KEYS[2], ARGV[1]); return 1
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
return 0
"""
)

# KEYS: as ACQUIRE_SLOT. ARGV: [1] job id.
# Frees the job's slot (or its place among the parked) and gives the slot to the earliest parked
# job; returns that job's id, or nil when none is parked or the batch is still full.
RELEASE_SLOT = Lua(
    """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local limit = tonumber(redis.call('HGET', KEYS[3], 'max_concurrent') or '1')
if redis.call('SCARD', KEYS[1]) >= limit then return false end
local nxt = redis.call('ZPOPMIN', KEYS[2])
if #nxt == 0 then return false end
redis.call('SADD', KEYS[1], nxt[1])
return nxt[1]
"""
)

# GPU reservations: a job reserves memory on every GPU it uses (autotrain.jobs.lease).
# KEYS: the GPU's hash (job -> "bytes deadline_ms"). ARGV: job, bytes, ttl ms, now ms,
# max jobs, capacity bytes, measured free bytes (-1: unknown). Returns 1 when the job holds its
# reservation (taken or renewed), 0 when the GPU is full of reservations, -1 when the memory
# measured free is short.
RESERVE = Lua(
    """
local now, mine = tonumber(ARGV[4]), nil
local count, used = 0, 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local bytes, deadline = string.match(entries[i + 1], '(%d+) (%d+)')
  if tonumber(deadline) < now then redis.call('HDEL', KEYS[1], entries[i])
  elseif entries[i] == ARGV[1] then mine = true
  else count = count + 1; used = used + tonumber(bytes) end
end
if not mine then
  if count >= tonumber(ARGV[5]) then return 0 end
  local capacity = tonumber(ARGV[6])
  if capacity > 0 and used + tonumber(ARGV[2]) > capacity then return 0 end
  local free = tonumber(ARGV[7])
  if free >= 0 and tonumber(ARGV[2]) > free then return -1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS: a queue's lists, highest priority first. ARGV: [1] task id, [2] top|bottom|before|remove,
# [3] the other task id (before), then the priority value of each list.
# Returns {level, payload} of the message's new place ({-1} when `before`'s other message is not in
# this queue), or {0} when the message is not waiting (a worker took it, or it was never sent).
REORDER = Lua(
    """
local function find(id)
  for k = 1, #KEYS do
    local items = redis.call('LRANGE', KEYS[k], 0, -1)
    for i = 1, #items do
      if string.find(items[i], id, 1, true) then return k, items[i] end
    end
  end
end
local k, item = find(ARGV[1])
if not k then return {0} end
local target, other = nil, nil
if ARGV[2] == 'before' then
  target, other = find(ARGV[3])
  if not target then return {-1} end
end
redis.call('LREM', KEYS[k], 1, item)
if ARGV[2] == 'remove' then return {k, item} end
if ARGV[2] == 'top' then target = 1 elseif ARGV[2] == 'bottom' then target = #KEYS end
local message = cjson.decode(item)
message['properties']['priority'] = tonumber(ARGV[3 + target])
local moved = cjson.encode(message)
if ARGV[2] == 'top' then redis.call('RPUSH', KEYS[target], moved)
elseif ARGV[2] == 'bottom' then redis.call('LPUSH', KEYS[target], moved)
else redis.call('LINSERT', KEYS[target], 'AFTER', other, moved) end
return {target, moved}
"""
)
