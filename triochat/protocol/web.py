"""The web dialect, sans-IO: JSON messages over WebSocket, one event or command per message.

Nothing here does I/O or imports trio. Client messages (the text of one
WebSocket message) become a :class:`Register` or a core :data:`Command` with
:func:`parse_message`; the hub's events become complete WebSocket TEXT frames
with :class:`WebDialect`. The JSON protocol is documented for front-end and bot
authors in ``docs/web.md``.

Framing: :meth:`WebDialect.render` returns finished server frames (unmasked,
one per event), so the hub renders a burst once for every web member and the
door writes the same ``bytes`` to each socket, as the line door does: no
per-recipient JSON, no per-recipient framing (``docs/benchmarks.md``). Each
frame's JSON ends in one ``"\\n"`` and no frame header holds the byte 0x0A
(:func:`text_frame` pads the JSON with a space when its length would), so the
outbox's count of newlines is exactly the number of events queued, and its
bound (``--send-queue``) means the same on both doors.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..core import commands as c, events as ev
from ..core.commands import (
    Command,
    Help,
    History,
    Invalid,
    Join,
    Me,
    Msg,
    Nick,
    Part,
    Quit,
    Rooms,
    Say,
    Users,
)
from . import line as p
from .v2 import Ack, Resume

DEFAULT_MAX_MESSAGE: Final = 16384
"""Most bytes in one client message (all its frames); past it the door closes with 1009."""

# WebSocket close codes the door uses (RFC 6455 section 7.4; 4000-4999 are ours).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
"""The server is shutting down: reconnect later."""
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED: Final = 1003
"""A binary message: this protocol is JSON text."""
CLOSE_TOO_BIG: Final = 1009
CLOSE_TRY_LATER: Final = 1013
"""The server is full, or the address has too many connections."""
CLOSE_TOO_SLOW: Final = 4000
CLOSE_WRONG_PASSWORD: Final = 4001
CLOSE_NO_NAME: Final = 4002
"""No ``register`` within the registration timeout."""
CLOSE_PING_TIMEOUT: Final = 4003
CLOSE_EXPELLED: Final = 4004
"""The name was claimed elsewhere in the cluster, or the server ended the session."""
CLOSE_BAD_TOKENS: Final = 4005
"""Too many bad resume tokens on one connection (``--resume-attempts``)."""
MAX_TOKEN: Final = 128
"""Most characters in a resume token or an epoch a client sends (ours are 32 and 12)."""

HELP: Final = (
    "Commands:",
    "  TEXT               say TEXT in this room (//TEXT sends /TEXT)",
    "  /me TEXT           an action: * NAME TEXT",
    "  /msg NAME TEXT     a private message (alias /whisper)",
    "  /join #ROOM        join #ROOM too (created on demand)",
    "  /part [REASON]     leave this room (alias /leave)",
    "  /nick NAME         change your name",
    "  /users             who is in this room (aliases /who, /names)",
    "  /rooms             the rooms and their sizes (alias /list)",
    f"  /history [N]       replay N older lines of this room (max {p.HISTORY_MAX})",
    "  /quit [REASON]     leave the chat (alias /exit)",
    "  /help              this list",
)


# --- Client to server ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Register:
    """The first message: who the client is, and where it was.

    ``rooms`` are joined once registered (a reconnecting page passes the rooms
    it was in; the default is the lobby). With a ``token`` the client asks to
    take its held member back instead (:meth:`resumption`): ``resume`` maps
    each room to the epoch and the last sequence number the client has shown
    there. If the token is not valid, the name, password and rooms register
    anew, as without one.
    """

    name: str
    password: str | None = None
    rooms: tuple[str, ...] = (p.LOBBY,)
    resume: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    account_password: str | None = field(default=None, repr=False)
    """The registered name's own password (``--db``), asked for by ``account_password``."""
    token: str | None = field(default=None, repr=False)
    """The resume token of the member to take back (a secret: never in a repr)."""

    def resumption(self) -> Resume | None:
        """The resume this register asks for, if it holds a token."""
        if self.token is None:
            return None
        return Resume(self.token, tuple((room, e, s) for room, (e, s) in self.resume.items()))


ClientMessage = Register | Command | Ack


def parse_message(
    data: str, *, max_text: int = p.DEFAULT_MAX_LINE, max_rooms: int = 50
) -> ClientMessage:
    """Parse the text of one client message; anything wrong becomes :class:`Invalid`.

    ``max_text`` bounds one chat text or reason in UTF-8 bytes (the line door's
    ``--max-line``); the door bounds the whole message before it gets here.
    Text is cleaned as on the line door (no control characters, no lone
    surrogates), so what the hub relays is the same whichever door it came by.
    """
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return Invalid(f"Bad JSON: {exc}")
    if not isinstance(message, dict):
        return Invalid('A message is a JSON object with a "type"')
    try:
        return _parse(message, max_text, max_rooms)
    except _Bad as exc:
        return Invalid(str(exc))


class _Bad(Exception):
    """A field is missing or wrong; the text says which."""


def _parse(message: dict[str, Any], max_text: int, max_rooms: int) -> ClientMessage:
    kind = message.get("type")
    if kind == "say":
        return Say(_text(message, "text", max_text), _room(message))
    if kind == "me":
        return Me(_text(message, "text", max_text), _room(message))
    if kind == "line":
        return _line(message, max_text)
    if kind == "msg":
        return Msg(_string(message, "to"), _text(message, "text", max_text))
    if kind == "join":
        return Join(_room(message))
    if kind == "part":
        return Part(_room(message), _text(message, "reason", max_text, optional=True))
    if kind == "nick":
        return Nick(_string(message, "name"))
    if kind == "users":
        everyone = message.get("all", False)
        if not isinstance(everyone, bool):
            raise _Bad('"all" is true or false')
        return Users(_room(message), everyone)
    if kind == "rooms":
        return Rooms()
    if kind == "history":
        count = message.get("count", p.HISTORY_DEFAULT)
        if type(count) is not int or not 1 <= count <= p.HISTORY_MAX:
            raise _Bad(f'"count" is a whole number from 1 to {p.HISTORY_MAX}')
        return History(count, _room(message))
    if kind == "help":
        return Help()
    if kind == "quit":
        return Quit(_text(message, "reason", max_text, optional=True))
    if kind == "register":
        return _register(message, max_rooms)
    if kind == "ack":
        return Ack(_token(message, "token"))
    if not isinstance(kind, str):
        raise _Bad('A message is a JSON object with a "type"')
    raise _Bad(f"Unknown message type {kind[:40]!r}")


def _line(message: dict[str, Any], max_text: int) -> Command:
    """A line as an ``nc`` user would type it, in ``room``: the same / commands."""
    room = _room(message)
    text = _text(message, "text", max_text)
    verb, _, rest = text.partition(" ")
    if verb.lower() in ("/part", "/leave"):
        return Part(room, rest.strip())
    command = p.parse_command(text)
    match command:
        case None:
            raise _Bad('"text" must not be empty')
        case Say(text=said):
            return Say(said, room)
        case Me(text=acted):
            return Me(acted, room)
        case Users(everyone=everyone):
            return Users(room, everyone)
        case History(count=count):
            return History(count, room)
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
            # A moderation command is for the room the line was typed in.
            return dataclasses.replace(command, room=room)
    return command


def _register(message: dict[str, Any], max_rooms: int) -> Register:
    name = _string(message, "name").strip()
    password = message.get("password")
    if password is not None and not isinstance(password, str):
        raise _Bad('"password" is a string')
    raw_rooms = message.get("rooms", [p.LOBBY])
    if not isinstance(raw_rooms, list) or not 1 <= len(raw_rooms) <= max_rooms:
        raise _Bad(f'"rooms" is a list of 1 to {max_rooms} room names')
    rooms = tuple(dict.fromkeys(_room({"room": room}) for room in raw_rooms))
    token = _token(message, "token") if "token" in message else None
    raw_resume = message.get("resume", {})
    if not isinstance(raw_resume, dict) or len(raw_resume) > max_rooms:
        raise _Bad(RESUME_RULE)
    resume: dict[str, tuple[str, int]] = {}
    for room, mark in raw_resume.items():
        if not isinstance(mark, dict):
            raise _Bad(RESUME_RULE)
        epoch, seq = mark.get("epoch"), mark.get("seq")
        if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_TOKEN:
            raise _Bad(RESUME_RULE)
        if type(seq) is not int or not 0 <= seq < 2**63:
            raise _Bad(RESUME_RULE)
        resume[_room({"room": room})] = (epoch, seq)
    account = message.get("account_password")
    if account is not None and not isinstance(account, str):
        raise _Bad('"account_password" is a string')
    return Register(name, password or None, rooms, resume, account or None, token)


RESUME_RULE: Final = '"resume" maps room names to {"epoch": "...", "seq": N}'


def _token(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TOKEN:
        raise _Bad(f'"{key}" is a resume token (a string of at most {MAX_TOKEN} characters)')
    return value


def _string(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise _Bad(f'"{key}" is a non-empty string')
    return p.clean_text(_valid_unicode(value))


def _text(message: dict[str, Any], key: str, limit: int, *, optional: bool = False) -> str:
    value = message.get(key, "" if optional else None)
    if not isinstance(value, str):
        raise _Bad(f'"{key}" is a string')
    value = p.clean_text(_valid_unicode(value))
    if len(value.encode()) > limit:
        raise _Bad(f"Message too long (limit {limit} bytes); it was discarded")
    if not optional and (not value or value.isspace()):
        raise _Bad(f'"{key}" must not be empty')
    return value


def _room(message: dict[str, Any]) -> str:
    value = message.get("room")
    if not isinstance(value, str):
        raise _Bad('"room" is a room name such as "#lobby"')
    room = p.normalize_room(value)
    if room is None:
        raise _Bad(f"Invalid room {value[:40]!r}: {p.ROOM_RULES}")
    return room


def _valid_unicode(text: str) -> str:
    """``text`` without lone surrogates (JSON can carry ``"\\ud800"``; UTF-8 cannot)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()
    return text


# --- Server to client ------------------------------------------------------------


def text_frame(payload: bytes) -> bytes:
    """A complete unmasked WebSocket TEXT frame holding ``payload`` (JSON ending in ``\\n``).

    If a byte of the frame's length field would be 0x0A, a space (JSON
    whitespace) is added before the newline, so the only 0x0A bytes in a
    frame are its JSON's line ends (see the module's docstring).
    """
    while True:
        header = _header(len(payload))
        if 0x0A not in header:
            return header + payload
        payload = payload[:-1] + b" \n"


def _header(size: int) -> bytes:
    """The header of an unmasked TEXT frame of ``size`` payload bytes."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size)
    return struct.pack("!BBQ", 0x81, 127, size)


HEADERS_KEPT: Final = 1024
"""Frame headers a :class:`WebDialect` keeps, one per payload size (chat lines have a few sizes)."""


_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring
"""A JSON string literal for ``text``, non-ASCII kept (C speed)."""


class _IsoTime:
    """ISO-8601 UTC times (``2026-12-01T20:16:49.123Z``), the date part made once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((when - second) * 1000):03d}Z"


class WebDialect:
    """Renders the hub's events as JSON in WebSocket frames: one frame per event.

    One instance serves every web member, so a burst costs one render for all
    of them. Pure apart from its one-second date cache.
    """

    __slots__ = ("_dumps", "_headers", "_iso")

    name: Final = "web"
    resumes: Final = True
    """Web members resume rooms: the hub keeps their rooms' recent events."""

    def __init__(self) -> None:
        self._iso = _IsoTime()
        self._dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
        self._headers: dict[int, bytes] = {}  # payload size -> its frame's header, none with 0x0A

    def render(self, events: Sequence[ev.Event], /) -> bytes:
        # Chat lines are nearly all of it: they are written out directly, three
        # times faster than building a dict for the encoder (names and rooms need
        # no escaping: letters, digits, _ and - only). A burst's lines share one
        # time, so its two forms are made once; a frame's header is looked up.
        said, headers, quote = ev.Said, self._headers, _quote
        parts: list[bytes] = []
        append = parts.append
        when: float | None = None
        stamp = ""
        for event in events:
            if type(event) is said:
                if event.time != when:
                    when = event.time
                    stamp = f'"time":"{self._iso(when)}","ts":{when!r},'
                payload = (
                    f'{{"type":"said","room":"{event.room}","seq":{event.seq},{stamp}'
                    f'"name":"{event.name}","text":{quote(event.text)}}}\n'.encode()
                )
                header = headers.get(len(payload))
                if header is None:
                    header = _header(len(payload))
                    if 0x0A in header:
                        append(text_frame(payload))
                        continue
                    if len(headers) < HEADERS_KEPT:
                        headers[len(payload)] = header
                append(header)
                append(payload)
            elif type(event) is ev.Resumed:
                append(self._resumed(event))
            else:
                append(text_frame(f"{self.json(event)}\n".encode()))
        return b"".join(parts)

    def _resumed(self, event: ev.Resumed) -> bytes:
        """A resume's replay: each event its own message, as if live, then ``resumed``."""
        done = {"type": "resumed", "room": event.room, "epoch": event.epoch, "seq": event.seq}
        done["count"] = len(event.events)
        return self.render(event.events) + self.render_one(done)

    def render_one(self, message: Mapping[str, Any]) -> bytes:
        """A message of the door's own (``hello``, ``registered``) as one frame."""
        return text_frame(f"{self._dumps(message)}\n".encode())

    def json(self, event: ev.Event) -> str:
        """One event's JSON text, without the frame's newline."""
        if type(event) is ev.Replay:
            # One line per replayed event, so the outbox counts them as on the line door.
            head = self._dumps({"type": "history", "room": event.room})[:-1]
            body = ",\n".join([self._dumps(self._room_event(e)) for e in event.events])
            return f'{head},"events":[\n{body}]}}' if body else f'{head},"events":[]}}'
        return self._dumps(self.message(event))

    def message(self, event: ev.Event) -> dict[str, Any]:
        """The JSON object for one event."""
        if isinstance(event, ev._InRoom):
            return self._room_event(event)
        match event:
            case ev.Private(time=when, sender=sender, recipient=recipient, text=text):
                return {
                    "type": "private",
                    "time": self._iso(when),
                    "ts": when,
                    "from": sender,
                    "to": recipient,
                    "text": text,
                    "echo": event.echo,
                }
            case ev.Notice(text=text):
                return {"type": "notice", "text": text}
            case ev.Error(text=text):
                return {"type": "error", "text": text}
            case ev.UserList(room=room, names=names, total=total, ops=ops, away=away):
                return {
                    "type": "users",
                    "room": room,
                    "names": list(names),
                    "total": total,
                    "ops": [name for name in names if name in ops],
                    "away": [name for name in names if name in away],
                }
            case ev.RoomList(rooms=rooms):
                return {
                    "type": "rooms",
                    "rooms": [{"room": name, "members": count} for name, count in rooms],
                }
            case ev.Replay(room=room, events=events):
                return {
                    "type": "history",
                    "room": room,
                    "events": [self._room_event(e) for e in events],
                }
            case ev.Welcome(name=name, token=token, grace=grace):
                return {"type": "welcome", "name": name, "token": token, "grace": grace}
            case ev.RoomState(room=room, epoch=epoch, seq=seq):
                return {"type": "room", "room": room, "epoch": epoch, "seq": seq}
            case ev.ResumeFailed(room=room, epoch=epoch, seq=seq, lost=lost, reason=reason):
                return {
                    "type": "resume-failed",
                    "room": room,
                    "epoch": epoch,
                    "seq": seq,
                    "lost": lost,
                    "reason": reason,
                }
        raise AssertionError(f"no message for {event!r}")  # pragma: no cover

    def _room_event(self, event: ev.RoomEvent) -> dict[str, Any]:
        head: dict[str, Any] = {
            "type": "",
            "room": event.room,
            "seq": event.seq,
            "time": self._iso(event.time),
            "ts": event.time,
        }
        match event:
            case ev.Said(name=name, text=text):
                head.update(type="said", name=name, text=text)
            case ev.Acted(name=name, text=text):
                head.update(type="acted", name=name, text=text)
            case ev.Joined(name=name):
                head.update(type="joined", name=name)
            case ev.Left(name=name, reason=reason):
                head.update(type="left", name=name, reason=reason)
            case ev.Renamed(old=old, new=new):
                head.update(type="renamed", old=old, new=new)
            case ev.TopicSet(name=name, topic=topic):
                head.update(type="topic", name=name, topic=topic)
            case ev.RoleChanged(name=name, by=by, op=op):
                head.update(type="role", name=name, by=by, op=op)
            case ev.Presence(joined=joined, left=left, seconds=seconds):
                head.update(type="presence", joined=joined, left=left, seconds=seconds)
            case ev.Legacy(line=line):
                head.update(type="legacy", line=line)
        return head
