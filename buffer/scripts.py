"""Every Lua script the system runs, in one place.

Each script touches the keys of one partition only (one hash tag), so it is
atomic on a single server and legal on Redis Cluster. The rule that makes the
buffer safe: a chunk's offset check, its stream append and the upload's new
offset are one step (APPEND); an entry's acknowledgement, its deletion and the
byte counters are one step (ACK). Nothing ever trims a stream by length.

Scripts return a small array whose first element names the outcome, so the
Python side maps outcomes to HTTP answers without parsing errors.
"""

from __future__ import annotations

import redis.asyncio as redis
from redis.commands.core import AsyncScript

# Queue a finalisation entry once every byte is both accepted and stored.
# Shared by CREATE (zero-length uploads), APPEND (deferred length declared
# last) and ACK (the usual case). `finq` makes it happen once.
_PRELUDE = r"""
local function maybe_fin(state_key, stream_key, id)
  local v = redis.call('HMGET', state_key, 'state', 'length', 'offset', 'stored', 'finq', 'concat')
  if v[1] ~= 'receiving' or v[5] == '1' or v[6] == 'final' then return 0 end
  local length = tonumber(v[2])
  if length < 0 or tonumber(v[3]) ~= length or tonumber(v[4]) ~= length then return 0 end
  redis.call('HSET', state_key, 'finq', '1')
  redis.call('XADD', stream_key, '*', 'k', 'f', 'u', id)
  return 1
end

-- An upload failed by a dead letter is held rather than finished: `unggah dead replay`
-- brings it back to receiving. Until then its other entries are kept for the replay, and
-- the bytes of any that were written still count as stored.
local function held(state_key)
  local v = redis.call('HMGET', state_key, 'state', 'reason')
  return v[1] == 'failed' and string.sub(v[2] or '', 1, 12) == 'dead-letter:'
end
"""

# Owners of in-flight creations. A creation-with-upload holds its Idempotency-Key "in flight"
# while its body is read; the mark names its owner, the boot id of the gateway process reading
# that body, and the owner keeps a short lease in the partition's `owners` set for as long as
# it lives (renewed by its background loop, LEASE). The lease is measured on the server's
# clock (TIME), so the gateways' clocks do not matter to it.
_OWNERS = r"""
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function lease(owners, owner, lease_ms)
  local now = server_ms()
  redis.call('ZADD', owners, now + tonumber(lease_ms), owner)
  -- A lapsed lease is a dead owner's (a boot id is never reused): drop it.
  redis.call('ZREMRANGEBYSCORE', owners, '-inf', '(' .. now)
end

-- A mark without an owner was made by an older gateway: only its age decides.
local function alive(owners, owner)
  if not owner or owner == '' then return true end
  local ends = redis.call('ZSCORE', owners, owner)
  return ends and tonumber(ends) > server_ms()
end
"""

# KEYS: state, stream, audit, [idempotency record, owners of in-flight creations]
# ARGV: id, now_ms, fingerprint, idem_ttl_s, inflight_ms, pending(0|1), actor, length,
#       owner (the gateway's boot id; '' for none), lease_ms, field, value, ...
# A retry of a creation still in flight answers 'inflight' while its owner lives, and
# 'takeover' once the owner is gone (killed mid-body: its lease lapsed): the retry gets the
# upload as it stands, as a replay would, and the mark is cleared so later retries replay too.
CREATE = _PRELUDE + _OWNERS + r"""
local id, now = ARGV[1], tonumber(ARGV[2])
if KEYS[4] then
  local rec = redis.call('HMGET', KEYS[4], 'id', 'fp', 'pending', 'at', 'owner')
  if rec[1] then
    if rec[2] ~= ARGV[3] then return {'mismatch', rec[1]} end
    if rec[3] == '1' and now - tonumber(rec[4]) < tonumber(ARGV[5]) then
      if alive(KEYS[5], rec[5]) then return {'inflight', rec[1]} end
      redis.call('HSET', KEYS[4], 'pending', '0')
      return {'takeover', rec[1]}
    end
    -- As APPEND's duplicate: a write of our own, so the wait covers the creation replayed.
    redis.call('HSET', KEYS[4], 'pending', rec[3] or '0')
    return {'replay', rec[1]}
  end
  redis.call('HSET', KEYS[4], 'id', id, 'fp', ARGV[3], 'pending', ARGV[6], 'at', now, 'owner', ARGV[9])
  redis.call('EXPIRE', KEYS[4], ARGV[4])
  -- The owner's lease starts in the same step as its mark: never a mark without a live lease.
  if ARGV[6] == '1' and ARGV[9] ~= '' then lease(KEYS[5], ARGV[9], ARGV[10]) end
end
local fields = {}
for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('XADD', KEYS[3], '*', 'ev', 'create', 'u', id, 't', redis.call('HGET', KEYS[1], 'tenant'),
           'a', ARGV[7], 'at', ARGV[2], 'len', ARGV[8])
maybe_fin(KEYS[1], KEYS[2], id)
return {'created', id}
"""

# Renew a gateway's lease on its in-flight creations of one partition.
# KEYS: owners of in-flight creations
# ARGV: owner (boot id), lease_ms
LEASE = _OWNERS + r"""
lease(KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: state, stream, buffered-bytes counter, records, audit, revoked tokens
# ARGV: the names in the script's first line (APPEND_ARGV; append_argv builds them), where
#   record      '' unless this is the last piece of the PATCH
#   new_length  '' if none is declared; buffer_limit 0 = none
#   token_hash  '' when access control is off
#   patch_bytes the PATCH's whole body size, '' if not known in advance
#   max_bytes   the cap on an upload whose length is deferred
# then crc, data, crc, data, ...
# Another tenant's upload answers 'notfound', so its existence does not leak. A revoked
# token answers 'revoked' in the same step: the gateway appends without looking the token up.
APPEND_ARGV = ("id", "offset", "now_ms", "patch_start", "record", "new_length", "buffer_limit", "tenant", "actor",
               "token_hash", "patch_bytes", "max_bytes")
APPEND = r"""
-- ARGV: id offset now_ms patch_start record new_length buffer_limit tenant actor token_hash patch_bytes max_bytes
""" + _PRELUDE + r"""
if ARGV[10] ~= '' and redis.call('SISMEMBER', KEYS[6], ARGV[10]) == 1 then return {'revoked'} end
local st = redis.call('HMGET', KEYS[1], 'state', 'offset', 'length', 'expires_at', 'concat', 'tenant')
if not st[1] or st[6] ~= ARGV[8] then return {'notfound'} end
if st[5] == 'final' then return {'final'} end
-- A stored upload still answers offset checks, so a retried last PATCH is
-- recognised as a duplicate instead of failing the client.
if st[1] ~= 'receiving' and st[1] ~= 'stored' then return {'closed', st[1]} end
local offset, length = tonumber(st[2]), tonumber(st[3])
if tonumber(ARGV[2]) ~= offset then
  local rec = redis.call('HGET', KEYS[4], ARGV[4]) or ''
  -- A retry the gateway may answer as a duplicate: its WAIT/WAITAOF must cover the earlier
  -- write it repeats, which another connection may have made, and they count only this
  -- connection's own writes. So write once here (the offset, unchanged: HSET propagates even
  -- so), and the wait covers everything the primary had when this ran.
  if rec ~= '' then redis.call('HSET', KEYS[1], 'offset', st[2]) end
  return {'conflict', offset, rec}
end
-- After the offset check: a retried PATCH that was taken before expiry is still recognised.
local now = tonumber(ARGV[3])
local exp = tonumber(st[4])
if st[1] == 'receiving' and exp > 0 and now >= exp then return {'expired'} end
local total = 0
for i = 14, #ARGV, 2 do total = total + #ARGV[i] end
if length >= 0 and offset == length and total > 0 then return {'complete', offset} end
local declared = false
if ARGV[6] ~= '' then
  local nl = tonumber(ARGV[6])
  if length >= 0 and nl ~= length then return {'length_fixed', length} end
  if nl < offset + total then return {'length_short', offset + total} end
  if length < 0 then declared = true end
  length = nl
end
-- A body known to be too long is refused whole, before its first piece: not cut after it.
local reach = offset + total
if ARGV[11] ~= '' and offset == tonumber(ARGV[4]) then reach = math.max(reach, offset + tonumber(ARGV[11])) end
if length >= 0 and reach > length then return {'exceeds', length} end
if length < 0 and reach > tonumber(ARGV[12]) then return {'too_large', tonumber(ARGV[12])} end
local limit = tonumber(ARGV[7])
if limit > 0 and total > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') + total > limit then
  return {'full', offset}
end
local off = offset
for i = 13, #ARGV, 2 do
  local data = ARGV[i + 1]
  if #data > 0 then
    redis.call('XADD', KEYS[2], '*', 'k', 'd', 'u', ARGV[1], 'o', off, 'c', ARGV[i], 'd', data)
    off = off + #data
  end
end
if declared then redis.call('HSET', KEYS[1], 'length', length) end
if total > 0 or declared then
  redis.call('HSET', KEYS[1], 'offset', off)
  redis.call('INCRBY', KEYS[3], total)
  redis.call('XADD', KEYS[5], '*', 'ev', 'append', 'u', ARGV[1], 't', ARGV[8], 'a', ARGV[9], 'at', ARGV[3],
             'o', offset, 'n', total, 'len', length)
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], ARGV[4], ARGV[5]) end
if length >= 0 and off == length and (total > 0 or declared) then
  redis.call('HSET', KEYS[1], 'received_at', now)
  maybe_fin(KEYS[1], KEYS[2], ARGV[1])
end
return {'ok', off}
"""

# KEYS: state, stream, records, audit
# ARGV: id, actor, now_ms
TERMINATE = r"""
local st = redis.call('HMGET', KEYS[1], 'state', 'length', 'offset', 'concat', 'tenant')
if not st[1] then return {'notfound'} end
if st[1] ~= 'receiving' then return {'closed', st[1]} end
local length = tonumber(st[2])
if st[4] == 'final' or (length >= 0 and tonumber(st[3]) == length) then return {'complete'} end
redis.call('HSET', KEYS[1], 'state', 'terminated')
redis.call('XADD', KEYS[2], '*', 'k', 'x', 'u', ARGV[1])
redis.call('XADD', KEYS[4], '*', 'ev', 'terminate', 'u', ARGV[1], 't', st[5], 'a', ARGV[2], 'at', ARGV[3],
           'o', st[3])
redis.call('DEL', KEYS[3])
return {'ok'}
"""

# Acknowledge processed entries of one partition.
# KEYS: stream, buffered-bytes counter, state of entry 1, state of entry 2, ...
# ARGV: group, then per entry: entry_id, data_bytes, upload_id
# XACK answers 1 only for the first acknowledgement, so a redelivered entry
# that two consumers both wrote is counted once. The caller acknowledges data
# entries of a receiving upload only once written (those of a held upload go to
# PARK instead), so a receiving or held upload counts an acknowledged entry.
ACK = _PRELUDE + r"""
local done = 0
local j = 3
for i = 2, #ARGV, 3 do
  local n = redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
  local nbytes = tonumber(ARGV[i + 1])
  if n == 1 and nbytes > 0 then
    redis.call('DECRBY', KEYS[2], nbytes)
    if redis.call('HGET', KEYS[j], 'state') == 'receiving' or held(KEYS[j]) then
      redis.call('HINCRBY', KEYS[j], 'stored', nbytes)
      maybe_fin(KEYS[j], KEYS[1], ARGV[i + 2])
    end
  end
  done = done + n
  j = j + 1
end
return done
"""

# Record an upload's final state, emit its completed event, acknowledge the entry.
# KEYS: stream, state, completed, records, audit
# ARGV: group, entry_id, outcome ('stored'|'failed'), sha256, reason, now_ms
FINISH = r"""
local cur = redis.call('HMGET', KEYS[2], 'state', 'tenant', 'length', 'metadata', 'id')
local changed = 0
if cur[1] == 'receiving' then
  if ARGV[3] == 'stored' then
    redis.call('HSET', KEYS[2], 'state', 'stored', 'sha256', ARGV[4], 'stored_at', ARGV[6], 'stored', cur[3])
  else
    redis.call('HSET', KEYS[2], 'state', 'failed', 'reason', ARGV[5])
  end
  redis.call('XADD', KEYS[3], '*', 'u', cur[5], 'tenant', cur[2], 'state', ARGV[3], 'length', cur[3],
             'sha256', ARGV[4], 'reason', ARGV[5], 'metadata', cur[4], 'at', ARGV[6])
  -- Keep the PATCH records a while: a client retrying its last PATCH after the
  -- upload was stored must be answered as a duplicate, not refused.
  redis.call('EXPIRE', KEYS[4], 86400)
  redis.call('XADD', KEYS[5], '*', 'ev', ARGV[3], 'u', cur[5], 't', cur[2], 'a', 'ingester', 'at', ARGV[6],
             'len', cur[3], 'sha256', ARGV[4], 'reason', ARGV[5])
  changed = 1
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return changed
"""

# Move one entry, with its payload, to the dead-letter stream; 0 if it is gone.
_BURY = r"""
local function bury(stream, dead, counter, group, id, reason, deliveries, now)
  local e = redis.call('XRANGE', stream, id, id)
  if #e == 0 then
    redis.call('XACK', stream, group, id)
    return 0
  end
  local f = e[1][2]
  local fields, nbytes = {}, 0
  for i = 1, #f, 2 do
    fields[#fields + 1] = f[i]
    fields[#fields + 1] = f[i + 1]
    if f[i] == 'd' then nbytes = #f[i + 1] end
  end
  redis.call('XADD', dead, '*', 'orig', id, 'reason', reason, 'deliveries', deliveries, 'at', now, unpack(fields))
  local n = redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  if n == 1 and nbytes > 0 then redis.call('DECRBY', counter, nbytes) end
  return 1
end
"""

# Give up on an entry that keeps failing: bury it and mark its upload failed (held)
# so the team sees why.
# KEYS: stream, dead, state, buffered-bytes counter
# ARGV: group, entry_id, reason, deliveries, now_ms
DEAD = _BURY + r"""
local buried = bury(KEYS[1], KEYS[2], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if buried == 1 and redis.call('HGET', KEYS[3], 'state') == 'receiving' then
  redis.call('HSET', KEYS[3], 'state', 'failed', 'reason', 'dead-letter: ' .. ARGV[3])
end
return buried
"""

# Keep an entry of a held upload with its dead letter, so one replay brings the whole
# upload back (acknowledging it would drop bytes the client was told are safe).
# 0: the upload is no longer held (replayed meanwhile); the entry stays pending and is
# delivered again.
# KEYS: stream, dead, state, buffered-bytes counter
# ARGV: group, entry_id, reason, deliveries, now_ms
PARK = _PRELUDE + _BURY + r"""
if not held(KEYS[3]) then return 0 end
return bury(KEYS[1], KEYS[2], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"""

# Queue a final upload's assembly entry, once (`finq`), while it is still receiving.
# KEYS: state, stream
# ARGV: id
QUEUE_ASSEMBLY = r"""
if redis.call('HGET', KEYS[1], 'state') ~= 'receiving' then return 0 end
if redis.call('HGET', KEYS[1], 'finq') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'finq', '1')
redis.call('XADD', KEYS[2], '*', 'k', 'c', 'u', ARGV[1])
return 1
"""

# A partial belongs to one final: the first to claim it. 1 if it is (now) this final's.
# KEYS: the partial's state
# ARGV: final id
CLAIM_PART = r"""
local cur = redis.call('HGET', KEYS[1], 'final_of')
if not cur or cur == '' then
  redis.call('HSET', KEYS[1], 'final_of', ARGV[1])
  return 1
end
if cur == ARGV[1] then return 1 end
return 0
"""

# Give a claimed partial back (a final abandoned because another final holds one of its parts).
# KEYS: the partial's state
# ARGV: final id
RELEASE_PART = r"""
if redis.call('HGET', KEYS[1], 'final_of') == ARGV[1] then redis.call('HSET', KEYS[1], 'final_of', '') end
return 0
"""

# Put a dead letter back on its stream after the cause was fixed.
# KEYS: stream, dead, state, buffered-bytes counter
# ARGV: dead_entry_id
REPLAY = _PRELUDE + r"""
local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1])
if #e == 0 then return 0 end
local f = e[1][2]
local keep = {k = true, u = true, o = true, c = true, d = true}
local fields, nbytes = {}, 0
for i = 1, #f, 2 do
  if keep[f[i]] then
    fields[#fields + 1] = f[i]
    fields[#fields + 1] = f[i + 1]
    if f[i] == 'd' then nbytes = #f[i + 1] end
  end
end
redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('XDEL', KEYS[2], ARGV[1])
if nbytes > 0 then redis.call('INCRBY', KEYS[4], nbytes) end
if held(KEYS[3]) then
  redis.call('HSET', KEYS[3], 'state', 'receiving', 'reason', '')
end
return 1
"""


# Report acknowledged state the buffer no longer has, after Valkey came back without it
# (appendfsync everysec, or an external Redis without WAITAOF). Writes the upload's
# lost_acked / lost_at (its status then says what to resend), or a tombstone if the upload
# itself is gone, and an audit record naming the witness. Nothing is reported when the upload
# holds at least what was acknowledged (it did not lose it, or it was sent again meanwhile),
# nor when this much was reported already after the same restart (`run`: the server's run id
# the witness saw come back): both witnesses (buffer/loss.py) may ask about the same upload,
# and a loss is reported once. A later crash that takes the same bytes again, after the client
# sent them again, comes back under another run id and is reported again: the state it
# restores still holds the first report.
# KEYS: state, tombstone, audit
# ARGV: id, acknowledged offset, now_ms, tombstone ttl_s, tenant, witness, run
# Returns the offset the upload has now, -1 if the upload is gone, -2 if nothing new was lost.
# KEYS: upload state. Writes nothing new (the offset, unchanged; a write all the same, which
# replicates), so a WAIT or WAITAOF after it on the same connection covers every write the
# primary had made to the upload before it. HEAD runs it before it reports an offset while
# replicas are required: a client takes that offset as the bytes the server holds.
CONFIRM = r"""
local offset = redis.call('HGET', KEYS[1], 'offset')
if not offset then return 0 end
redis.call('HSET', KEYS[1], 'offset', offset)
return 1
"""

MARK_LOST = r"""
local off = redis.call('HGET', KEYS[1], 'offset')
local acked = tonumber(ARGV[2])
local by = ARGV[6] or ''
if not off then
  local told = redis.call('GET', KEYS[2])
  if told and tonumber(told) >= acked then return -2 end
  redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[4]))
  redis.call('XADD', KEYS[3], '*', 'ev', 'loss', 'u', ARGV[1], 't', ARGV[5], 'a', by, 'at', ARGV[3],
             'acked', ARGV[2], 'now', '-1')
  return -1
end
off = tonumber(off)
if off >= acked then return -2 end
local run = ARGV[7] or ''
local told = redis.call('HMGET', KEYS[1], 'lost_acked', 'lost_run')
if tonumber(told[1] or '0') >= acked and (told[2] or '') == run then return -2 end
redis.call('HSET', KEYS[1], 'lost_acked', acked, 'lost_at', ARGV[3], 'lost_run', run)
redis.call('XADD', KEYS[3], '*', 'ev', 'loss', 'u', ARGV[1], 't', ARGV[5], 'a', by, 'at', ARGV[3],
           'acked', ARGV[2], 'now', off)
return off
"""


def append_argv(pieces: list[tuple[int, bytes]], **named: object) -> list[object]:
    """APPEND's ARGV from its arguments by name (APPEND_ARGV), then each piece's crc and data."""
    if set(named) != set(APPEND_ARGV):
        raise TypeError(f"APPEND takes exactly {', '.join(APPEND_ARGV)}; "
                        f"missing {sorted(set(APPEND_ARGV) - set(named))}, unknown {sorted(set(named) - set(APPEND_ARGV))}")
    args = [named[n] for n in APPEND_ARGV]
    for crc, data in pieces:
        args += [crc, data]
    return args


class Scripts:
    """The scripts registered on one client. redis-py's Script reloads after NOSCRIPT
    (a restarted Valkey forgets its script cache) when it is called on its own; queued on a
    cluster pipeline it cannot (the pipeline answers NOSCRIPT only when executed), so the
    caller loads them all (`load`) and runs the pipeline again (UploadStore._pipelined)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.create = client.register_script(CREATE)
        self.append = client.register_script(APPEND)
        self.terminate = client.register_script(TERMINATE)
        self.ack = client.register_script(ACK)
        self.finish = client.register_script(FINISH)
        self.dead = client.register_script(DEAD)
        self.park = client.register_script(PARK)
        self.queue_assembly = client.register_script(QUEUE_ASSEMBLY)
        self.claim_part = client.register_script(CLAIM_PART)
        self.release_part = client.register_script(RELEASE_PART)
        self.replay = client.register_script(REPLAY)
        self.mark_lost = client.register_script(MARK_LOST)
        self.confirm = client.register_script(CONFIRM)
        self.lease = client.register_script(LEASE)

    async def load(self) -> None:
        """SCRIPT LOAD every script (on a cluster, on every primary: a replica promoted in a
        failover starts with an empty script cache)."""
        for script in vars(self).values():
            if isinstance(script, AsyncScript):
                script.sha = await self.client.script_load(script.script)
