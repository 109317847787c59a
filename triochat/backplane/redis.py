"""Several ``triochat serve`` nodes as one chat, through Redis (coredis, native on trio).

The design, in short (docs/scaling.md has the long form):

- **One channel per cluster.** Every room line from every node is published
  on ``triochat:CLUSTER:events`` and delivered to local members only when it
  comes back from Redis, the sender's node included. Redis delivers one
  channel's messages in one order to every subscriber, so everyone in a room
  sees the same order. A node batches what it has queued into one message with
  a per-node sequence number.
- **Writes are atomic with their announcement.** Each batch is one MULTI:
  history (LPUSH/LTRIM), the presence hash, the node's sequence number and
  the PUBLISH. A (re)connecting node subscribes first, then takes a snapshot
  in one Lua script and skips batches the snapshot already holds.
- **Names** are keys ``name:KEY`` holding ``NODE:SERIAL``, claimed by a Lua
  script that treats a name held by a dead node (no heartbeat key) as free.
  Each node refreshes ``alive:NODE`` (a TTL'd key); survivors reap a node
  whose key expired, announcing its users ``left (connection lost)``.
- **A room's history goes with its last member anywhere.** Each node holds
  the rooms its members are in (``holders:ROOM``, ``held:NODE``); when a
  release leaves a room with no holder, a script drops its history and
  publishes that (a ``D`` record) in one step. A join on another node can
  race that drop, because the hub admits a joiner before its hold reaches
  Redis; that node sees the drop arrive while its member is in the room and
  undoes it (an ``H`` record), from a copy Redis keeps for ``undo_window``.
- **The hub never waits.** It asks the replica of remote presence kept here,
  and queues its lines on a bounded channel that the publisher task drains.

coredis exceptions stop at this module: they become "the link is down",
never reach the hub, and are retried with backoff.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import NoRetryPolicy

from ..protocol import line as p
from ._wire import (
    Drop,
    History,
    Line,
    Presence,
    Private,
    WireError,
    decode_batch,
    encode_batch,
    encode_record as _encode_record,
)
from .base import BackplaneError

if TYPE_CHECKING:
    from ..core.hub import Hub, Member

log: Final = logging.getLogger("triochat.backplane.redis")

LINK_DOWN: Final = (
    "The link to the rest of the chat is down: you can keep talking with users on this "
    "server; reconnecting."
)
LINK_UP: Final = "The link to the rest of the chat is back."
_LEAVE_TIMEOUT: Final = 0.5

# Errors that mean "the link is down": coredis's own, the socket's, our timeouts, and
# anyio's stream errors, which coredis lets through when a connection closes under it.
_LINK_ERRORS: Final = (
    coredis.exceptions.RedisError,
    OSError,
    trio.TooSlowError,
    BackplaneError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)

# Claim KEYS[1] for ARGV[1] (a NODE:SERIAL token) unless a live node holds it.
# ARGV[2]: alive-key prefix; ARGV[3]: our node; ARGV[4] '1': take over our own stale token.
_CLAIM: Final = """
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
"""

_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# Remove node ARGV[1]'s presence, names and bookkeeping; return its presence entries and,
# with ARGV[5] '1', the rooms it held, whose holds go too.
# KEYS: presence hash, nodes set, seqs hash, its held set. ARGV[2]: name-key prefix;
# ARGV[3]: its alive key; ARGV[4] '1': even if it is alive (our own shutdown or
# restart); ARGV[6]: holders prefix.
_REAP: Final = """
if ARGV[4] ~= '1' and redis.call('EXISTS', ARGV[3]) == 1 then return {{}, {}} end
local out = {}
local all = redis.call('HGETALL', KEYS[1])
local prefix = ARGV[1] .. '\t'
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
"""

# Make node ARGV[1]'s holds exactly the rooms ARGV[3...]; return the rooms it let go.
# KEYS: its held set. ARGV[2]: holders prefix.
_REHOLD: Final = """
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
"""

# With ARGV[9] '1', release node ARGV[1]'s hold on each room first. Then drop the history
# of each room that no node holds: it moves to dropped:ROOM (in front of what is left of
# an earlier drop) for ARGV[8] ms, so that a join that raced the drop can undo it. If any
# room went, publish one batch of their D records as node ARGV[1], batch ARGV[2].
# KEYS: rooms set, seqs hash, node's held set. ARGV[3]: channel; [4]: batch header;
# [5], [6], [7]: history, holders and dropped prefixes; [10]: history length;
# from [11]: ROOM, D record pairs. Returns 1 if it published.
_DROP: Final = r"""
local batch = {ARGV[4]}
for i = 11, #ARGV, 2 do
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
      for _, line in ipairs(older) do redis.call('RPUSH', dropped, line) end
      redis.call('LTRIM', dropped, 0, tonumber(ARGV[10]) - 1)
      redis.call('PEXPIRE', dropped, ARGV[8])
    end
    redis.call('SREM', KEYS[1], room)
    batch[#batch + 1] = ARGV[i + 1]
  end
end
if #batch == 1 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], table.concat(batch))
return 1
"""

# Put ROOM's dropped lines (KEYS[4]) back behind any said since (KEYS[3]), and publish the
# result as one H record (ARGV[7] is its start, "H<TAB>ROOM") as node ARGV[1], batch ARGV[2].
# KEYS[1], [2]: rooms set, seqs hash. ARGV[3]: channel; [4]: batch header; [5]: room;
# [6]: history length. Returns 1 if it published (0: nothing was kept, or it expired).
_UNDO: Final = r"""
local older = redis.call('LRANGE', KEYS[4], 0, -1)
if #older == 0 then return 0 end
for _, line in ipairs(older) do redis.call('RPUSH', KEYS[3], line) end
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
redis.call('DEL', KEYS[4])
redis.call('SADD', KEYS[1], ARGV[5])
local lines = redis.call('LRANGE', KEYS[3], 0, -1)
local record = {ARGV[4], ARGV[7]}
for i = #lines, 1, -1 do
  record[#record + 1] = '\t' .. (string.gsub(lines[i], '\n$', ''))
end
record[#record + 1] = '\n'
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], table.concat(record))
return 1
"""

# Presence, sequence numbers and every room's history, in one atomic read.
_SNAPSHOT: Final = """
local rooms = redis.call('SMEMBERS', KEYS[3])
local h = {}
for _, r in ipairs(rooms) do
  h[#h + 1] = r
  h[#h + 1] = redis.call('LRANGE', ARGV[1] .. r, 0, -1)
end
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), h}
"""


@dataclass(frozen=True, kw_only=True)
class RedisOptions:
    """How a node talks to Redis; every interval is an option so tests can shorten them."""

    url: str
    cluster: str = "triochat"
    history: int = 20
    """Lines each room keeps in Redis (the server's ``--history``)."""
    heartbeat: float = 2.0
    """Seconds between this node's heartbeats (and its checks for dead nodes)."""
    node_ttl: float = 6.0
    """Seconds without a heartbeat before a node counts as dead (its names free)."""
    timeout: float = 3.0
    """Seconds any one Redis operation may take before the link counts as down."""
    backoff_min: float = 0.25
    backoff_max: float = 10.0
    publish_queue: int = 10_000
    """Records queued for Redis before lines fall back to this node only."""
    batch: int = 512
    """Most records in one published batch."""
    undo_window: float = 60.0
    """Seconds Redis keeps a dropped history, so that a join that raced the drop can undo it."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"not a Redis URL (redis://HOST:PORT/DB): {self.url}")
        if not self.cluster or any(c in self.cluster for c in " \t\n:{}*"):
            raise ValueError(f"invalid cluster name {self.cluster!r}")
        if not 0 < self.heartbeat < self.node_ttl:
            raise ValueError("need 0 < heartbeat < node_ttl")
        if self.undo_window <= 0:
            raise ValueError("undo_window must be positive")
        if self.timeout <= 0 or not 0 < self.backoff_min <= self.backoff_max:
            raise ValueError("timeout and backoff must be positive, backoff_min <= backoff_max")
        if self.publish_queue < 1 or self.batch < 1 or self.history < 0:
            raise ValueError("publish_queue and batch must be >= 1, history >= 0")


@dataclass(frozen=True, slots=True)
class _Release:
    key: str
    token: str


@dataclass(frozen=True, slots=True)
class _Room:
    """Whether this node has members in ``room`` changed: hold it, or release it."""

    room: str


@dataclass(frozen=True, slots=True)
class _Sweep:
    """Drop the history of each of ``rooms`` that no node holds (another node let go)."""

    rooms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Undo:
    """Bring back ``room``'s dropped history: a member here was in it."""

    room: str


@dataclass(frozen=True, slots=True)
class _Rehold:
    """Make this node's holds in Redis its rooms now (on linking, or after a full queue)."""


_Item = Line | Presence | Private | _Release | _Room | _Sweep | _Undo | _Rehold


class RedisBackplane:
    """The Redis backplane. Run it with ``nursery.start(backplane.run, hub)``."""

    remote = True

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self.node = uuid.uuid4().hex[:12]
        prefix = f"triochat:{options.cluster}:"
        self._channel = prefix + "events"
        self._presence_key = prefix + "presence"
        self._seqs_key = prefix + "seqs"
        self._nodes_key = prefix + "nodes"
        self._rooms_key = prefix + "rooms"
        self._name_prefix = prefix + "name:"
        self._alive_prefix = prefix + "alive:"
        self._history_prefix = prefix + "history:"
        self._dropped_prefix = prefix + "dropped:"
        self._holders_prefix = prefix + "holders:"
        self._held_prefix = prefix + "held:"
        self._send, self._receive = trio.open_memory_channel[_Item](options.publish_queue)
        self._pending: list[_Item] = []
        self._replica: dict[str, tuple[str, str, str]] = {}
        """Users on other nodes: key -> (node, name, room)."""
        self._tokens: dict[str, str] = {}
        """This node's claims: name key -> NODE:SERIAL token."""
        self._serial = itertools.count(1)
        self._held: set[str] = set()
        """The rooms this node holds in Redis, as far as the publisher has written."""
        self._holds_stale = False
        self._seq = 0
        self._seen: dict[str, int] = {}
        self._publish_lock = trio.Lock()
        self._client: coredis.Redis[bytes] | None = None
        self._hub: Hub | None = None
        self._stamp = p.Timestamper()
        self.linked = False
        self._down = False
        # The heartbeat task's scope: leaving the cluster stops it first.
        self._beating = trio.CancelScope()
        self.link_changes = 0
        """How often the link went down or came back (tests and metrics read it)."""

    # --- what the hub calls (synchronous, never waits) -------------------------

    @property
    def notice(self) -> str | None:
        return LINK_DOWN if self._down else None

    def publish_line(self, room: str, data: bytes, record: bool) -> bool:
        return self.linked and self._queue(Line(room, record, data))

    def publish_private(self, key: str, data: bytes) -> bool:
        return self.linked and self._queue(Private(key, data))

    def presence(self, key: str, name: str, room: str | None) -> None:
        token = self._tokens.pop(key, None) if room is None else None
        if not self.linked:
            return  # Rewritten from the hub's state when the link is back.
        self._queue(Presence(self.node, key, name, room or ""))
        if token is not None:
            self._queue(_Release(key, token))

    def occupy(self, room: str) -> None:
        if self.linked:
            self._queue_room(_Room(room))

    def vacate(self, room: str) -> bool:
        if not self.linked:
            return False  # Histories are re-read from Redis when the link is back.
        self._queue_room(_Room(room))
        return True

    def _queue_room(self, item: _Room | _Undo) -> None:
        if not self._queue(item):
            self._holds_stale = True  # The publisher rewrites every hold when it can.

    def remote_name(self, key: str) -> str | None:
        entry = self._replica.get(key)
        return entry[1] if entry is not None else None

    def remote_users(self, room: str) -> list[str]:
        return [name for _, name, where in self._replica.values() if where == room]

    def remote_rooms(self) -> dict[str, int]:
        return dict(Counter(where for _, _, where in self._replica.values()))

    def _queue(self, item: _Item) -> bool:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            log.warning("publish queue full (%d): delivering on this node only", len(self._pending))
            return False
        return True

    # --- name claims (awaited by the server before it calls the hub) ----------------

    async def claim(self, name: str) -> str | None:
        key = p.name_key(name)
        if key in self._tokens:
            return f"Name {name} is taken, choose another"
        token = f"{self.node}:{next(self._serial)}"
        self._tokens[key] = token
        if not self.linked or self._client is None:
            return None  # Checked locally now; reconciled when the link is back.
        try:
            owner = await self._claim(self._client, key, token)
        except BaseException as exc:
            # Cancelled (or failed) half-way: the key may hold our token; give it back.
            self._tokens.pop(key, None)
            self._queue(_Release(key, token))
            if isinstance(exc, _LINK_ERRORS):
                log.warning("name claim failed: %r", exc)
                return "Cannot check that name with the rest of the chat right now; try again"
            raise
        if owner is not None:
            del self._tokens[key]
            return f"Name {name} is taken, choose another"
        return None

    def unclaim(self, name: str) -> None:
        key = p.name_key(name)
        token = self._tokens.pop(key, None)
        if token is not None and self.linked:
            self._queue(_Release(key, token))

    async def _claim(self, client: coredis.Redis[bytes], key: str, token: str) -> str | None:
        """Claim ``key``; ``None`` on success, else the holder's token."""
        with trio.fail_after(self.options.timeout):
            owner = await self._eval(client, _CLAIM, key, token, "0")
            if owner is not None and owner.split(":")[0] == self.node:
                live = set(self._tokens.values()) - {token}
                if owner not in live:  # Our own, from a release still in flight.
                    owner = await self._eval(client, _CLAIM, key, token, "1")
        return str(owner) if owner is not None else None

    async def _eval(self, client: coredis.Redis[bytes], script: str, key: str, *args: str) -> Any:
        result = await client.eval(
            script,
            keys=[self._name_prefix + key],
            args=[args[0], self._alive_prefix, self.node, *args[1:]],
        )
        return result.decode() if isinstance(result, bytes) else result

    # --- the link: connect, serve, and reconnect with backoff --------------------------

    async def run(
        self, hub: Hub, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the link up until cancelled. ``started`` after the first attempt, up or not."""
        self._hub = hub
        backoff = self.options.backoff_min
        status: trio.TaskStatus[None] | None = task_status
        while True:
            failure: BaseException | None = None
            try:
                await self._session(status)
            except* _LINK_ERRORS as group:
                failure = group.exceptions[0]
            if self.linked:
                status = None  # The session reported started.
                backoff = self.options.backoff_min
            elif status is not None:
                status.started()  # Serve this node's users while we keep trying.
                status = None
            self._link_lost(failure)
            delay = backoff * random.uniform(0.75, 1.0)
            log.info("reconnecting to Redis in %.2f s", delay)
            await trio.sleep(delay)
            backoff = min(backoff * 2, self.options.backoff_max)

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[coredis.Redis[bytes]]:
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            self.options.url,
            retry_policy=NoRetryPolicy(),
            stream_timeout=self.options.timeout,
            connect_timeout=self.options.timeout,
        )
        # connect_timeout bounds the connection; coredis's client holds a task group,
        # so it is entered with ``async with`` only, never under our own cancel scope.
        async with client:
            yield client

    async def _session(self, task_status: trio.TaskStatus[None] | None) -> None:
        hub = self._hub
        assert hub is not None
        timeout = self.options.timeout
        async with (
            self._connect() as client,
            client.pubsub(retry_policy=NoRetryPolicy(), ignore_subscribe_messages=True) as pubsub,
        ):
            with trio.fail_after(timeout):
                await pubsub.subscribe(self._channel)
                # Our holds stay (the others must not drop our rooms meanwhile);
                # _Rehold below rewrites them.
                stale, _ = await self._reap(client, self.node, force=True)
                await self._beat(client)
            conflicts = await self._reclaim(client, hub)
            with trio.fail_after(timeout):
                snapshot = await client.eval(
                    _SNAPSHOT,
                    keys=[self._presence_key, self._seqs_key, self._rooms_key],
                    args=[self._history_prefix],
                )
            stored = self._apply_snapshot(hub, snapshot)
            self._client = client
            self.linked = True
            # First our holds, then a check of every stored room: a room nobody
            # holds (left by a crash, or by an older version) loses its history.
            self._queue(_Rehold())
            if rooms := tuple(room for room in stored if room != p.LOBBY):
                self._queue(_Sweep(rooms))
            self.link_changes += 1
            log.info("linked to Redis as node %s (cluster %s)", self.node, self.options.cluster)
            # Leavers during the outage, then this node's users, as the cluster should see them.
            local = {m.key for m in hub.local_members()}
            for key, name, room in stale:
                if key not in local and room:
                    self._announce_gone(self.node, key, name, room, "connection lost")
            for member in hub.local_members():
                room = member.room.name if member.room else ""
                self._queue(Presence(self.node, member.key, member.name, room))
            for member in conflicts:
                hub.expel(
                    member,
                    f"Your name {member.name} was taken on another server while the link "
                    "was down; reconnect with another name",
                    "name conflict",
                )
            if self._down:
                self._down = False
                hub.notice_all(LINK_UP)
            if task_status is not None:
                task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._publisher, client)
                nursery.start_soon(self._heartbeat, client)
                await self._subscriber(hub, pubsub)
                raise BackplaneError("subscription ended")

    def _link_lost(self, failure: BaseException | None) -> None:
        hub = self._hub
        assert hub is not None
        was_linked = self.linked
        self.linked = False
        self._down = True
        self._client = None
        self._replica.clear()
        # Whatever did not reach Redis is delivered here, so nothing said is lost.
        items, self._pending = self._pending, []
        while True:
            try:
                items.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        for item in items:
            if isinstance(item, Line):
                hub.deliver(item.room, item.data, item.record)
        if was_linked:
            self.link_changes += 1
            log.warning("link to Redis lost: %r", failure)
            hub.notice_all(LINK_DOWN)
        else:
            log.warning("cannot reach Redis: %r", failure)
        hub.flush()

    async def _reclaim(self, client: coredis.Redis[bytes], hub: Hub) -> list[Member]:
        """Claim every local member's name again; return members whose name was taken."""
        conflicts = []
        done: set[Member] = set()
        # Until none is left: users may register (locally) while we await.
        while todo := [m for m in hub.local_members() if m not in done]:
            for member in todo:
                done.add(member)
                token = self._tokens.get(member.key)
                if token is None:
                    token = self._tokens[member.key] = f"{self.node}:{next(self._serial)}"
                if await self._claim(client, member.key, token) is not None:
                    self._tokens.pop(member.key, None)
                    conflicts.append(member)
        return conflicts

    def _apply_snapshot(self, hub: Hub, snapshot: Any) -> list[str]:
        """Take the snapshot's presence, batch numbers and histories; return its rooms."""
        presence, seqs, histories = snapshot
        self._replica.clear()
        for key, value in _pairs(presence):
            node, name, room = value.split("\t")
            if node != self.node:
                self._replica[key] = (node, name, room)
        self._seen = {node: int(seq) for node, seq in _pairs(seqs)}
        log.debug("snapshot: %d remote users, batches seen %s", len(self._replica), self._seen)
        stored: dict[str, list[bytes]] = {}
        for i in range(0, len(histories), 2):
            lines = histories[i + 1]
            stored[histories[i].decode()] = list(reversed(lines))
        hub.replace_histories(stored)
        return list(stored)

    # --- the session's tasks ----------------------------------------------------

    async def _publisher(self, client: coredis.Redis[bytes]) -> None:
        receive = self._receive
        limit = self.options.batch
        while True:
            batch = [await receive.receive()]
            while len(batch) < limit:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            self._pending = batch
            await self._publish(client, batch)
            if self._holds_stale:
                self._holds_stale = False
                await self._publish(client, [_Rehold()])

    async def _publish(self, client: coredis.Redis[bytes], items: list[_Item]) -> None:
        """Write ``items`` to Redis in order, taking each out of the list once written.

        Records and holds go in one transaction with the batch that announces
        them. Releases, sweeps and undos run as scripts between transactions,
        because only Redis knows whether they drop (or restore) a history and
        so whether there is anything to announce. On failure, ``items`` holds
        what was not written.
        """
        hub = self._hub
        assert hub is not None
        async with self._publish_lock:
            while items:
                first = items[0]
                if isinstance(first, _Room) and not hub.hosts(first.room):
                    self._held.discard(first.room)
                    await self._drop(client, (first.room,), release=True)
                elif isinstance(first, _Sweep):
                    await self._drop(client, first.rooms, release=False)
                elif isinstance(first, _Undo):
                    if hub.hosts(first.room):  # Else nobody needs it back.
                        await self._undo(client, first.room)
                elif isinstance(first, _Rehold):
                    await self._rehold(client, hub)
                else:
                    count = 1
                    while count < len(items) and _in_transaction(items[count], hub):
                        count += 1
                    await self._write(client, items[:count])
                    del items[:count]
                    continue
                del items[0]

    async def _write(self, client: coredis.Redis[bytes], items: list[_Item]) -> None:
        """Records, name releases and holds in one transaction, with the batch announcing them."""
        history = self.options.history
        holds = [i.room for i in items if isinstance(i, _Room) and i.room not in self._held]
        records = [_encode_record(i) for i in items if isinstance(i, Line | Presence | Private)]
        if not records and not holds and not any(isinstance(i, _Release) for i in items):
            return
        with trio.fail_after(self.options.timeout):
            async with client.pipeline(transaction=True) as pipe:
                for room in holds:
                    pipe.sadd(self._held_prefix + self.node, [room])
                    pipe.sadd(self._holders_prefix + room, [self.node])
                for item in items:
                    if isinstance(item, _Release):
                        pipe.eval(_RELEASE, keys=[self._name_prefix + item.key], args=[item.token])
                    elif isinstance(item, Line) and item.record and history:
                        key = self._history_prefix + item.room
                        pipe.lpush(key, [item.data])
                        pipe.ltrim(key, 0, history - 1)
                        pipe.sadd(self._rooms_key, [item.room])
                    elif isinstance(item, Presence) and item.node == self.node:
                        if item.room:
                            value = f"{self.node}\t{item.name}\t{item.room}"
                            pipe.hset(self._presence_key, {item.key: value})
                        else:
                            pipe.hdel(self._presence_key, [item.key])
                if records:
                    self._seq += 1
                    pipe.hset(self._seqs_key, {self.node: str(self._seq)})
                    pipe.publish(self._channel, encode_batch(self.node, self._seq, records))
        self._held.update(holds)

    async def _drop(
        self, client: coredis.Redis[bytes], rooms: Iterable[str], *, release: bool
    ) -> None:
        """Release our hold on ``rooms`` (if ``release``); drop the history of any nobody holds."""
        args: list[str | bytes] = [self._history_prefix, self._holders_prefix]
        args += [self._dropped_prefix, str(round(self.options.undo_window * 1000))]
        args += ["1" if release else "0", str(self.options.history)]
        for room in rooms:
            args += [room, _encode_record(Drop(room))]
        keys = [self._rooms_key, self._seqs_key, self._held_prefix + self.node]
        await self._announcing_script(client, _DROP, keys, args)

    async def _undo(self, client: coredis.Redis[bytes], room: str) -> None:
        """Bring back ``room``'s dropped history, if Redis still keeps it."""
        log.info("a join here raced the drop of %s's history: undoing the drop", room)
        start = _encode_record(History(room, ())).rstrip(b"\n")
        keys = [self._rooms_key, self._seqs_key]
        keys += [self._history_prefix + room, self._dropped_prefix + room]
        await self._announcing_script(client, _UNDO, keys, [room, str(self.options.history), start])

    async def _announcing_script(
        self, client: coredis.Redis[bytes], script: str, keys: list[str], args: list[str | bytes]
    ) -> None:
        """Run a script that may publish a batch as ours, numbered next."""
        seq = self._seq + 1
        header = encode_batch(self.node, seq, [])
        try:
            with trio.fail_after(self.options.timeout):
                published = await client.eval(
                    script, keys=keys, args=[self.node, str(seq), self._channel, header, *args]
                )
        except BaseException:
            self._seq = seq  # It may have published: never number two batches alike.
            raise
        if published:
            self._seq = seq

    async def _rehold(self, client: coredis.Redis[bytes], hub: Hub) -> None:
        """Hold exactly the rooms our members are in; drop what only we held and let go."""
        rooms = {m.room.name for m in hub.local_members() if m.room and m.room.name != p.LOBBY}
        with trio.fail_after(self.options.timeout):
            released: Any = await client.eval(
                _REHOLD,
                keys=[self._held_prefix + self.node],
                args=[self.node, self._holders_prefix, *rooms],
            )
        self._held = rooms
        if released:
            await self._drop(client, [_text(room) for room in released], release=False)

    async def _subscriber(self, hub: Hub, pubsub: Any) -> None:
        async for message in pubsub:
            if message["type"] != "message":
                continue
            try:
                node, seq, records = decode_batch(message["data"])
            except WireError as exc:
                log.warning("ignoring a malformed batch: %s", exc)
                continue
            last = self._seen.get(node, 0)
            log.debug("batch %s/%d (last seen %d): %d records", node, seq, last, len(records))
            if seq <= last:
                continue  # Already in the snapshot.
            if last and seq != last + 1:
                log.warning("missed %d batches from node %s", seq - last - 1, node)
            self._seen[node] = seq
            for record in records:
                if isinstance(record, Line):
                    hub.deliver(record.room, record.data, record.record)
                elif isinstance(record, Private):
                    hub.deliver_private(record.key, record.data)
                elif isinstance(record, Drop):
                    if hub.drop_history(record.room):
                        # A member here joined before its hold reached Redis: hold the
                        # room (again, if a reap took our hold) and undo the drop.
                        self._held.discard(record.room)
                        self._queue_room(_Room(record.room))
                        self._queue_room(_Undo(record.room))
                elif isinstance(record, History):
                    hub.set_history(record.room, record.lines)
                elif record.node != self.node:
                    self._apply_presence(record)
            hub.flush()

    def _apply_presence(self, record: Presence) -> None:
        if record.room:
            self._replica[record.key] = (record.node, record.name, record.room)
        elif self._replica.get(record.key, ("",))[0] == record.node:
            del self._replica[record.key]

    async def _heartbeat(self, client: coredis.Redis[bytes]) -> None:
        with trio.CancelScope() as self._beating:
            while True:
                await trio.sleep(self.options.heartbeat)
                await self._heartbeat_once(client)

    async def _heartbeat_once(self, client: coredis.Redis[bytes]) -> None:
        """Say this node is alive, and reap the nodes that are not."""
        with trio.fail_after(self.options.timeout):
            await self._beat(client)
            nodes = await client.smembers(self._nodes_key)
            for raw in nodes:
                node = raw.decode()
                if node != self.node and not await client.exists([self._alive_prefix + node]):
                    gone, rooms = await self._reap(client, node, release=True)
                    for key, name, room in gone:
                        log.info("node %s is gone: %s left %s", node, name, room)
                        self._announce_gone(node, key, name, room, "connection lost")
                    if rooms:
                        self._queue(_Sweep(tuple(rooms)))

    async def _beat(self, client: coredis.Redis[bytes]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self._alive_prefix + self.node, b"1", px=int(self.options.node_ttl * 1000))
            pipe.sadd(self._nodes_key, [self.node])

    async def _reap(
        self, client: coredis.Redis[bytes], node: str, *, force: bool = False, release: bool = False
    ) -> tuple[list[tuple[str, str, str]], list[str]]:
        """Remove ``node``'s users from Redis; return them as (key, name, room).

        With ``release``, its holds go too, and the rooms it held come second.
        """
        result: Any = await client.eval(
            _REAP,
            keys=[self._presence_key, self._nodes_key, self._seqs_key, self._held_prefix + node],
            args=[
                node,
                self._name_prefix,
                self._alive_prefix + node,
                "1" if force else "0",
                "1" if release else "0",
                self._holders_prefix,
            ],
        )
        entries, rooms = result
        gone = []
        for key, value in _pairs(entries):
            _, name, room = value.split("\t")
            gone.append((key, name, room))
        return gone, [_text(room) for room in rooms]

    def _announce_gone(self, node: str, key: str, name: str, room: str, reason: str) -> None:
        self._queue(Presence(node, key, name, ""))
        line = p.format_event(self._stamp(time.time()), name, f"left {room} ({reason})")
        self._queue(Line(room, False, line.encode()))

    async def leave_cluster(self) -> None:
        """On shutdown: this node's users leave every room, and its keys go."""
        client = self._client
        if not self.linked or client is None:
            return
        self.linked = False
        # A beat landing after the keys below are gone would put this node back
        # in the cluster's list for good (nobody is left to reap it).
        self._beating.cancel()
        # Bounded tightly: the server must exit within 3 s of SIGTERM, Redis or not;
        # if this is cut short, the others reap this node after node_ttl instead.
        with trio.move_on_after(_LEAVE_TIMEOUT, shield=True):
            await client.delete([self._alive_prefix + self.node])
            gone, rooms = await self._reap(client, self.node, force=True, release=True)
            items: list[_Item] = []
            now = self._stamp(time.time())
            for key, name, room in gone:
                items.append(Presence(self.node, key, name, ""))
                line = p.format_event(now, name, f"left {room} (server shutdown)")
                items.append(Line(room, False, line.encode()))
            if rooms:
                items.append(_Sweep(tuple(rooms)))
            await self._publish(client, items)
            await client.hdel(self._seqs_key, [self.node])
            await client.srem(self._nodes_key, [self.node])


def _pairs(flat: Any) -> Iterable[tuple[str, str]]:
    """A flat HGETALL-style reply (or a dict) as decoded ``(field, value)`` pairs."""
    if isinstance(flat, dict):
        items: Iterable[tuple[Any, Any]] = flat.items()
    else:
        items = zip(flat[::2], flat[1::2], strict=True)
    for field, value in items:
        yield _text(field), _text(value)


def _in_transaction(item: _Item, hub: Hub) -> bool:
    """Whether ``item`` can go in a batch's transaction (a release that may drop cannot)."""
    if isinstance(item, _Room):
        return hub.hosts(item.room)
    return not isinstance(item, _Sweep | _Undo | _Rehold)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


__all__: Final = ["LINK_DOWN", "LINK_UP", "RedisBackplane", "RedisOptions"]
