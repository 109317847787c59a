"""One member's session, sans-IO: registration and commands, the same for every door.

In the manner of h11's ``_state.py``, everything that moves the session from
one :class:`State` to another lives here, and the moves it may make are one
table, :data:`TRANSITIONS`. A door feeds it inputs (a line given before the
member has a name, a parsed command, the outcome of a name claim, "the
password delay is over", "the registration deadline passed", "the connection
is over") and gets back, in order, events for the client (for the door to
render) and effects for the I/O layer to carry out (:class:`ClaimName`,
:class:`Wait`, :class:`FetchHistory`, :class:`Unclaim`, :class:`Close`); the
result of an async effect comes back as the next input. An input the current
state does not take raises :class:`LocalProtocolError`, naming both.

The session calls the hub, which is synchronous state, itself. Plain chat
lines do not come through here: a chatting door hands them to
:meth:`Hub.say <triochat.core.hub.Hub.say>` in bursts (the hot path,
``docs/design.md``), in :attr:`Session.room`.

Nothing here awaits or does I/O; the time comes from the door's ``clock``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from ..backplane.base import Claim
from ..protocol import line as p
from . import commands as c
from ._auth import FailureDelays, password_matches
from .events import Dialect, Error, Event, Notice, RoomEvent

# --- States, inputs and the table of moves ------------------------------------


class State(enum.Enum):
    AWAITING_NAME = "awaiting a name"
    AWAITING_PASSWORD = "awaiting the password"
    REFUSING = "refusing a wrong password"
    """The verdict on a wrong password waits out its delay (:class:`Wait`)."""
    CLAIMING = "claiming the name"
    """The name's cluster-wide claim is in flight (:class:`ClaimName`)."""
    CHATTING = "chatting"
    RENAMING = "renaming"
    """A ``/nick``'s cluster-wide claim is in flight (:class:`ClaimName`)."""
    FETCHING = "fetching history"
    """A ``/history`` answer is being read from the store (:class:`FetchHistory`)."""
    CLOSED = "closed"


class Input(enum.Enum):
    LINE = "a line before registration"
    TOO_LONG = "a line too long"
    COMMAND = "a command"
    CLAIM_RESULT = "a claim's outcome"
    DELAY_ELAPSED = "the password delay's end"
    DEADLINE = "the registration deadline"
    FETCHED = "fetched history"
    CLOSE = "the connection's end"


_REGISTERING: Final = frozenset(
    {State.AWAITING_NAME, State.AWAITING_PASSWORD, State.CLAIMING, State.CHATTING, State.CLOSED}
)

TRANSITIONS: Final[Mapping[State, Mapping[Input, frozenset[State]]]] = {
    State.AWAITING_NAME: {
        Input.LINE: _REGISTERING,
        Input.TOO_LONG: frozenset({State.AWAITING_NAME}),
        Input.DEADLINE: frozenset({State.CLOSED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.AWAITING_PASSWORD: {
        # The right password goes on with the name given; it may be refused.
        Input.LINE: _REGISTERING | {State.REFUSING},
        Input.TOO_LONG: frozenset({State.AWAITING_PASSWORD}),
        Input.DEADLINE: frozenset({State.CLOSED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.REFUSING: {
        Input.DELAY_ELAPSED: frozenset({State.CLOSED}),
        Input.DEADLINE: frozenset({State.CLOSED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.CLAIMING: {
        Input.CLAIM_RESULT: frozenset({State.AWAITING_NAME, State.CHATTING}),
        Input.DEADLINE: frozenset({State.CLOSED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.CHATTING: {
        Input.COMMAND: frozenset({State.CHATTING, State.RENAMING, State.FETCHING, State.CLOSED}),
        Input.TOO_LONG: frozenset({State.CHATTING}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.RENAMING: {
        Input.CLAIM_RESULT: frozenset({State.CHATTING}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.FETCHING: {
        Input.FETCHED: frozenset({State.CHATTING}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.CLOSED: {
        Input.CLOSE: frozenset({State.CLOSED}),  # every way out may say so; once counts
    },
}
"""For each state, the inputs it takes and the states each may lead to."""


class LocalProtocolError(Exception):
    """The door fed the session an input its state does not take (a bug in the door)."""


# --- Effects: what the I/O layer carries out -----------------------------------


@dataclass(frozen=True, slots=True)
class ClaimName:
    """Claim ``name`` across the cluster; then :meth:`Session.claim_result`."""

    name: str


@dataclass(frozen=True, slots=True)
class Unclaim:
    """Give back a claim on ``name`` that was not used (synchronous)."""

    name: str


@dataclass(frozen=True, slots=True)
class Wait:
    """A wrong password: wait ``seconds`` (read nothing), then :meth:`Session.delay_elapsed`."""

    seconds: float


@dataclass(frozen=True, slots=True)
class FetchHistory:
    """Read up to ``count`` of ``room``'s events from the store; then :meth:`Session.fetched`."""

    room: str
    count: int


@dataclass(frozen=True, slots=True)
class Close:
    """Stop reading; send what is queued and hang up. ``reason`` is for the log."""

    reason: str


Effect = ClaimName | Unclaim | Wait | FetchHistory | Close
EFFECTS: Final = (ClaimName, Unclaim, Wait, FetchHistory, Close)
"""The effect classes, to tell effects from events (``isinstance(output, EFFECTS)``)."""
Output = Event | Effect
"""What an input gives back, in order: events for the client, effects for the I/O layer."""


# --- What the session needs of the hub ------------------------------------------


class Outbox(Protocol):
    def send_nowait(self, value: bytes, /) -> None: ...

    def close(self) -> None: ...


class SessionMember(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def key(self) -> str: ...

    @property
    def rooms(self) -> Mapping[str, object]: ...


M = TypeVar("M", bound=SessionMember)


class SessionHub(Protocol[M]):
    """The hub calls a session makes; all synchronous.

    The hub tells the member about what it refuses (already in that room, no
    such user, name taken ...) and ignores a member that has left or was evicted.
    """

    lines_in: int

    def register(
        self, name: str, outbox: Outbox, disconnect: Callable[[], None], dialect: Dialect, /
    ) -> M | str: ...

    def name_unavailable(self, name: str, current: M | None = None, /) -> str | None: ...

    def online(self) -> int: ...

    @property
    def notice(self) -> str | None: ...

    def join(self, member: M, room: str, /) -> None: ...

    def part(self, member: M, room: str, reason: str, /) -> None: ...

    def say(self, member: M, room: str, texts: Sequence[str], /) -> None: ...

    def act(self, member: M, room: str, text: str, /) -> None: ...

    def private(self, member: M, to: str, text: str, /) -> None: ...

    def rename(self, member: M, name: str, /) -> None: ...

    def users(self, member: M, room: str, /, *, everyone: bool = False) -> None: ...

    def room_list(self, member: M, /) -> None: ...

    def recent(self, room: str, count: int, /) -> Sequence[RoomEvent]: ...

    def replay(self, member: M, room: str, events: Sequence[RoomEvent], /) -> None: ...

    def leave(self, member: M, reason: str, /, *, farewell: str | None = None) -> None: ...


# --- The texts ------------------------------------------------------------------

_HINT: Final = "Commands start with /, try /help."
BYE: Final = "Bye!"
TAKEN: Final = "Name {} is taken, choose another"
LINK_DOWN: Final = "Cannot check that name with the rest of the chat right now; try again"
NO_ROOM: Final = "You are in no room; /join #room first"
ONE_ROOM: Final = "You are always in one room here: /join #room moves you"


def welcome_text(online: int | None) -> str:
    """The first line a client reads; ``None`` leaves out the count (a password is asked)."""
    if online is None:
        return f"Welcome to triochat! {_HINT}"
    users = "1 user" if online == 1 else f"{online} users"
    return f"Welcome to triochat! {users} online. {_HINT}"


def pacing_text(rate: float) -> str:
    """Told once per burst to a client whose lines flood control is holding back."""
    return f"Slow down: your lines are being paced ({rate:g} per second)"


def answered_before_registration(line: str) -> bool:
    """Whether ``line``, given for a name or the password, is a command (``/help``, ``/quit``)."""
    return isinstance(p.parse_command(p.clean_text(line)), c.Help | c.Quit)


@dataclass(frozen=True, kw_only=True)
class Rules:
    """What a session is told about its server: the registration and command rules."""

    password: str | None = None
    """Asked for after the name; ``None``: no password."""
    registration_timeout: float = 60.0
    """Seconds to give a name (for the message: the door keeps the deadline)."""
    claim_names: bool = False
    """Claim names across the cluster (:class:`ClaimName`) before the hub sees them."""
    store_history: bool = False
    """``/history`` is read from the store (:class:`FetchHistory`), not the hub's memory."""
    history_limit: int = p.HISTORY_MAX
    """The most events one ``/history`` answer carries (a bound on the asker's outbox)."""
    one_room: bool = True
    """A member is in one room at a time and ``/join`` moves it (the v1 line door)."""
    arrival_rooms: tuple[str, ...] = (p.LOBBY,)
    """The rooms a newly named member joins."""


# --- The session ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Door(Generic[M]):
    """What every session of one door shares (one per door, not per connection)."""

    hub: SessionHub[M]
    rules: Rules
    dialect: Dialect
    """How the door renders events; given to the hub with each member."""
    delays: FailureDelays
    """The server's password failure delays, per address, shared by all its doors."""
    clock: Callable[[], float]
    """The time, for the delays (the door's clock: ``trio.current_time``)."""


class Session(Generic[M]):
    """One connection's member: its registration, then its commands.

    Args:
      door: what the door's sessions share.
      outbox, disconnect: the connection's, given to the hub when the member registers.
      address: the client's address, the key for the password failure delays.
    """

    __slots__ = (
        "_disconnect",
        "_door",
        "_hub",
        "_input",
        "_outbox",
        "_pending",
        "_started",
        "address",
        "authenticated",
        "member",
        "room",
        "state",
    )

    def __init__(
        self,
        door: Door[M],
        *,
        outbox: Outbox,
        disconnect: Callable[[], None],
        address: str = "",
    ) -> None:
        self._door = door
        self._hub = door.hub
        self._outbox = outbox
        self._disconnect = disconnect
        self.address = address
        self.state = State.AWAITING_NAME
        self._input = Input.CLOSE  # the input being handled; set by every one first
        self.member: M | None = None
        self.room: str | None = None
        """The member's current room: the one room on a one-room door, else the last joined."""
        self.authenticated = door.rules.password is None
        self._pending: str | None = None  # the name given, or being claimed
        self._started = False

    @property
    def rules(self) -> Rules:
        return self._door.rules

    def __repr__(self) -> str:
        name = self.member.name if self.member is not None else self._pending
        return f"<Session {name!r} {self.state.name}>"

    # --- the moves -------------------------------------------------------------

    def _take(self, given: Input) -> None:
        if given not in TRANSITIONS[self.state]:
            raise LocalProtocolError(f"cannot take {given.value} while {self.state.value}")
        self._input = given

    def _to(self, state: State) -> None:
        allowed = TRANSITIONS[self.state][self._input]
        if state not in allowed:  # pragma: no cover - a bug here, not in the door
            raise LocalProtocolError(
                f"{self._input.value} cannot lead from {self.state.value} to {state.value}"
            )
        self.state = state

    # --- inputs ------------------------------------------------------------------

    def start(self) -> list[Output]:
        """The welcome: what to send the client as it connects."""
        if self._started or self.state is not State.AWAITING_NAME:
            raise LocalProtocolError(f"cannot start again while {self.state.value}")
        self._started = True
        if self.rules.password is not None:
            # Strangers learn nothing before the password, not even how many are here.
            return [Notice(welcome_text(None)), Notice(p.NAME_QUESTION)]
        notice = self._hub.notice
        return [
            Notice(welcome_text(self._hub.online())),
            *([Notice(notice)] if notice else []),
            Notice(p.NAME_QUESTION),
        ]

    def receive_line(self, text: str) -> list[Output]:
        """A line before registration: a name, the password, or ``/help`` or ``/quit``."""
        self._take(Input.LINE)
        cleaned = p.clean_text(text)
        command = p.parse_command(cleaned)
        if isinstance(command, c.Quit):
            self._to(State.CLOSED)
            return [Notice(BYE), Close("quit")]
        if isinstance(command, c.Help):
            self._to(self.state)
            return [*self._help(), Notice(self._question())]
        if self.state is State.AWAITING_PASSWORD:
            return self._check_password(text)
        name = cleaned.strip()
        if not name:
            self._to(State.AWAITING_NAME)
            return []
        if not self.authenticated:
            # Ask before saying anything about the name, so strangers learn
            # nothing (not even who is online).
            self._pending = name
            self._to(State.AWAITING_PASSWORD)
            return [Notice(p.PASSWORD_PROMPT)]
        return self._name(name)

    def line_too_long(self, limit: int) -> list[Output]:
        """The door discarded a line over ``limit`` bytes."""
        self._take(Input.TOO_LONG)
        self._to(self.state)
        error = Error(f"Line too long (limit {limit} bytes); it was discarded")
        if self.state is State.CHATTING:
            return [error]
        return [error, Notice(self._question())]

    def claim_result(self, claim: Claim) -> list[Output]:
        """What the cluster said to the :class:`ClaimName` asked for."""
        self._take(Input.CLAIM_RESULT)
        name = self._pending
        assert name is not None
        self._pending = None
        if self.state is State.RENAMING:
            self._to(State.CHATTING)
            if claim is not Claim.CLAIMED:
                return [Error(_claim_error(claim, name))]
            member = self._member()
            self._hub.rename(member, name)
            if member.key != p.name_key(name):
                return [Unclaim(name)]  # the hub refused it after all
            return []
        if claim is not Claim.CLAIMED:
            self._to(State.AWAITING_NAME)
            return [Error(_claim_error(claim, name)), Notice(p.NAME_QUESTION)]
        return self._register(name, claimed=True)

    def delay_elapsed(self) -> list[Output]:
        """The :class:`Wait` after a wrong password is over: the verdict."""
        self._take(Input.DELAY_ELAPSED)
        self._to(State.CLOSED)
        return [Error(p.WRONG_PASSWORD), Close("wrong password")]

    def deadline_passed(self) -> list[Output]:
        """The registration deadline passed before the member had a name."""
        self._take(Input.DEADLINE)
        self._to(State.CLOSED)
        timeout = self.rules.registration_timeout
        return [Error(f"No name given within {timeout:g} s, closing"), Close("no name given")]

    def command(self, command: c.Command) -> list[Output]:
        """A command from the chatting member."""
        self._take(Input.COMMAND)
        member = self._member()
        hub = self._hub
        if not isinstance(command, c.Say):
            hub.lines_in += 1  # say() counts the lines it is given
        match command:
            case c.Say(text, room):
                if (room := self._room(room)) is None:
                    return self._stay([Error(NO_ROOM)])
                hub.say(member, room, (text,))
            case c.Me(text, room):
                if (room := self._room(room)) is None:
                    return self._stay([Error(NO_ROOM)])
                hub.act(member, room, text)
            case c.Msg(to, text):
                hub.private(member, to, text)
            case c.Join(room):
                self._join(member, room)
            case c.Part(room, reason):
                if self.rules.one_room:
                    return self._stay([Error(ONE_ROOM)])
                hub.part(member, room, reason)
                self._follow(member)
            case c.Nick(name):
                return self._nick(member, p.clean_text(name))
            case c.Users(room, everyone):
                if (room := self._room(room)) is None:
                    return self._stay([Error(NO_ROOM)])
                hub.users(member, room, everyone=everyone)
            case c.Rooms():
                hub.room_list(member)
            case c.Help():
                return self._stay(self._help())
            case c.History(count, room):
                if (room := self._room(room)) is None:
                    return self._stay([Error(NO_ROOM)])
                if room not in member.rooms:  # a room's history is for its members
                    return self._stay([Error(f"You are not in {room}")])
                count = min(count, self.rules.history_limit)
                if self.rules.store_history:
                    self._to(State.FETCHING)
                    return [FetchHistory(room, count)]
                hub.replay(member, room, hub.recent(room, count))
            case c.Quit(reason):
                reason = reason or "quit"
                hub.leave(member, reason, farewell=BYE)
                self._to(State.CLOSED)
                return [Close(reason)]
            case c.Invalid(message):
                return self._stay([Error(message)])
        return self._stay([])

    def fetched(self, room: str, events: Sequence[RoomEvent]) -> list[Output]:
        """The store's answer to the :class:`FetchHistory` asked for."""
        self._take(Input.FETCHED)
        self._to(State.CHATTING)
        member = self._member()
        if room in member.rooms:
            self._hub.replay(member, room, events)
        return []

    def close(self, reason: str) -> list[Output]:
        """The connection is over (``reason``: why); the member, if any, leaves the chat.

        Idempotent: every way out of a connection may call it.
        """
        self._take(Input.CLOSE)
        member = self.member
        if member is not None and self.state is not State.CLOSED:
            self._hub.leave(member, reason)
        self._to(State.CLOSED)
        return []

    # --- the rules -------------------------------------------------------------------

    def _question(self) -> str:
        return p.PASSWORD_PROMPT if self.state is State.AWAITING_PASSWORD else p.NAME_QUESTION

    def _help(self) -> list[Output]:
        return [Notice(line) for line in p.HELP]

    def _stay(self, outputs: list[Output]) -> list[Output]:
        self._to(State.CHATTING)
        return outputs

    def _member(self) -> M:
        member = self.member
        assert member is not None
        return member

    def _check_password(self, given: str) -> list[Output]:
        password = self.rules.password
        assert password is not None
        if not password_matches(given, password):
            self._to(State.REFUSING)
            # The verdict waits, so guessing fast on one connection gains nothing.
            return [Wait(self._door.delays.fail(self.address, self._door.clock()))]
        self.authenticated = True
        self._door.delays.succeed(self.address)
        name = self._pending
        assert name is not None
        self._pending = None
        notice = self._hub.notice
        # What the welcome held back from strangers.
        return [*([Notice(notice)] if notice else []), *self._name(name)]

    def _name(self, name: str) -> list[Output]:
        """A name given (and the password, if asked): claim it, or register it at once."""
        if not self.rules.claim_names:
            return self._register(name, claimed=False)
        error = self._hub.name_unavailable(name)
        if error is not None:
            self._to(State.AWAITING_NAME)
            return [Error(error), Notice(p.NAME_QUESTION)]
        self._pending = name
        self._to(State.CLAIMING)
        return [ClaimName(name)]

    def _register(self, name: str, *, claimed: bool) -> list[Output]:
        result = self._hub.register(name, self._outbox, self._disconnect, self._door.dialect)
        if isinstance(result, str):
            self._to(State.AWAITING_NAME)
            return [*([Unclaim(name)] if claimed else []), Error(result), Notice(p.NAME_QUESTION)]
        self.member = result
        self._to(State.CHATTING)
        for room in self.rules.arrival_rooms:
            self._hub.join(result, room)
        self._follow(result)
        return []

    def _room(self, room: str | None) -> str | None:
        return room if room is not None else self.room

    def _follow(self, member: M) -> None:
        """The current room is the last one the member is in (the one, on a one-room door)."""
        self.room = next(reversed(tuple(member.rooms)), None)

    def _join(self, member: M, room: str) -> None:
        current = self.room
        if self.rules.one_room and current is not None and current != room:
            # A one-room member moves: the old room hears why it left.
            self._hub.part(member, current, f"joined {room}")
        self._hub.join(member, room)
        self._follow(member)

    def _nick(self, member: M, name: str) -> list[Output]:
        if not self.rules.claim_names:
            self._hub.rename(member, name)
            return self._stay([])
        error = self._hub.name_unavailable(name, member)
        if error is not None:
            return self._stay([Error(error)])
        if p.name_key(name) == member.key:  # a change of case: the name is ours already
            self._hub.rename(member, name)
            return self._stay([])
        self._pending = name
        self._to(State.RENAMING)
        return [ClaimName(name)]


def _claim_error(claim: Claim, name: str) -> str:
    return TAKEN.format(name) if claim is Claim.TAKEN else LINK_DOWN
