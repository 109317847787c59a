"""The two-way seam between a hub and the rest of the chat.

A hub always publishes through its :class:`Backplane` (the local one is a
synchronous loopback), and a backplane delivers back into a :class:`Node`:
the small receiving interface that a hub implements. Neither side knows the
other's class, so a backplane can be tested against a fake node and a hub
against a fake backplane.

The hub calls the backplane synchronously; none of those calls waits. Only
:meth:`Backplane.claim` (a cluster-wide name claim) and :meth:`Backplane.run`
(the backplane's own tasks) are async, and the session awaits ``claim``
*before* it calls into the hub, so the hub's "no method awaits" rule holds.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from ..core.events import Dialect, Private, RoomEvent
from ..core.modstate import AccountSet, Change, State


class BackplaneError(Exception):
    """The link to the rest of the chat failed (Redis unreachable, timed out, or refused)."""


class Claim(enum.Enum):
    """The outcome of a cluster-wide name claim."""

    CLAIMED = "claimed"
    TAKEN = "taken"
    """Someone holds the name, on this node or another."""
    LINK_DOWN = "link down"
    """The rest of the chat could not be asked; try again later."""


@dataclass(frozen=True, slots=True)
class RemoteUser:
    """A user connected to another node, as far as its marks go."""

    name: str
    account: str | None
    """The key of the account it proved is its own, if any (to mark operators)."""
    away: str | None
    """Why it is away, if it is."""
    rooms: tuple[str, ...] = ()
    """The rooms it is in (to find an operator of a room, or a member to kick)."""


@dataclass(frozen=True, slots=True)
class Takeover:
    """A resumable member the cluster hands to this node: its name and rooms, and where
    each room's numbering stood at that point of the channel's order."""

    key: str
    name: str
    rooms: tuple[str, ...]
    numbers: Mapping[str, tuple[str, int]]
    """Room -> its epoch and last number (rooms the cluster numbers)."""
    account: str | None = None
    """The key of the account it had proved is its own, as its old node's presence in the
    cluster says (never the resuming client): it stays identified."""
    away: str | None = None
    """Why it is away, if it was (its presence too)."""


@dataclass(frozen=True, slots=True)
class Tail:
    """A room's events after a resuming client's number, as the cluster keeps them."""

    room: str
    epoch: str
    """The room's epoch ("": the cluster has no numbering for it)."""
    seq: int
    """Its last number at the takeover."""
    events: tuple[RoomEvent, ...]
    """Oldest first; fewer than ``seq - after`` if it no longer keeps them all."""


@dataclass(frozen=True, slots=True)
class Handover:
    """A takeover done: the member this node's hub adopted, and the tails of the rooms the
    client asked about."""

    member: object
    """The hub's member (the hub's own class; its outbox buffers until it is reattached)."""
    tails: Mapping[str, Tail]
    entry: str
    """The member's resume entry in the cluster (its id, as :meth:`Backplane.resumable`)."""


class LocalMember(Protocol):
    """What a backplane may read of a hub's member."""

    @property
    def key(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def room_names(self) -> Iterable[str]: ...

    @property
    def account(self) -> str | None: ...

    @property
    def away(self) -> str | None: ...


class Node(Protocol):
    """What a node must be able to receive from its backplane (a :class:`Hub` is one)."""

    def deliver(self, events: Sequence[RoomEvent], /, epoch: str | None = None) -> None:
        """Room events in the cluster's order: to the members here, and into history.

        A cluster numbers them as it publishes them, and gives the room's
        ``epoch``; ``None``: they did not go through the cluster (the link is
        down), and the node numbers them itself.
        """
        ...

    def deliver_private(self, key: str, event: Private, /) -> None:
        """A private message (or its echo) for the member here holding ``key``, if any."""
        ...

    def deliver_notice(self, key: str, text: str, error: bool, /) -> None:
        """A line from the server for the member here holding ``key``, if any (an error
        line if ``error``): e.g. what became of a private message it sent to a held member."""
        ...

    def set_history(self, room: str, events: Sequence[RoomEvent], /) -> None:
        """``room``'s history is now ``events``, oldest first (the cluster restored it)."""
        ...

    def replace_histories(self, histories: Mapping[str, Sequence[RoomEvent]], /) -> None:
        """Take the cluster's stored histories, after (re)linking."""
        ...

    def drop_history(self, room: str, /) -> bool:
        """The cluster dropped ``room``'s history; whether a member here is in it all the same."""
        ...

    def hosts(self, room: str, /) -> bool:
        """Whether a member here is in ``room``."""
        ...

    def local_members(self) -> Sequence[LocalMember]:
        """The members connected here."""
        ...

    def announce_left(self, room: str, name: str, reason: str, /) -> None:
        """A user of another node is gone (its node died or shut down): tell ``room``."""
        ...

    def name_conflict(self, key: str, /) -> None:
        """The name of the member here holding ``key`` was taken elsewhere while the link
        was down: tell it so, and disconnect it."""
        ...

    def link_changed(self, up: bool, /) -> None:
        """The link to the rest of the chat went down (or came back): tell everyone here."""
        ...

    def flush(self) -> None:
        """Deliveries are done for now: evict whoever was found too slow."""
        ...

    def adopt(self, takeover: Takeover, dialect: Dialect, /) -> LocalMember:
        """A member another node (or this one) held is this node's now: put it in its rooms
        unannounced; what they say waits until its new connection takes it."""
        ...

    def hand_off(self, key: str, /) -> Sequence[Private]:
        """The member here holding ``key`` was taken over by a node: let it go unannounced;
        the private messages kept for it, for its new node."""
        ...

    def abandon(self, member: LocalMember, /) -> None:
        """An adopted member's new connection ended before it took the member: it leaves."""
        ...

    def deliver_state(self, change: Change, /) -> None:
        """A change of moderation or accounts, in the cluster's order (this node's own too)."""
        ...

    def shared_state(self) -> Sequence[State]:
        """What this node knows of moderation and accounts, to seed a cluster that has none."""
        ...

    def replace_state(self, state: Sequence[State], /) -> None:
        """The cluster's moderation and accounts, to take as the truth (after linking)."""
        ...


class Backplane(Protocol):
    """What a hub (and the session, for claims) needs from a backplane.

    ``remote`` is false for the local backplane: there is no other node, so
    the server need not run it and claims are decided by the hub alone.
    """

    remote: bool

    @property
    def link_down(self) -> bool:
        """Whether the link to the rest of the chat is down (newcomers are told)."""
        ...

    def attach(self, node: Node, /) -> None:
        """Deliver to ``node`` from now on (the hub attaches itself when it is made)."""
        ...

    def publish(self, events: Sequence[RoomEvent], /) -> None:
        """Room events (all of one room) for every node, this one included.

        They reach :meth:`Node.deliver` on every node, in one order: at once
        for the local backplane, when they come back from Redis for a cluster
        (on this node too). If the cluster cannot take them, the backplane
        delivers them here alone rather than lose them.
        """
        ...

    def publish_private(self, key: str, event: Private, /) -> bool:
        """A private message for the member holding ``key`` wherever it is; ``False`` if no node
        will take it (the hub then answers from what it knows here)."""
        ...

    def publish_notice(self, key: str, text: str, error: bool, /) -> bool:
        """A server line for the member holding ``key`` wherever it is
        (:meth:`Node.deliver_notice`); ``False`` if no node will take it."""
        ...

    def publish_state(self, change: Change, /) -> None:
        """A change of moderation or accounts made here, for every node (this one included,
        which takes it again in the cluster's order); dropped if there is no link."""
        ...

    async def claim_account(self, entry: AccountSet, /) -> Claim:
        """Register ``entry`` across the cluster unless its name is registered already
        (one winner of two at once); then every node hears of it (:meth:`Node.deliver_state`)."""
        ...

    def presence(
        self,
        key: str,
        name: str,
        rooms: Iterable[str] | None,
        account: str | None = None,
        away: str | None = None,
        /,
    ) -> None:
        """A local member is now in ``rooms`` (``None``: gone, and its name is released),
        identified as ``account`` and away for ``away`` (the other nodes mark it so).

        Called when one of these changes, never per line: presence changes are rare.
        """
        ...

    def occupy(self, room: str, /) -> None:
        """A first member on this node entered ``room`` (never the lobby): keep its history."""
        ...

    def vacate(self, room: str, /) -> bool:
        """The last member on this node left ``room``: its history may go.

        The cluster drops it once no node has a member in the room, and says
        so (:meth:`Node.drop_history`). ``False`` means nobody will say so
        (there is no link): the hub forgets its copy now.
        """
        ...

    def remote_name(self, key: str, /) -> str | None:
        """The display name of the user on another node holding ``key``, if any."""
        ...

    def remote_users(self, room: str, /) -> list[str]:
        """Names of the users in ``room`` on other nodes, in list order (by
        :func:`~triochat.core.names.name_sort_key`, then the name)."""
        ...

    def remote_count_in(self, room: str, /) -> int:
        """How many users are in ``room`` on other nodes (without listing them)."""
        ...

    def remote_first(self, room: str, count: int, /) -> Sequence[tuple[str, str]]:
        """The first ``count`` of :meth:`remote_users` as ``(name_sort_key(name), name)``,
        for a big room's list: a slice of the room's index, not a sort of everyone."""
        ...

    def remote_user(self, key: str, /) -> RemoteUser | None:
        """The user on another node holding ``key`` (its name, account, away and rooms), if
        any."""
        ...

    def remote_rooms(self) -> dict[str, int]:
        """Member counts of the rooms on other nodes."""
        ...

    def remote_count(self) -> int:
        """How many users are connected to other nodes."""
        ...

    async def claim(self, name: str, /) -> Claim:
        """Claim ``name`` across the cluster."""
        ...

    def unclaim(self, name: str, /) -> None:
        """Give back a claim that was not used."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link up until cancelled; ``started`` after the first attempt."""
        ...

    async def leave_cluster(self) -> None:
        """Announce this node's users as gone and drop its keys (on shutdown)."""
        ...

    # Resume tokens across the cluster: what :class:`~triochat.core.resume.Tokens` mirrors,
    # by an entry id of its own (a member's name may change), and only the digests.

    def resumable(self, entry: str, key: str, name: str, digest: bytes, /) -> None:
        """The member ``entry`` (holding ``key``, called ``name``) can be resumed with a token
        whose SHA-256 is ``digest`` (as well as with those before it)."""
        ...

    def keep_token(self, entry: str, digest: bytes, /) -> None:
        """Only ``digest`` resumes ``entry`` from now on (the client confirmed it)."""
        ...

    def unresumable(self, entry: str, /) -> None:
        """``entry`` left the chat: no token resumes it any more."""
        ...

    def hold(self, entry: str, /) -> None:
        """``entry``'s connection broke: it is held (its grace runs on this node)."""
        ...

    async def take_over(
        self, digest: bytes, positions: Sequence[tuple[str, int]], dialect: Dialect, /
    ) -> Handover | None:
        """Take the member that the token of ``digest`` resumes over to this node, wherever it
        is (the hub adopts it in ``dialect``), with the tails of the rooms at ``positions``
        (room, last number shown); ``None`` if no member is resumable with it.

        Raises:
          BackplaneError: the cluster cannot be asked now (the link is down, or went down
            before the takeover was done): the token is not known to be bad.
        """
        ...

    async def expire(self, entry: str, /) -> bool:
        """The grace of ``entry``, held here, is over: ``True`` if it is still ours to end
        (no node took it over meanwhile), so the hub should make it leave."""
        ...
