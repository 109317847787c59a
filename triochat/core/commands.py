"""What a member can ask of the hub: the commands every door's parser produces.

A ``room`` of ``None`` means the member's current room, for one-room doors (v1
lines); doors where a member is in several rooms always name it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Say:
    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Me:
    text: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Join:
    room: str


@dataclass(frozen=True, slots=True)
class Nick:
    name: str


@dataclass(frozen=True, slots=True)
class Msg:
    to: str
    text: str


@dataclass(frozen=True, slots=True)
class Users:
    """Who is in a room; in a big room only the first names, unless ``everyone``."""

    room: str | None = None
    everyone: bool = False


@dataclass(frozen=True, slots=True)
class Rooms:
    pass


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class History:
    """``/history [N]``: replay up to ``count`` older lines of the current room."""

    count: int
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Part:
    """Leave ``room`` (doors where a member can be in several rooms)."""

    room: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Quit:
    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line the server answers with an error (``message`` is the ``!`` line's text)."""

    message: str


Command = Say | Me | Join | Part | Nick | Msg | Users | Rooms | Help | History | Quit | Invalid
