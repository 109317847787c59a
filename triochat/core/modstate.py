"""Moderation and accounts as changes: what the ``--db`` file keeps and a cluster shares.

Every change to who operates a room, its topic, a ban, a mute or an account
is one small value (:data:`Change`), written down as a JSON array
(:func:`encode`, :func:`decode`), e.g. ``["ban","#den","bob",1764600000.0,"ann","spam"]``.
The ``--db`` file keeps the state they make (``server/modstore.py``), and in a
cluster they cross the channel and sit in a Redis hash
(``backplane/redis/shared.py``). Times are wall-clock instants (Unix, UTC),
``null`` for "until lifted", so nodes and restarts agree on them; the
in-memory :class:`~triochat.core.moderation.Moderation` keeps its own clock's
times, converted here at the edge.

:class:`SharedModeration` is a :class:`Moderation` that tells its sinks of
every change made on this node, and takes the changes made elsewhere
(:meth:`SharedModeration.apply`) without telling them back as its own.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .moderation import Ban, Moderation, Topic


@dataclass(frozen=True, slots=True)
class OpSet:
    """``account`` operates ``room`` (``on``), or no longer does."""

    room: str
    account: str
    on: bool


@dataclass(frozen=True, slots=True)
class TopicChange:
    room: str
    text: str
    by: str
    time: float


@dataclass(frozen=True, slots=True)
class BanSet:
    """``target`` (a name key or an address) is out of ``room`` until ``until`` (wall)."""

    room: str
    target: str
    until: float
    by: str
    reason: str
    guest: str = ""
    """On an address ban made with a guest's name ban: that name's key."""


@dataclass(frozen=True, slots=True)
class BanLifted:
    room: str
    target: str


@dataclass(frozen=True, slots=True)
class MuteSet:
    room: str
    key: str
    until: float


@dataclass(frozen=True, slots=True)
class MuteLifted:
    room: str
    key: str


@dataclass(frozen=True, slots=True)
class Kicked:
    """``key`` is to leave ``room``, sent away by ``by``: kept nowhere, told to its node."""

    room: str
    key: str
    by: str
    reason: str


@dataclass(frozen=True, slots=True)
class AccountSet:
    """The account ``key`` as it is now; ``hash`` is Argon2's, never a password."""

    key: str
    name: str
    hash: str
    admin: bool
    created: float


@dataclass(frozen=True, slots=True)
class AccountGone:
    key: str


State = OpSet | TopicChange | BanSet | MuteSet | AccountSet
"""The changes that set something (a lift or a kick sets nothing)."""
Change = State | BanLifted | MuteLifted | Kicked | AccountGone

_KINDS: Final[dict[str, tuple[type[Change], tuple[type[Any], ...]]]] = {
    "op": (OpSet, (str, str, bool)),
    "topic": (TopicChange, (str, str, str, float)),
    "ban": (BanSet, (str, str, float, str, str, str)),
    "unban": (BanLifted, (str, str)),
    "mute": (MuteSet, (str, str, float)),
    "unmute": (MuteLifted, (str, str)),
    "kick": (Kicked, (str, str, str, str)),
    "account": (AccountSet, (str, str, str, bool, float)),
    "unaccount": (AccountGone, (str,)),
}
_NAMES: Final = {cls: kind for kind, (cls, _) in _KINDS.items()}


class ChangeError(ValueError):
    """A record that is not a change this version knows."""


def encode(change: Change) -> str:
    """The record of ``change``: its kind, then its fields; an endless time is ``null``."""
    values: list[object] = [_NAMES[type(change)]]
    for value in _fields(change):
        values.append(None if value == math.inf else value)
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def decode(record: str | bytes) -> Change:
    """The change a record holds; :class:`ChangeError` if it holds none."""
    try:
        values = json.loads(record)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ChangeError(f"not JSON: {exc}") from None
    if not isinstance(values, list) or not values or not isinstance(values[0], str):
        raise ChangeError("not a change record")
    kind, *args = values
    known = _KINDS.get(kind)
    if known is None:
        raise ChangeError(f"unknown change {kind!r}")
    cls, types = known
    if len(args) != len(types):
        raise ChangeError(f"{kind} has {len(types)} fields, not {len(args)}")
    checked: list[Any] = []
    for value, wanted in zip(args, types, strict=True):
        if wanted is float and value is None:
            value = math.inf
        elif wanted is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, wanted) or (isinstance(value, bool) and wanted is not bool):
            raise ChangeError(f"{kind}: {value!r:.40} is not {wanted.__name__}")
        if wanted is float and math.isnan(value):  # pragma: no cover - JSON has no NaN
            raise ChangeError(f"{kind}: NaN")
        checked.append(value)
    return cls(*checked)


def _fields(change: Change) -> tuple[object, ...]:
    return tuple(getattr(change, name) for name in change.__slots__)


def field(change: Change) -> str | None:
    """What ``change`` is about, as one string (a Redis hash field): the same for a
    setting and its lift; ``None`` for a kick (kept nowhere)."""
    match change:
        case OpSet(room, account, _):
            return f"op\t{room}\t{account}"
        case TopicChange(room):
            return f"topic\t{room}"
        case BanSet(room, target) | BanLifted(room, target):
            return f"ban\t{room}\t{target}"
        case MuteSet(room, key) | MuteLifted(room, key):
            return f"mute\t{room}\t{key}"
        case AccountSet(key) | AccountGone(key):
            return key
        case _:
            return None


def sets(change: Change) -> bool:
    """Whether ``change`` sets its field (a lift, a deop or a kick does not)."""
    return isinstance(change, State) and not (isinstance(change, OpSet) and not change.on)


def expired(change: Change, now: float) -> bool:
    """Whether ``change`` (a ban or a mute) ran out before ``now`` (wall time)."""
    return isinstance(change, BanSet | MuteSet) and change.until <= now


class StateSink(Protocol):
    """Who hears of every change: the ``--db`` file's writer, the cluster's publisher."""

    def changed(self, change: Change, here: bool, /) -> None:
        """``change`` happened (``here``: made on this node, not taken from the cluster)."""
        ...

    def replaced(self, state: Sequence[State], /) -> None:
        """The whole moderation state is now ``state`` (the cluster's copy was taken)."""
        ...


class SharedAccounts(Protocol):
    """The accounts as a cluster shares them (``server/accounts.py``'s store is one)."""

    def apply(self, change: AccountSet | AccountGone, /) -> None:
        """An account changed (on any node, this one's own echo included)."""
        ...

    def entries(self) -> list[AccountSet]:
        """Every account known here."""
        ...

    def replace(self, entries: Sequence[AccountSet], /) -> None:
        """The cluster's accounts are exactly ``entries``."""
        ...


class Publishing:
    """The sink that hands the changes made on this node to the cluster (``publish``)."""

    def __init__(self, publish: Callable[[Change], None]) -> None:
        self._publish = publish

    def changed(self, change: Change, here: bool, /) -> None:
        if here:
            self._publish(change)

    def replaced(self, state: Sequence[State], /) -> None:
        pass


class SharedModeration(Moderation):
    """A :class:`Moderation` whose changes reach its sinks, and that takes others'.

    Args:
      clock: the time the in-memory state uses (trio's, in a server).
      wall: wall-clock time, for the records (bans and mutes end at an instant).
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock)
        self.wall = wall
        self.sinks: list[StateSink] = []
        self._quiet = False

    # --- times ----------------------------------------------------------------------

    def to_wall(self, until: float) -> float:
        return until if until == math.inf else self.wall() + (until - self.clock())

    def from_wall(self, until: float) -> float:
        return until if until == math.inf else self.clock() + (until - self.wall())

    # --- what this node does: told to the sinks ---------------------------------------

    def _tell(self, change: Change) -> None:
        if not self._quiet:
            for sink in self.sinks:
                sink.changed(change, True)

    def op(self, room: str, account: str) -> None:
        super().op(room, account)
        self._tell(OpSet(room, account, True))

    def deop(self, room: str, account: str) -> bool:
        done = super().deop(room, account)
        if done:
            self._tell(OpSet(room, account, False))
        return done

    def set_topic(self, room: str, topic: Topic) -> None:
        super().set_topic(room, topic)
        self._tell(TopicChange(room, topic.text, topic.by, topic.time))

    def ban(self, room: str, ban: Ban) -> None:
        super().ban(room, ban)
        until = self.to_wall(ban.until)
        self._tell(BanSet(room, ban.target, until, ban.by, ban.reason, ban.guest))

    def unban(self, room: str, target: str) -> bool:
        done = super().unban(room, target)
        if done:
            self._tell(BanLifted(room, target))
        return done

    def mute(self, room: str, key: str, until: float) -> None:
        super().mute(room, key, until)
        self._tell(MuteSet(room, key, self.to_wall(until)))

    def unmute(self, room: str, key: str) -> bool:
        done = super().unmute(room, key)
        if done:
            self._tell(MuteLifted(room, key))
        return done

    def muted(self, room: str, key: str) -> float | None:
        # A mute that runs out goes on every node by itself: its end is not a change
        # (told, it could lift a newer mute that crossed it on the channel).
        quiet, self._quiet = self._quiet, True
        try:
            return super().muted(room, key)
        finally:
            self._quiet = quiet

    # --- what the cluster (or the file) says ------------------------------------------

    def apply(self, change: Change) -> None:
        """Take ``change``, made elsewhere: the sinks hear it as not made here."""
        self._quiet = True
        try:
            self._apply(change)
        finally:
            self._quiet = False
        for sink in self.sinks:
            sink.changed(change, False)

    def _apply(self, change: Change) -> None:
        match change:
            case OpSet(room, account, True):
                self.op(room, account)
            case OpSet(room, account, False):
                self.deop(room, account)
            case TopicChange(room, text, by, at):
                self.set_topic(room, Topic(text, by, at))
            case BanSet(room, target, until, by, reason, guest):
                self.ban(room, Ban(target, self.from_wall(until), by, reason, guest))
            case BanLifted(room, target):
                self.unban(room, target)
            case MuteSet(room, key, until):
                self.mute(room, key, self.from_wall(until))
            case MuteLifted(room, key):
                self.unmute(room, key)
            case _:
                pass  # A kick or an account: not moderation state.

    def load(self, state: Iterable[State]) -> None:
        """Start from ``state`` (the ``--db`` file's), telling nobody."""
        now = self.wall()
        self._quiet = True
        try:
            for change in state:
                if not expired(change, now):
                    self._apply(change)
        finally:
            self._quiet = False

    def replace(self, state: Sequence[State]) -> None:
        """The cluster's state is the truth: forget ours, take ``state``, and tell the sinks
        (the ``--db`` file becomes a copy of it)."""
        self.ops.clear()
        self.topics.clear()
        self._bans.clear()
        self.mutes.clear()
        self.load(state)
        for sink in self.sinks:
            sink.replaced(state)

    def state(self) -> list[State]:
        """Everything in force now, as changes (to seed a cluster that has none)."""
        out: list[State] = []
        for room, accounts in self.ops.items():
            out.extend(OpSet(room, account, True) for account in sorted(accounts))
        for room, topic in self.topics.items():
            out.append(TopicChange(room, topic.text, topic.by, topic.time))
        for room in list(self._bans):
            for ban in self.bans(room):
                until = self.to_wall(ban.until)
                out.append(BanSet(room, ban.target, until, ban.by, ban.reason, ban.guest))
        now = self.clock()
        for room, held in self.mutes.items():
            for key, until in held.items():
                if until > now:
                    out.append(MuteSet(room, key, self.to_wall(until)))
        return out
