"""Protocol v1, sans-IO: framing, parsing, validation and formatting.

Nothing here does I/O or imports trio. Bytes go into a :class:`LineFramer`,
lines come out; client lines become :data:`Command` values; server lines are
built by the ``format_*`` functions. The wire format is documented for client
authors in ``docs/protocol.md``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from ..core import commands as c, events as ev
from ..core.accounts import parse_duration

# The commands are the core's inputs, shared by every door; this dialect's
# parser produces them, and they are re-exported here for its users.
from ..core.commands import (
    Command as Command,
    Help as Help,
    History as History,
    Invalid as Invalid,
    Join as Join,
    Me as Me,
    Msg as Msg,
    Nick as Nick,
    Part as Part,
    Quit as Quit,
    Rooms as Rooms,
    Say as Say,
    Users as Users,
)
from ..core.moderation import SERVER

# So are the name rules: the hub and the backplane compare names by their key.
from ..core.names import (
    ASCII_NAME_RULES as ASCII_NAME_RULES,
    NAME_MAX as NAME_MAX,
    NAME_POLICIES as NAME_POLICIES,
    NAME_RULES as NAME_RULES,
    NamePolicy as NamePolicy,
    name_error as name_error,
    name_key as name_key,
    name_sort_key as name_sort_key,
)

DEFAULT_MAX_LINE: Final = 4096
LOBBY: Final = "#lobby"
ROOM_MAX: Final = 32
HISTORY_DEFAULT: Final = 50
HISTORY_MAX: Final = 500
PASSWORD_PROMPT: Final = "Password:"
WRONG_PASSWORD: Final = "Wrong password"
ACCOUNT_PROMPT: Final = "{} is registered: its password?"
"""A registered name's password question (``.format(name)``), on every door."""
WRONG_ACCOUNT_PASSWORD: Final = "Wrong password for {}"
TLS_REQUIRED: Final = "This server speaks TLS only: connect with TLS (triochat join --tls)"

ROOM_RULES: Final = f"a room is # followed by 1 to {ROOM_MAX} letters, digits, _ or -"
NAME_QUESTION: Final = "What is your name?"

# \w is Unicode-aware: letters and digits of any script, plus "_".
_ROOM_RE: Final = re.compile(rf"#[\w-]{{1,{ROOM_MAX}}}")


# --- Framing -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line from the peer, decoded, without its line ending."""

    text: str


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """The peer sent a line over the limit; it is being discarded up to its newline."""

    limit: int


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :meth:`LineFramer.next_event` when more bytes are needed."""

FramerEvent = Line | LineTooLong | _NeedData


class LineFramer:
    """Splits a byte stream into lines, in bounded time and space.

    At most ``max_line + 1`` bytes of an unfinished line are ever buffered: past
    that, one :class:`LineTooLong` is reported and the rest of the line is
    dropped as it arrives. Each byte is scanned for a newline once, so a peer
    dribbling a long line one byte at a time costs O(bytes), not O(bytes²).

    :meth:`next_event` gives one event at a time; :meth:`events` gives all
    that are complete at once, much faster for a burst of lines.
    """

    __slots__ = ("_buf", "_discarding", "_scanned", "max_line")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no b"\n"
        self._discarding = False

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes received from the peer."""
        self._buf += data

    def next_event(self) -> FramerEvent:
        """Return the next :class:`Line`, a :class:`LineTooLong`, or ``NEED_DATA``."""
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end < 0:
                if self._discarding:
                    self._buf.clear()
                    self._scanned = 0
                # A last b"\r" may be the start of the line ending, so it does
                # not count yet; otherwise the verdict would depend on how
                # the peer's bytes happened to be split.
                elif len(self._buf) - self._buf.endswith(b"\r") > self.max_line:
                    self._buf.clear()
                    self._scanned = 0
                    self._discarding = True
                    return LineTooLong(self.max_line)
                else:
                    self._scanned = len(self._buf)
                return NEED_DATA
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
                continue
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if len(raw) > self.max_line:
                return LineTooLong(self.max_line)
            return Line(raw.decode("utf-8", "replace"))

    def events(self) -> list[str | LineTooLong]:
        """Every event complete so far, in order: a line's text, or :class:`LineTooLong`.

        An empty list means more bytes are needed. The same events as calling
        :meth:`next_event` until ``NEED_DATA``, but a burst of short lines is
        split and decoded in a few calls rather than a few per line.
        """
        buf = self._buf
        end = buf.rfind(b"\n")
        if end >= 0 and not self._discarding:
            chunk = bytes(buf[:end])
            # Only short lines take the fast path; a long one needs the checks below.
            if max(map(len, chunk.split(b"\n"))) <= self.max_line:
                del buf[: end + 1]
                self._scanned = 0
                lines = chunk.decode("utf-8", "replace").split("\n")
                if b"\r" in chunk:
                    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
                return [*lines, *self._slow_events()]
        return self._slow_events()

    def _slow_events(self) -> list[str | LineTooLong]:
        found: list[str | LineTooLong] = []
        while True:
            event = self.next_event()
            if isinstance(event, Line):
                found.append(event.text)
            elif isinstance(event, LineTooLong):
                found.append(event)
            else:
                return found

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished line (never more than ``max_line + 1 + chunk``)."""
        return len(self._buf)


# --- Cleaning and validation -------------------------------------------------

# Terminal escape sequences (ECMA-48), removed whole so no "[31m" is left
# behind: CSI (ESC [ or U+009B, parameters, intermediates, a final byte); the
# control strings OSC, DCS, SOS, PM and APC up to their BEL or ST (an
# unterminated one loses only its introducer: nothing is hidden); and any
# other ESC sequence (ESC, intermediates, a final byte). The quantifiers are
# possessive and a string stops at the next control, so a line full of
# introducers costs linear time.
_ESCAPE_SEQUENCE: Final = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*+[\x20-\x2f]*+[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x80-\x9f]*+(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[\x20-\x2f]*+[\x30-\x7e]?"
)

# C0 and C1 controls and DEL, left over once the sequences are gone; tab
# becomes a space rather than gluing words together. The bidirectional
# embeddings, overrides and isolates (U+202A-202E, U+2066-2069) go too: one
# could reorder the rest of a line on another user's screen.
_CONTROLS: Final[dict[int, str | None]] = {
    c: None for c in [*range(0x00, 0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F)]
}
_CONTROLS.update((c, None) for c in range(0x2066, 0x206A))
_CONTROLS[0x09] = " "


def clean_text(text: str) -> str:
    """Remove terminal escape sequences, C0/C1 controls and bidi overrides (tab: a space)."""
    if text.isprintable():  # the usual case, checked in C: no controls in it
        return text
    return _ESCAPE_SEQUENCE.sub("", text).translate(_CONTROLS)


def normalize_room(room: str) -> str | None:
    """Return the canonical room name (``#`` added if missing), or ``None`` if invalid."""
    if not room.startswith("#"):
        room = "#" + room
    if _ROOM_RE.fullmatch(room) is None:
        return None
    return room.lower()


# --- Commands (client to server, after registration) ----------------------

HELP: Final = (
    "Commands:",
    "  TEXT               say TEXT to your room (//TEXT sends /TEXT)",
    "  /me TEXT           an action: * NAME TEXT",
    "  /msg NAME TEXT     a private message (alias /whisper)",
    "  /join #ROOM        leave your room and join #ROOM (created on demand)",
    "  /nick NAME         change your name",
    "  /users [all]       who is in your room (aliases /who, /names)",
    "  /rooms             the rooms and their sizes (alias /list)",
    f"  /history [N]       replay N older lines of your room (max {HISTORY_MAX})",
    "  /quit [REASON]     leave the chat (alias /exit)",
    "  /topic [TEXT]      your room's topic; operators set it",
    "  /away [TEXT]       say you are away (no TEXT: back); /motd the message of the day",
    "  /ignore NAME       stop receiving NAME's lines and messages (/unignore NAME)",
    "  /register PASSWORD make your name yours (/identify, /password OLD NEW, /unregister)",
    "  operators: /kick NAME [REASON], /ban NAME|ADDRESS [DURATION] [REASON], /unban, /bans,",
    "             /mute NAME [DURATION], /unmute NAME, /op NAME, /deop NAME",
    "  server admins: /wall TEXT, /gban NAME|ADDRESS [DURATION] [REASON], /gunban",
    "  /help              this list",
)


def _usage(usage: str) -> Invalid:
    return Invalid(f"Usage: {usage}")


def chat_text(line: str) -> str | None:
    """The text of a plain chat line (no ``/``), the most common line, or ``None``.

    ``None`` means :func:`parse_command` decides; for a chat line both agree.
    """
    if line[:1] != "/" and line and not line.isspace():
        return line
    return None


def parse_command(line: str) -> Command | None:
    """Parse one cleaned client line; ``None`` for a line to ignore (empty)."""
    if not line.strip():
        return None
    if not line.startswith("/"):
        return Say(line)
    if line.startswith("//"):
        return Say(line[1:])
    verb, _, rest = line[1:].partition(" ")
    verb = verb.lower()
    rest = rest.strip()
    if verb == "me":
        return Me(rest) if rest else _usage("/me TEXT")
    if verb in ("msg", "whisper"):
        to, _, text = rest.partition(" ")
        text = text.strip()
        if not to or not text:
            return _usage(f"/{verb} NAME TEXT")
        return Msg(to, text)
    if verb == "join":
        if not rest or " " in rest:
            return _usage("/join #ROOM")
        room = normalize_room(rest)
        if room is None:
            return Invalid(f"Invalid room {rest!r}: {ROOM_RULES}")
        return Join(room)
    if verb == "nick":
        if not rest:
            return _usage("/nick NAME")
        if " " in rest:  # a name with a space in it: the registration's answer
            return Invalid(name_error(rest) or f"Invalid name {rest!r}: {NAME_RULES}")
        return Nick(rest)
    if verb in ("users", "who", "names"):
        return Users(everyone=rest.lower() == "all")
    if verb in ("rooms", "list"):
        return Rooms()
    if verb == "help":
        return Help()
    if verb == "history":
        if not rest:
            return History(HISTORY_DEFAULT)
        if not rest.isdecimal() or not 1 <= int(rest) <= HISTORY_MAX:
            return _usage(f"/history [N], N from 1 to {HISTORY_MAX}")
        return History(int(rest))
    if verb in ("quit", "exit"):
        return Quit(rest)
    return (
        _account_command(verb, rest)
        or _moderation_command(verb, rest)
        or (Invalid(f"Unknown command /{verb}. Try /help."))
    )


def _account_command(verb: str, rest: str) -> Command | None:
    """``/register``, ``/identify``, ``/password``, ``/unregister``, ``/wall``, ``/motd``
    and ``/away``, or ``None``."""
    if verb == "wall":
        return c.Wall(rest) if rest else _usage("/wall TEXT")
    if verb == "motd":
        return c.Motd()
    if verb == "away":
        return c.Away(rest or None)
    if verb in ("ignore", "unignore"):
        if not rest or " " in rest:
            return _usage(f"/{verb} NAME")
        return c.Ignore(rest) if verb == "ignore" else c.Unignore(rest)
    if verb in ("register", "identify", "unregister"):
        if not rest:
            return _usage(f"/{verb} PASSWORD")
        if verb == "register":
            return c.Register(rest)
        return c.Identify(rest) if verb == "identify" else c.Unregister(rest)
    if verb == "password":
        old, _, new = rest.partition(" ")
        if not old or not new.strip():
            return _usage("/password OLD NEW")
        return c.ChangePassword(old, new.strip())
    return None


_MODERATION_USAGE: Final = {
    "gban": "/gban NAME|ADDRESS [DURATION] [REASON]",
    "gunban": "/gunban NAME|ADDRESS",
    "kick": "/kick NAME [REASON]",
    "ban": "/ban NAME|ADDRESS [DURATION] [REASON]",
    "unban": "/unban NAME|ADDRESS",
    "mute": "/mute NAME [DURATION]",
    "unmute": "/unmute NAME",
    "op": "/op NAME",
    "deop": "/deop NAME",
}


def _moderation_command(verb: str, rest: str) -> Command | None:
    """The room operators' commands (and ``/topic``), or ``None``."""
    if verb == "topic":
        return c.Topic(rest or None)
    if verb == "bans":
        return c.Bans()
    usage = _MODERATION_USAGE.get(verb)
    if usage is None:
        return None
    target, _, more = rest.partition(" ")
    more = more.strip()
    if not target:
        return _usage(usage)
    if verb == "gban" or verb == "gunban":
        # Server-wide: the bans of the room no room is called.
        first, _, after = more.partition(" ")
        seconds = parse_duration(first) if first else None
        if verb == "gunban":
            return c.Unban(target, SERVER)
        return c.Ban(target, seconds, after.strip() if seconds is not None else more, SERVER)
    if verb == "kick":
        return c.Kick(target, more)
    if verb in ("ban", "mute"):
        first, _, after = more.partition(" ")
        seconds = parse_duration(first) if first else None
        if first and seconds is None and verb == "mute":
            return _usage(f"{usage}, a duration such as 10m, 2h or 7d")
        reason = after.strip() if seconds is not None else more
        return c.Ban(target, seconds, reason) if verb == "ban" else c.Mute(target, seconds)
    if verb == "unban":
        return c.Unban(target)
    if verb == "unmute":
        return c.Unmute(target)
    return c.Op(target) if verb == "op" else c.Deop(target)


# --- Server lines ------------------------------------------------------------


class Timestamper:
    """Formats ``[HH:MM:SS]`` in the server's local time, once per second at most.

    A time on another day than today (``clock``'s) gets the date too,
    ``[YYYY-MM-DD HH:MM:SS]``, so yesterday's history does not pass for today's.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._stamp = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            shown = time.localtime(second)
            if shown[:3] == time.localtime(self._clock())[:3]:
                self._stamp = time.strftime("[%H:%M:%S]", shown)
            else:
                self._stamp = time.strftime("[%Y-%m-%d %H:%M:%S]", shown)
        return self._stamp


def format_message(stamp: str, name: str, text: str) -> str:
    return f"{stamp} <{name}> {text}\n"


def format_event(stamp: str, name: str, text: str) -> str:
    """An action (``/me``) or a room event such as ``joined #room``."""
    return f"{stamp} * {name} {text}\n"


def format_private(stamp: str, sender: str, text: str) -> str:
    return f"{stamp} *{sender}* {text}\n"


def format_private_echo(stamp: str, recipient: str, text: str) -> str:
    return f"{stamp} -> *{recipient}* {text}\n"


OPERATOR_MARK: Final = "@"
"""Before an operator's name in ``* Users in``: no name holds ``@``."""
AWAY_MARK: Final = " (away)"
"""After an away member's name in ``* Users in``: no name holds a space."""


def marked_names(users: ev.UserList) -> str:
    """``users``' names as ``* Users in`` lists them: ``@ann, bob (away), cat``."""
    ops, away = users.ops, users.away
    if not ops and not away:
        return ", ".join(users.names)
    return ", ".join(
        (OPERATOR_MARK if name in ops else "") + name + (AWAY_MARK if name in away else "")
        for name in users.names
    )


def unmarked(entry: str) -> str:
    """The name in one entry of a ``* Users in`` list: its marks taken off."""
    return entry.partition(" ")[0].removeprefix(OPERATOR_MARK)


def format_info(text: str) -> str:
    return f"* {text}\n"


def format_error(text: str) -> str:
    return f"! {text}\n"


def format_history_header(room: str, count: int) -> str:
    """The ``*`` line before a ``/history`` replay (``count`` lines follow)."""
    if count == 0:
        return format_info(f"No history in {room}")
    return format_info(f"History of {room}, last {count} line{'s' if count != 1 else ''}:")


def format_history_footer(room: str) -> str:
    return format_info(f"End of history of {room}")


# --- Rendering the hub's events ---------------------------------------------


class LineDialect:
    """Renders the hub's events as v1 lines: ``[HH:MM:SS] <name> text`` and friends.

    Pure apart from its one-second timestamp cache; one instance serves every
    line-door member, so a burst is rendered once for all of them.
    """

    __slots__ = ("_stamp",)

    name: Final = "line"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._stamp = Timestamper(clock)

    def render(self, events: Sequence[ev.Event], /) -> bytes:
        stamp, said, line = self._stamp, ev.Said, self.line
        # Chat lines are nearly all of it: they skip the match below.
        return "".join(
            [
                f"{stamp(event.time)} <{event.name}> {event.text}\n"
                if type(event) is said
                else line(event)
                for event in events
            ]
        ).encode()

    def line(self, event: ev.Event) -> str:
        """One event's text, ending in a newline (a few events take several lines)."""
        stamp = self._stamp
        match event:
            case ev.Said(name=name, text=text):
                return f"{stamp(event.time)} <{name}> {text}\n"
            case ev.Acted(name=name, text=text):
                return f"{stamp(event.time)} * {name} {text}\n"
            case ev.Joined(room=room, name=name):
                return f"{stamp(event.time)} * {name} joined {room}\n"
            case ev.Left(room=room, name=name, reason=reason):
                return f"{stamp(event.time)} * {name} left {room} ({reason})\n"
            case ev.Renamed(old=old, new=new):
                return f"{stamp(event.time)} * {old} is now known as {new}\n"
            case ev.TopicSet(room=room, name=name, topic=topic):
                return f"{stamp(event.time)} * {name} set the topic of {room}: {topic}\n"
            case ev.Legacy(line=line):
                return f"{line}\n"
            case ev.Private(echo=True):
                return format_private_echo(stamp(event.time), event.recipient, event.text)
            case ev.Private():
                return format_private(stamp(event.time), event.sender, event.text)
            case ev.Notice(text=text):
                return format_info(text)
            case ev.Error(text=text):
                return format_error(text)
            case ev.UserList(room=room, names=names, total=total) if total > len(names):
                more = f", and {total - len(names)} more (/users all lists everyone)"
                return format_info(f"Users in {room} ({total}): {marked_names(event)}{more}")
            case ev.UserList(room=room):
                return format_info(f"Users in {room}: {marked_names(event)}")
            case ev.RoleChanged(room=room, name=name, by=""):
                return f"{stamp(event.time)} * {name} is an operator of {room}\n"
            case ev.RoleChanged(room=room, name=name, by=by, op=True):
                return f"{stamp(event.time)} * {by} made {name} an operator of {room}\n"
            case ev.RoleChanged(room=room, name=name, by=by):
                return f"{stamp(event.time)} * {by} took {name}'s operator rights in {room}\n"
            case ev.Presence(room=room, joined=joined, left=left, seconds=seconds):
                return format_info(
                    f"{joined} joined and {left} left {room} in the last {seconds:g} s"
                )
            case ev.RoomList(rooms=rooms):
                listed = ", ".join(f"{name} ({count})" for name, count in rooms)
                return format_info(f"Rooms: {listed}")
            case ev.Replay(room=room, events=events):
                if not events:
                    return format_history_header(room, 0)
                return "".join(
                    [
                        format_history_header(room, len(events)),
                        *map(self.line, events),
                        format_history_footer(room),
                    ]
                )
        raise AssertionError(f"no line for {event!r}")  # pragma: no cover
