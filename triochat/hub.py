"""The chat's state: who is here, which rooms exist, what was said lately.

The hub is plain synchronous state owned by the trio run: no method awaits,
so no other task can observe it half-updated. Each line is formatted and
encoded once and the same ``bytes`` object is handed to every recipient's
bounded outbox with ``send_nowait``. A recipient whose outbox is full is a
slow consumer: it is evicted, and nobody ever waits for it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, Protocol

import trio

from . import protocol as p

log: Final = logging.getLogger("triochat.hub")


class Outbox(Protocol):
    """Where a member's outgoing lines go: the send end of a bounded channel."""

    def send_nowait(self, value: bytes, /) -> None: ...

    def close(self) -> None: ...


class Member:
    """A registered user, as the hub sees it."""

    __slots__ = ("disconnect", "key", "name", "outbox", "room")

    def __init__(self, name: str, outbox: Outbox, disconnect: Callable[[], None]) -> None:
        self.name = name
        self.key = p.name_key(name)
        self.room: Room | None = None
        self.outbox = outbox
        self.disconnect = disconnect

    def __repr__(self) -> str:
        return f"<Member {self.name} in {self.room.name if self.room else None}>"


class Room:
    __slots__ = ("history", "members", "name")

    def __init__(self, name: str, history: int) -> None:
        self.name = name
        # A dict keeps join order, which makes fan-out order deterministic.
        self.members: dict[Member, None] = {}
        self.history: deque[bytes] = deque(maxlen=history)


class Hub:
    """Names, rooms, membership and history, and the rules that change them.

    Args:
      history: how many recent lines each room keeps for joiners.
      clock: wall-clock time source, for timestamps (tests inject a fixed one).
    """

    def __init__(self, *, history: int = 20, clock: Callable[[], float] = time.time) -> None:
        self.history = history
        self._clock = clock
        self._stamp = p.Timestamper()
        self._members: dict[str, Member] = {}
        self._rooms: dict[str, Room] = {}
        self._slow: list[Member] = []
        self._evicting = False
        self.lines_in = 0
        self.lines_out = 0
        self.slow_evictions = 0

    # --- queries ---------------------------------------------------------

    @property
    def members(self) -> int:
        return len(self._members)

    def rooms(self) -> dict[str, int]:
        """Each room's name and member count."""
        return {r.name: len(r.members) for r in self._rooms.values()}

    def welcome(self) -> list[bytes]:
        n = len(self._members)
        online = "1 user" if n == 1 else f"{n} users"
        return [
            p.format_info(
                f"Welcome to triochat! {online} online. Commands start with /, try /help."
            ).encode(),
            p.format_info(p.NAME_QUESTION).encode(),
        ]

    # --- registration ------------------------------------------------------

    def register(self, name: str, outbox: Outbox, disconnect: Callable[[], None]) -> Member | str:
        """Claim ``name`` and put the new member in the lobby.

        Returns the member, or the text of the error line if the name is
        invalid or taken. ``disconnect`` is called if the hub evicts the member.
        """
        error = self._name_unavailable(name)
        if error is not None:
            return error
        member = Member(name, outbox, disconnect)
        self._members[member.key] = member
        log.info("%s registered", name)
        self._enter(member, p.LOBBY)
        self._evict_slow()
        return member

    def _name_unavailable(self, name: str, current: Member | None = None) -> str | None:
        error = p.name_error(name)
        if error is not None:
            return error
        holder = self._members.get(p.name_key(name))
        if holder is not None and holder is not current:
            return f"Name {name} is taken, choose another"
        return None

    # --- commands ------------------------------------------------------------

    def handle(self, member: Member, command: p.Command) -> None:
        """Carry out one command from ``member`` (any but :class:`~protocol.Quit`)."""
        self.lines_in += 1
        match command:
            case p.Say(text):
                self._say(member, p.format_message, text)
            case p.Me(text):
                self._say(member, p.format_event, text)
            case p.Msg(to, text):
                self._private(member, to, text)
            case p.Join(room):
                self._join(member, room)
            case p.Nick(name):
                self._nick(member, name)
            case p.Users():
                assert member.room is not None
                self._tell(member, self._users_line(member.room))
            case p.Rooms():
                rooms = ", ".join(
                    f"{name} ({count})" for name, count in sorted(self.rooms().items())
                )
                self._tell(member, p.format_info(f"Rooms: {rooms}"))
            case p.Help():
                for line in p.HELP:
                    self._tell(member, p.format_info(line))
            case p.Invalid(message):
                self._tell(member, p.format_error(message))
            case p.Quit(reason):
                self.leave(member, reason or "quit", farewell="Bye!")
        self._evict_slow()

    def leave(self, member: Member, reason: str, *, farewell: str | None = None) -> None:
        """Remove ``member`` from the chat; the room sees ``left #room (reason)``.

        Idempotent, so every way out of a connection can call it. With
        ``farewell``, that ``*`` line is the member's last, and its outbox is
        closed so the writer flushes and hangs up.
        """
        if self._members.get(member.key) is not member:
            return
        del self._members[member.key]
        log.info("%s left (%s)", member.name, reason)
        self._exit(member, f"left {member.room.name if member.room else ''} ({reason})")
        if farewell is not None:
            self._tell(member, p.format_info(farewell))
        member.outbox.close()
        # Whoever could not take the notice goes now, not at the next command.
        self._evict_slow()

    def shutdown(self) -> None:
        """Forget everyone at once, with no departures announced: the server is closing."""
        self._members.clear()
        self._rooms.clear()
        self._slow.clear()

    # --- the rules ------------------------------------------------------------

    def _say(self, member: Member, fmt: Callable[[str, str, str], str], text: str) -> None:
        room = member.room
        assert room is not None
        data = fmt(self._now(), member.name, text).encode()
        room.history.append(data)
        self._fanout(room.members, data)

    def _private(self, member: Member, to: str, text: str) -> None:
        target = self._members.get(p.name_key(to))
        if target is None:
            self._tell(member, p.format_error(f"No such user: {to}"))
            return
        stamp = self._now()
        self._send(target, p.format_private(stamp, member.name, text).encode())
        self._send(member, p.format_private_echo(stamp, target.name, text).encode())

    def _join(self, member: Member, room: str) -> None:
        assert member.room is not None
        if member.room.name == room:
            self._tell(member, p.format_error(f"You are already in {room}"))
            return
        self._exit(member, f"left {member.room.name} (joined {room})")
        self._enter(member, room)

    def _nick(self, member: Member, name: str) -> None:
        name = p.clean_text(name)
        error = self._name_unavailable(name, current=member)
        if error is not None:
            self._tell(member, p.format_error(error))
            return
        if name == member.name:
            self._tell(member, p.format_error(f"You are already {name}"))
            return
        old = member.name
        del self._members[member.key]
        member.name, member.key = name, p.name_key(name)
        self._members[member.key] = member
        log.info("%s is now known as %s", old, name)
        assert member.room is not None
        self._fanout(
            member.room.members,
            p.format_event(self._now(), old, f"is now known as {name}").encode(),
        )

    def _enter(self, member: Member, name: str) -> None:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(name, self.history)
        member.room = room
        for line in room.history:
            self._send(member, line)
        room.members[member] = None
        self._tell(member, self._users_line(room))
        self._fanout(
            room.members, p.format_event(self._now(), member.name, f"joined {name}").encode()
        )

    def _exit(self, member: Member, event: str) -> None:
        room = member.room
        if room is None:
            return
        room.members.pop(member, None)
        member.room = None
        if not room.members and room.name != p.LOBBY:
            del self._rooms[room.name]
        self._fanout(room.members, p.format_event(self._now(), member.name, event).encode())

    def _users_line(self, room: Room) -> str:
        names = sorted((m.name for m in room.members), key=p.name_key)
        return p.format_info(f"Users in {room.name}: {', '.join(names)}")

    # --- delivery -------------------------------------------------------------

    def _now(self) -> str:
        return self._stamp(self._clock())

    def _tell(self, member: Member, line: str) -> None:
        self._send(member, line.encode())

    def _send(self, member: Member, data: bytes) -> None:
        self._fanout((member,), data)

    def _fanout(self, members: Iterable[Member], data: bytes) -> None:
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
        self.lines_out += sent

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
                if self._members.get(member.key) is member:
                    self.slow_evictions += 1
                    self.leave(member, "too slow")
                    member.disconnect()
        finally:
            self._evicting = False
