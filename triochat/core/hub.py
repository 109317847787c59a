"""The chat's state: who is here, which rooms exist, what was said lately.

The hub is plain synchronous state owned by the trio run: no method awaits,
so no other task can observe it half-updated. Each line is formatted and
encoded once and the same ``bytes`` object is handed to every recipient's
bounded outbox with ``send_nowait``; consecutive chat lines from one reader
(:meth:`Hub.say`) go out as one ``bytes`` object, so a burst costs each
recipient one hand-over, not one per line. A recipient whose outbox is full
is a slow consumer: it is evicted, and nobody ever waits for it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol

import trio

from ..backplane import Backplane, LocalBackplane
from ..protocol import line as p

log: Final = logging.getLogger("triochat.hub")


class Outbox(Protocol):
    """Where a member's outgoing lines go: the send end of a bounded channel."""

    def send_nowait(self, value: bytes, /) -> None: ...

    def close(self) -> None: ...


class Archive(Protocol):
    """Where a room's history also goes, and comes back from (e.g. a database).

    Both calls are synchronous and must be cheap: ``append`` only queues the
    line for a writer task, and ``recent`` answers from memory.
    """

    def append(self, room: str, line: bytes, /) -> None: ...

    def recent(self, room: str, /) -> Iterable[bytes]: ...


class Member:
    """A registered user, as the hub sees it."""

    __slots__ = ("disconnect", "hang_up", "key", "name", "outbox", "room")

    def __init__(self, name: str, outbox: Outbox, disconnect: Callable[[], None]) -> None:
        self.name = name
        self.key = p.name_key(name)
        self.room: Room | None = None
        self.outbox = outbox
        self.disconnect = disconnect
        # Stop reading but let queued lines out (the server sets it); else disconnect.
        self.hang_up: Callable[[], None] | None = None

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
      backplane: what links this hub to other nodes (default: none, one process).
      archive: also keeps every room line this node sees; without a backplane,
        a room created here starts with the archive's recent lines (so history
        survives a restart).
    """

    def __init__(
        self,
        *,
        history: int = 20,
        clock: Callable[[], float] = time.time,
        backplane: Backplane | None = None,
        archive: Archive | None = None,
    ) -> None:
        self.history = history
        self.backplane: Backplane = backplane or LocalBackplane()
        # Room lines go through the relay when there is one; otherwise straight out.
        self._relay: Backplane | None = self.backplane if self.backplane.remote else None
        # With a relay: this node's copy of every room's history that the cluster
        # keeps, whether or not a member here is in the room. A room's copy goes
        # when the cluster drops its history (drop_history).
        self._histories: dict[str, deque[bytes]] = {}
        self._clock = clock
        self._archive = archive
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
        """Each room's name and member count (across the cluster, with a backplane)."""
        counts = {r.name: len(r.members) for r in self._rooms.values()}
        if self._relay is not None:
            for name, count in self._relay.remote_rooms().items():
                counts[name] = counts.get(name, 0) + count
        return counts

    def hosts(self, room: str) -> bool:
        """Whether a member on this node is in ``room``."""
        held = self._rooms.get(room)
        return held is not None and bool(held.members)

    def history_rooms(self) -> list[str]:
        """The rooms whose recent lines this node keeps in memory, sorted."""
        return sorted(self._histories if self._relay is not None else self._rooms)

    def welcome(self) -> list[bytes]:
        n = len(self._members)
        notice = None
        if self._relay is not None:
            n += sum(self._relay.remote_rooms().values())
            notice = self._relay.notice
        online = "1 user" if n == 1 else f"{n} users"
        return [
            p.format_info(
                f"Welcome to triochat! {online} online. Commands start with /, try /help."
            ).encode(),
            *([p.format_info(notice).encode()] if notice else []),
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
        key = p.name_key(name)
        holder = self._members.get(key)
        if (holder is not None and holder is not current) or (
            self._relay is not None and self._relay.remote_name(key) is not None
        ):
            return f"Name {name} is taken, choose another"
        return None

    def name_unavailable(self, name: str, current: Member | None = None) -> str | None:
        """Why ``name`` cannot be claimed (by ``current``, renaming), or ``None``."""
        return self._name_unavailable(name, current)

    # --- commands ------------------------------------------------------------

    def handle(self, member: Member, command: p.Command) -> None:
        """Carry out one command from ``member``; ignored once it has left (or was evicted)."""
        if self._members.get(member.key) is not member:
            return  # its connection reads on until its last lines are out
        match command:
            case p.Say(text):
                self.say(member, (text,))
                return
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
                lines = "".join(p.format_info(line) for line in p.HELP)
                self._send(member, lines.encode(), len(p.HELP))
            case p.History(count):
                assert member.room is not None
                self.replay(member, member.room.name, self.recent(member.room.name, count))
            case p.Invalid(message):
                self._tell(member, p.format_error(message))
            case p.Quit(reason):
                self.leave(member, reason or "quit", farewell="Bye!")
        self.lines_in += 1
        self._evict_slow()

    def say(self, member: Member, texts: Sequence[str]) -> None:
        """Chat lines from ``member`` to its room, in order, as one write per recipient."""
        self.lines_in += len(texts)
        room = member.room
        if room is None or self._members.get(member.key) is not member:
            return  # evicted while its burst was being read: it hears nothing more
        stamp = self._now()
        lines = [p.format_message(stamp, member.name, text).encode() for text in texts]
        self._broadcast(room, lines, record=True)
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
        self.backplane.presence(member.key, member.name, None)
        if farewell is not None:
            self._tell(member, p.format_info(farewell))
        member.outbox.close()
        # Whoever could not take the notice goes now, not at the next command.
        self._evict_slow()

    def recent(self, room: str, count: int) -> list[bytes]:
        """Up to ``count`` of the room's most recent lines held in memory, oldest first."""
        held = self._rooms.get(room)
        if held is None or count <= 0:
            return []
        return list(held.history)[-count:]

    def replay(self, member: Member, room: str, lines: list[bytes]) -> None:
        """Send ``member`` a ``/history`` answer: a header, ``lines``, a footer."""
        header = p.format_history_header(room, len(lines)).encode()
        if lines:
            footer = p.format_history_footer(room).encode()
            self._send(member, b"".join([header, *lines, footer]), len(lines) + 2)
        else:
            self._send(member, header)
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
        self._broadcast(room, [fmt(self._now(), member.name, text).encode()], record=True)

    def _private(self, member: Member, to: str, text: str) -> None:
        key = p.name_key(to)
        target = self._members.get(key)
        if self._relay is not None:
            name = target.name if target is not None else self._relay.remote_name(key)
            stamp = self._now()
            # Both lines go through the cluster's channel, so the sender sees its
            # /msg echo in order with its room lines.
            if name is not None and self._relay.publish_private(
                key, p.format_private(stamp, member.name, text).encode()
            ):
                echo = p.format_private_echo(stamp, name, text).encode()
                self._relay.publish_private(member.key, echo)
                return
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
        if self._relay is not None and member.key != p.name_key(name):
            self._relay.presence(member.key, old, None)
        member.name, member.key = name, p.name_key(name)
        self._members[member.key] = member
        log.info("%s is now known as %s", old, name)
        assert member.room is not None
        self.backplane.presence(member.key, name, member.room.name)
        renamed = p.format_event(self._now(), old, f"is now known as {name}").encode()
        self._broadcast(member.room, [renamed])

    def _enter(self, member: Member, name: str) -> None:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(name, self.history)
            if self._relay is not None:
                room.history = self._history(name)
                if name != p.LOBBY:
                    self._relay.occupy(name)
            elif self._archive is not None:
                room.history.extend(self._archive.recent(name))
        member.room = room
        room.members[member] = None
        # The history and the user list (the joiner included) in one hand-over.
        users = self._users_line(room).encode()
        self._send(member, b"".join([*room.history, users]), len(room.history) + 1)
        self.backplane.presence(member.key, member.name, name)
        joined = p.format_event(self._now(), member.name, f"joined {name}").encode()
        self._broadcast(room, [joined])

    def _exit(self, member: Member, event: str) -> None:
        room = member.room
        if room is None:
            return
        room.members.pop(member, None)
        member.room = None
        if not room.members and room.name != p.LOBBY:
            del self._rooms[room.name]
            if self._relay is not None and not self._relay.vacate(room.name):
                self._histories.pop(room.name, None)
        self._broadcast(room, [p.format_event(self._now(), member.name, event).encode()])

    def _users_line(self, room: Room) -> str:
        names = [m.name for m in room.members]
        if self._relay is not None:
            names.extend(self._relay.remote_users(room.name))
        names.sort(key=p.name_key)
        return p.format_info(f"Users in {room.name}: {', '.join(names)}")

    # --- delivery -------------------------------------------------------------

    def _broadcast(self, room: Room, lines: list[bytes], *, record: bool = False) -> None:
        """Lines for everyone in ``room``, in order: one hand-over each, or via the relay."""
        if self._relay is not None:
            relay = self._relay
            # What the relay takes comes back through deliver(), in the cluster's order.
            lines = [line for line in lines if not relay.publish_line(room.name, line, record)]
            if not lines:
                return
        if record:
            room.history.extend(lines)
            if self._archive is not None:
                for line in lines:
                    self._archive.append(room.name, line)
        self._fanout(room.members, lines[0] if len(lines) == 1 else b"".join(lines), len(lines))

    def _now(self) -> str:
        return self._stamp(self._clock())

    def _tell(self, member: Member, line: str) -> None:
        self._send(member, line.encode())

    def _send(self, member: Member, data: bytes, lines: int = 1) -> None:
        self._fanout((member,), data, lines)

    def _fanout(self, members: Iterable[Member], data: bytes, lines: int = 1) -> None:
        """Hand ``data`` (``lines`` lines) to each member's outbox; note who is too slow."""
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
        self.lines_out += sent * lines

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

    # --- from the backplane ---------------------------------------------------

    def _history(self, room: str) -> deque[bytes]:
        history = self._histories.get(room)
        if history is None:
            history = self._histories[room] = deque(maxlen=self.history)
        return history

    def deliver(self, room: str, data: bytes, record: bool) -> None:
        """A room line from the cluster's channel: to this node's members of ``room``."""
        if record:
            self._history(room).append(data)
            if self._archive is not None:
                self._archive.append(room, data)
        local = self._rooms.get(room)
        if local is not None:
            self._fanout(local.members, data)

    def deliver_private(self, key: str, data: bytes) -> None:
        """A private line from another node, if its recipient is here."""
        member = self._members.get(key)
        if member is not None:
            self._send(member, data)

    def replace_histories(self, histories: dict[str, list[bytes]]) -> None:
        """Take the cluster's stored history (after (re)connecting), keeping room references.

        A room the cluster no longer keeps is forgotten, unless a member here
        is in it: then its history starts again empty.
        """
        for name in list(self._histories):
            if name not in histories and name not in self._rooms:
                del self._histories[name]
        for name in set(self._histories) | set(histories):
            self.set_history(name, histories.get(name, ()))

    def set_history(self, room: str, lines: Iterable[bytes]) -> None:
        """``room``'s history is now ``lines``, oldest first (the cluster restored it)."""
        history = self._history(room)
        history.clear()
        history.extend(lines)

    def drop_history(self, room: str) -> bool:
        """The cluster dropped ``room``'s history: forget this node's copy.

        Returns whether a member here is in the room all the same. The
        cluster could not know yet (its join was on its way to Redis when
        the last member elsewhere left), so the caller should undo the drop.
        """
        held = self._rooms.get(room)
        if held is None or not held.members:
            self._histories.pop(room, None)
            return False
        held.history.clear()
        return True

    def notice_all(self, text: str) -> None:
        """A ``* `` line to every member on this node."""
        data = p.format_info(text).encode()
        self._fanout(list(self._members.values()), data)

    def local_members(self) -> list[Member]:
        return list(self._members.values())

    def expel(self, member: Member, error: str, reason: str) -> None:
        """Tell ``member`` why in an error line, then close its connection."""
        self._tell(member, p.format_error(error))
        self.leave(member, reason)
        (member.hang_up or member.disconnect)()

    def flush(self) -> None:
        """Evict members found slow while delivering."""
        self._evict_slow()
