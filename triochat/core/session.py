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
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

from ..backplane.base import Claim
from ..protocol import line as p
from . import commands as c
from ._auth import FailureDelays, password_matches
from .accounts import (
    MAX_PASSWORD,
    NEED_DB,
    AccountBook,
    Outcome,
    Request,
    account_key,
    password_error,
)
from .events import Dialect, Error, Event, Notice, RoomEvent
from .moderation import SERVER, Ban, Moderation

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
    # Accounts (``--db``): a registered name's password, and account commands.
    AWAITING_ACCOUNT = "awaiting the name's password"
    VERIFYING = "checking the name's password"
    """The name's password is being checked (:class:`AccountCall`)."""
    ACCOUNT_REFUSING = "refusing a wrong password for the name"
    """The verdict waits out its delay (:class:`Wait`); then the name is asked again."""
    ACCOUNTING = "carrying out an account command"
    """``/register``, ``/identify``, ``/password`` or ``/unregister`` (:class:`AccountCall`)."""
    PENALIZED = "waiting out a wrong password"
    """A chatting member gave a wrong account password: nothing is read for a while."""
    # Resume (protocol v2, :mod:`.resume`).
    RESUMING = "taking a held member over"
    """The cluster is asked for the member a resume token stands for (:class:`TakeOver`)."""
    RESUME_REFUSING = "refusing a bad resume token"
    """The verdict on a bad token waits out its delay (:class:`Wait`), as a wrong password's."""


class Input(enum.Enum):
    START = "the connection's start"
    LINE = "a line before registration"
    TOO_LONG = "a line too long"
    COMMAND = "a command"
    CLAIM_RESULT = "a claim's outcome"
    DELAY_ELAPSED = "the password delay's end"
    DEADLINE = "the registration deadline"
    FETCHED = "fetched history"
    CLOSE = "the connection's end"
    ACCOUNT_RESULT = "an account request's outcome"
    TAKEN_OVER = "a takeover's outcome"


_REGISTERING: Final = frozenset(
    {
        State.AWAITING_NAME,
        State.AWAITING_PASSWORD,
        State.AWAITING_ACCOUNT,
        State.CLAIMING,
        State.CHATTING,
        State.CLOSED,
    }
)

TRANSITIONS: Final[Mapping[State, Mapping[Input, frozenset[State]]]] = {
    State.AWAITING_NAME: {
        # A server-wide ban of the address refuses the connection at once.
        Input.START: frozenset({State.AWAITING_NAME, State.CLOSED}),
        # A v2 ``/resume`` instead of a name: a local token, the cluster's, or a bad one.
        Input.LINE: _REGISTERING | {State.RESUMING, State.RESUME_REFUSING},
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
        Input.COMMAND: frozenset(
            {State.CHATTING, State.RENAMING, State.FETCHING, State.ACCOUNTING, State.CLOSED}
        ),
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
        Input.TAKEN_OVER: frozenset({State.CLOSED}),  # the connection ended meanwhile
    },
    State.RESUMING: {
        # CLOSED: the cluster could not be asked; the client tries again later.
        Input.TAKEN_OVER: frozenset({State.CHATTING, State.RESUME_REFUSING, State.CLOSED}),
        Input.DEADLINE: frozenset({State.CLOSED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.RESUME_REFUSING: {
        Input.DELAY_ELAPSED: frozenset({State.AWAITING_NAME, State.CLOSED}),
        Input.DEADLINE: frozenset({State.CLOSED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.AWAITING_ACCOUNT: {
        # An empty answer gives the name up (no account has an empty password).
        Input.LINE: frozenset(
            {State.AWAITING_ACCOUNT, State.VERIFYING, State.AWAITING_NAME, State.CLOSED}
        ),
        Input.TOO_LONG: frozenset({State.AWAITING_ACCOUNT}),
        Input.DEADLINE: frozenset({State.CLOSED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.VERIFYING: {
        Input.ACCOUNT_RESULT: _REGISTERING | {State.ACCOUNT_REFUSING},
        Input.DEADLINE: frozenset({State.CLOSED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.ACCOUNT_REFUSING: {
        Input.DELAY_ELAPSED: frozenset({State.AWAITING_NAME}),
        Input.DEADLINE: frozenset({State.CLOSED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.ACCOUNTING: {
        Input.ACCOUNT_RESULT: frozenset({State.CHATTING, State.PENALIZED}),
        Input.CLOSE: frozenset({State.CLOSED}),
    },
    State.PENALIZED: {
        Input.DELAY_ELAPSED: frozenset({State.CHATTING}),
        Input.CLOSE: frozenset({State.CLOSED}),
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
    what: str = "password"
    """What was wrong, for the log ("password", "resume token")."""


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Ask the cluster for the member the resume token ``token`` stands for, with the tails
    of the rooms at ``positions`` (room, last number shown); then
    ``V2Session.taken_over``. Its repr shows no token."""

    token: str = field(repr=False)
    positions: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class FetchHistory:
    """Read up to ``count`` of ``room``'s events from the store; then :meth:`Session.fetched`."""

    room: str
    count: int


@dataclass(frozen=True, slots=True)
class Close:
    """Stop reading; send what is queued and hang up. ``reason`` is for the log."""

    reason: str


@dataclass(frozen=True, slots=True)
class AccountCall:
    """Carry out ``request`` on the account book (hashing in a thread); then
    :meth:`Session.account_result`. Its repr shows no password."""

    request: Request


Effect = ClaimName | Unclaim | Wait | FetchHistory | Close | AccountCall | TakeOver
EFFECTS: Final = (ClaimName, Unclaim, Wait, FetchHistory, Close, AccountCall, TakeOver)
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

    address: str
    account: str | None


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

    # Moderation: the session decides who may; the hub carries it out.
    def member(self, name: str, /) -> M | None: ...

    def local_members(self) -> Sequence[M]: ...

    def set_topic(self, member: M, room: str, text: str, /) -> None: ...

    def set_role(self, member: M, room: str, name: str, op: bool, /) -> None: ...

    def operator_back(self, member: M, room: str, /) -> None: ...

    def kick(self, member: M, target: M, room: str, reason: str, /) -> None: ...

    def kick_elsewhere(self, member: M, name: str, room: str, reason: str, /) -> bool: ...

    def remove_from(self, target: M, room: str, reason: str, /) -> None: ...

    def tell(self, member: M, /, *events: Event) -> None: ...

    def wall(self, member: M, text: str, /) -> None: ...

    def expel(self, member: M, reason: str, /) -> None: ...

    def ignore(self, member: M, name: str, ignored: bool, /) -> str | None: ...

    def set_away(self, member: M, text: str | None, /) -> None: ...

    def set_account(self, member: M, account: str | None, /) -> None: ...

    def hosts(self, room: str, /) -> bool: ...


# --- The texts ------------------------------------------------------------------

_HINT: Final = "Commands start with /, try /help."
BYE: Final = "Bye!"
TAKEN: Final = "Name {} is taken, choose another"
LINK_DOWN: Final = "Cannot check that name with the rest of the chat right now; try again"
NO_ROOM: Final = "You are in no room; /join #room first"
ONE_ROOM: Final = "You are always in one room here: /join #room moves you"
REGISTERED: Final = "Name {} is registered: connect with it and give its password"
NOT_IDENTIFIED: Final = "You are not identified: /identify PASSWORD first"


def own_reason(reason: str) -> str:
    """A member's own reason for leaving, never passing for a kick or a ban by an operator
    (which every door shows as such, IRC as a KICK)."""
    if reason.lower().startswith(("kicked by ", "banned by ")):
        return f"says: {reason}"
    return reason


def account_prompt(name: str) -> str:
    """Asked for a registered name's password at registration."""
    return p.ACCOUNT_PROMPT.format(name)


def banned_text(room: str, ban: Ban, moderation: Moderation) -> str:
    reason = f": {ban.reason}" if ban.reason else ""
    return f"You are banned from {room} {moderation.remaining(ban.until)}{reason}"


def _is_address(target: str) -> bool:
    """Whether a ban's target is an address (IPv4 or IPv6), not a name."""
    return all(ch in "0123456789abcdefABCDEF.:" for ch in target) and any(
        ch in ".:" for ch in target
    )


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
    motd: tuple[str, ...] = ()
    """The message of the day (``--motd FILE``), shown at registration and by ``/motd``."""
    max_password: int = MAX_PASSWORD
    """The longest account password, in characters (``--max-password``)."""


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
    accounts: AccountBook | None = None
    """The registered names (``--db``); ``None``: no accounts."""
    moderation: Moderation | None = None
    """The hub's operators, topics, bans and mutes; ``None``: no moderation on this door."""


class Session(Generic[M]):
    """One connection's member: its registration, then its commands.

    Args:
      door: what the door's sessions share.
      outbox, disconnect: the connection's, given to the hub when the member registers.
      address: the client's address, the key for the password failure delays.
    """

    __slots__ = (
        "_account",
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
        self._account: str | None = None

    @property
    def rules(self) -> Rules:
        return self._door.rules

    def _member_dialect(self) -> Dialect:
        """The dialect its member is registered with: its door's (an IRC client's is its own)."""
        return self._door.dialect

    @property
    def account(self) -> str | None:
        """The key of the account the member proved is theirs, if any (its member knows too:
        the hub marks operators by account)."""
        return self._account

    @account.setter
    def account(self, key: str | None) -> None:
        self._account = key
        if self.member is not None:
            self._hub.set_account(self.member, key)

    @property
    def moderation(self) -> Moderation | None:
        """The door's operators, topics, bans and mutes (``None``: no moderation)."""
        return self._door.moderation

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
        self._take(Input.START)
        refused = self._refused_at_the_door(self.address)
        if refused:
            return refused
        self._to(State.AWAITING_NAME)
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
        if self.state is State.AWAITING_ACCOUNT:
            return self._verify_account(text)
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
        if self.state is State.ACCOUNT_REFUSING:
            return self._account_refused()
        if self.state is State.PENALIZED:
            self._to(State.CHATTING)
            return [Error(p.WRONG_PASSWORD)]
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
                hub.part(member, room, own_reason(reason))
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
                reason = own_reason(reason) or "quit"
                hub.leave(member, reason, farewell=BYE)
                self._to(State.CLOSED)
                return [Close(reason)]
            case c.Invalid(message):
                return self._stay([Error(message)])
            case c.Register() | c.Identify() | c.ChangePassword() | c.Unregister():
                return self._account_command(member, command)
            case (
                c.Topic()
                | c.Kick()
                | c.Ban()
                | c.Unban()
                | c.Bans()
                | c.Mute()
                | c.Unmute()
                | c.Op()
                | c.Deop()
            ):
                return self._stay(self._moderate(member, command))
            case c.Wall() | c.Motd() | c.Away() | c.Ignore() | c.Unignore():
                return self._stay(self._user_command(member, command))
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
        if self.state is State.AWAITING_ACCOUNT:
            assert self._pending is not None
            return account_prompt(self._pending)
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
        """A name given (and the password, if asked): a registered one's password is asked."""
        book = self._door.accounts
        if book is not None and account_key(name) != self.account and book.registered(name):
            self._pending = name
            self._to(State.AWAITING_ACCOUNT)
            return [Notice(account_prompt(name))]
        return self._owned_name(name)

    def _refused_at_the_door(self, *targets: str) -> list[Output]:
        """Why a server-wide ban keeps any of ``targets`` (an address, a name's key) out,
        and the close; nothing if none does."""
        moderation = self._door.moderation
        targets = tuple(target for target in targets if target)
        ban = moderation.banned(SERVER, *targets) if moderation is not None else None
        if ban is None:
            return []
        assert moderation is not None
        self._to(State.CLOSED)
        reason = f": {ban.reason}" if ban.reason else ""
        text = f"You are banned from this server {moderation.remaining(ban.until)}{reason}"
        return [Error(text), Close("banned")]

    def _owned_name(self, name: str) -> list[Output]:
        """A name that is free or proved the member's: claim it, or register it at once."""
        refused = self._refused_at_the_door(p.name_key(name), self.address)
        if refused:
            return refused
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
        result = self._hub.register(name, self._outbox, self._disconnect, self._member_dialect())
        if isinstance(result, str):
            self._to(State.AWAITING_NAME)
            return [*([Unclaim(name)] if claimed else []), Error(result), Notice(p.NAME_QUESTION)]
        self.member = result
        result.address = self.address
        result.account = self._account
        self._to(State.CHATTING)
        self._registered(result)
        motd = self._motd()
        if motd:
            self._hub.tell(result, *motd)
        for room in self.rules.arrival_rooms:
            self._enter(result, room)
        self._follow(result)
        return self._arrived(result)

    def _registered(self, member: M) -> None:
        """What a protocol tells a member first, before its message of the day and rooms."""

    def _arrived(self, member: M) -> list[Output]:
        """What a protocol answers once the member is in its arrival rooms."""
        return []

    def _room(self, room: str | None) -> str | None:
        return room if room is not None else self.room

    def _follow(self, member: M) -> None:
        """The current room is the last one the member is in (the one, on a one-room door)."""
        self.room = next(reversed(tuple(member.rooms)), None)

    def _join(self, member: M, room: str) -> None:
        ban = self._banned(member, room)
        if ban is not None:
            assert self._door.moderation is not None
            self._hub.tell(member, Error(banned_text(room, ban, self._door.moderation)))
            return
        current = self.room
        if self.rules.one_room and current is not None and current != room:
            # A one-room member moves: the old room hears why it left.
            self._hub.part(member, current, f"joined {room}")
        self._enter(member, room)
        self._follow(member)

    def _nick(self, member: M, name: str) -> list[Output]:
        book = self._door.accounts
        key = p.name_key(name)
        if book is not None and key not in (member.key, self.account) and book.registered(name):
            return self._stay([Error(REGISTERED.format(name))])
        banned = self._banned_name(member, key)
        if banned is not None:
            return self._stay([Error(f"You cannot take the name {name}: banned from {banned}")])
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

    # --- accounts (``--db``) ------------------------------------------------------

    def logged_in(self, name: str) -> None:
        """The door checked ``name``'s password itself (IRC's SASL, before a nick is given):
        the account is the member's, and registering with that name asks for it no more."""
        self.account = account_key(name)
        self._door.delays.succeed(self.address)

    def account_result(self, outcome: Outcome) -> list[Output]:
        """What the account book said to the :class:`AccountCall` asked for."""
        self._take(Input.ACCOUNT_RESULT)
        request = outcome.request
        wrong = not outcome.ok and outcome.error == p.WRONG_PASSWORD
        if wrong:
            # The same growing delay per address as the server password's.
            delay = self._door.delays.fail(self.address, self._door.clock())
            self._to(State.ACCOUNT_REFUSING if self.state is State.VERIFYING else State.PENALIZED)
            return [Wait(delay)]
        if self.state is State.VERIFYING:
            name = self._pending
            assert name is not None
            self._pending = None
            if not outcome.ok:
                self._to(State.AWAITING_NAME)
                return [Error(outcome.error), Notice(p.NAME_QUESTION)]
            self._door.delays.succeed(self.address)
            self.account = account_key(name)
            return self._owned_name(name)
        self._to(State.CHATTING)
        if not outcome.ok:
            return [Error(outcome.error)]
        match request.kind:
            case "register":
                self.account = account_key(request.name)
                return [Notice(f"{request.name} is registered to you now")]
            case "verify":
                self._door.delays.succeed(self.address)
                self.account = account_key(request.name)
                return [Notice(f"You are identified as {request.name}")]
            case "change":
                return [Notice("Your password is changed")]
            case _:
                self.account = None
                return [Notice(f"{request.name} is not registered any more")]

    def _verify_account(self, given: str) -> list[Output]:
        name = self._pending
        assert name is not None
        if not given:
            self._pending = None
            self._to(State.AWAITING_NAME)
            return [Notice(p.NAME_QUESTION)]
        if len(given) > self.rules.max_password:
            given = given[: self.rules.max_password + 1]  # wrong all the same, cheaper to hash
        self._to(State.VERIFYING)
        return [AccountCall(Request("verify", name, given))]

    def _account_refused(self) -> list[Output]:
        name = self._pending
        self._pending = None
        self._to(State.AWAITING_NAME)
        return [Error(p.WRONG_ACCOUNT_PASSWORD.format(name)), Notice(p.NAME_QUESTION)]

    def _account_command(self, member: M, command: c.AccountCommand) -> list[Output]:
        book = self._door.accounts
        if book is None:
            return self._stay([Error(NEED_DB)])
        limit = self.rules.max_password
        name = member.name
        request: Request
        match command:
            case c.Register(password):
                if book.registered(name):
                    return self._stay([Error(f"{name} is registered already")])
                if (error := password_error(password, limit)) is not None:
                    return self._stay([Error(error)])
                request = Request("register", name, password)
            case c.Identify(password):
                if not book.registered(name):
                    return self._stay([Error(f"{name} is not registered: /register PASSWORD")])
                if self.account == member.key:
                    return self._stay([Notice(f"You are identified as {name} already")])
                request = Request("verify", name, password[: limit + 1])
            case c.ChangePassword(old, new):
                if self.account != member.key:
                    return self._stay([Error(NOT_IDENTIFIED)])
                if (error := password_error(new, limit)) is not None:
                    return self._stay([Error(error)])
                request = Request("change", name, old[: limit + 1], new)
            case c.Unregister(password):
                if self.account != member.key:
                    return self._stay([Error(NOT_IDENTIFIED)])
                request = Request("unregister", name, password[: limit + 1])
        self._to(State.ACCOUNTING)
        return [AccountCall(request)]

    # --- moderation -----------------------------------------------------------------

    def _is_admin(self) -> bool:
        book = self._door.accounts
        return book is not None and self.account is not None and book.admin(self.account)

    def _may_moderate(self, moderation: Moderation, room: str) -> bool:
        return moderation.is_op(room, self.account) or self._is_admin()

    def _banned(self, member: M, room: str) -> Ban | None:
        moderation = self._door.moderation
        if moderation is None:
            return None
        targets = (member.key, self.account or member.key, self.address or member.key)
        return moderation.banned(room, *targets)

    def _banned_name(self, member: M, key: str) -> str | None:
        """Where a ban on the name ``key`` would keep ``member`` out: this server, or one
        of its rooms (so ``/nick`` into it is refused, rather than a ban dodged)."""
        moderation = self._door.moderation
        if moderation is None or key == member.key:
            return None
        if moderation.banned(SERVER, key) is not None:
            return "this server"
        return next((room for room in member.rooms if moderation.banned(room, key)), None)

    def _enter(self, member: M, room: str) -> None:
        """Join ``room``; the first identified member of a room nobody holds is its operator."""
        moderation = self._door.moderation
        account = self.account
        # The arrival rooms are nobody's creation: only server admins moderate them.
        if moderation is None or account is None or room in self.rules.arrival_rooms:
            self._hub.join(member, room)
            return
        first = room not in moderation.ops and not self._hub.hosts(room)
        if first:
            # Before the join, so that the creator's own user list marks it.
            moderation.op(room, account)
        elsewhere = room not in member.rooms
        self._hub.join(member, room)
        if not first:
            if elsewhere and room in member.rooms and moderation.is_op(room, account):
                self._hub.operator_back(member, room)
            return
        if room not in member.rooms:  # the join was refused: nothing was created
            moderation.deop(room, account)
            return
        moderation.record("op", "the server", member.name, room, "first to create it")
        self._hub.tell(member, Notice(f"You are an operator of {room}"))

    def _moderate(self, member: M, command: c.ModerationCommand) -> list[Output]:
        moderation = self._door.moderation
        if moderation is None:
            return [Error("There is no moderation on this server")]
        room = self._room(command.room)
        if room is None:
            return [Error(NO_ROOM)]
        if isinstance(command, c.Topic) and command.text is None:
            topic = moderation.topics.get(room)
            if topic is None:
                return [Notice(f"No topic is set in {room}")]
            return [Notice(f"Topic of {room}: {topic.text} (set by {topic.by})")]
        if room == SERVER and not self._is_admin():
            return [Error("Only server admins may ban server-wide")]
        if not self._may_moderate(moderation, room):
            return [Error(f"You are not an operator of {room}")]
        by = member.name
        match command:
            case c.Topic(text):
                assert text is not None
                self._hub.set_topic(member, room, text)
                moderation.record("topic", by, room, room, text)
                return []
            case c.Kick(name, reason):
                target = self._hub.member(name)
                if target is None or room not in target.rooms:
                    # On another node of the cluster, its own node sends it out.
                    if not self._hub.kick_elsewhere(member, name, room, reason):
                        return [Error(f"{name} is not in {room}")]
                    moderation.record("kick", by, name, room, reason)
                    return []
                self._hub.kick(member, target, room, reason)
                moderation.record("kick", by, target.name, room, reason)
                return []
            case c.Ban(target_text, seconds, reason):
                return self._ban(member, room, target_text, seconds, reason)
            case c.Unban(target_text):
                target_key = self._target_key(target_text)
                where = "this server" if room == SERVER else room
                # A guest's name ban took its address along: lifting the name lifts both.
                for ban in [b for b in moderation.bans(room) if b.guest == target_key]:
                    moderation.unban(room, ban.target)
                if not moderation.unban(room, target_key):
                    return [Error(f"{target_text} is not banned from {where}")]
                moderation.record("unban", by, target_text, where)
                return [Notice(f"{target_text} may join {where} again")]
            case c.Bans():
                bans = list(moderation.bans(room))
                if not bans:
                    return [Notice(f"Nobody is banned from {room}")]
                listed: list[Output] = [Notice(f"Bans in {room}:")]
                return listed + [
                    Notice(
                        f"  {ban.target}"
                        + (f" (the guest {ban.guest}'s address)" if ban.guest else "")
                        + f" by {ban.by} {moderation.remaining(ban.until)}"
                        + (f": {ban.reason}" if ban.reason else "")
                    )
                    for ban in bans
                ]
            case c.Mute(name, seconds):
                key = p.name_key(name)
                if key == member.key:
                    return [Error("You cannot mute yourself")]
                until = math.inf if seconds is None else moderation.clock() + seconds
                moderation.mute(room, key, until)
                moderation.record("mute", by, name, room)
                return [Notice(f"{name} is muted in {room} {moderation.remaining(until)}")]
            case c.Unmute(name):
                if not moderation.unmute(room, p.name_key(name)):
                    return [Error(f"{name} is not muted in {room}")]
                moderation.record("unmute", by, name, room)
                return [Notice(f"{name} may speak in {room} again")]
            case c.Op(name):
                book = self._door.accounts
                if book is None or not book.registered(name):
                    return [Error(f"{name} is not registered: only accounts can be operators")]
                moderation.op(room, account_key(name))
                moderation.record("op", by, name, room)
                self._hub.set_role(member, room, name, True)
                return []
            case c.Deop(name):
                if not moderation.deop(room, account_key(name)):
                    return [Error(f"{name} is not an operator of {room}")]
                moderation.record("deop", by, name, room)
                self._hub.set_role(member, room, name, False)
                return []
        return []  # pragma: no cover - every command is matched above

    def _user_command(self, member: M, command: c.UserCommand) -> list[Output]:
        match command:
            case c.Wall(text):
                if not self._is_admin():
                    return [Error("Only server admins may /wall")]
                self._hub.wall(member, text)
                if self._door.moderation is not None:
                    self._door.moderation.record("wall", member.name, "everyone", "the server")
                return []
            case c.Motd():
                motd: list[Output] = [*self._motd()]
                return motd or [Notice("There is no message of the day")]
            case c.Away(text):
                self._hub.set_away(member, text)
                if text is None:
                    return [Notice("You are back")]
                return [Notice(f"You are away: {text}")]
            case c.Ignore(name) | c.Unignore(name):
                ignored = isinstance(command, c.Ignore)
                error = self._hub.ignore(member, name, ignored)
                if error is not None:
                    return [Error(error)]
                if ignored:
                    return [Notice(f"You ignore {name} now")]
                return [Notice(f"You do not ignore {name} any more")]
        return []  # pragma: no cover - every command is matched above

    def _motd(self) -> list[Notice]:
        return [Notice(line) for line in self.rules.motd]

    @staticmethod
    def _target_key(target: str) -> str:
        return target if _is_address(target) else p.name_key(target)

    def _ban(
        self, member: M, room: str, target: str, seconds: float | None, reason: str
    ) -> list[Output]:
        moderation = self._door.moderation
        assert moderation is not None
        key = self._target_key(target)
        if key in (member.key, self.account, self.address):
            return [Error("You cannot ban yourself")]
        until = math.inf if seconds is None else moderation.clock() + seconds
        moderation.ban(room, Ban(key, until, member.name, reason))
        keys, whom, spared = {key}, target, ""
        # A guest's name is anyone's for the taking: ban the address it came from too,
        # or a new connection (or /nick) under another name walks back in.
        guest = None if _is_address(target) else self._hub.member(target)
        if guest is not None and guest.account is None and guest.address:
            if guest.address == self.address:
                spared = f" (not {guest.name}'s address, which is yours too)"
            else:
                moderation.ban(room, Ban(guest.address, until, member.name, reason, key))
                keys.add(guest.address)
                whom = f"{target} and {guest.address}"
        moderation.record("ban", member.name, whom, room, reason)
        why = f"banned by {member.name}" + (f": {reason}" if reason else "")
        where = "this server" if room == SERVER else room
        for held in self._hub.local_members():
            if held is member or not keys.intersection((held.key, held.address)):
                continue
            if room == SERVER:
                self._hub.expel(held, why)
            elif room in held.rooms:
                self._hub.remove_from(held, room, why)
        return [Notice(f"{target} is banned from {where} {moderation.remaining(until)}{spared}")]


def _claim_error(claim: Claim, name: str) -> str:
    return TAKEN.format(name) if claim is Claim.TAKEN else LINK_DOWN
