"""The Redis backplane: the :class:`~triochat.backplane.base.Backplane` of a cluster node.

It ties the parts together: what the hub calls (synchronous, never waits)
goes to the :class:`.Publisher`'s queue or is answered from the
:class:`.Replica`; name claims are :class:`.Claims`; the link loop
(:func:`.link.keep_linked`) runs one *session* after another, and a session
subscribes, takes a snapshot, and then runs the publisher, the heartbeat and
the subscriber until the link fails. What comes back from the channel goes
to the :class:`~triochat.backplane.base.Node` it serves, never to a hub class.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, get_args

import coredis
import trio
from coredis.retry import NoRetryPolicy

from ...core import modstate
from ...core.events import Dialect, Legacy, Private, RoomEvent
from ...core.modstate import AccountSet, Change
from ...protocol.line import LOBBY
from .._takeover import Pending
from ..base import BackplaneError, Claim, Handover, Node, RemoteUser, Tail
from . import scripts, shared
from .claims import Claims
from .keys import Keys
from .link import LINK_ERRORS, connect, describe, is_link_error, keep_linked, log, quiet_coredis
from .options import RedisOptions
from .publisher import Events, Item, Publisher, Rehold, Release, Room, Sweep, TokenOp, Undo
from .replica import Replica
from .wire import (
    Direct,
    Drop,
    Epoch,
    History,
    Shared,
    Taken,
    Told,
    Whereabouts,
    WireError,
    decode_batch,
    decode_event,
    decode_presence,
    presence_prefix,
)

_LEAVE_TIMEOUT: Final = 0.5


_Gone = tuple[str, str, tuple[str, ...]]
"""A user removed from Redis: key, name, rooms."""


class RedisBackplane:
    """The Redis backplane; the hub attaches itself, the server runs :meth:`run`."""

    remote = True

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self.node_id = uuid.uuid4().hex[:12]
        self.keys = Keys(options.cluster)
        self.publisher = Publisher(self.node_id, self.keys, options)
        self._claims = Claims(self.node_id, self.keys, options.timeout, self._queue_release)
        self._replica = Replica(self.node_id)
        self._seen: dict[str, int] = {}
        """The number of the last batch taken from each node."""
        self._client: coredis.Redis[bytes] | None = None
        self._node: Node | None = None
        self._leaving: list[Item] | None = None
        """While leaving the cluster: the hub's last events, written by leave_cluster()."""
        self.linked = False
        self._down = False
        self._unsent: dict[str, Change] = {}
        """Moderation changes made here while the link was down, by field (the last of
        each): written to Redis when it is back, so they are not undone by its state."""
        # The heartbeat task's scope: leaving the cluster stops it first.
        self._beating = trio.CancelScope()
        self.link_changes = 0
        """How often the link went down or came back (tests and metrics read it)."""
        self._pending: dict[str, Pending] = {}
        """Our takeovers whose T record has not come back yet, by nonce."""
        quiet_coredis()

    @property
    def node(self) -> Node:
        if self._node is None:
            raise RuntimeError("no node attached to this backplane")
        return self._node

    # --- what the hub calls (synchronous, never waits) -------------------------

    @property
    def link_down(self) -> bool:
        return self._down

    def attach(self, node: Node, /) -> None:
        self._node = node

    def publish(self, events: Sequence[RoomEvent], /) -> None:
        item = Events(tuple(events))
        if self._leaving is not None:
            self._leaving.append(item)
        elif not (self.linked and self.publisher.queue(item)):
            self.node.deliver(events)  # Here alone, rather than lost.

    def publish_private(self, key: str, event: Private, /) -> bool:
        return self.linked and self.publisher.queue(Direct(key, event))

    def publish_notice(self, key: str, text: str, error: bool, /) -> bool:
        return self.linked and self.publisher.queue(Told(key, text, error))

    def publish_state(self, change: Change, /) -> None:
        # Without a link the node keeps what it did (the hub has taken it), and writes
        # it to Redis when the link is back.
        if self.linked:
            self.publisher.queue(Shared(change))
        else:
            self._keep_unsent(change)

    def _keep_unsent(self, change: Change) -> None:
        """Keep a change Redis has not had, the last one per field (a kick is kept nowhere)."""
        field = modstate.field(change)
        if field is not None:
            self._unsent[field] = change

    async def claim_account(self, entry: AccountSet, /) -> Claim:
        client = self._client
        if not self.linked or client is None:
            return Claim.LINK_DOWN
        try:
            with trio.fail_after(self.options.timeout):
                won = await shared.claim_account(client, self.publisher.shared_keys, entry)
        except BaseException as exc:
            if is_link_error(exc):
                log.warning("could not register an account: %s", describe(exc))
                return Claim.LINK_DOWN
            raise
        if not won:
            return Claim.TAKEN
        self.publisher.queue(Shared(entry))
        return Claim.CLAIMED

    def presence(
        self,
        key: str,
        name: str,
        rooms: Iterable[str] | None,
        account: str | None = None,
        away: str | None = None,
        /,
    ) -> None:
        if self.linked:
            held = None if rooms is None else tuple(rooms)
            self.publisher.queue(Whereabouts(self.node_id, key, name, held, account, away))
        # Else rewritten from the hub's state when the link is back.
        if rooms is None:
            self._claims.drop(key, self.linked)  # The name's release, after the presence.

    def _queue_release(self, key: str, token: str) -> None:
        self.publisher.queue(Release(key, token))

    def occupy(self, room: str, /) -> None:
        if self.linked:
            self.publisher.queue_room(Room(room))

    def vacate(self, room: str, /) -> bool:
        if not self.linked:
            return False  # Histories are re-read from Redis when the link is back.
        self.publisher.queue_room(Room(room))
        return True

    def remote_name(self, key: str, /) -> str | None:
        return self._replica.name(key)

    def remote_users(self, room: str, /) -> list[str]:
        return self._replica.users(room)

    def remote_count_in(self, room: str, /) -> int:
        return self._replica.count_in(room)

    def remote_first(self, room: str, count: int, /) -> Sequence[tuple[str, str]]:
        return self._replica.first(room, count)

    def remote_user(self, key: str, /) -> RemoteUser | None:
        return self._replica.user(key)

    def remote_rooms(self) -> dict[str, int]:
        return self._replica.rooms()

    def remote_count(self) -> int:
        return len(self._replica)

    # --- name claims (awaited by the session before it calls the hub) ----------

    async def claim(self, name: str, /) -> Claim:
        return await self._claims.claim(self._client if self.linked else None, name)

    def unclaim(self, name: str, /) -> None:
        self._claims.unclaim(name, self.linked)

    # --- resume tokens (what Tokens mirrors, digests only) -----------------------------

    def _token_op(self, op: str, entry: str, *args: str) -> None:
        if self.linked:
            self.publisher.queue(TokenOp(op, entry, args))

    def resumable(self, entry: str, key: str, name: str, digest: bytes, /) -> None:
        self._token_op("issue", entry, key, name, digest.hex())

    def keep_token(self, entry: str, digest: bytes, /) -> None:
        self._token_op("keep", entry, digest.hex())

    def unresumable(self, entry: str, /) -> None:
        self._token_op("forget", entry)

    def hold(self, entry: str, /) -> None:
        self._token_op("hold", entry)

    async def take_over(
        self, digest: bytes, positions: Sequence[tuple[str, int]], dialect: Dialect, /
    ) -> Handover | None:
        client = self._client
        if not self.linked or client is None:
            raise BackplaneError("the link to the rest of the chat is down")
        keys, options = self.keys, self.options
        nonce = uuid.uuid4().hex[:16]
        pending = self._pending[nonce] = Pending(dialect, self._claims.fresh())
        args: list[str | bytes] = [
            keys.resumable_prefix,
            keys.name_prefix,
            pending.claim,
            keys.presence,
            keys.numbers_prefix,
            keys.resume_prefix,
            str(options.resume_max),
            keys.seqs,
            nonce,
            keys.held(self.node_id),
            LOBBY,
            keys.holders_prefix,
        ]
        for room, after in positions:
            args += [room, str(after)]
        try:
            async with self.publisher.lock:
                result: Any = await self.publisher.announcing(
                    client, scripts.TAKE, [keys.token_prefix + digest.hex()], args
                )
        except LINK_ERRORS as exc:
            self._pending.pop(nonce, None)
            log.warning("could not take a member over: %s", describe(exc))
            raise BackplaneError(describe(exc)) from None
        if not result:
            self._pending.pop(nonce, None)
            return None
        entry, raw_tails = result
        tails = {}
        for room, epoch, seq, events in raw_tails:
            name = _text(room)
            decoded = _decode_history(name, reversed(events))
            tails[name] = Tail(name, _text(epoch), int(seq), tuple(decoded))
        member = await pending.adopted(self.node)  # when its T record came back
        if member is None:  # The link went down before the T record came back; the entry
            # is ours in Redis, so the client's next try takes it (from this node) again.
            raise BackplaneError("the link went down during a takeover")
        return Handover(member, tails, _text(entry))

    async def expire(self, entry: str, /) -> bool:
        client = self._client
        if not self.linked or client is None:
            return True  # Nobody can take it over through a link that is down.
        keys = self.keys
        args = [self.node_id, entry, keys.resumable_prefix, keys.tokens_prefix, keys.token_prefix]
        try:
            with trio.fail_after(self.options.timeout):
                ours: Any = await scripts.EXPIRE(keys=[], args=["", *args], client=client)
        except LINK_ERRORS as exc:
            log.warning("could not end a hold in Redis: %s", describe(exc))
            return True
        return bool(ours)

    def _taken(self, node: Node, record: Taken) -> None:
        """A T record: a member moved to ``record.new``; let it go, or adopt it."""
        takeover = record.takeover
        self._replica.moved(takeover.key, record.new)
        if record.old == self.node_id:
            self._claims.forget(takeover.key)
            for private in node.hand_off(takeover.key):
                self.publish_private(takeover.key, private)  # for its new node
        if record.new == self.node_id:
            pending = self._pending.pop(record.nonce, None)
            if pending is None:
                return
            self._claims.adopt(takeover.key, pending.claim)
            pending.arrived(node, takeover)

    # --- the link ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link up until cancelled. ``started`` after the first attempt, up or not."""
        self.node  # noqa: B018 - fail now, not at the first delivery, if nothing is attached.
        await keep_linked(self.options, self._session, self._link_lost, task_status=task_status)

    async def _session(self, linked: Callable[[], None]) -> None:
        node, keys, timeout = self.node, self.keys, self.options.timeout
        async with (
            connect(self.options) as client,
            client.pubsub(retry_policy=NoRetryPolicy(), ignore_subscribe_messages=True) as pubsub,
        ):
            with trio.fail_after(timeout):
                await scripts.load(client)
                await pubsub.subscribe(keys.channel)
                # Our holds stay (the others must not drop our rooms meanwhile);
                # Rehold below rewrites them.
                stale, _ = await self._reap(client, self.node_id, force=True)
                await self._beat(client)
            conflicts = await self._claims.reclaim(client, node)
            with trio.fail_after(timeout):
                snapshot: Any = await scripts.SNAPSHOT(
                    keys=[keys.presence, keys.seqs, keys.rooms],
                    args=[keys.history_prefix],
                    client=client,
                )
            stored = self._apply_snapshot(node, snapshot)
            with trio.fail_after(timeout):
                state = await shared.link(client, self.publisher.shared_keys, node.shared_state())
            node.replace_state(state)
            # What this node changed during the outage holds on top of Redis's state,
            # here at once and, once written, on every node (the last word is ours).
            unsent, self._unsent = self._unsent, {}
            now = time.time()
            replayed = [c for c in unsent.values() if not modstate.expired(c, now)]
            for change in replayed:
                node.deliver_state(change)
            self._client = client
            self.linked = True
            for change in replayed:
                self.publisher.queue(Shared(change))
            if replayed:
                log.info("wrote %d moderation changes made while the link was down", len(replayed))
            # First our holds, then a check of every stored room: a room nobody
            # holds (left by a crash, or by an older version) loses its history.
            self.publisher.queue(Rehold())
            if rooms := tuple(room for room in stored if room != LOBBY):
                self.publisher.queue(Sweep(rooms))
            self.link_changes += 1
            log.info("linked to Redis as node %s (cluster %s)", self.node_id, keys.cluster)
            # Leavers during the outage, then this node's users, as the cluster should see them.
            local = {m.key for m in node.local_members()}
            self._announce_gone(self.node_id, [g for g in stale if g[0] not in local])
            for member in node.local_members():
                rooms = tuple(member.room_names)
                entry = Whereabouts(
                    self.node_id, member.key, member.name, rooms, member.account, member.away
                )
                self.publisher.queue(entry)
            for member in conflicts:
                node.name_conflict(member.key)
            if self._down:
                self._down = False
                node.link_changed(True)
            node.flush()
            linked()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.publisher.run, client, node)
                nursery.start_soon(self._heartbeat, client)
                await self._subscriber(node, pubsub)
                raise BackplaneError("subscription ended")

    def _link_lost(self, was_linked: bool) -> None:
        node = self.node
        self.linked = False
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            waiting.failed()  # Its T record will not come: the takeover fails.
        self._down = True
        self._client = None
        self._replica.clear()
        # Whatever did not reach Redis is delivered here, so nothing said is lost.
        for item in self.publisher.take_unsent():
            if isinstance(item, Shared):
                self._keep_unsent(item.change)
            elif isinstance(item, Events):
                node.deliver(item.events)
            elif isinstance(item, Direct):
                node.deliver_private(item.key, item.event)
            elif isinstance(item, Told):
                node.deliver_notice(item.key, item.text, item.error)
        if was_linked:
            self.link_changes += 1
            node.link_changed(False)
        node.flush()

    def _apply_snapshot(self, node: Node, snapshot: Any) -> list[str]:
        """Take the snapshot's presence, batch numbers and histories; return its rooms."""
        presence, seqs, histories = snapshot
        entries = []
        for key, value in _pairs(presence):
            try:
                entries.append((_text(key), *decode_presence(value)))
            except WireError as exc:
                log.warning("ignoring a malformed presence entry for %s: %s", _text(key), exc)
        self._replica.load(entries)
        self._seen = {_text(n): int(seq) for n, seq in _pairs(seqs)}
        log.debug("snapshot: %d remote users, batches seen %s", len(self._replica), self._seen)
        stored: dict[str, list[RoomEvent]] = {}
        for i in range(0, len(histories), 2):
            room = _text(histories[i])
            stored[room] = _decode_history(room, reversed(histories[i + 1]))
        node.replace_histories(stored)
        return list(stored)

    async def _subscriber(self, node: Node, pubsub: Any) -> None:
        async for message in pubsub:
            if message["type"] != "message":
                continue
            try:
                origin, seq, records = decode_batch(message["data"])
            except WireError as exc:
                log.warning("ignoring a malformed batch: %s", exc)
                continue
            last = self._seen.get(origin, 0)
            log.debug("batch %s/%d (last seen %d): %d records", origin, seq, last, len(records))
            if seq <= last:
                continue  # Already in the snapshot.
            if last and seq != last + 1:
                log.warning("missed %d batches from node %s", seq - last - 1, origin)
            self._seen[origin] = seq
            self._take(node, records, origin)
            node.flush()

    def _take(self, node: Node, records: Sequence[Any], origin: str) -> None:
        """Hand a batch's records to the node, each run of one room's events in one call.

        A user's presence counts only from its own node (``origin``, the batch's sender):
        another node says only that it is gone (its node died).
        """
        run: list[RoomEvent] = []
        epoch: str | None = None
        for record in records:
            if run and not (isinstance(record, _ROOM_EVENTS) and record.room == run[0].room):
                node.deliver(run, epoch)
                run = []
            if isinstance(record, _ROOM_EVENTS):
                run.append(record)
            elif isinstance(record, Epoch):
                epoch = record.epoch
            elif isinstance(record, Direct):
                node.deliver_private(record.key, record.event)
            elif isinstance(record, Told):
                node.deliver_notice(record.key, record.text, record.error)
            elif isinstance(record, Drop):
                if node.drop_history(record.room):
                    # A member here joined before its hold reached Redis: hold the
                    # room (again, if a reap took our hold) and undo the drop.
                    self.publisher.forget_hold(record.room)
                    self.publisher.queue_room(Room(record.room))
                    self.publisher.queue_room(Undo(record.room))
            elif isinstance(record, History):
                node.set_history(record.room, record.events)
            elif isinstance(record, Whereabouts):
                if record.rooms is None or record.node == origin:
                    self._replica.apply(record)
                else:
                    log.warning("ignoring node %s's word on a user of node %s", origin, record.node)
            elif isinstance(record, Taken):
                self._taken(node, record)
            elif isinstance(record, Shared):
                node.deliver_state(record.change)
        if run:
            node.deliver(run, epoch)

    # --- heartbeat, and the nodes that have none ---------------------------------

    async def _heartbeat(self, client: coredis.Redis[bytes]) -> None:
        with trio.CancelScope() as self._beating:
            while True:
                await trio.sleep(self.options.heartbeat)
                await self._heartbeat_once(client)

    async def _heartbeat_once(self, client: coredis.Redis[bytes]) -> None:
        """Say this node is alive, and reap the nodes that are not."""
        keys = self.keys
        with trio.fail_after(self.options.timeout):
            await self._beat(client)
            for raw in await client.smembers(keys.nodes):
                other = raw.decode()
                if other != self.node_id and not await client.exists([keys.alive(other)]):
                    gone, rooms = await self._reap(client, other, release=True)
                    for _, name, in_rooms in gone:
                        log.info("node %s is gone: %s left %s", other, name, ", ".join(in_rooms))
                    self._announce_gone(other, gone)
                    if rooms:
                        self.publisher.queue(Sweep(tuple(rooms)))

    async def _beat(self, client: coredis.Redis[bytes]) -> None:
        keys = self.keys
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(keys.alive(self.node_id), b"1", px=int(self.options.node_ttl * 1000))
            pipe.sadd(keys.nodes, [self.node_id])

    async def _reap(
        self,
        client: coredis.Redis[bytes],
        node_id: str,
        *,
        force: bool = False,
        release: bool = False,
    ) -> tuple[list[_Gone], list[str]]:
        """Remove ``node_id``'s users from Redis; return them, and (with ``release``, which
        lets its holds go too) the rooms it held."""
        keys = self.keys
        result: Any = await scripts.REAP(
            keys=[keys.presence, keys.nodes, keys.seqs, keys.held(node_id)],
            args=[
                node_id,
                keys.name_prefix,
                keys.alive(node_id),
                "1" if force else "0",
                "1" if release else "0",
                keys.holders_prefix,
                presence_prefix(node_id),
            ],
            client=client,
        )
        entries, rooms = result
        gone = []
        for key, value in _pairs(entries):
            try:
                _, name, in_rooms, _, _ = decode_presence(value)
            except WireError as exc:
                log.warning("ignoring a malformed presence entry for %s: %s", _text(key), exc)
                continue
            gone.append((_text(key), name, in_rooms))
        return gone, [_text(room) for room in rooms]

    def _announce_gone(
        self, node_id: str, gone: Iterable[_Gone], reason: str = "connection lost"
    ) -> None:
        """Tell the cluster that ``node_id``'s users ``gone`` left: their presence ends, and the
        hub here announces each one's leaving of each room (the cluster's order applies)."""
        node = self.node
        for key, name, rooms in gone:
            self.publisher.queue(Whereabouts(node_id, key, name, None))
            for room in rooms:
                node.announce_left(room, name, reason)

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
        try:
            with trio.move_on_after(_LEAVE_TIMEOUT, shield=True):
                await self._leave(client)
        except* LINK_ERRORS as group:
            log.warning(
                "could not leave the cluster cleanly (%s): the others reap this node instead",
                describe(group),
            )
            log.debug("the failure", exc_info=group)

    async def _leave(self, client: coredis.Redis[bytes]) -> None:
        keys = self.keys
        await client.delete([keys.alive(self.node_id)])
        gone, rooms = await self._reap(client, self.node_id, force=True, release=True)
        # What the hub says now (each user's Left) is written below, not queued.
        items: list[Item] = []
        self._leaving = items
        try:
            for key, name, in_rooms in gone:
                items.append(Whereabouts(self.node_id, key, name, None))
                for room in in_rooms:
                    self.node.announce_left(room, name, "server shutdown")
        finally:
            self._leaving = None
        if rooms:
            items.append(Sweep(tuple(rooms)))
        await self.publisher.write(client, self.node, items)
        await client.hdel(keys.seqs, [self.node_id])
        await client.srem(keys.nodes, [self.node_id])


_ROOM_EVENTS: Final = get_args(RoomEvent)


def _decode_history(room: str, raw: Iterable[bytes]) -> list[RoomEvent]:
    """A history list's events, oldest first.

    A list written by a version before events holds v1 lines: each becomes a
    :class:`~triochat.core.events.Legacy` event, shown as it was.
    """
    events: list[RoomEvent] = []
    for entry in raw:
        try:
            events.append(decode_event(entry))
        except WireError as exc:
            if entry.startswith(b'["'):
                log.warning("ignoring a malformed history entry of %s: %s", room, exc)
            else:
                line = entry.decode(errors="replace").rstrip("\n")
                events.append(Legacy(room, len(events) + 1, 0.0, line))
    return events


def _pairs(flat: Any) -> Iterable[tuple[Any, Any]]:
    """A flat HGETALL-style reply (or a dict) as ``(field, value)`` pairs."""
    if isinstance(flat, Mapping):
        return flat.items()
    return zip(flat[::2], flat[1::2], strict=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
