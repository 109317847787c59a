"""The publisher: what this node has for the cluster, queued, batched and written to Redis.

The hub never waits: what it hands the backplane goes on a bounded channel,
and one task drains it in batches. Events, presence and holds go in one
MULTI with the batch that announces them (history LPUSH/LTRIM, the presence
hash, the node's batch number and the PUBLISH), so a (re)connecting node's
snapshot and the channel always agree. Releases of holds, sweeps and undos
run as scripts between transactions, because only Redis knows whether they
drop (or restore) a history, and so whether there is anything to announce.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import coredis
import coredis.exceptions
import trio

from ...core.events import UNNUMBERED, RoomEvent, kept_in_history, new_epoch
from ...protocol.line import LOBBY
from ..base import Node
from . import scripts, shared
from .keys import Keys
from .link import log
from .options import RedisOptions
from .wire import (
    Direct,
    Drop,
    Shared,
    Told,
    Whereabouts,
    encode_batch,
    encode_presence,
    encode_record,
    epoch_head,
    history_prefix,
    numbered_parts,
)


@dataclass(frozen=True, slots=True)
class Events:
    """Room events from this node's hub (all of one room), for every node."""

    events: Sequence[RoomEvent]


@dataclass(frozen=True, slots=True)
class Release:
    """Give back the claim ``token`` on the name ``key``."""

    key: str
    token: str


@dataclass(frozen=True, slots=True)
class Room:
    """Whether this node has members in ``room`` changed: hold it, or release it."""

    room: str


@dataclass(frozen=True, slots=True)
class Sweep:
    """Drop the history of each of ``rooms`` that no node holds (another node let go)."""

    rooms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Undo:
    """Bring back ``room``'s dropped history: a member here was in it."""

    room: str


@dataclass(frozen=True, slots=True)
class TokenOp:
    """A change to a resume entry's mirror (the ``TOKENS`` script's op and its arguments)."""

    op: str
    entry: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rehold:
    """Make this node's holds in Redis its rooms now (on linking, or after a full queue)."""


Item = (
    Events | Direct | Told | Whereabouts | Shared | Release | Room | Sweep | Undo | Rehold | TokenOp
)

_RECORDS: Final = (Direct, Told, Whereabouts, Shared)


class Publisher:
    """The queue of :data:`Item` for Redis, and the writer that empties it in order."""

    def __init__(self, node: str, keys: Keys, options: RedisOptions) -> None:
        self.node = node
        self._keys = keys
        self.shared_keys = shared.SharedKeys(keys)
        self._options = options
        self._send, self._receive = trio.open_memory_channel[Item](options.publish_queue)
        self._pending: list[Item] = []
        """The batch being written: what a failure leaves unwritten stays here."""
        self._held: set[str] = set()
        """The rooms this node holds in Redis, as far as the writer has written."""
        self._holds_stale = False
        self._seq = 0
        """The number of this node's last batch."""
        self.lock = trio.Lock()
        """Held while writing (a test holds it to delay this node's writes)."""

    # --- queueing (synchronous, never waits) ---------------------------------

    def queue(self, item: Item) -> bool:
        """Queue ``item``; ``False`` if the queue is full."""
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            log.warning("publish queue full (%d): delivering on this node only", len(self._pending))
            return False
        return True

    def queue_room(self, item: Room | Undo) -> None:
        if not self.queue(item):
            self._holds_stale = True  # The writer rewrites every hold when it can.

    def forget_hold(self, room: str) -> None:
        """Redis no longer has our hold on ``room`` (a reap took it): write it again."""
        self._held.discard(room)

    def take_unsent(self) -> list[Item]:
        """Everything not written to Redis, in order (the link is down)."""
        items, self._pending = self._pending, []
        while True:
            try:
                items.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                return items

    # --- writing --------------------------------------------------------------

    async def run(self, client: coredis.Redis[bytes], node: Node) -> None:
        """Write what is queued, in batches of at most ``options.batch`` items, forever."""
        receive = self._receive
        limit = self._options.batch
        while True:
            batch = [await receive.receive()]
            while len(batch) < limit:
                try:
                    batch.append(receive.receive_nowait())
                except trio.WouldBlock:
                    break
            self._pending = batch
            await self.write(client, node, batch)
            if self._holds_stale:
                self._holds_stale = False
                await self.write(client, node, [Rehold()])

    async def write(self, client: coredis.Redis[bytes], node: Node, items: list[Item]) -> None:
        """Write ``items`` to Redis in order, taking each out of the list once written.

        On failure, ``items`` holds what was not written.
        """
        async with self.lock:
            while items:
                first = items[0]
                if isinstance(first, Room) and not node.hosts(first.room):
                    self._held.discard(first.room)
                    await self._drop(client, (first.room,), release=True)
                elif isinstance(first, Sweep):
                    await self._drop(client, first.rooms, release=False)
                elif isinstance(first, Undo):
                    if node.hosts(first.room):  # Else nobody needs it back.
                        await self._undo(client, first.room)
                elif isinstance(first, Rehold):
                    await self._rehold(client, node)
                else:
                    count = 1
                    while count < len(items) and _in_transaction(items[count], node):
                        count += 1
                    await self._transaction(client, items[:count])
                    del items[:count]
                    continue
                del items[0]

    async def _transaction(self, client: coredis.Redis[bytes], items: list[Item]) -> None:
        """Events, presence, releases and holds in one MULTI, with the batch announcing them.

        If Redis forgot the scripts (``SCRIPT FLUSH``), none of them ran (they go
        together): they are loaded again and the transaction is written once more.
        """
        seq = self._seq
        try:
            await self._multi(client, items)
        except coredis.exceptions.NoScriptError:
            self._seq = seq  # Its batch was not published.
            with trio.fail_after(self._options.timeout):
                await scripts.load(client)
            await self._multi(client, items)

    async def _multi(self, client: coredis.Redis[bytes], items: list[Item]) -> None:
        keys, history = self._keys, self._options.history
        holds = [i.room for i in items if isinstance(i, Room) and i.room not in self._held]
        if not holds and not any(
            isinstance(i, (Events, Release, TokenOp, *_RECORDS)) for i in items
        ):
            return
        parts: list[str | bytes] = []
        """The batch, for the script that numbers its events and publishes it."""
        with trio.fail_after(self._options.timeout):
            async with client.pipeline(transaction=True) as pipe:
                for room in holds:
                    pipe.sadd(keys.held(self.node), [room])
                    pipe.sadd(keys.holders(room), [self.node])
                for item in items:
                    if isinstance(item, Events):
                        parts += self._numbered_parts(item.events)
                    elif isinstance(item, Release):
                        release = [keys.name(item.key)]
                        scripts.in_transaction(pipe, scripts.RELEASE, release, [item.token])
                    elif isinstance(item, TokenOp):
                        prefixes = [keys.resumable_prefix, keys.tokens_prefix, keys.token_prefix]
                        args = [item.op, self.node, item.entry, *prefixes, *item.args]
                        scripts.in_transaction(pipe, scripts.TOKENS, [], args)
                    elif isinstance(item, _RECORDS):
                        parts += [b"R", encode_record(item)]
                        if isinstance(item, Shared):
                            shared.write(pipe, self.shared_keys, item.change)
                        elif isinstance(item, Whereabouts) and item.node == self.node:
                            if item.rooms is not None:
                                value = encode_presence(
                                    self.node, item.name, item.rooms, item.account, item.away
                                )
                                pipe.hset(keys.presence, {item.key: value})
                            else:
                                pipe.hdel(keys.presence, [item.key])
                if parts:
                    self._seq += 1
                    header = encode_batch(self.node, self._seq, [])
                    batch: list[str | bytes] = [self.node, str(self._seq), keys.channel, header]
                    batch += [keys.numbers_prefix, keys.history_prefix, keys.resume_prefix]
                    batch += [str(history), str(self._options.resume_max), *parts]
                    scripts.in_transaction(pipe, scripts.BATCH, [keys.seqs, keys.rooms], batch)
        self._held.update(holds)

    def _numbered_parts(self, events: Sequence[RoomEvent]) -> list[str | bytes]:
        """The batch script's parts for one room's events: runs for Redis to number, and
        the unnumbered ones (:data:`~triochat.core.events.UNNUMBERED`) as they are."""
        parts: list[str | bytes] = []
        history = self._options.history
        run: list[RoomEvent] = []

        def number() -> None:
            if run:
                room = run[0].room
                parts.extend([b"N", room, new_epoch(), str(len(run)), epoch_head(room)])
                for event in run:
                    head, tail = numbered_parts(event)
                    kept = history and kept_in_history(event)
                    parts.extend([head, tail, b"1" if kept else b"0"])
                run.clear()

        for event in events:
            if type(event) in UNNUMBERED:
                number()
                parts.extend([b"R", encode_record(event)])
            else:
                run.append(event)
        number()
        return parts

    async def _drop(
        self, client: coredis.Redis[bytes], rooms: Iterable[str], *, release: bool
    ) -> None:
        """Release our hold on ``rooms`` (if ``release``); drop the history of any nobody holds."""
        keys, options = self._keys, self._options
        args: list[str | bytes] = [keys.history_prefix, keys.holders_prefix, keys.dropped_prefix]
        args += [str(round(options.undo_window * 1000)), "1" if release else "0"]
        args += [str(options.history), keys.numbers_prefix, keys.resume_prefix]
        for room in rooms:
            args += [room, encode_record(Drop(room))]
        script_keys = [keys.rooms, keys.seqs, keys.held(self.node)]
        await self.announcing(client, scripts.DROP, script_keys, args)

    async def _undo(self, client: coredis.Redis[bytes], room: str) -> None:
        """Bring back ``room``'s dropped history, if Redis still keeps it."""
        log.info("a join here raced the drop of %s's history: undoing the drop", room)
        keys = self._keys
        script_keys = [keys.rooms, keys.seqs, keys.history(room), keys.dropped(room)]
        args: list[str | bytes] = [room, str(self._options.history), history_prefix(room)]
        await self.announcing(client, scripts.UNDO, script_keys, args)

    async def announcing(
        self,
        client: coredis.Redis[bytes],
        script: Any,
        keys: list[str],
        args: list[str | bytes],
    ) -> Any:
        """Run a script that may publish a batch as ours, numbered next; its result.

        Only with :attr:`lock` held (the writer's batches are numbered too)."""
        seq = self._seq + 1
        header = encode_batch(self.node, seq, [])
        try:
            with trio.fail_after(self._options.timeout):
                published = await script(
                    keys=keys,
                    args=[self.node, str(seq), self._keys.channel, header, *args],
                    client=client,
                )
        except BaseException:
            self._seq = seq  # It may have published: never number two batches alike.
            raise
        if published:
            self._seq = seq
        return published

    async def _rehold(self, client: coredis.Redis[bytes], node: Node) -> None:
        """Hold exactly the rooms our members are in; drop what only we held and let go."""
        rooms = {r for m in node.local_members() for r in m.room_names if r != LOBBY}
        with trio.fail_after(self._options.timeout):
            released: Any = await scripts.REHOLD(
                keys=[self._keys.held(self.node)],
                args=[self.node, self._keys.holders_prefix, *rooms],
                client=client,
            )
        self._held = rooms
        if released:
            await self._drop(client, [_text(room) for room in released], release=False)


def _in_transaction(item: Item, node: Node) -> bool:
    """Whether ``item`` can go in a batch's transaction (a release that may drop cannot)."""
    if isinstance(item, Room):
        return node.hosts(item.room)
    return not isinstance(item, Sweep | Undo | Rehold)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
