"""What leaves the hub: typed events, which every door renders in its own dialect.

The hub never formats a line. It emits these frozen values; a door's
:class:`Dialect` turns a run of them into the bytes of its wire format
(``protocol/line.py`` for v1, one module per dialect). Room events carry the
room's sequence number (1, 2, 3 ... per room, never reused) and the server's
time as a UTC instant (seconds since the epoch), so any dialect can show the
time its own way and history can be replayed to a joiner on any door.

Nothing here imports trio or does I/O.

Events are values: nobody changes one once it is made (history, every door
and the backplane share the same objects). They are not ``frozen``
dataclasses only because freezing makes each one four times dearer to build
(0.5 µs against 0.11 µs), and a chat line's event is built on the hot path.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

# --- Room events: numbered, kept in history --------------------------------


@dataclass(slots=True)
class _InRoom:
    """Something that happened in ``room``: its ``seq``-th event, at ``time`` (UTC)."""

    room: str
    seq: int
    time: float


@dataclass(slots=True)
class Said(_InRoom):
    """A chat line."""

    name: str
    text: str


@dataclass(slots=True)
class Acted(_InRoom):
    """An action (``/me``)."""

    name: str
    text: str


@dataclass(slots=True)
class Joined(_InRoom):
    name: str


@dataclass(slots=True)
class Left(_InRoom):
    """``name`` left ``room``; ``reason`` is theirs (``quit``, ``bye``) or the server's.

    The server's reasons are ``connection lost``, ``too slow``, ``name conflict``,
    ``server shutdown`` and ``joined #room`` (a one-room client moved on).
    """

    name: str
    reason: str


@dataclass(slots=True)
class Renamed(_InRoom):
    old: str
    new: str


@dataclass(slots=True)
class TopicSet(_InRoom):
    name: str
    topic: str


@dataclass(slots=True)
class RoleChanged(_InRoom):
    """``by`` made ``name`` an operator of ``room`` (``op``), or took that away (``/op``,
    ``/deop``): every door shows it, so members' lists keep their marks right. An empty
    ``by`` is the server, telling the room that an operator from before is back."""

    name: str
    by: str
    op: bool


@dataclass(slots=True)
class Presence(_InRoom):
    """A big room's joins and leaves of the last ``seconds``, told at once instead of each.

    Rooms past the server's ``quiet_above`` members announce no single join,
    leave or rename (ergo's users saw a channel of 2,000 slow a server that way).
    """

    joined: int
    left: int
    seconds: float


@dataclass(slots=True)
class Legacy(_InRoom):
    """A history line kept from before events (a v1 ``--db`` file), as it was sent."""

    line: str


@dataclass(slots=True)
class Away(_InRoom):
    """``name`` is away (``text``: why) or back (``text`` empty), told in ``room`` and the
    rooms in ``also`` (space-separated): every room it is in, in one event, so that
    whoever shares several of them is told once.

    Only for the doors that show it (IRC's ``away-notify``): the hub hands it to no
    one else, gives it no number (``seq`` 0), and nobody keeps it (not in history,
    not in the resume tail). It goes through the backplane as room events do, so
    it reaches every node.
    """

    name: str
    text: str
    also: str = ""


RoomEvent = (
    Said | Acted | Joined | Left | Renamed | TopicSet | RoleChanged | Presence | Legacy | Away
)
"""The events of a room (all numbered in its sequence but :class:`Away`)."""

UNNUMBERED: Final[frozenset[type[RoomEvent]]] = frozenset({Away})
"""The room events that take no number (``seq`` 0): told to some doors, kept nowhere."""

KEPT: Final[frozenset[type[RoomEvent]]] = frozenset({Said, Acted, TopicSet, Legacy})
"""The room events that go into history and are shown to joiners: chat lines, actions,
topics (and lines kept from before events), not joins, leaves, renames or summaries.

One rule for every copy of a history: the hub's, the SQLite archive's, and the one a
backplane keeps for the cluster (Redis lists are capped by count, so they must hold
the same events as the hub's)."""


def kept_in_history(event: RoomEvent) -> bool:
    """Whether ``event`` goes into its room's history (:data:`KEPT`)."""
    return type(event) in KEPT


def new_epoch() -> str:
    """A fresh epoch: an opaque string no earlier history of any room had (48 random bits)."""
    return secrets.token_hex(6)


# --- Events for one member ---------------------------------------------------


@dataclass(slots=True)
class Private:
    """A private message; ``echo`` is the copy its sender sees."""

    time: float
    sender: str
    recipient: str
    text: str
    echo: bool = False


@dataclass(slots=True)
class Notice:
    """A line from the server to read (``*`` on the line door)."""

    text: str


@dataclass(slots=True)
class Error:
    """Something the member asked for could not be done (``!`` on the line door)."""

    text: str


@dataclass(slots=True)
class UserList:
    """Who is in ``room``, sorted as names compare; ``names`` includes the asker.

    In a big room ``names`` may be only the first of ``total``. ``ops`` and
    ``away`` are the names of ``names`` that operate the room and that are away:
    each door marks them its own way (``@ann``, ``bob (away)``).
    """

    room: str
    names: tuple[str, ...]
    total: int = 0
    ops: frozenset[str] = frozenset()
    away: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.total = max(self.total, len(self.names))


@dataclass(slots=True)
class RoomList:
    """Every room and its member count (across the cluster), sorted by name."""

    rooms: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class Replay:
    """A ``/history`` answer: up to the asked number of ``room``'s events, oldest first."""

    room: str
    events: tuple[RoomEvent, ...]


# --- Resume (protocol v2) ------------------------------------------------------


@dataclass(slots=True)
class RoomState:
    """Where ``room``'s numbering stands: its ``epoch`` and the last ``seq`` given out."""

    room: str
    epoch: str
    seq: int


@dataclass(slots=True)
class Resumed:
    """A resume that worked: every event of ``room`` after the asked number, in order.

    ``seq`` is the last number they bring the client to (the room's, at that moment).
    """

    room: str
    epoch: str
    seq: int
    events: tuple[RoomEvent, ...]


@dataclass(slots=True)
class ResumeFailed:
    """A resume refused whole: about ``lost`` events cannot be replayed, for ``reason``.

    ``epoch`` and ``seq`` are where the room stands now (empty and 0 for no room).
    """

    room: str
    epoch: str
    seq: int
    lost: int
    reason: str


Recovery = Resumed | ResumeFailed
"""The answer to "resume ``room`` after ``EPOCH:SEQ``": all of it, or an explicit failure."""


@dataclass(slots=True)
class Hello:
    """A door's answer to a client that opted into protocol ``version``, and its resume terms."""

    version: int
    grace: float
    resume_max: int


@dataclass(slots=True)
class Welcome:
    """A v2 member is named ``name``; ``token`` resumes it within the grace (never logged)."""

    name: str
    token: str
    grace: float


Event = (
    RoomEvent
    | Private
    | Notice
    | Error
    | UserList
    | RoomList
    | Replay
    | RoomState
    | Resumed
    | ResumeFailed
    | Hello
    | Welcome
)


class Dialect(Protocol):
    """How one door renders events: pure, and the same bytes for everyone who speaks it.

    The hub renders a burst once per dialect present among its recipients and
    hands the same ``bytes`` object to each of them.
    """

    @property
    def name(self) -> str: ...

    def render(self, events: Sequence[Event], /) -> bytes:
        """The bytes that show ``events`` (one or more, in order) on this door."""
        ...
