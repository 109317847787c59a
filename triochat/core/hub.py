"""The chat's state: who is here, which rooms exist, what was said lately.

The hub is plain synchronous state owned by the trio run: no method awaits,
so no other task can observe it half-updated. It emits events
(:mod:`triochat.core.events`), never bytes: each member has a dialect, and a
room's members are kept grouped by dialect, so a burst of events is rendered
once per dialect present and the same ``bytes`` object is handed to every
member who speaks it, with ``send_nowait`` on its bounded outbox. A room where
everyone uses the line door therefore costs one render per burst, as before
events existed. A recipient whose outbox is full is a slow consumer: it is
evicted, and nobody ever waits for it.

Room events always go out through the backplane: the local one hands them
straight back to :meth:`Hub.deliver`, a cluster's once they have come back
from Redis. The hub is the backplane's :class:`~triochat.backplane.Node`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Final, TypeVar

import trio

from ..backplane import Backplane, LocalBackplane, LocalMember, Takeover
from ..protocol import line as p
from . import events as ev
from .events import Dialect, RoomEvent, new_epoch as new_epoch
from .moderation import SERVER, Moderation, Topic
from .modstate import (
    AccountGone,
    AccountSet,
    BanSet,
    Change,
    Kicked,
    SharedAccounts,
    SharedModeration,
    State,
)
from .rooms import (
    USERS_SHOWN as USERS_SHOWN,
    Archive,
    EpochArchive,
    Member as Member,
    Outbox as Outbox,
    Room,
    RoomLog,
    recover as recover,
)

log: Final = logging.getLogger("triochat.hub")


LINK_DOWN: Final = (
    "The link to the rest of the chat is down: you can keep talking with users on this "
    "server; reconnecting."
)
LINK_UP: Final = "The link to the rest of the chat is back."
NAME_CONFLICT: Final = (
    "Your name {name} was taken on another server while the link was down; "
    "reconnect with another name"
)

AWAY: Final = "{name} is away: {text}"
"""The answer to a private message for an away member (IRC shows it as ``301``)."""

NAMED_REASONS: Final = ("kicked", "banned")
"""Departures every big room still announces by name."""


class _Waiting:
    """The outbox of a member taken over from another node, until its new connection has
    sent what the member missed: what its rooms say meanwhile, bounded like an outbox."""

    __slots__ = ("chunks", "limit")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.limit = limit

    def send_nowait(self, value: bytes, /) -> None:
        if len(self.chunks) >= self.limit:
            raise trio.WouldBlock
        self.chunks.append(value)

    def close(self) -> None:
        pass


def resumes(dialect: Dialect) -> bool:
    """Whether members of ``dialect`` resume rooms (it says ``resumes = True``)."""
    return getattr(dialect, "resumes", False) is True


def echoes(dialect: Dialect) -> bool:
    """Whether members of ``dialect`` are handed their own chat lines and actions back.

    The line door's rule, and the default; a dialect says ``echo = False`` to
    be spared them (an IRC client without ``echo-message`` shows its own lines).
    """
    return getattr(dialect, "echo", True) is not False


_OWN_LINES: Final = ev.Said | ev.Acted
"""The events a member who does not echo is not handed when they are its own."""
_E = TypeVar("_E", bound=ev.Event)


def _without_own(member: Member, events: Sequence[_E]) -> list[_E]:
    """``events`` without ``member``'s own chat lines and actions."""
    name = member.name
    return [e for e in events if not (isinstance(e, _OWN_LINES) and e.name == name)]


class Hub:
    """Names, rooms, membership and history, and the rules that change them.

    Args:
      history: how many recent kept events each room holds for joiners.
      clock: wall-clock time source, for event times (tests inject a fixed one).
      backplane: what links this hub to other nodes (default: none, one process).
      archive: also keeps every kept event this node sees; with the local
        backplane, a room created here starts with the archive's recent events
        (so history survives a restart).
      max_rooms_per_member: the most rooms one member can be in at once.
      quiet_above: past this many members a room announces no single join,
        leave or rename, only a summary each ``presence_interval`` seconds
        (:meth:`summarize_presence`); 0 (the default here) never.
      presence_interval: the seconds a summary covers.
      names: the name policy (``"unicode"``, or ``"ascii"`` for ASCII names only).
      resume_max: the recent events of every kind each room keeps for
        :meth:`resume`, and the most one resume replays.
      moderation: the rooms' operators, topics, bans and mutes (default: none yet).
      max_ignored: the most names one member can ``/ignore``.
      waiting_max: the most hand-overs a member taken over from another node may have
        waiting for its new connection (its send queue's length).
    """

    def __init__(
        self,
        *,
        history: int = 20,
        clock: Callable[[], float] = time.time,
        backplane: Backplane | None = None,
        archive: Archive | None = None,
        max_rooms_per_member: int = 50,
        quiet_above: int = 0,
        presence_interval: float = 30.0,
        names: p.NamePolicy = "unicode",
        resume_max: int = 1000,
        moderation: Moderation | None = None,
        max_ignored: int = 100,
        waiting_max: int = 4096,
    ) -> None:
        self.names: p.NamePolicy = names
        self.resume_max = resume_max
        self.moderation = moderation or Moderation()
        self.max_ignored = max_ignored
        self.waiting_max = waiting_max
        self.handed_off: Callable[[Member], None] = lambda member: None
        """Called when another node took a member of this one over (its resume tokens
        and any connection still serving it go; the server sets it)."""
        self.accounts: SharedAccounts | None = None
        """The accounts the cluster shares with this node (``--db``), if any."""
        self.history = history
        self.max_rooms_per_member = max_rooms_per_member
        self.quiet_above = quiet_above
        self.presence_interval = presence_interval
        self.backplane: Backplane = backplane or LocalBackplane()
        self._clock = clock
        self._archive = archive
        # Only an archive that keeps epochs makes numbers outlive the process.
        self._epochs: EpochArchive | None = (
            archive if archive is not None and hasattr(archive, "numbered") else None  # type: ignore[assignment]
        )
        self._members: dict[str, Member] = {}
        self._rooms: dict[str, Room] = {}
        # Every room's log this node keeps: the rooms with members here, and in
        # a cluster every room whose history the cluster keeps. A log goes when
        # the room's history does (vacate, drop_history).
        self._logs: dict[str, RoomLog] = {}
        self._slow: list[Member] = []
        self._evicting = False
        self._waiting: dict[Member, list[bytes]] = {}
        """Members reattached whose waiting lines are not out yet (:meth:`resumed`)."""
        self.lines_in = 0
        self.lines_out = 0
        self.slow_evictions = 0
        self.backplane.attach(self)
        self._publish = self.backplane.publish
        # A cluster numbers each room's events itself (in Redis, as it publishes them):
        # the hub then sends them with seq 0 and takes the numbers they come back with.
        self._numbering = not self.backplane.remote

    # --- queries ---------------------------------------------------------

    @property
    def members(self) -> int:
        return len(self._members)

    @property
    def notice(self) -> str | None:
        """A line newcomers should read (that the link to the rest of the chat is down)."""
        return LINK_DOWN if self.backplane.link_down else None

    def online(self) -> int:
        """How many users are in the chat (across the cluster)."""
        return len(self._members) + self.backplane.remote_count()

    def rooms(self) -> dict[str, int]:
        """Each room's name and member count (across the cluster, with a backplane)."""
        counts = {r.name: len(r.members) for r in self._rooms.values()}
        for name, count in self.backplane.remote_rooms().items():
            counts[name] = counts.get(name, 0) + count
        return counts

    def hosts(self, room: str, /) -> bool:
        """Whether a member on this node is in ``room``."""
        held = self._rooms.get(room)
        return held is not None and bool(held.members)

    def history_rooms(self) -> list[str]:
        """The rooms whose recent events this node keeps in memory, sorted."""
        return sorted(self._logs)

    def local_members(self) -> list[Member]:
        return list(self._members.values())

    def member(self, name: str) -> Member | None:
        """The member here called ``name`` (as names compare), if any."""
        return self._members.get(p.name_key(name))

    def name_unavailable(self, name: str, current: Member | None = None) -> str | None:
        """Why ``name`` cannot be claimed (by ``current``, renaming), or ``None``."""
        error = p.name_error(name, self.names)
        if error is not None:
            return error
        key = p.name_key(name)
        holder = self._members.get(key)
        if (holder is not None and holder is not current) or self.backplane.remote_name(
            key
        ) is not None:
            return f"Name {name} is taken, choose another"
        return None

    def recent(self, room: str, count: int) -> list[RoomEvent]:
        """Up to ``count`` of the room's most recent kept events held here, oldest first."""
        held = self._logs.get(room)
        if held is None or count <= 0:
            return []
        return list(held.events)[-count:]

    # --- registration ------------------------------------------------------

    def register(
        self,
        name: str,
        outbox: Outbox,
        disconnect: Callable[[], None],
        dialect: Dialect,
    ) -> Member | str:
        """Claim ``name`` for a new member, in no room yet.

        Returns the member, or the text of the error line if the name is
        invalid or taken. ``disconnect`` is called if the hub evicts the member.
        """
        error = self.name_unavailable(name)
        if error is not None:
            return error
        member = Member(name, outbox, disconnect, dialect)
        self._members[member.key] = member
        log.info("%s registered", name)
        return member

    def is_member(self, member: Member) -> bool:
        """Whether ``member`` is still in the chat (not left, not evicted)."""
        return self._members.get(member.key) is member

    # --- what members do -----------------------------------------------------

    def say(self, member: Member, room: Room | str, texts: Sequence[str]) -> None:
        """Chat lines from ``member`` to ``room``, in order, as one hand-over per recipient."""
        self.lines_in += len(texts)
        held = self._room_of(member, room)
        if held is None:
            return
        if self.moderation.mutes and self._refuse_muted(member, held):
            return
        log_ = held.log
        now = self._clock()
        name, where = member.name, held.name
        if self._numbering:
            first = log_.seq + 1
            log_.seq += len(texts)
            said = [ev.Said(where, seq, now, name, text) for seq, text in enumerate(texts, first)]
        else:
            said = [ev.Said(where, 0, now, name, text) for text in texts]
        self._publish(said)
        self._evict_slow()

    def act(self, member: Member, room: Room | str, text: str) -> None:
        """An action (``/me``) from ``member`` in ``room``."""
        held = self._room_of(member, room)
        if held is None:
            return
        if self.moderation.mutes and self._refuse_muted(member, held):
            return
        self._publish([ev.Acted(held.name, self._next(held.log), self._clock(), member.name, text)])
        self._evict_slow()

    def private(self, member: Member, to: str, text: str) -> None:
        """A private message from ``member`` to the user called ``to``, wherever it is."""
        if not self.is_member(member):
            return
        key = p.name_key(to)
        target = self._members.get(key)
        name = target.name if target is not None else self.backplane.remote_name(key)
        if name is None:
            self.tell(member, ev.Error(f"No such user: {to}"))
            return
        message = ev.Private(self._clock(), member.name, name, text)
        echo = ev.Private(message.time, member.name, name, text, echo=True)
        # In a cluster both go through its channel, so the sender sees its echo
        # in order with its room lines; the local backplane declines.
        if self.backplane.publish_private(key, message):
            self.backplane.publish_private(member.key, echo)
        elif target is None:
            self.tell(member, ev.Error(f"No such user: {to}"))
        elif target.kept is not None and len(target.kept) >= self.resume_max:
            self.tell(member, ev.Error(self._not_kept(target)))
            return
        else:
            if member.key not in target.ignoring:
                self._to_member(target, message)
            self.tell(member, echo)
            if target.kept is not None:
                self.tell(member, ev.Notice(self._kept_text(target)))
        away = target.away if target is not None else self._remote_away(key)
        if away is not None:
            self.tell(member, ev.Notice(AWAY.format(name=name, text=away)))
        self._evict_slow()

    def away_of(self, name: str) -> str | None:
        """Why the user called ``name`` is away, if it is online (here or on another node)
        and away."""
        key = p.name_key(name)
        held = self._members.get(key)
        return held.away if held is not None else self._remote_away(key)

    def _remote_away(self, key: str) -> str | None:
        user = self.backplane.remote_user(key)
        return user.away if user is not None else None

    def _to_member(self, target: Member, message: ev.Private) -> None:
        """A private message for ``target``: now, or kept while it is held."""
        if target.kept is None:
            self.tell(target, message)
        elif len(target.kept) < self.resume_max:
            target.kept.append(message)

    def _kept_text(self, target: Member) -> str:
        return (
            f"{target.name}'s connection is down: your message is kept for them,"
            " and given if they are back in time"
        )

    def _not_kept(self, target: Member) -> str:
        return (
            f"{target.name}'s connection is down and {self.resume_max} private messages"
            " wait for them already: yours was not delivered"
        )

    def join(self, member: Member, room: str) -> None:
        """Put ``member`` in ``room`` (created on demand): it gets the history and the users."""
        if not self.is_member(member):
            return
        if room in member.rooms:
            self.tell(member, ev.Error(f"You are already in {room}"))
        elif len(member.rooms) >= self.max_rooms_per_member:
            self.tell(
                member,
                ev.Error(
                    f"You are in {len(member.rooms)} rooms, the most this server allows;"
                    " leave one first"
                ),
            )
        else:
            self._enter(member, room)
        self._evict_slow()

    def part(self, member: Member, room: str, reason: str) -> None:
        """Take ``member`` out of ``room``; the room sees ``left #room (reason)``."""
        if not self.is_member(member):
            return
        if room not in member.rooms:
            self.tell(member, ev.Error(f"You are not in {room}"))
        else:
            self._exit(member, room, reason)
            self._present(member)
        self._evict_slow()

    def rename(self, member: Member, name: str) -> None:
        """``member`` is now called ``name``; every room it is in sees the change."""
        if not self.is_member(member):
            return
        name = p.clean_text(name)
        error = self.name_unavailable(name, current=member)
        if error is None and name == member.name:
            error = f"You are already {name}"
        if error is not None:
            self.tell(member, ev.Error(error))
            return
        old = member.name
        del self._members[member.key]
        if member.key != p.name_key(name):
            self.backplane.presence(member.key, old, None)
        member.name, member.key = name, p.name_key(name)
        for held in member.rooms.values():
            held.renamed()
        self._members[member.key] = member
        log.info("%s is now known as %s", old, name)
        self._present(member)
        now = self._clock()
        told = False
        for held in list(member.rooms.values()):
            if self._quiet(held):
                if not told:  # the renamed member still sees that it worked
                    self.tell(member, ev.Renamed(held.name, 0, now, old, name))
                    told = True
            else:
                self._publish([ev.Renamed(held.name, self._next(held.log), now, old, name)])
        self._evict_slow()

    def users(self, member: Member, room: Room | str, *, everyone: bool = False) -> None:
        """Tell ``member`` who is in ``room``: in a big room the first names, or ``everyone``."""
        held = self._room_of(member, room)
        if held is None:
            return
        if not everyone:
            self.tell(member, self._user_list(held))
        else:
            names = self._names(held)
            pages = range(0, len(names), USERS_SHOWN) if names else range(1)
            lists = [self._marked(held, names[i : i + USERS_SHOWN]) for i in pages]
            self.tell(member, *lists)
        self._evict_slow()

    def audience(self, member: Member, room: Room | str) -> None:
        """Tell ``member`` who is in ``room`` as IRC's auditorium mode shows a big room.

        Past ``quiet_above`` (where joins are not announced, so a member's list could
        not be kept up to date anyway) the list is the member itself and the room's
        operators here, with the room's count; in a smaller room it is every name, as
        ``users(everyone=True)``. One look-up per operator of the room, not one per
        member: every name for every IRC joiner made registering N of them O(N²).
        """
        held = self._room_of(member, room)
        if held is None:
            return
        if not self._quiet(held):
            self.users(member, held, everyone=True)
            return
        where, remote = held.name, self.backplane.remote
        shown = {member.name}
        # An operator is shown when it holds its account's own name (looked up by it),
        # here or on another node (whose presence gives its account and rooms).
        for account in self.moderation.ops.get(where, ()):
            holder = self._members.get(account)
            if holder is not None and holder.account == account and holder.rooms.get(where):
                shown.add(holder.name)
            elif (
                remote
                and (user := self.backplane.remote_user(account)) is not None
                and user.account == account
                and where in user.rooms
            ):
                shown.add(user.name)
        names = sorted(shown, key=p.name_sort_key)
        count = len(held.members) + self.backplane.remote_count_in(where)
        self.tell(member, self._marked(held, names, count))
        self._evict_slow()

    def summarize_presence(self) -> None:
        """Tell each big room of the joins and leaves since the last summary (call it every
        ``presence_interval`` seconds)."""
        now = self._clock()
        for room in list(self._rooms.values()):
            if room.joined or room.left:
                joined, left, room.joined, room.left = room.joined, room.left, 0, 0
                seq = self._next(room.log)
                self._publish(
                    [ev.Presence(room.name, seq, now, joined, left, self.presence_interval)]
                )
        self._evict_slow()

    def room_list(self, member: Member) -> None:
        """Tell ``member`` every room and its size."""
        if self.is_member(member):
            self.tell(member, ev.RoomList(tuple(sorted(self.rooms().items()))))
            self._evict_slow()

    def replay(self, member: Member, room: str, events: Sequence[RoomEvent]) -> None:
        """Send ``member`` a ``/history`` answer: ``room``'s ``events``, oldest first."""
        if self.is_member(member):
            self.tell(member, ev.Replay(room, tuple(events)))
            self._evict_slow()

    def leave(self, member: Member, reason: str, *, farewell: str | None = None) -> None:
        """Remove ``member`` from the chat; each of its rooms sees ``left #room (reason)``.

        Idempotent, so every way out of a connection can call it. With
        ``farewell``, that notice is the member's last, and its outbox is
        closed so the writer flushes and hangs up.
        """
        if not self.is_member(member):
            return
        del self._members[member.key]
        log.info("%s left (%s)", member.name, reason)
        kept, member.kept = member.kept, None
        for message in kept or ():
            text = f"{member.name} left ({reason}): your message was not delivered"
            self._notify(message.sender, f"{text}: {message.text}", error=True)
        for room in list(member.rooms):
            self._exit(member, room, reason)
        self.backplane.presence(member.key, member.name, None)
        if farewell is not None:
            self.tell(member, ev.Notice(farewell))
        member.outbox.close()
        # Whoever could not take the notice goes now, not at the next command.
        self._evict_slow()

    # --- moderation (the session checks who may) ---------------------------------------

    def set_topic(self, member: Member, room: str, text: str) -> None:
        """``member`` sets ``room``'s topic; the room sees it (and joiners, later)."""
        held = self._room_of(member, room)
        if held is None:
            return
        now = self._clock()
        self.moderation.set_topic(room, Topic(text, member.name, now))
        self._publish([ev.TopicSet(room, self._next(held.log), now, member.name, text)])
        self._evict_slow()

    def set_role(self, member: Member, room: str, name: str, op: bool) -> None:
        """``member`` made the account ``name`` an operator of ``room`` (or not any more);
        the room sees it.

        The moderation state is the session's to change; this only tells the room.
        """
        held = self._room_of(member, room)
        if held is None:
            return
        # Shown under the name its account holder goes by in the room, if it is here.
        key = p.name_key(name)
        holder = next((m for m in held.members if m.account == key), None) or self.member(name)
        shown = holder.name if holder is not None else name
        now = self._clock()
        self._publish([ev.RoleChanged(room, self._next(held.log), now, shown, member.name, op)])
        self._evict_slow()

    def operator_back(self, member: Member, room: str) -> None:
        """``member``, an operator of ``room`` from before, came back: the room is told, by
        the server (``by`` empty), as IRC clients forget a member's modes when it leaves.

        Not in a room too big to announce joins: its members were not told of the join.
        """
        held = self._room_of(member, room)
        if held is None or self._quiet(held):
            return
        now = self._clock()
        self._publish([ev.RoleChanged(room, self._next(held.log), now, member.name, "", True)])
        self._evict_slow()

    def kick(self, member: Member, target: Member, room: str, reason: str) -> None:
        """``target`` leaves ``room``, sent away by ``member``: ``(kicked by OP: REASON)``."""
        self.remove_from(
            target, room, f"kicked by {member.name}" + (f": {reason}" if reason else "")
        )

    def kick_elsewhere(self, member: Member, name: str, room: str, reason: str) -> bool:
        """Kick the user called ``name`` out of ``room`` on whichever other node it is;
        ``False`` if no other node has it there."""
        key = p.name_key(name)
        user = self.backplane.remote_user(key)
        if user is None or room not in user.rooms:
            return False
        self.backplane.publish_state(Kicked(room, key, member.name, reason))
        return True

    def remove_from(self, target: Member, room: str, reason: str) -> None:
        """``target`` leaves ``room`` for ``reason`` (a kick, a ban), and is told why."""
        if not self.is_member(target) or room not in target.rooms:
            return
        self._exit(target, room, reason)
        self._present(target)
        # The room's departure is told after the member is out of it: it sees its own
        # (unnumbered: not the room's event), so every door can show it left.
        left = ev.Left(room, 0, self._clock(), target.name, reason)
        self.tell(target, left, ev.Error(f"You left {room} ({reason})"))
        self._evict_slow()

    def expel(self, member: Member, reason: str) -> None:
        """Send ``member`` out of the chat (a server-wide ban): told why, then hung up."""
        if not self.is_member(member):
            return
        self.tell(member, ev.Error(f"You are out of the chat ({reason})"))
        self.leave(member, reason)
        if member.hang_up is not None:
            member.hang_up(reason)
        else:
            member.disconnect()

    def set_away(self, member: Member, text: str | None) -> None:
        """``member`` is away (``text``: why) or back (``None``).

        A change is told, in one :class:`~triochat.core.events.Away`, to those who
        follow it in the rooms ``member`` is in (IRC's ``away-notify``).
        """
        old, member.away = member.away, text
        if old == text or not self.is_member(member):
            return
        self._present(member)  # The other nodes mark it too.
        if not member.rooms:
            return
        first, *others = member.rooms
        away = ev.Away(first, 0, self._clock(), member.name, text or "", " ".join(others))
        self._publish([away])
        self._evict_slow()

    def set_account(self, member: Member, account: str | None) -> None:
        """``member`` proved ``account`` is its own (or no longer holds one): the other nodes
        mark it as an operator where that account is one."""
        old, member.account = member.account, account
        if old != account and self.is_member(member):
            self._present(member)

    def wall(self, member: Member, text: str) -> None:
        """A server admin's notice to everyone on this node."""
        if not self.is_member(member):
            return
        groups: dict[Dialect, list[Member]] = {}
        for held in self._members.values():
            groups.setdefault(held.dialect, []).append(held)
        self._fanout(groups, [ev.Notice(f"Notice from {member.name} to everyone: {text}")])
        self._evict_slow()

    def _refuse_muted(self, member: Member, room: Room) -> bool:
        """Whether ``member`` is muted in ``room``; if so it is told, the room is not."""
        until = self.moderation.muted(room.name, member.key)
        if until is None:
            return False
        remaining = self.moderation.remaining(until)
        self.tell(member, ev.Error(f"You are muted in {room.name} {remaining}: not sent"))
        self._evict_slow()
        return True

    def shutdown(self) -> None:
        """Forget everyone at once, with no departures announced: the server is closing."""
        self._members.clear()
        self._rooms.clear()
        self._slow.clear()

    def tell(self, member: Member, *events: ev.Event) -> None:
        """Events for ``member`` alone, in its dialect, as one hand-over."""
        self._hand_over(member, member.dialect.render(events), len(events))

    # --- the rules ------------------------------------------------------------

    def _room_of(self, member: Member, room: Room | str) -> Room | None:
        """``member``'s room ``room``, or ``None`` (told why) if it is not in it."""
        if isinstance(room, Room):
            return room if self.is_member(member) and member.rooms.get(room.name) is room else None
        held = member.rooms.get(room)
        if held is None and self.is_member(member):
            self.tell(member, ev.Error(f"You are not in {room}"))
        return held if self.is_member(member) else None

    def _next(self, log_: RoomLog) -> int:
        """The room's next number, given here (0 in a cluster: the cluster numbers it)."""
        if not self._numbering:
            return 0
        log_.seq += 1
        return log_.seq

    def _log(self, room: str) -> RoomLog:
        held = self._logs.get(room)
        if held is None:
            held = self._logs[room] = self._new_log(room)
            if self._archive is not None and not self.backplane.remote:
                held.events.extend(self._archive.recent(room))
                if held.events:
                    held.seq = held.events[-1].seq
                    held.restored()
                if self._epochs is not None:
                    held.seq = max(held.seq, self._epochs.last_seq(room))
        return held

    def _new_log(self, room: str) -> RoomLog:
        epochs = self._epochs if not self.backplane.remote else None
        epoch = epochs.epoch(room) if epochs is not None else ""
        return RoomLog(self.history, epoch, self._clock())

    def _quiet(self, room: Room) -> bool:
        """Whether ``room`` is past ``quiet_above`` members (across the cluster)."""
        limit = self.quiet_above
        if not limit:
            return False
        count = len(room.members)
        return count > limit or count + self.backplane.remote_count_in(room.name) > limit

    def _enter(self, member: Member, name: str) -> None:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(name, self._log(name))
            if name != p.LOBBY:
                self.backplane.occupy(name)
        room.add(member)
        member.rooms[room.name] = room  # one string for all its members, not theirs
        if room.log.tail.maxlen == 0 and resumes(member.dialect):
            room.log.tail = deque(maxlen=self.resume_max)
        self._present(member)
        if self._quiet(room):
            room.joined += 1
            # The joiner alone sees its join: unnumbered, it is not the room's event.
            joined = ev.Joined(name, 0, self._clock(), member.name)
            self.tell(member, *room.log.events, self._user_list(room), *self._topic(name), joined)
            return
        # The history and the user list (the joiner included) in one hand-over.
        self.tell(member, *room.log.events, self._user_list(room), *self._topic(name))
        now = self._clock()
        told: list[RoomEvent] = [ev.Joined(name, self._next(room.log), now, member.name)]
        if member.away is not None:  # told after the JOIN to those who follow it
            told.append(ev.Away(name, 0, now, member.name, member.away))
        self._publish(told)

    def _exit(self, member: Member, name: str, reason: str) -> None:
        room = member.rooms.pop(name)
        quiet = self._quiet(room) and not reason.startswith(NAMED_REASONS)
        room.remove(member)
        log_ = room.log
        # The departure first, then (if it was the last member here) the vacating: in a
        # cluster the room's numbering goes with its history, after its last event.
        if quiet:
            room.left += 1
        else:
            self._publish([ev.Left(name, self._next(log_), self._clock(), member.name, reason)])
        if not room.members and name != p.LOBBY:
            del self._rooms[name]
            if not self.backplane.vacate(name):
                self._logs.pop(name, None)

    def _present(self, member: Member) -> None:
        """Tell the other nodes where ``member`` is, as what account, and whether away."""
        rooms = tuple(member.rooms)
        self.backplane.presence(member.key, member.name, rooms, member.account, member.away)

    def _topic(self, room: str) -> tuple[ev.Notice, ...]:
        """The topic a joiner of ``room`` is shown, if it has one."""
        topic = self.moderation.topics.get(room)
        if topic is None:
            return ()
        return (ev.Notice(f"Topic of {room}: {topic.text} (set by {topic.by})"),)

    def _names(self, room: Room) -> list[str]:
        names = [m.name for m in room.members]
        names.extend(self.backplane.remote_users(room.name))
        names.sort(key=p.name_sort_key)
        return names

    def _user_list(self, room: Room) -> ev.UserList:
        """The room's users; past ``quiet_above``, the first ``USERS_SHOWN`` and the count."""
        count = len(room.members) + self.backplane.remote_count_in(room.name)
        if self.quiet_above and count > self.quiet_above:
            first = room.first_names()
            # The room's first names are among the first here and the first elsewhere.
            if others := self.backplane.remote_first(room.name, USERS_SHOWN):
                first = heapq.nsmallest(USERS_SHOWN, itertools.chain(first, others))
            return self._marked(room, [name for _, name in first], count)
        return self._marked(room, self._names(room))

    def _marked(self, room: Room, names: Sequence[str], total: int = 0) -> ev.UserList:
        """A user list of ``names``, with which of them operate ``room`` and are away.

        Users on other nodes are marked from their presence (its account and away text),
        looked up by the names shown: a list of every member, page after page, costs
        one look-up per name, whatever the cluster's size. Per request, never per
        burst. A page of a big room looks up only the members here it shows, not
        everyone in the room (once per joiner, that made registering N clients O(N²)
        again).
        """
        moderation, where = self.moderation, room.name
        here: Iterable[Member] = room.members
        if len(names) < len(room.members):
            found = (self._members.get(p.name_key(name)) for name in names)
            here = [m for m in found if m is not None and m.rooms.get(where) is room]
        ops = {m.name for m in here if m.account is not None and moderation.is_op(where, m.account)}
        away = {m.name for m in here if m.away is not None}
        if self.backplane.remote:
            local = {m.name for m in here}
            for name in names:
                user = None if name in local else self.backplane.remote_user(p.name_key(name))
                if user is None:
                    continue
                if user.account is not None and moderation.is_op(where, user.account):
                    ops.add(user.name)
                if user.away is not None:
                    away.add(user.name)
        if ops or away:  # the list may be one page: only the names it shows
            shown = set(names)
            ops, away = ops & shown, away & shown
        return ev.UserList(where, tuple(names), total, frozenset(ops), frozenset(away))

    # --- delivery -------------------------------------------------------------

    def deliver(self, events: Sequence[RoomEvent], /, epoch: str | None = None) -> None:
        """Room events in the cluster's order (all of one room): to its members here.

        In a cluster they come numbered, with the room's ``epoch``; without one
        (the link is down) this node numbers them, in an epoch of its own. The
        kept ones go into the room's history (and the archive) first.
        """
        kept = [event for event in events if type(event) in ev.KEPT]
        if len(kept) != len(events) and any(type(event) is ev.Away for event in events):
            self._deliver_aways(events, epoch)
            return
        name = events[0].room
        room = self._rooms.get(name)
        held = room.log if room is not None else self._logs.get(name)
        if not self._numbering:
            if held is None and kept:
                held = self._log(name)
            if held is not None:
                events = self._numbered(room, held, events, epoch)
                kept = [event for event in events if type(event) in ev.KEPT]
        if kept:
            if held is None:
                held = self._log(name)
            held.events.extend(kept)
            if self._archive is not None:
                for event in kept:
                    self._archive.append(event)
        if held is not None:
            if events[-1].seq > held.seq or not self._numbering:
                held.seq = events[-1].seq
            held.tail.extend(events)
            if self._epochs is not None:
                self._epochs.numbered(name, held.seq)
        if room is not None:
            if room.ignorers:
                self._fanout_ignoring(room, events)
            else:
                self._fanout(room.groups, events)

    def _numbered(
        self, room: Room | None, held: RoomLog, events: Sequence[RoomEvent], epoch: str | None
    ) -> Sequence[RoomEvent]:
        """``events`` as the room numbers them; a change of epoch is told to who resumes."""
        if epoch is None:
            # The cluster could not take them: numbered here, in an epoch only this node has,
            # so no number can be given twice within one epoch.
            if not held.local:
                self._new_epoch(room, held, new_epoch(), held.seq)
                held.local = True
            first = held.seq + 1
            return [replace(event, seq=seq) for seq, event in enumerate(events, first)]
        if epoch != held.epoch:
            self._new_epoch(room, held, epoch, events[0].seq - 1)
            held.local = False
        return events

    def _new_epoch(self, room: Room | None, held: RoomLog, epoch: str, seq: int) -> None:
        held.epoch = epoch
        held.seq = seq
        held.tail.clear()
        if room is None:
            return
        for dialect, members in room.groups.items():
            if resumes(dialect):
                state = dialect.render([ev.RoomState(room.name, epoch, seq)])
                for member in members:
                    self._hand_over(member, state, 1)

    def _deliver_aways(self, events: Sequence[RoomEvent], epoch: str | None = None) -> None:
        """A batch with :class:`~triochat.core.events.Away` events: the others as ever, in order."""
        run: list[RoomEvent] = []
        for event in events:
            if type(event) is not ev.Away:
                run.append(event)
                continue
            if run:
                self.deliver(run, epoch)
                run = []
            self._tell_away(event)
        if run:
            self.deliver(run, epoch)

    def _tell_away(self, event: ev.Away) -> None:
        """Hand ``event`` to the members here who follow away changes (``away_notify``) and
        share one of its rooms: once each, however many they share, never to its subject.

        Only dialects that have ``away_notify`` at all are looked into, so a room's
        line and web members cost nothing here.
        """
        key = p.name_key(event.name)
        told: dict[Member, None] = {}
        for name in (event.room, *event.also.split()):
            room = self._rooms.get(name)
            if room is None:
                continue
            for dialect, members in room.groups.items():
                if getattr(dialect, "away_notify", None) is None:
                    continue
                for member in members:
                    if member.dialect.away_notify and member.key != key:  # type: ignore[attr-defined]
                        told[member] = None
        groups: dict[Dialect, list[Member]] = {}
        for member in told:
            groups.setdefault(member.dialect, []).append(member)
        self._fanout(groups, [event])

    def _fanout(
        self, groups: Mapping[Dialect, Collection[Member]], events: Sequence[ev.Event]
    ) -> None:
        """Render ``events`` once per dialect and hand the bytes to each member's outbox.

        A member whose dialect does not echo (:func:`echoes`) is handed the events
        without its own chat lines and actions (known by name: in a cluster, a line
        that comes back after its author was renamed reaches it under the old name).
        """
        count = len(events)
        authors: set[str] | None = None
        for dialect, members in groups.items():
            if not echoes(dialect):
                if authors is None:
                    authors = {e.name for e in events if isinstance(e, _OWN_LINES)}
                if authors:
                    members = self._tell_authors(members, events, authors)
            data = dialect.render(events)
            sent = 0
            for member in members:
                try:
                    member.outbox.send_nowait(data)
                    sent += 1
                except trio.WouldBlock:
                    self._slow.append(member)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    # Its connection is already on the way out and will call leave().
                    pass
            self.lines_out += sent * count

    def _tell_authors(
        self, members: Collection[Member], events: Sequence[ev.Event], authors: set[str]
    ) -> Collection[Member]:
        """Hand the ``authors`` among ``members`` (who do not echo) ``events`` without their
        own lines; the others, to be handed all of them, are returned.

        The authors are looked up by name, not each member's name looked at: in a big
        room that loop cost every recipient of every burst (a member's name is its
        key's, and every member in a room is in :attr:`_members`).
        """
        found = [
            member
            for author in authors
            if (member := self._members.get(p.name_key(author))) is not None
            and member.name == author
            and member in members
        ]
        if not found:
            return members
        # A room's group is a dict, and a dict's copy is made in C at memory speed.
        others = members.copy() if isinstance(members, dict) else dict.fromkeys(members)
        for member in found:
            del others[member]
            kept = _without_own(member, events)
            if kept:
                self.tell(member, *kept)
        return others

    def _fanout_ignoring(self, room: Room, events: Sequence[RoomEvent]) -> None:
        """Hand ``events`` out in a room where someone ignores someone: those who ignore a
        sender of the burst get it without that sender's lines, everyone else as usual."""
        senders = {p.name_key(e.name) for e in events if isinstance(e, ev.Said | ev.Acted)}
        skipped = [m for m in room.ignorers if not m.ignoring.isdisjoint(senders)]
        if not skipped:
            self._fanout(room.groups, events)
            return
        left_out = set(skipped)
        groups = {
            dialect: [m for m in members if m not in left_out]
            for dialect, members in room.groups.items()
        }
        self._fanout(groups, events)
        for member in skipped:
            kept = [
                e
                for e in events
                if not (isinstance(e, ev.Said | ev.Acted) and p.name_key(e.name) in member.ignoring)
            ]
            if not echoes(member.dialect):
                kept = _without_own(member, kept)
            if kept:
                self.tell(member, *kept)

    def ignore(self, member: Member, name: str, ignored: bool) -> str | None:
        """``member`` ignores ``name`` (or not any more); the error text if that cannot be."""
        key = p.name_key(name)
        if key == member.key:
            return "You cannot ignore yourself"
        if ignored:
            if len(member.ignoring) >= self.max_ignored and key not in member.ignoring:
                return f"You ignore {len(member.ignoring)} names, the most this server allows"
            member.ignoring = member.ignoring | {key}
        elif key in member.ignoring:
            member.ignoring = member.ignoring - {key}
        else:
            return f"You do not ignore {name}"
        for room in member.rooms.values():
            if member.ignoring:
                room.ignorers[member] = None
            else:
                room.ignorers.pop(member, None)
        return None

    def _hand_over(self, member: Member, data: bytes, lines: int) -> None:
        try:
            member.outbox.send_nowait(data)
            self.lines_out += lines
        except trio.WouldBlock:
            self._slow.append(member)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _evict_slow(self) -> None:
        # Iterative: each eviction announces a departure, which can find
        # further slow members; recursion could go as deep as a room is wide.
        # So the leave() of an eviction returns here rather than recursing.
        if self._evicting:
            return
        self._evicting = True
        try:
            while self._slow:
                member = self._slow.pop()
                if self.is_member(member):
                    self.slow_evictions += 1
                    self.leave(member, "too slow")
                    member.disconnect()
        finally:
            self._evicting = False

    # --- resume ------------------------------------------------------------------

    def hold(self, member: Member) -> None:
        """``member``'s connection broke and it may come back: keep its private messages."""
        if self.is_member(member) and member.kept is None:
            member.kept = []

    def reattach(self, member: Member, outbox: Outbox, disconnect: Callable[[], None]) -> None:
        """A held ``member`` is back on a new connection: its lines go there from now.

        What waited for it (a member taken over from another node) and the private
        messages kept for it follow once the caller has sent its own lines and called
        :meth:`resumed`.
        """
        waiting, member.outbox = member.outbox, outbox
        if isinstance(waiting, _Waiting):
            self._waiting[member] = waiting.chunks
        member.disconnect = disconnect
        member.hang_up = None

    def resumed(self, member: Member) -> None:
        """The new connection has what ``member`` missed: now what waited, and what was kept."""
        for data in self._waiting.pop(member, ()):
            self._hand_over(member, data, 1)
        kept, member.kept = member.kept, None
        if kept:
            self.tell(member, *kept)
        self._evict_slow()

    def created(self, room: str, /) -> float | None:
        """When ``room`` began, as far as this node knows (``RoomLog.created``); ``None``: none."""
        held = self._logs.get(room)
        return None if held is None else held.created

    def room_state(self, room: str, /) -> ev.RoomState | None:
        """``room``'s epoch and last number, if this node keeps its log."""
        held = self._logs.get(room)
        return None if held is None else ev.RoomState(room, held.epoch, held.seq)

    def resume(self, room: str, epoch: str, after: int, /) -> ev.Recovery:
        """Every event of ``room`` after number ``after`` of ``epoch``, or why not
        (:func:`recover`, from this node's buffer)."""
        held = self._logs.get(room)
        if held is None:
            return ev.ResumeFailed(room, "", 0, 0, "no such room")
        return recover(room, held.epoch, held.seq, epoch, after, held.tail, self.resume_max)

    # --- takeovers across a cluster (the backplane calls these) ------------------------

    def adopt(self, takeover: Takeover, dialect: Dialect, /) -> Member:
        """A member held anywhere in the cluster is this node's now (see :class:`Takeover`):
        in its rooms unannounced, at the numbers they stood at; what they say waits in its
        outbox until its connection :meth:`reattach`-es."""
        member = Member(takeover.name, _Waiting(self.waiting_max), lambda: None, dialect)
        member.key = takeover.key
        member.account, member.away = takeover.account, takeover.away
        self._members[member.key] = member
        for name in takeover.rooms:
            room = self._rooms.get(name)
            if room is None:
                room = self._rooms[name] = Room(name, self._log(name))
                if name != p.LOBBY:
                    self.backplane.occupy(name)
            numbers = takeover.numbers.get(name)
            if numbers is not None and (room.log.epoch, room.log.seq) != numbers:
                room.log.epoch, room.log.seq = numbers
                room.log.tail.clear()
                room.log.local = False
            room.add(member)
            member.rooms[name] = room
            if room.log.tail.maxlen == 0 and resumes(dialect):
                room.log.tail = deque(maxlen=self.resume_max)
        self._present(member)
        log.info("%s taken over from another connection", member.name)
        return member

    def hand_off(self, key: str, /) -> list[ev.Private]:
        """The member holding ``key`` was taken over (by another node, or by this one
        again): it goes unannounced; returns the private messages kept for it."""
        member = self._members.pop(key, None)
        if member is None:
            return []
        for name in list(member.rooms):
            room = member.rooms.pop(name)
            room.remove(member)
            if not room.members and name != p.LOBBY:
                del self._rooms[name]
                if not self.backplane.vacate(name):
                    self._logs.pop(name, None)
        self._waiting.pop(member, None)
        kept, member.kept = member.kept, None
        self.handed_off(member)
        member.outbox.close()
        return kept or []

    def abandon(self, member: LocalMember, /) -> None:
        """An adopted member's new connection is gone before it took it: it leaves."""
        if isinstance(member, Member):
            self.leave(member, "connection lost")

    # --- the rest of the Node interface (the backplane calls these) ------------

    def deliver_private(self, key: str, event: ev.Private, /) -> None:
        """A private message (or its echo) from the cluster, if its recipient is here."""
        member = self._members.get(key)
        if member is None or not (event.echo or p.name_key(event.sender) not in member.ignoring):
            return
        if member.kept is None or event.echo:
            self.tell(member, event)
        elif len(member.kept) >= self.resume_max:
            self._notify(event.sender, self._not_kept(member), error=True)
        else:
            member.kept.append(event)
            self._notify(event.sender, self._kept_text(member), error=False)

    def deliver_notice(self, key: str, text: str, error: bool, /) -> None:
        """A server line from the cluster for the member here holding ``key``, if any."""
        member = self._members.get(key)
        if member is not None:
            self.tell(member, ev.Error(text) if error else ev.Notice(text))

    def _notify(self, name: str, text: str, *, error: bool) -> None:
        """Tell the user called ``name``, here or on another node (in a cluster through its
        channel, so it comes after what the user has on its way, a private echo say)."""
        key = p.name_key(name)
        if not self.backplane.publish_notice(key, text, error):
            self.deliver_notice(key, text, error)

    def replace_histories(self, histories: Mapping[str, Sequence[RoomEvent]], /) -> None:
        """Take the cluster's stored histories (after (re)linking), keeping room references.

        A room the cluster no longer keeps is forgotten, unless a member here
        is in it: then its history starts again empty.
        """
        for name in list(self._logs):
            if name not in histories and name not in self._rooms:
                del self._logs[name]
        for name in set(self._logs) | set(histories):
            self.set_history(name, histories.get(name, ()))

    def set_history(self, room: str, events: Sequence[RoomEvent], /) -> None:
        """``room``'s history is now ``events``, oldest first (the cluster restored it)."""
        held = self._logs.get(room)
        if held is None:
            held = self._logs[room] = self._new_log(room)
        held.events.clear()
        held.events.extend(events)
        held.restored()
        if held.events and held.events[-1].seq > held.seq:
            held.seq = held.events[-1].seq

    def drop_history(self, room: str, /) -> bool:
        """The cluster dropped ``room``'s history: forget this node's copy.

        Returns whether a member here is in the room all the same. The
        cluster could not know yet (its join was on its way to Redis when
        the last member elsewhere left), so the caller should undo the drop.
        """
        held = self._rooms.get(room)
        if held is None or not held.members:
            self._logs.pop(room, None)
            return False
        held.log.events.clear()
        return True

    def announce_left(self, room: str, name: str, reason: str, /) -> None:
        """A user of another node is gone: ``room`` sees it leave."""
        held = self._logs.get(room)
        seq = self._next(held) if held is not None else 0
        self._publish([ev.Left(room, seq, self._clock(), name, reason)])

    def link_changed(self, up: bool, /) -> None:
        """The link to the rest of the chat went down or came back: everyone here hears."""
        groups: dict[Dialect, list[Member]] = {}
        for member in self._members.values():
            groups.setdefault(member.dialect, []).append(member)
        self._fanout(groups, [ev.Notice(LINK_UP if up else LINK_DOWN)])

    def name_conflict(self, key: str, /) -> None:
        """The member holding ``key`` lost its name to another node: tell it, then close."""
        member = self._members.get(key)
        if member is None:
            return
        self.tell(member, ev.Error(NAME_CONFLICT.format(name=member.name)))
        self.leave(member, "name conflict")
        if member.hang_up is not None:
            member.hang_up("name conflict")
        else:
            member.disconnect()

    def flush(self) -> None:
        """Evict members found slow while delivering."""
        self._evict_slow()

    def deliver_state(self, change: Change, /) -> None:
        """A change of moderation or accounts, in the cluster's order (this node's own too):
        take it, and carry out a ban or a kick on the members here."""
        match change:
            case Kicked(room, key, by, reason):
                target = self._members.get(key)
                if target is not None:
                    self.remove_from(
                        target, room, f"kicked by {by}" + (f": {reason}" if reason else "")
                    )
            case AccountSet() | AccountGone():
                if self.accounts is not None:
                    self.accounts.apply(change)
            case _:
                if isinstance(self.moderation, SharedModeration):
                    self.moderation.apply(change)
                if isinstance(change, BanSet):
                    self._enforce(change)

    def _enforce(self, ban: BanSet) -> None:
        """A ban made on another node: the members here it names leave (the room or the chat)."""
        why = f"banned by {ban.by}" + (f": {ban.reason}" if ban.reason else "")
        for held in list(self._members.values()):
            if ban.target in (held.key, held.address):
                if ban.room == SERVER:
                    self.expel(held, why)
                elif ban.room in held.rooms:
                    self.remove_from(held, ban.room, why)

    def shared_state(self) -> list[State]:
        """What this node knows of moderation and accounts (to seed a cluster that has none)."""
        state: list[State] = []
        if isinstance(self.moderation, SharedModeration):
            state += self.moderation.state()
        if self.accounts is not None:
            state += self.accounts.entries()
        return state

    def replace_state(self, state: Sequence[State], /) -> None:
        """The cluster's moderation and accounts are the truth: take them as they are (and
        carry out its bans here: some may have been made while the link was down)."""
        if isinstance(self.moderation, SharedModeration):
            self.moderation.replace([c for c in state if not isinstance(c, AccountSet)])
            for change in state:
                if isinstance(change, BanSet):
                    self._enforce(change)
        if self.accounts is not None:
            self.accounts.replace([c for c in state if isinstance(c, AccountSet)])
