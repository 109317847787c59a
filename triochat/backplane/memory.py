"""A cluster in one process: several hubs on one fake channel, for tests of the cluster rules.

:class:`MemoryCluster` plays Redis's part: it hands out one
:class:`MemoryBackplane` per node, keeps the names, presence, holds and
histories, and delivers every published batch to every node in one order,
each node taking its own copy in its backplane's :meth:`~MemoryBackplane.run`
task, as it would from Redis's channel (the publishing node included). So
two real hubs can be tested as one chat without Redis, under trio's
``autojump_clock``; real Redis stays for the transport's own tests.

It has no link to lose: what it shows is what the cluster promises when the
link is up (one order, unique names, shared history that goes with its last
member anywhere, a dead node's users announced as gone).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import trio

from ..core import modstate
from ..core.events import UNNUMBERED, Dialect, Private, RoomEvent, kept_in_history, new_epoch
from ..core.modstate import AccountSet, Change, State
from ..core.names import name_key
from ..protocol.line import LOBBY
from ._roster import Roster
from ._takeover import Pending
from .base import BackplaneError, Claim, Handover, Node, RemoteUser, Tail, Takeover


@dataclass(frozen=True, slots=True)
class _Events:
    events: tuple[RoomEvent, ...]
    epoch: str


@dataclass(frozen=True, slots=True)
class _Direct:
    key: str
    event: Private


@dataclass(frozen=True, slots=True)
class _Notice:
    key: str
    text: str
    error: bool


@dataclass(frozen=True, slots=True)
class _Drop:
    room: str


@dataclass(frozen=True, slots=True)
class _History:
    room: str
    events: tuple[RoomEvent, ...]


@dataclass(frozen=True, slots=True)
class _Takeover:
    """``new`` took the resumable member ``takeover.key`` over from ``old``."""

    takeover: Takeover
    old: MemoryBackplane
    new: MemoryBackplane
    nonce: int


@dataclass(slots=True)
class _Resumable:
    """A member that can be resumed, as the cluster knows it (digests only)."""

    node: MemoryBackplane
    key: str
    name: str
    digests: set[bytes]
    held: bool = False


@dataclass(frozen=True, slots=True)
class _State:
    change: Change


_Record = _Events | _Direct | _Notice | _Drop | _History | _Takeover | _State


@dataclass(slots=True)
class _User:
    backplane: MemoryBackplane
    name: str
    rooms: tuple[str, ...]
    account: str | None = None
    away: str | None = None


class MemoryCluster:
    """The shared state of a cluster of :class:`MemoryBackplane` nodes.

    Args:
      history: events each room keeps for the cluster (as Redis keeps them).
      backlog: records a node may have waiting before the cluster refuses
        more (a test that lets a node's ``run`` stall for that long is broken).
    """

    def __init__(self, *, history: int = 20, backlog: int = 10_000, resume_max: int = 1000) -> None:
        self.history = history
        self.backlog = backlog
        self.resume_max = resume_max
        self.numbers: dict[str, tuple[str, int]] = {}
        """Room -> its epoch and last number, given out here as Redis gives them out."""
        self.tails: dict[str, deque[RoomEvent]] = {}
        """Room -> its last ``resume_max`` events of every kind, for resumes on any node."""
        self.nodes: list[MemoryBackplane] = []
        self.names: dict[str, MemoryBackplane] = {}
        """Name key -> the node that claimed it."""
        self.users: dict[str, _User] = {}
        """Name key -> where that user is (changed by :meth:`_set` alone)."""
        self.holders: dict[str, set[MemoryBackplane]] = {}
        self.histories: dict[str, deque[RoomEvent]] = {}
        self._dropped: dict[str, list[RoomEvent]] = {}
        self.resumables: dict[str, _Resumable] = {}
        """Entry id -> the resumable member (Redis: ``resumable:ID``)."""
        self.tokens: dict[bytes, str] = {}
        """Token digest -> its entry id (Redis: ``token:DIGEST``)."""
        self._nonces = itertools.count(1)
        self.state: dict[str, State] | None = None
        """Moderation and accounts, by field (as Redis keeps them); ``None`` until a node
        seeds it (or after :meth:`lose_state`, as a Redis that lost its data)."""

    def _seeded(self, known: Iterable[State]) -> list[State]:
        """The shared state, seeded first from ``known`` if there is none (as the link does)."""
        if self.state is None:
            self.state = {}
            for change in known:
                name = modstate.field(change)
                if name is not None:
                    self.state.setdefault(name, change)
        return list(self.state.values())

    def _change(self, change: Change) -> None:
        name = modstate.field(change)
        if name is not None and self.state is not None:
            if modstate.sets(change):
                self.state[name] = change  # type: ignore[assignment]
            else:
                self.state.pop(name, None)
        self._broadcast(_State(change))

    def lose_state(self) -> None:
        """Forget moderation and accounts, as a Redis restarted without its data would."""
        self.state = None

    def backplane(self) -> MemoryBackplane:
        """A new node's backplane."""
        backplane = MemoryBackplane(self)
        backplane._roster.load(self.users.values())  # as a Redis node's snapshot on linking
        self.nodes.append(backplane)
        return backplane

    def _set(self, key: str, user: _User | None) -> None:
        """The user holding ``key`` is ``user`` now (``None``: gone): every other node's
        roster follows, as each Redis node's replica follows the presence records."""
        old = self.users.pop(key, None) if user is None else self.users.get(key)
        if user is not None:
            self.users[key] = user
        for node in self.nodes:  # a node's own users are not in its roster
            node._roster.change(
                old if old is not None and old.backplane is not node else None,
                user if user is not None and user.backplane is not node else None,
            )

    def _broadcast(self, record: _Record) -> None:
        for node in self.nodes:
            try:
                node._inbox.send_nowait(record)
            except trio.WouldBlock:
                raise BackplaneError(f"a node fell {self.backlog} records behind") from None

    def _publish(self, events: tuple[RoomEvent, ...]) -> None:
        room = events[0].room
        epoch, seq = self.numbers.get(room) or (new_epoch(), 0)
        out = []
        for event in events:
            if type(event) not in UNNUMBERED:  # the others (seq 0) go as they are
                seq += 1
                event = replace(event, seq=seq)
            out.append(event)
        events = tuple(out)
        if any(type(event) not in UNNUMBERED for event in events):
            self.numbers[room] = (epoch, seq)
        if self.resume_max:
            tail = self.tails.get(room)
            if tail is None:
                tail = self.tails[room] = deque(maxlen=self.resume_max)
            tail.extend(e for e in events if type(e) not in UNNUMBERED)
        for event in events:
            if kept_in_history(event) and self.history:
                history = self.histories.get(event.room)
                if history is None:
                    history = self.histories[event.room] = deque(maxlen=self.history)
                history.append(event)
        self._broadcast(_Events(events, epoch))

    def lose_data(self) -> None:
        """As a Redis that restarted without persistence: every number, history and
        resume token is gone."""
        self.numbers.clear()
        self.tails.clear()
        self.histories.clear()
        self.resumables.clear()
        self.tokens.clear()

    def _forget_tokens(self, entry: str, keep: bytes | None = None) -> None:
        resumable = self.resumables.get(entry)
        if resumable is None:
            return
        for digest in list(resumable.digests):
            if digest != keep:
                resumable.digests.discard(digest)
                self.tokens.pop(digest, None)
        if keep is None:
            del self.resumables[entry]

    def _take_over(
        self, new: MemoryBackplane, digest: bytes, positions: Sequence[tuple[str, int]]
    ) -> tuple[dict[str, Tail], int, str] | None:
        """The takeover, atomic as Redis's script: the member's entry and name go to
        ``new``, and the announcement goes on the channel; the tails of ``positions``."""
        entry = self.tokens.get(digest)
        resumable = self.resumables.get(entry) if entry is not None else None
        if entry is None or resumable is None:
            return None
        old, key = resumable.node, resumable.key
        resumable.node, resumable.held = new, False
        self.names[key] = new
        user = self.users.get(key)
        rooms = user.rooms if user is not None else ()
        account, away = (user.account, user.away) if user is not None else (None, None)
        tails = {}
        for room, after in positions:
            epoch, seq = self.numbers.get(room, ("", 0))
            missed = seq - after
            kept = self.tails.get(room, ()) if room in rooms else ()  # its own rooms only
            events = [e for e in kept if e.seq > after] if 0 < missed <= self.resume_max else []
            tails[room] = Tail(room, epoch, seq, tuple(events))
        for room in rooms:  # held by the new node now: the old one's release drops nothing
            if room != LOBBY:
                self.holders.setdefault(room, set()).add(new)
        numbers = {room: self.numbers[room] for room in rooms if room in self.numbers}
        nonce = next(self._nonces)
        takeover = Takeover(key, resumable.name, rooms, numbers, account, away)
        self._broadcast(_Takeover(takeover, old, new, nonce))
        return tails, nonce, entry

    def _release(self, backplane: MemoryBackplane, room: str) -> None:
        holders = self.holders.get(room, set())
        holders.discard(backplane)
        if holders:
            return
        self.holders.pop(room, None)
        self._dropped[room] = list(self.histories.pop(room, ()))
        self._broadcast(_Drop(room))

    def _undo(self, backplane: MemoryBackplane, room: str) -> None:
        """A drop overtook ``backplane``'s join of ``room``: restore the history everywhere."""
        self.holders.setdefault(room, set()).add(backplane)
        history = deque(self._dropped.pop(room, ()), maxlen=self.history)
        history.extend(self.histories.get(room, ()))
        self.histories[room] = history
        self._broadcast(_History(room, tuple(history)))

    def _remove(self, backplane: MemoryBackplane, reason: str) -> None:
        """``backplane``'s node is gone: its own hub (shutting down) or a survivor's
        announces its users, then the cluster forgets them, their names and holds."""
        if backplane not in self.nodes:
            return
        gone = [(key, u) for key, u in self.users.items() if u.backplane is backplane]
        announcer = backplane if reason == "server shutdown" else self._survivor(backplane)
        if announcer is not None:
            for _, user in gone:
                for room in user.rooms:
                    announcer.node.announce_left(room, user.name, reason)
        self.nodes.remove(backplane)
        for key, _ in gone:
            self._set(key, None)
        for key in [k for k, owner in self.names.items() if owner is backplane]:
            del self.names[key]
        for room in [r for r, holders in self.holders.items() if backplane in holders]:
            self._release(backplane, room)

    def _survivor(self, backplane: MemoryBackplane) -> MemoryBackplane | None:
        return next((n for n in self.nodes if n is not backplane and n._node), None)


class MemoryBackplane:
    """One node's backplane in a :class:`MemoryCluster` (see :meth:`MemoryCluster.backplane`)."""

    remote = True
    link_down = False

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster
        self._node: Node | None = None
        self._inbox, self._outbox = trio.open_memory_channel[_Record](cluster.backlog)
        self._pending: dict[int, Pending] = {}
        self._flowing = trio.Event()
        self._flowing.set()
        self._roster = Roster()
        """The other nodes' users by room (kept by :meth:`MemoryCluster._set`)."""

    @property
    def node(self) -> Node:
        if self._node is None:
            raise RuntimeError("no node attached to this backplane")
        return self._node

    def attach(self, node: Node, /) -> None:
        self._node = node

    def publish(self, events: Sequence[RoomEvent], /) -> None:
        self.cluster._publish(tuple(events))

    def publish_private(self, key: str, event: Private, /) -> bool:
        self.cluster._broadcast(_Direct(key, event))
        return True

    def publish_notice(self, key: str, text: str, error: bool, /) -> bool:
        self.cluster._broadcast(_Notice(key, text, error))
        return True

    def publish_state(self, change: Change, /) -> None:
        self.cluster._change(change)

    async def claim_account(self, entry: AccountSet, /) -> Claim:
        await trio.lowlevel.checkpoint()  # A round trip, as far as the caller can tell.
        state = self.cluster.state
        if state is not None and entry.key in state:
            return Claim.TAKEN
        self.cluster._change(entry)
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
        cluster = self.cluster
        if rooms is None:
            user = cluster.users.get(key)
            if user is not None and user.backplane is self:
                cluster._set(key, None)
            if cluster.names.get(key) is self:
                del cluster.names[key]
        else:
            cluster._set(key, _User(self, name, tuple(rooms), account, away))
            cluster.names[key] = self

    def occupy(self, room: str, /) -> None:
        self.cluster.holders.setdefault(room, set()).add(self)

    def vacate(self, room: str, /) -> bool:
        self.cluster._release(self, room)
        return True

    def _others(self) -> Iterable[_User]:
        return (u for u in self.cluster.users.values() if u.backplane is not self)

    def remote_name(self, key: str, /) -> str | None:
        user = self.cluster.users.get(key)
        return user.name if user is not None and user.backplane is not self else None

    def remote_users(self, room: str, /) -> list[str]:
        return self._roster.names(room)

    def remote_count_in(self, room: str, /) -> int:
        return self._roster.count(room)

    def remote_first(self, room: str, count: int, /) -> Sequence[tuple[str, str]]:
        return self._roster.first(room, count)

    def remote_user(self, key: str, /) -> RemoteUser | None:
        user = self.cluster.users.get(key)
        if user is None or user.backplane is self:
            return None
        return RemoteUser(user.name, user.account, user.away, user.rooms)

    def remote_rooms(self) -> dict[str, int]:
        return self._roster.counts()

    def remote_count(self) -> int:
        return sum(1 for _ in self._others())

    async def claim(self, name: str, /) -> Claim:
        await trio.lowlevel.checkpoint()  # A round trip, as far as the caller can tell.
        key = name_key(name)
        if key in self.cluster.names:
            return Claim.TAKEN
        self.cluster.names[key] = self
        return Claim.CLAIMED

    def unclaim(self, name: str, /) -> None:
        key = name_key(name)
        if self.cluster.names.get(key) is self and key not in self.cluster.users:
            del self.cluster.names[key]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take this node's copy of the channel, batch by batch, until cancelled."""
        node = self.node
        node.replace_histories({room: list(h) for room, h in self.cluster.histories.items()})
        node.replace_state(self.cluster._seeded(node.shared_state()))
        task_status.started()
        while True:
            records = [await self._outbox.receive()]
            await self._flowing.wait()
            while True:
                try:
                    records.append(self._outbox.receive_nowait())
                except trio.WouldBlock:
                    break
            for record in records:
                self._take(node, record)
            node.flush()

    def _take(self, node: Node, record: _Record) -> None:
        if self not in self.cluster.nodes:
            return  # Dead: it hears nothing more.
        match record:
            case _Events(events, epoch):
                node.deliver(events, epoch)
            case _Direct(key, event):
                node.deliver_private(key, event)
            case _Notice(key, text, error):
                node.deliver_notice(key, text, error)
            case _Drop(room):
                if node.drop_history(room) and room != LOBBY:
                    self.cluster._undo(self, room)
            case _History(room, events):
                node.set_history(room, events)
            case _Takeover(takeover, old, new, nonce):
                if old is self:
                    for private in node.hand_off(takeover.key):
                        self.publish_private(takeover.key, private)  # for its new node
                if new is self and (pending := self._pending.pop(nonce, None)) is not None:
                    pending.arrived(node, takeover)
            case _State(change):
                node.deliver_state(change)

    # --- resume tokens ---------------------------------------------------------------

    def _ours(self, entry: str) -> _Resumable | None:
        resumable = self.cluster.resumables.get(entry)
        return resumable if resumable is not None and resumable.node is self else None

    def resumable(self, entry: str, key: str, name: str, digest: bytes, /) -> None:
        cluster = self.cluster
        resumable = cluster.resumables.get(entry)
        if resumable is None:
            resumable = cluster.resumables[entry] = _Resumable(self, key, name, set())
        elif resumable.node is not self:
            return
        resumable.key, resumable.name = key, name
        resumable.digests.add(digest)
        cluster.tokens[digest] = entry

    def keep_token(self, entry: str, digest: bytes, /) -> None:
        if self._ours(entry) is not None:
            self.cluster._forget_tokens(entry, digest)

    def unresumable(self, entry: str, /) -> None:
        if self._ours(entry) is not None:
            self.cluster._forget_tokens(entry)

    def hold(self, entry: str, /) -> None:
        resumable = self._ours(entry)
        if resumable is not None:
            resumable.held = True

    async def take_over(
        self, digest: bytes, positions: Sequence[tuple[str, int]], dialect: Dialect, /
    ) -> Handover | None:
        await trio.lowlevel.checkpoint()  # A round trip, as far as the caller can tell.
        if self.link_down:  # a test cut this node off
            raise BackplaneError("the link to the rest of the chat is down")
        pending = Pending(dialect)
        taken = self.cluster._take_over(self, digest, positions)
        if taken is None:
            return None
        tails, nonce, entry = taken
        self._pending[nonce] = pending
        member = await pending.adopted(self.node)  # as it came back through the channel
        assert member is not None
        return Handover(member, tails, entry)

    async def expire(self, entry: str, /) -> bool:
        await trio.lowlevel.checkpoint()
        resumable = self.cluster.resumables.get(entry)
        if resumable is not None and resumable.node is not self:
            return False  # Taken over: its new node has it.
        self.cluster._forget_tokens(entry)
        return True

    def stall(self) -> None:
        """Take nothing more from the channel until :meth:`flow` (a slow subscriber)."""
        self._flowing = trio.Event()

    def flow(self) -> None:
        self._flowing.set()

    def relink(self) -> None:
        """As a node does when its link comes back: seed the cluster's moderation and accounts
        if it has none (:meth:`MemoryCluster.lose_state`), then take them."""
        self.node.replace_state(self.cluster._seeded(self.node.shared_state()))

    def crash(self) -> None:
        """This node dies: the others drop it, and a survivor's hub announces its users gone."""
        self.cluster._remove(self, "connection lost")

    async def leave_cluster(self) -> None:
        """On shutdown: this node's hub announces its users gone, and the cluster forgets it."""
        await trio.lowlevel.checkpoint()
        self.cluster._remove(self, "server shutdown")
