"""Who is where: the hub's members, its rooms, and each room's log of recent events.

The hub (:mod:`triochat.core.hub`) holds the rules that change them; these are the
plain state it changes, and the one pure function that answers a resume from a log.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol

from ..protocol import line as p
from . import events as ev
from .events import Dialect, RoomEvent, new_epoch

USERS_SHOWN: Final = 50
"""Names listed per user list of a big room (``/users all`` sends as many lists as it takes)."""

NOBODY: Final[frozenset[str]] = frozenset()
"""Whom a member ignores until it ignores someone: one empty set for all (an empty
``set`` costs 216 bytes, per member)."""


class Outbox(Protocol):
    """Where a member's outgoing bytes go: the send end of a bounded channel."""

    def send_nowait(self, value: bytes, /) -> None: ...

    def close(self) -> None: ...


class Archive(Protocol):
    """Where a room's kept events also go, and come back from (e.g. a database).

    Both calls are synchronous and must be cheap: ``append`` only queues the
    event for a writer task, and ``recent`` answers from memory.
    """

    def append(self, event: RoomEvent, /) -> None: ...

    def recent(self, room: str, /) -> Iterable[RoomEvent]: ...


class Member:
    """A registered user, as the hub sees it."""

    __slots__ = (
        "account",
        "address",
        "away",
        "dialect",
        "disconnect",
        "hang_up",
        "ignoring",
        "kept",
        "key",
        "name",
        "outbox",
        "rooms",
    )

    def __init__(
        self, name: str, outbox: Outbox, disconnect: Callable[[], None], dialect: Dialect
    ) -> None:
        self.name = name
        self.key = p.name_key(name)
        self.rooms: dict[str, Room] = {}
        """The rooms the member is in, in the order it joined them."""
        self.outbox = outbox
        self.dialect = dialect
        self.disconnect = disconnect
        # Stop reading but let queued lines out, given why (the server sets it);
        # else disconnect.
        self.hang_up: Callable[[str], None] | None = None
        self.address = ""
        """The client's address, for address bans (its session sets it)."""
        self.account: str | None = None
        """The key of the account it proved is its own, if any (its session sets it)."""
        self.away: str | None = None
        """Why the member is away (``/away``), told to whoever messages it."""
        self.ignoring: frozenset[str] = NOBODY
        """The name keys whose lines and private messages it is not sent (``/ignore``);
        a frozenset replaced on change, so that the many who ignore nobody share one."""
        self.kept: list[ev.Private] | None = None
        """While it is held (its connection broke, it may resume): the private messages
        kept for it, in order; ``None`` while it is connected."""

    @property
    def room_names(self) -> Iterable[str]:
        return self.rooms.keys()

    @property
    def room(self) -> Room | None:
        """The room a one-room (v1) member is in: the last it joined."""
        return next(reversed(self.rooms.values()), None)

    def __repr__(self) -> str:
        return f"<Member {self.name} in {', '.join(self.rooms) or 'no room'}>"


class RoomLog:
    """A room's recent kept events and its sequence counter, on this node.

    ``epoch`` names the history behind the numbers: a new one whenever it is
    lost (the log is made afresh without an archive that knows the room).
    ``tail`` holds the last events of every kind, for :meth:`Hub.resume`, from
    the first time a member who can resume (:func:`resumes`) enters the room:
    a room of v1 clients only keeps none, and costs what it did.
    ``created`` is when the room began, as far as this node can tell: when it
    made the log, or the time of the oldest event it restored (from the
    archive or the cluster), whichever is earlier (IRC's 329).
    """

    __slots__ = ("created", "epoch", "events", "local", "seq", "tail")

    def __init__(self, keep: int, epoch: str = "", created: float = 0.0) -> None:
        self.events: deque[RoomEvent] = deque(maxlen=keep)
        self.seq = 0
        self.epoch = epoch or new_epoch()
        self.tail: deque[RoomEvent] = deque(maxlen=0)
        self.local = False
        """In a cluster: numbered by this node alone (its link was down), in an epoch of its own."""
        self.created = created

    def restored(self) -> None:
        """Its events were restored: the room is at least as old as the oldest."""
        if self.events:
            self.created = min(self.created, self.events[0].time)


def recover(
    room: str,
    epoch_now: str,
    seq_now: int,
    epoch: str,
    after: int,
    tail: Sequence[RoomEvent] | deque[RoomEvent],
    resume_max: int,
) -> ev.Recovery:
    """Every event of ``room`` after number ``after`` of ``epoch``, or why not.

    ``tail`` holds the room's last events, oldest first, up to ``seq_now`` in
    ``epoch_now``. All or nothing: a failure (another epoch, a number from the
    future, events no longer kept or more than ``resume_max``) says about how
    many events the client lost and replays none.
    """

    def failed(lost: int, reason: str) -> ev.ResumeFailed:
        return ev.ResumeFailed(room, epoch_now, seq_now, lost, reason)

    if epoch != epoch_now:
        return failed(seq_now, "the room's history was reset")
    if after > seq_now:
        return failed(0, f"number {after} is from the future (the room is at {seq_now})")
    if after < 0:
        return failed(seq_now, "a negative number")
    missed = seq_now - after
    if missed > resume_max:
        return failed(missed, f"more than {resume_max} events to replay")
    if missed == 0:
        return ev.Resumed(room, epoch_now, seq_now, ())
    if not tail or tail[-1].seq != seq_now or len(tail) < missed:
        return failed(missed, "history no longer has them")
    replay = tuple(itertools.islice(tail, len(tail) - missed, None))
    # Exactly the numbers after + 1 .. seq, each once, or the tail cannot be trusted
    # (numbers given twice): a failure, not a guess.
    if any(event.seq != number for number, event in enumerate(replay, after + 1)):
        return failed(missed, "history no longer has them")
    return ev.Resumed(room, epoch_now, seq_now, replay)


class EpochArchive(Protocol):
    """An archive that also keeps each room's epoch and numbering across restarts."""

    def epoch(self, room: str, /) -> str:
        """The room's epoch (made and stored if it has none yet)."""
        ...

    def last_seq(self, room: str, /) -> int:
        """The last number the room gave out, as far as the archive knows."""
        ...

    def numbered(self, room: str, seq: int, /) -> None:
        """The room has given out numbers up to ``seq`` (queued, never blocks)."""
        ...


class Room:
    """A room with members on this node, grouped by dialect for rendering."""

    __slots__ = ("_first", "groups", "ignorers", "joined", "left", "log", "members", "name")

    def __init__(self, name: str, log: RoomLog) -> None:
        self.name = name
        self.log = log
        # Joins and leaves not yet told, while the room is too big to tell each.
        self.joined = 0
        self.left = 0
        # Dicts keep join order, which makes fan-out order deterministic. While
        # everyone here speaks one dialect (the usual room), its group is the
        # members dict itself, not a copy: a copy costs every member its share
        # of one more table (29 bytes at 10,000, docs/benchmarks.md).
        self.members: dict[Member, None] = {}
        self.groups: dict[Dialect, dict[Member, None]] = {}
        # The members here who ignore someone: only they are looked at when a
        # burst is handed out, and only while there are any.
        self.ignorers: dict[Member, None] = {}
        # The first USERS_SHOWN names here in list order, with their sort keys, once
        # a big room's user list has asked for them: kept up to date as members
        # join, forgotten when one of them goes. Sorting every name for every
        # joiner made registering N clients in one room O(N² log N).
        self._first: list[tuple[str, str]] | None = None

    def add(self, member: Member) -> None:
        members, groups, dialect = self.members, self.groups, member.dialect
        group = groups.get(dialect)
        if group is None:
            if not groups:
                group = groups[dialect] = members
            else:
                if len(groups) == 1:  # a second dialect: the first's group becomes a copy
                    ((only, shared),) = groups.items()
                    if shared is members:
                        groups[only] = dict(members)
                group = groups[dialect] = {}
        members[member] = None
        if group is not members:
            group[member] = None
        if member.ignoring:
            self.ignorers[member] = None
        first = self._first
        if first is not None:
            entry = (p.name_sort_key(member.name), member.name)
            if len(first) < USERS_SHOWN or entry < first[-1]:
                bisect.insort(first, entry)
                del first[USERS_SHOWN:]

    def remove(self, member: Member) -> None:
        members, groups = self.members, self.groups
        del members[member]
        self.ignorers.pop(member, None)
        group = groups[member.dialect]
        if group is not members:
            del group[member]
            if not group:
                del groups[member.dialect]
                if len(groups) == 1:  # one dialect again: the same members, in the same order
                    groups[next(iter(groups))] = members
        elif not members:
            del groups[member.dialect]
        first = self._first
        if first and (p.name_sort_key(member.name), member.name) <= first[-1]:
            self._first = None

    def first_names(self) -> list[tuple[str, str]]:
        """The first ``USERS_SHOWN`` members' (sort key, name), in list order."""
        if self._first is None:
            self._first = heapq.nsmallest(
                USERS_SHOWN, ((p.name_sort_key(m.name), m.name) for m in self.members)
            )
        return self._first

    def renamed(self) -> None:
        """A member here has a new name: the first names are found again when asked."""
        self._first = None
