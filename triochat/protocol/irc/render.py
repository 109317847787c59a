"""The hub's events as IRC lines: the IRC door's :class:`~triochat.core.events.Dialect`.

One :class:`IRCDialect` per IRC connection, because events for one member
(numerics, notices, name lists) start with that member's nick. Room events
never do: their bytes depend only on the capabilities that change how a line
is written (``server-time``, ``message-tags``, ``echo-message``), and
:attr:`IRCDialect.name` names exactly that set, with equality and hashing on
it. A hub that groups a burst's recipients by dialect name (or by dialect
equality) therefore renders a burst once per distinct capability set, not once
per IRC member: in practice once per kind of client in the room.

Decisions, documented in ``docs/irc.md``:

- ``Left`` is a ``QUIT`` when its reason is one the server gives for a
  connection ending (:data:`DISCONNECTS`), and a ``PART`` otherwise, since a
  QUIT makes a client drop the nick from every channel. A user's ``/quit
  bye`` on the line door therefore shows as a PART with ``bye`` from each room.
- In a ``/history`` or join replay, chat lines and actions are PRIVMSGs from
  their author with their original time (``server-time`` tag, or a
  ``[HH:MM:SS]`` prefix without it), and joins, parts and renames are NOTICEs
  from the server: replaying them as JOIN/PART/NICK would change the client's
  idea of who is in the channel now.
- Text too long for one 512-byte line is sent as several, cut between words.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Final

from ...core import events as ev
from .. import line
from . import names, wire

DISCONNECTS: Final = frozenset(
    {"connection lost", "too slow", "name conflict", "server shutdown", "quit"}
)
"""``Left`` reasons that mean the connection ended: rendered as ``QUIT``."""

RENDER_CAPS: Final = frozenset({"server-time", "message-tags", "echo-message"})
"""The capabilities that change how the hub's events are written."""

_ACTION: Final = "\x01ACTION {}\x01"

OP_PREFIX: Final = "@"
"""A room operator's prefix in NAMES and WHO (``PREFIX=(o)@``): the only one, so
``multi-prefix`` shows exactly what a client without it sees."""

AUDITORIUM: Final = "End of /NAMES list ({count} users: a big room lists you and its operators)"
"""The ``366`` of a room past ``--quiet-above``, whose NAMES and WHO show the member
and the room's operators only (InspIRCd's "auditorium" mode)."""


def msgid(event: ev.RoomEvent) -> str:
    """The ``msgid`` tag of a room event: its room and sequence number, ``#room/42``."""
    return f"{event.room}/{event.seq}"


def server_time(when: float) -> str:
    """``when`` as the ``server-time`` tag writes it: ``2026-12-01T20:05:09.123Z``."""
    millis = int(when * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{millis:03d}Z"


NOTHING: Final[frozenset[str]] = frozenset()
"""The empty set every idle client shares (rooms being joined, capabilities, modes):
an empty ``set`` of its own is 216 bytes per client."""
_STAMP: Final = line.Timestamper()
"""``[HH:MM:SS]`` for notices, one cache for every dialect (it only remembers a second)."""


def without(items: frozenset[str], item: str) -> frozenset[str]:
    """``items`` but ``item``: :data:`NOTHING` once none is left."""
    return items - {item} or NOTHING


_last_time: tuple[float, str] = (0.0, server_time(0.0))


def _server_time(when: float) -> str:
    """:func:`server_time`, remembering the last: a burst's lines share their time."""
    global _last_time  # a one-entry cache
    if _last_time[0] != when:
        _last_time = (when, server_time(when))
    return _last_time[1]


PREFIXES: Final = 1024
"""Chat-line starts one dialect keeps (per author and room) before it starts again."""

_KICKED: Final = "kicked by "
"""How a kick's departure reason starts (``kicked by OP: REASON``, the session's words)."""
_MUTED: Final = "You are muted in "
"""How the hub's answer to a muted member's lines starts."""
_AWAY: Final = re.compile(r"([\w-]+) is away: (.*)", re.DOTALL)
"""The hub's answer to a private message for an away member (``hub.AWAY``)."""


class IRCDialect:
    """Renders events for one IRC member whose client negotiated ``caps``.

    Args:
      server: the server's name, the source of numerics and notices.
      caps: the client's capabilities (only :data:`RENDER_CAPS` matter here).
      nick: the member's current name; the door updates it on a rename.
    """

    __slots__ = (
        "_prefixes",
        "away_notify",
        "echo",
        "entering",
        "history_on_join",
        "msgid",
        "name",
        "nick",
        "server",
        "tags",
        "time_tag",
        "who",
    )

    def __init__(self, server: str, caps: Iterable[str] = (), nick: str = "*") -> None:
        self.server = server
        self.nick = nick
        self.entering = NOTHING
        """Rooms being joined: their user list comes with the member's own JOIN first."""
        self.who = NOTHING
        """Rooms whose user list is a WHO answer (352/315), not a NAMES one."""
        self.history_on_join = True
        """Whether a join brings the room's history (not for ``draft/chathistory`` clients,
        which ask for it themselves). It changes only this member's own events."""
        self._prefixes: dict[tuple[str, str], tuple[str, int]] | None = None
        """Per (name, room): a chat line's ``:source PRIVMSG room :`` and the bytes of text
        one line holds. Made when first rendered for (the hub renders with one member's
        dialect per group), bounded by :data:`PREFIXES`."""
        self.away_notify = False
        """Whether the client follows away changes (``away-notify``): the hub hands it
        :class:`~triochat.core.events.Away` events. Not part of :attr:`name`: an AWAY
        line is only ever rendered for this member alone."""
        self.negotiate(caps)

    def negotiate(self, caps: Iterable[str]) -> None:
        """Render for a client with ``caps``; never once the hub holds this dialect.

        The name, equality and hash follow the capabilities, so they must not
        change while the dialect is a key in the hub's groups.
        """
        used = RENDER_CAPS.intersection(caps)
        self.name = "irc" + "".join(f"+{cap}" for cap in sorted(used))
        self.time_tag = "server-time" in used or "message-tags" in used
        self.msgid = "message-tags" in used
        self.echo = "echo-message" in used
        """Whether the client wants its own lines back."""
        self.tags = self.time_tag or self.msgid
        self.away_notify = "away-notify" in caps

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IRCDialect) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<IRCDialect {self.name} for {self.nick}>"

    def render(self, events: Sequence[ev.Event], /) -> bytes:
        out: list[str] = []
        if self.entering:
            # The hub's answer to a join, for this member alone: the history,
            # the user list (and, in a big room, the join). IRC wants the JOIN
            # first, then the history; the door asks for every name after.
            for i, event in enumerate(events):
                if isinstance(event, ev.UserList) and event.room in self.entering:
                    self.entering = without(self.entering, event.room)
                    self._entered(event, events[:i], out)
                    rest = [
                        e
                        for e in events[i + 1 :]
                        if not (isinstance(e, ev.Joined) and e.room == event.room)
                    ]
                    return ("".join(out) + self.render(rest).decode()).encode()
        # One rename or quit can reach a member once per room they share;
        # IRC says it once.
        said: set[tuple[str, str]] = set()
        for i, event in enumerate(events):
            if type(event) is ev.Said and (chat := self._said(event)) is not None:
                out.append(chat)
                continue
            if isinstance(event, ev.UserList):
                # A big room's list comes in pages: one 366 (or 315) after the last.
                following = events[i + 1] if i + 1 < len(events) else None
                more = isinstance(following, ev.UserList) and following.room == event.room
                self._user_list(event, out, last=not more)
                continue
            match event:
                case ev.Renamed(old=old):
                    if ("nick", old) in said:
                        continue
                    said.add(("nick", old))
                case ev.Left(name=name, reason=reason) if reason in DISCONNECTS:
                    if ("quit", name) in said:
                        continue
                    said.add(("quit", name))
            self._event(event, out)
        return "".join(out).encode()

    # --- building lines -------------------------------------------------------

    def _said(self, event: ev.Said) -> str | None:
        """A chat line that fits on one line, as :meth:`_texts` writes it (else ``None``).

        The hot path of a room's fan-out: the line's start is made (and checked)
        once per author and room, and the text appended.
        """
        prefixes = self._prefixes
        if prefixes is None:
            prefixes = self._prefixes = {}
        key = (event.name, event.room)
        known = prefixes.get(key)
        if known is None:
            if len(prefixes) >= PREFIXES:
                prefixes.clear()
            source = self._user(event.name)
            start = wire.format_message(wire.Message("PRIVMSG", (event.room, ""), source))
            known = prefixes[key] = (start[:-2], _budget("PRIVMSG", event.room, source, False))
        start, budget = known
        text = event.text
        if len(text) > budget // 4 and len(text.encode()) > budget:
            return None  # several lines
        chat = f"{start}{wire.scrub(text)}\r\n"
        if not self.tags:
            return chat
        tags: list[str] = []
        if self.time_tag:
            tags.append(f"time={_server_time(event.time)}")
        if self.msgid:
            tags.append(f"msgid={wire.escape_tag_value(msgid(event))}")
        return f"@{';'.join(tags)} {chat}"

    def _tags(self, event: ev.RoomEvent | ev.Private) -> tuple[tuple[str, str], ...]:
        if not self.tags:
            return ()
        tags: list[tuple[str, str]] = []
        if self.time_tag:
            tags.append(("time", server_time(event.time)))
        if self.msgid and isinstance(event, ev.RoomEvent):
            tags.append(("msgid", msgid(event)))
        return tuple(tags)

    def _texts(
        self,
        out: list[str],
        command: str,
        target: str,
        text: str,
        source: str,
        tags: tuple[tuple[str, str], ...] = (),
        action: bool = False,
    ) -> None:
        """``command target :text``, as several lines if the text is too long for one."""
        for piece in wire.split_utf8(text, _budget(command, target, source, action)):
            params = (target, _ACTION.format(piece) if action else piece)
            out.append(wire.format_message(wire.Message(command, params, source, tags)))

    def fit(self, text: str, command: str, target: str, source: str) -> str:
        """As much of ``text`` as one ``command`` line to ``target`` from ``source`` holds
        (an away text from the line door may be longer than IRC's 512 bytes)."""
        return wire.split_utf8(text, _budget(command, target, source, False))[0]

    def away_reply(self, out: list[str], name: str, why: str) -> None:
        """``301 nick name :why``, cut to one line."""
        self._numeric(out, "301", name, self.fit(why, "301", f"{self.nick} {name}", self.server))

    def text_lines(self, target: str, text: str, source: str, *, action: bool = False) -> int:
        """How many PRIVMSG lines ``text`` from ``source`` to ``target`` is written as."""
        return len(wire.split_utf8(text, _budget("PRIVMSG", target, source, action)))

    def _numeric(self, out: list[str], code: str, *params: str) -> None:
        out.append(wire.format_message(wire.Message(code, (self.nick, *params), self.server)))

    def _user(self, name: str) -> str:
        return names.source(name, self.server)

    def _event(self, event: ev.Event, out: list[str]) -> None:
        match event:
            case ev.Said(room=room, name=name, text=text):
                self._texts(out, "PRIVMSG", room, text, self._user(name), self._tags(event))
            case ev.Acted(room=room, name=name, text=text):
                tags = self._tags(event)
                self._texts(out, "PRIVMSG", room, text, self._user(name), tags, action=True)
            case ev.Joined(room=room, name=name):
                out.append(self._line("JOIN", (room,), self._user(name), event))
            case ev.Left(room=room, name=name, reason=reason) if reason.startswith(_KICKED):
                # A kick is a KICK from its operator, as IRC clients expect.
                operator, _, why = reason[len(_KICKED) :].partition(": ")
                kick = (room, name, why) if why else (room, name)
                out.append(self._line("KICK", kick, self._user(operator), event))
            case ev.Left(room=room, name=name, reason=reason):
                if reason in DISCONNECTS:
                    out.append(self._line("QUIT", (reason,), self._user(name), event))
                else:
                    params = (room, reason) if reason else (room,)
                    out.append(self._line("PART", params, self._user(name), event))
            case ev.Renamed(old=old, new=new):
                out.append(self._line("NICK", (new,), self._user(old), event))
            case ev.TopicSet(room=room, name=name, topic=topic):
                out.append(self._line("TOPIC", (room, topic), self._user(name), event))
            case ev.Away(name=name, text=text):
                # Unnumbered: no msgid, only its time.
                stamp = (("time", server_time(event.time)),) if self.time_tag else ()
                source = self._user(name)
                away_params: tuple[str, ...] = (self.fit(text, "AWAY", "", source),) if text else ()
                out.append(wire.format_message(wire.Message("AWAY", away_params, source, stamp)))
            case ev.RoleChanged(room=room, name=name, by=by, op=op):
                mode = ("+o" if op else "-o", name)
                source = self._user(by) if by else self.server  # "": the server's doing
                out.append(self._line("MODE", (room, *mode), source, event))
            case ev.Legacy(room=room, line=text):
                self._texts(out, "NOTICE", room, text, self.server, self._tags(event))
            case ev.Private(sender=sender, recipient=recipient, text=text, echo=echo):
                if echo and not self.echo:
                    return  # an IRC client shows its own messages itself
                self._texts(out, "PRIVMSG", recipient, text, self._user(sender), self._tags(event))
            case ev.Notice(text=text) if (away := _AWAY.fullmatch(text)) is not None:
                self.away_reply(out, away[1], away[2])
            case ev.Notice(text=text):
                self._texts(out, "NOTICE", self.nick, text, self.server)
            case ev.Error(text=text) if text.startswith(_MUTED):
                # A muted member's lines: 404, as for a +m channel.
                room = text[len(_MUTED) :].partition(" ")[0]
                self._numeric(out, "404", room, f"Cannot send to channel ({text})")
            case ev.Error(text=text):
                self._texts(out, "NOTICE", self.nick, f"Error: {text}", self.server)
            case ev.UserList():
                self._user_list(event, out, last=True)
            case ev.Presence(room=room):
                text = f"* {_presence(event)}"
                self._texts(out, "NOTICE", room, text, self.server, self._tags(event))
            case ev.RoomList(rooms=rooms):
                self._numeric(out, "321", "Channel", "Users  Name")
                for room, count in rooms:
                    self._numeric(out, "322", room, str(count), "")
                self._numeric(out, "323", "End of /LIST")
            case ev.Replay(room=room, events=events):
                for past in events:
                    self._replayed(past, out)

    def _line(self, command: str, params: tuple[str, ...], source: str, event: ev.RoomEvent) -> str:
        return wire.format_message(wire.Message(command, params, source, self._tags(event)))

    def _user_list(self, users: ev.UserList, out: list[str], *, last: bool) -> None:
        room, ops, away = users.room, users.ops, users.away
        members: Sequence[str] = users.names
        if room in self.who:
            host = self.server
            for member in members:
                # Here (H) or gone (G), then the prefix: @ for an operator.
                flags = ("G" if member in away else "H") + (OP_PREFIX if member in ops else "")
                self._numeric(out, "352", room, member, host, host, member, flags, f"0 {member}")
            if last:
                self.who = without(self.who, room)
                self._numeric(out, "315", room, "End of /WHO list")
            return
        if ops:
            members = [OP_PREFIX + m if m in ops else m for m in members]
        # A big room's list (auditorium mode) is the member and the operators: its 366 counts.
        hidden = users.total > len(users.names)
        self._names(out, room, members, end=last, total=users.total if hidden else 0)

    def _entered(self, users: ev.UserList, history: Sequence[ev.Event], out: list[str]) -> None:
        """JOIN, the topic and the history; the door asks for every name next."""
        room = users.room
        out.append(wire.format_message(wire.Message("JOIN", (room,), self._user(self.nick))))
        topic = None
        for event in history:
            if isinstance(event, ev.TopicSet):
                topic = event
        if topic is not None:
            self._numeric(out, "332", room, topic.topic)
            self._numeric(out, "333", room, self._user(topic.name), str(int(topic.time)))
        if not self.history_on_join:
            return
        for event in history:
            if isinstance(event, ev.RoomEvent):
                self._replayed(event, out)
            else:  # pragma: no cover (the hub sends only room events before the list)
                self._event(event, out)

    def history_batch(self, target: str, events: Sequence[ev.RoomEvent], ref: str) -> bytes:
        """A ``CHATHISTORY`` answer: ``events`` in a ``chathistory`` batch called ``ref``.

        Only chat lines and actions are sent (the ``draft/event-playback`` kinds
        are not offered), each with its own time, msgid and the batch tag.
        """
        server = self.server
        out = [
            wire.format_message(
                wire.message("BATCH", f"+{ref}", "chathistory", target, source=server)
            )
        ]
        batch = ("batch", ref)
        for event in events:
            if isinstance(event, ev.Said | ev.Acted):
                tags = (batch, ("time", server_time(event.time)), ("msgid", msgid(event)))
                source = self._user(event.name)
                action = isinstance(event, ev.Acted)
                self._texts(out, "PRIVMSG", target, event.text, source, tags, action=action)
        out.append(wire.format_message(wire.message("BATCH", f"-{ref}", source=server)))
        return "".join(out).encode()

    def _names(
        self, out: list[str], room: str, members: Sequence[str], *, end: bool = True, total: int = 0
    ) -> None:
        head = len(f":{self.server} 353 {self.nick} = {room} :\r\n".encode())
        batch: list[str] = []
        size = head
        for member in members:
            width = len(member.encode()) + 1
            if batch and size + width > wire.MAX_LINE:
                self._numeric(out, "353", "=", room, " ".join(batch))
                batch, size = [], head
            batch.append(member)
            size += width
        if batch:
            self._numeric(out, "353", "=", room, " ".join(batch))
        if end and total:
            self._numeric(out, "366", room, AUDITORIUM.format(count=total))
        elif end:
            self._numeric(out, "366", room, "End of /NAMES list")

    def _replayed(self, event: ev.RoomEvent, out: list[str]) -> None:
        if isinstance(event, ev.Said | ev.Acted):
            text = event.text
            if not self.time_tag:
                text = f"{_STAMP(event.time)} {text}"
            source = self._user(event.name)
            tags = self._tags(event)
            action = isinstance(event, ev.Acted)
            self._texts(out, "PRIVMSG", event.room, text, source, tags, action=action)
            return
        match event:
            case ev.Joined(name=name):
                told = f"{name} joined {event.room}"
            case ev.Left(name=name, reason=reason):
                told = f"{name} left {event.room} ({reason})"
            case ev.Renamed(old=old, new=new):
                told = f"{old} is now known as {new}"
            case ev.TopicSet(name=name, topic=topic):
                told = f"{name} set the topic: {topic}"
            case ev.RoleChanged(name=name, by=by, op=op):
                told = f"{by or self.server} sets mode {'+o' if op else '-o'} {name}"
            case ev.Presence():
                told = _presence(event)
            case ev.Legacy(line=text):
                told = text
            case _:  # pragma: no cover (the room events are all above)
                raise AssertionError(event)
        if not self.time_tag and not isinstance(event, ev.Legacy):
            told = f"{_STAMP(event.time)} * {told}"
        elif not isinstance(event, ev.Legacy):
            told = f"* {told}"
        self._texts(out, "NOTICE", event.room, told, self.server, self._tags(event))


def _presence(event: ev.Presence) -> str:
    return (
        f"{event.joined} joined and {event.left} left {event.room} in the last {event.seconds:g} s"
    )


def _budget(command: str, target: str, source: str, action: bool) -> int:
    """The bytes of text that fit in one line: 512 less ``:source COMMAND target :`` and CR LF.

    Tags do not count (they have their own 8191 bytes).
    """
    room = wire.MAX_LINE - len(f":{source} {command} {target} :\r\n".encode())
    if action:
        room -= len(_ACTION.format(""))
    return max(room, 16)
