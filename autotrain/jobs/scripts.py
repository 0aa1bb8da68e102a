"""The Lua scripts that make job ownership atomic: the concurrency contract, in one place.

A job is owned by exactly one of: the queue (`owner` = "queue:<task id>", a message for its next
phase is in a broker queue), a live worker (`owner` = "worker:<token>", its deadline in
`autotrain:leases`), its batch (`owner` = "parked", waiting for a slot), or nobody once final.
Every change of owner goes through MOVE, guarded by the owner the caller expects, so a stale
message, a re-sent one or a worker that lost its job changes nothing. Field values are
JSON-encoded in the job hash, so owners and states are compared in their JSON form.
"""

from __future__ import annotations

__all__ = ["CREATE", "MOVE", "REOPEN", "RENEW", "FINAL_STATES_LUA"]

FINAL_STATES_LUA = "{['\"succeeded\"']=1, ['\"failed\"']=1, ['\"cancelled\"']=1}"

# KEYS: job hash, all-jobs index, name key, active index, batch index (or the all-jobs index),
# dispatch. ARGV: job id, created_at, dispatch deadline or '', then field/value pairs.
# Refuses an id that exists (never merge two jobs) and a name a job in progress holds.
# Returns {1} when created, {0} on an id collision, {-1, holder} when the name is taken.
CREATE = (
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
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1]) end
return {1}
"""
)

# KEYS: job hash, leases, dispatch, active index, name key, then the keys to expire once final
# (events stream, bulky data).
# ARGV: [1] job id, [2] expected owner (JSON, or '*' for any), [3] new owner (JSON, or '*' to
# keep), [4] lease deadline or '', [5] dispatch deadline or '', [6] '' or a time: move only if
# the lease deadline is older (the reaper), [7] retention seconds, [8] new state (JSON) or '',
# then field/value pairs.
# Returns 1 when moved, 0 when the owner (or lease) is not as expected, -1 when the job is final,
# -2 when there is no such job. A job that becomes final leaves the active index and the leases,
# lets go of its name, its bulky keys start to expire and its plan is dropped (run.json has it).
# A job the new owner already holds, when that owner is a message ("queue:<id>") or a worker's
# token (each unique to one move), was moved by this very call: the client retried it after its
# answer was lost with the connection (Redis killed as it ran), and it returns 1 again.
MOVE = (
    "local final = "
    + FINAL_STATES_LUA
    + """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then
  if redis.call('EXISTS', KEYS[1]) == 0 then return -2 end
  owner = '""'
end
if ARGV[2] ~= '*' and owner ~= ARGV[2] then
  if owner == ARGV[3] and (owner:find('^"queue:') or owner:find('^"worker:')) then return 1 end
  return 0
end
if ARGV[6] ~= '' then
  local deadline = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if not deadline or tonumber(deadline) > tonumber(ARGV[6]) then return 0 end
end
if final[redis.call('HGET', KEYS[1], 'state')] then return -1 end
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'state', ARGV[8]) end
if ARGV[3] ~= '*' then redis.call('HSET', KEYS[1], 'owner', ARGV[3]) end
for i = 9, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
elseif ARGV[3] ~= '*' then redis.call('ZREM', KEYS[2], ARGV[1]) end
if ARGV[5] ~= '' then redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
elseif ARGV[3] ~= '*' then redis.call('ZREM', KEYS[3], ARGV[1]) end
if final[ARGV[8]] then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[4], ARGV[1])
  if redis.call('GET', KEYS[5]) == ARGV[1] then redis.call('DEL', KEYS[5]) end
  for i = 6, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
  redis.call('HDEL', KEYS[1], 'plan')
end
return 1
"""
)

# KEYS: job hash, active index, name key, dispatch, then the keys that expire once final.
# ARGV: [1] job id, [2] created_at, [3] dispatch deadline, [4] new owner (JSON), [5] new state
# (JSON), then field/value pairs.
# A user's retry: a final job becomes the queue's again, takes its name back (refused, as at
# creation, while another job in progress holds it) and its bulky keys stop expiring.
# Returns {1} when reopened, {0} when the job is not final, {-1, holder} when the name is
# taken, {-2} when there is no such job.
REOPEN = (
    "local final = "
    + FINAL_STATES_LUA
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-2} end
if not final[state] then return {0} end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then
  local other = redis.call('HGET', KEYS[1]:sub(1, #KEYS[1] - #ARGV[1]) .. holder, 'state')
  if other and not final[other] then return {-1, holder} end
end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'state', ARGV[5])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
for i = 5, #KEYS do redis.call('PERSIST', KEYS[i]) end
return {1}
"""
)

# KEYS: job hash, leases. ARGV: job id, owner (JSON), new deadline.
# Extends the lease only while this worker still owns the job; 0 tells it that it lost it.
RENEW = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""
