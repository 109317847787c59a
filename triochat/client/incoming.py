"""Server lines, classified: the pure half of the terminal client.

:func:`parse_line` sorts each line of protocol v1's server grammar (see
``docs/protocol.md``) into an :class:`Incoming`; :class:`RoomState` follows
those lines to know the user's current name, room and room members, which
the status line shows. Nothing here does I/O.
"""

from __future__ import annotations

import datetime
import enum
import re
from dataclasses import dataclass, field
from typing import Final

from ..protocol import line as p

# A server may put the date in the stamp ([YYYY-MM-DD HH:MM:SS]); v1 sends the time only.
_STAMPED: Final = re.compile(r"(\[(?:\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d\]) (.*)", re.DOTALL)
_STAMP_DATE: Final = re.compile(r"\[(\d{4})-(\d\d)-(\d\d) ")
_ROOM_NAMES: Final = re.compile(r"#[\w-]+")
_USERS: Final = re.compile(r"Users in (#\S+): (.*)", re.DOTALL)
_LEFT: Final = re.compile(r"left (#\S+)( \(.*\))?", re.DOTALL)
_RENAMED: Final = "is now known as "


class Kind(enum.Enum):
    """What a server line is, by its shape."""

    MESSAGE = "message"  # [HH:MM:SS] <NAME> TEXT
    EVENT = "event"  # [HH:MM:SS] * NAME TEXT  (an action or a room event)
    PRIVATE = "private"  # [HH:MM:SS] *FROM* TEXT
    PRIVATE_SENT = "private_sent"  # [HH:MM:SS] -> *TO* TEXT
    INFO = "info"  # * TEXT
    ERROR = "error"  # ! TEXT
    OTHER = "other"  # none of the above (a newer or non-conforming server)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One server line: its kind, timestamp, the name it is about, and its text."""

    kind: Kind
    text: str
    stamp: str = ""
    name: str = ""

    @property
    def date(self) -> datetime.date | None:
        """The date in the stamp, if the server sent one (v1 sends only the time)."""
        match = _STAMP_DATE.match(self.stamp)
        if match is None:
            return None
        try:
            return datetime.date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return None


def parse_line(line: str) -> Incoming:
    """Classify one server line (never raises; unknown shapes are :attr:`Kind.OTHER`)."""
    match = _STAMPED.fullmatch(line)
    if match is not None:
        stamp, rest = match.groups()
        if rest.startswith("<"):
            name, sep, text = rest[1:].partition("> ")
            if sep and name:
                return Incoming(Kind.MESSAGE, text, stamp, name)
            if rest.endswith(">") and len(rest) > 2:
                return Incoming(Kind.MESSAGE, "", stamp, rest[1:-1])
        elif rest.startswith("* "):
            name, _, text = rest[2:].partition(" ")
            if name:
                return Incoming(Kind.EVENT, text, stamp, name)
        elif rest.startswith("-> *"):
            name, sep, text = rest[4:].partition("* ")
            if sep and name:
                return Incoming(Kind.PRIVATE_SENT, text, stamp, name)
        elif rest.startswith("*"):
            name, sep, text = rest[1:].partition("* ")
            if sep and name:
                return Incoming(Kind.PRIVATE, text, stamp, name)
    if line.startswith("* "):
        return Incoming(Kind.INFO, line[2:])
    if line.startswith("! "):
        return Incoming(Kind.ERROR, line[2:])
    return Incoming(Kind.OTHER, line)


@dataclass
class RoomState:
    """The user's name, room and room members, as far as the server's lines tell.

    The member list comes from ``* Users in #room: ...`` (sent on every join)
    and is then kept up to date from join, leave and rename events.
    """

    name: str
    room: str = p.LOBBY
    members: dict[str, str] = field(default_factory=dict)  # name_key -> name
    rooms: set[str] = field(default_factory=lambda: {p.LOBBY})  # every room a line named

    @property
    def user_count(self) -> int:
        return len(self.members)

    def is_me(self, name: str) -> bool:
        return p.name_key(name) == p.name_key(self.name)

    def mentions_me(self, text: str) -> bool:
        """Whether ``text`` contains the user's name as a word (case-insensitively)."""
        pattern = rf"(?<![\w-]){re.escape(p.name_key(self.name))}(?![\w-])"
        return re.search(pattern, p.name_key(text)) is not None

    def update(self, line: Incoming) -> None:
        """Follow one server line."""
        if line.kind in (Kind.INFO, Kind.EVENT):
            self.rooms.update(room.lower() for room in _ROOM_NAMES.findall(line.text))
        if line.kind is Kind.INFO:
            match = _USERS.fullmatch(line.text)
            if match is not None:
                self.room = match[1]
                names = [p.unmarked(n) for n in match[2].split(", ") if n]
                self.members = {p.name_key(n): n for n in names}
            return
        if line.kind is not Kind.EVENT:
            return
        key = p.name_key(line.name)
        if line.text == f"joined {self.room}":
            self.members[key] = line.name
        elif (left := _LEFT.fullmatch(line.text)) is not None and left[1] == self.room:
            self.members.pop(key, None)
        elif line.text.startswith(_RENAMED):
            new = line.text[len(_RENAMED) :]
            if self.members.pop(key, None) is not None:
                self.members[p.name_key(new)] = new
            if self.is_me(line.name):
                self.name = new
