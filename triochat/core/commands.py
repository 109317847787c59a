"""What a member can ask of the hub: the commands every door's parser produces.

A ``room`` of ``None`` means the member's current room, for one-room doors (v1
lines); doors where a member is in several rooms always name it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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


# --- Accounts (``--db``) ----------------------------------------------------------
# A password field never shows in a repr, so no log line or traceback can leak one.


@dataclass(frozen=True, slots=True)
class Register:
    """``/register PASSWORD``: the member's current name becomes its account."""

    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Identify:
    """``/identify PASSWORD``: prove the current name is the member's account."""

    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ChangePassword:
    """``/password OLD NEW``."""

    old: str = field(repr=False)
    new: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Unregister:
    """``/unregister PASSWORD``: the name is anyone's again."""

    password: str = field(repr=False)


# --- Moderation (room operators and server admins) ---------------------------------


@dataclass(frozen=True, slots=True)
class Topic:
    """``/topic [TEXT]``: read the room's topic, or set it (``text``)."""

    text: str | None = None
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Kick:
    name: str
    reason: str = ""
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Ban:
    """``/ban NAME|ADDRESS [DURATION] [REASON]``; ``seconds`` of ``None``: until lifted."""

    target: str
    seconds: float | None = None
    reason: str = ""
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Unban:
    target: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Bans:
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Mute:
    name: str
    seconds: float | None = None
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Unmute:
    name: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Deop:
    name: str
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Wall:
    """``/wall TEXT``: a server admin's notice to everyone."""

    text: str


@dataclass(frozen=True, slots=True)
class Motd:
    """``/motd``: the message of the day."""


@dataclass(frozen=True, slots=True)
class Away:
    """``/away [TEXT]``: away with ``text``, or back (``None``)."""

    text: str | None = None


@dataclass(frozen=True, slots=True)
class Ignore:
    """``/ignore NAME``: stop receiving NAME's lines and private messages."""

    name: str


@dataclass(frozen=True, slots=True)
class Unignore:
    name: str


AccountCommand = Register | Identify | ChangePassword | Unregister
UserCommand = Wall | Motd | Away | Ignore | Unignore
ModerationCommand = Topic | Kick | Ban | Unban | Bans | Mute | Unmute | Op | Deop

Command = (
    Say
    | Me
    | Join
    | Part
    | Nick
    | Msg
    | Users
    | Rooms
    | Help
    | History
    | Quit
    | Invalid
    | AccountCommand
    | ModerationCommand
    | UserCommand
)
