"""The Lua scripts a node runs in Redis, each loaded once and run by its SHA (EVALSHA).

coredis's :class:`~coredis.commands.script.Script` sends ``EVALSHA`` and, on
``NOSCRIPT`` (the script cache is empty after a Redis restart), loads the
script and retries once; in a pipeline it checks the cache before the
transaction. So the script's text crosses the network once per Redis
process, not once per call.

In a transaction (MULTI) coredis would ask ``SCRIPT EXISTS`` before every
one: one more round trip per batch. So the scripts a transaction runs go by
:func:`in_transaction` (a plain ``EVALSHA``), and every script is loaded once
per connection (:func:`load`); a Redis that lost them (restarted, or
``SCRIPT FLUSH``) fails the transaction, which counts as a broken link, and
the next connection loads them again.

Every script that may publish a batch takes the same first four arguments:
ARGV[1] the node, ARGV[2] the batch's number, ARGV[3] the channel, ARGV[4]
the batch's header line (see :mod:`.wire`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import coredis
from coredis.commands.script import Script

# Publish one batch of this node's: ARGV[5...] are its parts in order, each either
# 'R', RECORD (a record line as it is) or 'N', ROOM, EPOCH, COUNT, E-HEAD followed by COUNT
# triples HEAD, TAIL, KEPT: room events whose number Redis gives here (HEAD .. SEQ .. TAIL),
# from the room's counter in numbers:ROOM, whose epoch is made (EPOCH, the node's fresh
# guess) if the key is missing. Each numbered run is announced by an E record (E-HEAD ..
# epoch .. '"]'), pushed onto the room's resume list and, if KEPT is '1', its history.
# KEYS: seqs hash, rooms set. ARGV[5], [6], [7]: numbers, history and resume prefixes;
# [8], [9]: history and resume list lengths; parts from [10].
BATCH: Final = Script[bytes](
    None,
    r"""
local out = {ARGV[4]}
local history_len, resume_len = tonumber(ARGV[8]), tonumber(ARGV[9])
local i, n = 10, #ARGV
while i <= n do
  if ARGV[i] == 'R' then
    out[#out + 1] = ARGV[i + 1]
    i = i + 2
  else
    local room, count = ARGV[i + 1], tonumber(ARGV[i + 3])
    local numbers = ARGV[5] .. room
    local epoch = redis.call('HGET', numbers, 'epoch')
    if not epoch then
      epoch = ARGV[i + 2]
      redis.call('HSET', numbers, 'epoch', epoch, 'seq', 0)
    end
    local seq = redis.call('HINCRBY', numbers, 'seq', count) - count
    out[#out + 1] = ARGV[i + 4] .. epoch .. '"]\n'
    i = i + 5
    local history, resume = ARGV[6] .. room, ARGV[7] .. room
    local kept = false
    for _ = 1, count do
      seq = seq + 1
      local record = ARGV[i] .. string.format('%d', seq) .. ARGV[i + 1]
      if ARGV[i + 2] == '1' then
        redis.call('LPUSH', history, record)
        kept = true
      end
      if resume_len > 0 then redis.call('LPUSH', resume, record) end
      out[#out + 1] = record .. '\n'
      i = i + 3
    end
    if kept then
      redis.call('LTRIM', history, 0, history_len - 1)
      redis.call('SADD', KEYS[2], room)
    end
    if resume_len > 0 then redis.call('LTRIM', resume, 0, resume_len - 1) end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], table.concat(out))
return 1
""",
)

# A resume entry's mirror (triochat.core.resume.Tokens): ARGV[1] the op, [2] our node,
# [3] the entry id, [4], [5], [6]: resumable, tokens and token prefixes; for 'issue',
# [7] KEY, [8] NAME, [9] the new digest (hex); for 'keep', [7] the digest to keep.
# Only the entry's node may change it (another may have taken it over meanwhile).
TOKENS: Final = Script[bytes](
    None,
    """
local entry, set = ARGV[4] .. ARGV[3], ARGV[5] .. ARGV[3]
local op = ARGV[1]
local owner = redis.call('HGET', entry, 'node')
if op == 'issue' then
  if owner and owner ~= ARGV[2] then return 0 end
  redis.call('HSET', entry, 'node', ARGV[2], 'key', ARGV[7], 'name', ARGV[8])
  redis.call('HSETNX', entry, 'held', '0')
  redis.call('SET', ARGV[6] .. ARGV[9], ARGV[3])
  redis.call('SADD', set, ARGV[9])
  return 1
end
if owner ~= ARGV[2] then return 0 end
if op == 'hold' then
  redis.call('HSET', entry, 'held', '1')
  return 1
end
for _, digest in ipairs(redis.call('SMEMBERS', set)) do
  if digest ~= ARGV[7] then
    redis.call('DEL', ARGV[6] .. digest)
    redis.call('SREM', set, digest)
  end
end
if op == 'forget' then redis.call('DEL', entry, set) end
return 1
""",
)

# The grace of entry ARGV[3], held by node ARGV[2], is over: 1 if it is still ours (or Redis
# lost it), and its tokens go; 0 if another node took it over. ARGV[4], [5], [6] as TOKENS.
EXPIRE: Final = Script[bytes](
    None,
    """
local entry, set = ARGV[4] .. ARGV[3], ARGV[5] .. ARGV[3]
local owner = redis.call('HGET', entry, 'node')
if owner and owner ~= ARGV[2] then return 0 end
for _, digest in ipairs(redis.call('SMEMBERS', set)) do redis.call('DEL', ARGV[6] .. digest) end
redis.call('DEL', entry, set)
return 1
""",
)

# Take the member whose token's digest is KEYS[1] (token:HEX) over to node ARGV[1]: its entry
# and its name (ARGV[7], our claim token) are ours, and one T record says so on the channel,
# with the member's rooms and where their numbering stands, and its account and away text
# (from its presence, which its old node wrote), so that its old node lets it go
# and we adopt it at this very point of the channel's order. Returns false (no such token),
# or the entry id and, for each (ROOM, AFTER) pair from ARGV[14], ROOM, its epoch, its last
# number and its events after AFTER (newest first; none if more than ARGV[11]).
# ARGV[5], [6]: resumable and name prefixes; [8]: presence hash; [9], [10]: numbers and
# resume prefixes; [12]: seqs hash; [13]: our nonce for this takeover; [14]: our held set,
# [15]: the lobby, [16]: holders prefix (we hold the member's rooms from now on); the
# pairs from ARGV[17].
TAKE: Final = Script[bytes](
    None,
    """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local entry = ARGV[5] .. id
local old = redis.call('HGET', entry, 'node')
if not old then return false end
local key = redis.call('HGET', entry, 'key')
local name = redis.call('HGET', entry, 'name')
redis.call('HSET', entry, 'node', ARGV[1], 'held', '0')
redis.call('SET', ARGV[6] .. key, ARGV[7])
local rooms, account, away = {}, cjson.null, cjson.null
local presence = redis.call('HGET', ARGV[8], key)
if presence then  -- [NODE, NAME, ROOMS, ACCOUNT, AWAY], as its old node wrote it
  local ok, decoded = pcall(cjson.decode, presence)
  if ok and type(decoded) == 'table' then
    if type(decoded[3]) == 'table' then rooms = decoded[3] end
    if type(decoded[4]) == 'string' then account = decoded[4] end
    if type(decoded[5]) == 'string' then away = decoded[5] end
  end
end
local numbers, member_of = {}, {}
for _, room in ipairs(rooms) do
  member_of[room] = true
  if room ~= ARGV[15] then  -- we hold its rooms now: the old node's release drops nothing
    redis.call('SADD', ARGV[16] .. room, ARGV[1])
    redis.call('SADD', ARGV[14], room)
  end
  local n = redis.call('HMGET', ARGV[9] .. room, 'epoch', 'seq')
  if n[1] then numbers[#numbers + 1] = {room, n[1], tonumber(n[2])} end
end
local tails = {}
for i = 17, #ARGV, 2 do
  local room, after = ARGV[i], tonumber(ARGV[i + 1])
  local n = redis.call('HMGET', ARGV[9] .. room, 'epoch', 'seq')
  local seq = tonumber(n[2] or '0') or 0
  local events = {}
  local missed = seq - after
  -- Only the member's own rooms' events are read (it may name any room).
  if n[1] and member_of[room] and missed > 0 and missed <= tonumber(ARGV[11]) then
    events = redis.call('LRANGE', ARGV[10] .. room, 0, missed - 1)
  end
  tails[#tails + 1] = {room, n[1] or '', tostring(seq), events}
end
local record = cjson.encode({'T', id, key, name, old, ARGV[1], ARGV[13], rooms, numbers,
  account, away})
redis.call('HSET', ARGV[12], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. record .. '\\n')
return {id, tails}
""",
)

# Claim KEYS[1] for ARGV[1] (a NODE:SERIAL token) unless a live node holds it; return the
# holder's token, or false. ARGV[2]: alive-key prefix; ARGV[3]: our node;
# ARGV[4] '1': take over our own stale token.
CLAIM: Final = Script[bytes](
    None,
    """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  local node = string.match(cur, '^[^:]+')
  local ours = node == ARGV[3] and ARGV[4] == '1'
  if redis.call('EXISTS', ARGV[2] .. node) == 1 and not ours then
    return cur
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return false
""",
)

# Give back the claim on KEYS[1] if it is still ARGV[1]'s.
RELEASE: Final = Script[bytes](
    None,
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
""",
)

# Remove node ARGV[1]'s presence, names and bookkeeping; return its presence entries and,
# with ARGV[5] '1', the rooms it held, whose holds go too.
# KEYS: presence hash, nodes set, seqs hash, its held set. ARGV[2]: name-key prefix;
# ARGV[3]: its alive key; ARGV[4] '1': even if it is alive (our own shutdown or
# restart); ARGV[6]: holders prefix; ARGV[7]: how its presence entries start.
REAP: Final = Script[bytes](
    None,
    """
if ARGV[4] ~= '1' and redis.call('EXISTS', ARGV[3]) == 1 then return {{}, {}} end
local out = {}
local all = redis.call('HGETALL', KEYS[1])
local prefix = ARGV[7]
local owner_prefix = ARGV[1] .. ':'
for i = 1, #all, 2 do
  local v = all[i + 1]
  if string.sub(v, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], all[i])
    local nk = ARGV[2] .. all[i]
    local owner = redis.call('GET', nk)
    if owner and string.sub(owner, 1, #owner_prefix) == owner_prefix then
      redis.call('DEL', nk)
    end
    out[#out + 1] = all[i]
    out[#out + 1] = v
  end
end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local rooms = {}
if ARGV[5] == '1' then
  rooms = redis.call('SMEMBERS', KEYS[4])
  for _, room in ipairs(rooms) do redis.call('SREM', ARGV[6] .. room, ARGV[1]) end
  redis.call('DEL', KEYS[4])
end
return {out, rooms}
""",
)

# Make node ARGV[1]'s holds exactly the rooms ARGV[3...]; return the rooms it let go.
# KEYS: its held set. ARGV[2]: holders prefix.
REHOLD: Final = Script[bytes](
    None,
    """
local now = {}
for i = 3, #ARGV do now[ARGV[i]] = true end
local released = {}
for _, room in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not now[room] then
    redis.call('SREM', KEYS[1], room)
    redis.call('SREM', ARGV[2] .. room, ARGV[1])
    released[#released + 1] = room
  end
end
for i = 3, #ARGV do
  redis.call('SADD', KEYS[1], ARGV[i])
  redis.call('SADD', ARGV[2] .. ARGV[i], ARGV[1])
end
return released
""",
)

# With ARGV[9] '1', release node ARGV[1]'s hold on each room first. Then drop the history
# of each room that no node holds: it moves to dropped:ROOM (in front of what is left of
# an earlier drop) for ARGV[8] ms, so that a join that raced the drop can undo it. If any
# room went, publish one batch of their D records. Returns 1 if it published.
# KEYS: rooms set, seqs hash, node's held set. ARGV[5], [6], [7]: history, holders and
# dropped prefixes; [10]: history length; [11], [12]: numbers and resume prefixes (a
# dropped room's numbering goes too: it starts again in a new epoch); from [13]: ROOM, D
# record pairs.
DROP: Final = Script[bytes](
    None,
    r"""
local batch = {ARGV[4]}
for i = 13, #ARGV, 2 do
  local room = ARGV[i]
  local holders = ARGV[6] .. room
  if ARGV[9] == '1' then
    redis.call('SREM', KEYS[3], room)
    redis.call('SREM', holders, ARGV[1])
  end
  if redis.call('EXISTS', holders) == 0 then
    local history, dropped = ARGV[5] .. room, ARGV[7] .. room
    if redis.call('EXISTS', history) == 1 then
      local older = redis.call('LRANGE', dropped, 0, -1)
      redis.call('RENAME', history, dropped)
      for _, event in ipairs(older) do redis.call('RPUSH', dropped, event) end
      redis.call('LTRIM', dropped, 0, tonumber(ARGV[10]) - 1)
      redis.call('PEXPIRE', dropped, ARGV[8])
    end
    redis.call('DEL', ARGV[11] .. room, ARGV[12] .. room)
    redis.call('SREM', KEYS[1], room)
    batch[#batch + 1] = ARGV[i + 1]
  end
end
if #batch == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], table.concat(batch))
return 1
""",
)

# Put ROOM's dropped events (KEYS[4]) back behind any said since (KEYS[3]), and publish
# the result as one H record: ARGV[7] (its start, up to the first event), the events
# oldest first joined by commas, and the record's end. Returns 1 if it published
# (0: nothing was kept, or it expired). KEYS[1], [2]: rooms set, seqs hash.
# ARGV[5]: room; [6]: history length.
UNDO: Final = Script[bytes](
    None,
    r"""
local older = redis.call('LRANGE', KEYS[4], 0, -1)
if #older == 0 then return 0 end
for _, event in ipairs(older) do redis.call('RPUSH', KEYS[3], event) end
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
redis.call('DEL', KEYS[4])
redis.call('SADD', KEYS[1], ARGV[5])
local stored = redis.call('LRANGE', KEYS[3], 0, -1)
local events = {}
for i = #stored, 1, -1 do events[#events + 1] = stored[i] end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ARGV[7] .. table.concat(events, ',') .. ']]\n')
return 1
""",
)

# Presence, batch numbers and every room's history, in one atomic read.
# KEYS: presence hash, seqs hash, rooms set. ARGV[1]: history prefix.
SNAPSHOT: Final = Script[bytes](
    None,
    """
local rooms = redis.call('SMEMBERS', KEYS[3])
local h = {}
for _, r in ipairs(rooms) do
  h[#h + 1] = r
  h[#h + 1] = redis.call('LRANGE', ARGV[1] .. r, 0, -1)
end
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), h}
""",
)


ALL: Final = (BATCH, TOKENS, EXPIRE, TAKE, CLAIM, RELEASE, REAP, REHOLD, DROP, UNDO, SNAPSHOT)


async def load(client: coredis.Redis[bytes]) -> None:
    """Load every script into Redis's cache (once per connection)."""
    for script in ALL:
        await client.script_load(script.script)


def in_transaction(
    pipe: Any, script: Script[bytes], keys: Sequence[str], args: Sequence[str | bytes]
) -> None:
    """Queue ``script`` in a transaction by its SHA alone (see the module's docstring)."""
    pipe.evalsha(script.sha, keys=list(keys), args=list(args))
