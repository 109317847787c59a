"""Protocol v2 on the line port, sans-IO: tagged lines that say their room, number and time.

A client opts in with :data:`HELLO` as its first line; the server answers
``hello version=2 ...`` and speaks v2 from then on (``docs/protocol.md``).
Every server line is ``KIND`` followed by ``key=value`` fields and, last, an
optional free text after `` :``::

    said room=#lobby seq=12 time=2026-12-01T21:05:38.123Z name=alice :hello there

Keys and values hold no spaces (names and rooms are letters, digits, ``_``
and ``-``; times are ISO 8601 UTC; epochs are hex), so a line splits without
guessing: :func:`parse_line` is the client side of :class:`V2Dialect`.

Client lines are v1's (:mod:`triochat.protocol.line`), plus ``/resume``
before a name, and ``/part``, ``/to`` and ``/ack`` (:func:`parse_command`).
Nothing here imports trio or does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ..core import commands as c, events as ev
from . import line as p

HELLO: Final = "TRIOCHAT/2"
"""The first line of a client that speaks v2 (a v1 name cannot contain ``/``)."""

VERSION: Final = 2


# --- Client lines ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """``/ack TOKEN``: the client holds its new resume token; the ones before it expire."""

    token: str


@dataclass(frozen=True, slots=True)
class Resume:
    """``/resume TOKEN [#room=EPOCH:SEQ ...]``, instead of a name: take a held member back."""

    token: str
    rooms: tuple[tuple[str, str, int], ...]
    """Each room to resume, the epoch and the last number the client has of it."""


@dataclass(frozen=True, slots=True)
class BadResume:
    """A ``/resume`` line that does not parse: ``message`` says how it should read."""

    message: str


RESUME_USAGE: Final = "Usage: /resume TOKEN [#room=EPOCH:SEQ ...]"


def parse_resume(line: str) -> Resume | BadResume | None:
    """A ``/resume`` line before registration, or ``None`` if ``line`` is not one."""
    verb, _, rest = line.partition(" ")
    if verb.lower() != "/resume":
        return None
    words = rest.split()
    if not words:
        return BadResume(RESUME_USAGE)
    token, *positions = words
    rooms = []
    for position in positions:
        room, _, mark = position.partition("=")
        epoch, _, seq = mark.partition(":")
        name = p.normalize_room(room)
        if name is None or not epoch or not seq.isdecimal() or len(seq) > 18:
            return BadResume(f"Bad room position {position!r}: {RESUME_USAGE}")
        rooms.append((name, epoch, int(seq)))
    return Resume(token, tuple(rooms))


def parse_command(line: str) -> c.Command | Ack | None:
    """A cleaned client line from a named v2 client (v1's commands and v2's own)."""
    verb, _, rest = line.partition(" ")
    verb = verb.lower()
    rest = rest.strip()
    if verb == "/ack":
        return Ack(rest) if rest and " " not in rest else c.Invalid("Usage: /ack TOKEN")
    if verb == "/part":
        room_name, _, reason = rest.partition(" ")
        room = p.normalize_room(room_name) if room_name else None
        if room is None:
            return c.Invalid("Usage: /part #ROOM [REASON]")
        return c.Part(room, reason.strip())
    if verb == "/to":
        room_name, _, text = rest.partition(" ")
        room = p.normalize_room(room_name) if room_name else None
        if room is None or not text.strip():
            return c.Invalid("Usage: /to #ROOM TEXT")
        return c.Say(text, room)
    return p.parse_command(line)


# --- Server lines ----------------------------------------------------------------


class UtcStamper:
    """ISO 8601 UTC times with milliseconds; the seconds are formatted once per second."""

    __slots__ = ("_second", "_stamp", "_text", "_when")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""
        self._when = -1.0
        self._stamp = ""

    def __call__(self, when: float) -> str:
        if when == self._when:  # a burst's lines share their time
            return self._stamp
        second = int(when // 1)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._when = when
        self._stamp = f"{self._text}.{int((when - second) * 1000):03d}Z"
        return self._stamp


def _grace(seconds: float) -> str:
    return f"{seconds:g}"


class V2Dialect:
    """Renders the hub's events as v2 lines; one instance serves every v2 member."""

    __slots__ = ("_stamp",)

    name: Final = "v2"
    resumes: Final = True
    """Members of this dialect resume rooms: the hub keeps their rooms' recent events."""

    def __init__(self) -> None:
        self._stamp = UtcStamper()

    def render(self, events: Sequence[ev.Event], /) -> bytes:
        stamp, said, line = self._stamp, ev.Said, self.line
        # Chat lines are nearly all of it: they skip the match below.
        return "".join(
            [
                f"said room={event.room} seq={event.seq} time={stamp(event.time)}"
                f" name={event.name} :{event.text}\n"
                if type(event) is said
                else line(event)
                for event in events
            ]
        ).encode()

    def _in(self, event: ev.RoomEvent) -> str:
        return f"room={event.room} seq={event.seq} time={self._stamp(event.time)}"

    def line(self, event: ev.Event) -> str:
        """One event's text, ending in a newline (a few events take several lines)."""
        match event:
            case ev.Said(name=name, text=text):
                return f"said {self._in(event)} name={name} :{text}\n"
            case ev.Acted(name=name, text=text):
                return f"acted {self._in(event)} name={name} :{text}\n"
            case ev.Joined(name=name):
                return f"joined {self._in(event)} name={name}\n"
            case ev.Left(name=name, reason=reason):
                return f"left {self._in(event)} name={name} :{reason}\n"
            case ev.Renamed(old=old, new=new):
                return f"renamed {self._in(event)} old={old} new={new}\n"
            case ev.TopicSet(name=name, topic=topic):
                return f"topic {self._in(event)} name={name} :{topic}\n"
            case ev.RoleChanged(name=name, by=by, op=op):
                kind = "opped" if op else "deopped"
                return f"{kind} {self._in(event)} name={name} by={by}\n"
            case ev.Presence(joined=joined, left=left, seconds=seconds):
                return (
                    f"presence {self._in(event)} joined={joined} left={left} seconds={seconds:g}\n"
                )
            case ev.Legacy(line=text):
                return f"legacy {self._in(event)} :{text}\n"
            case ev.Private(echo=echo, sender=sender, recipient=recipient, text=text):
                kind = "private-sent" if echo else "private"
                stamp = self._stamp(event.time)
                return f"{kind} time={stamp} from={sender} to={recipient} :{text}\n"
            case ev.Notice(text=text):
                return f"notice :{text}\n"
            case ev.Error(text=text):
                return f"error :{text}\n"
            case ev.UserList(room=room, names=names, total=total, ops=ops, away=away):
                # Marks are keys (names hold no space or comma): the names stay bare.
                marks = "".join(
                    f" {key}={','.join(n for n in names if n in held)}"
                    for key, held in (("ops", ops), ("away", away))
                    if held
                )
                return f"users room={room} total={total}{marks} :{' '.join(names)}\n"
            case ev.RoomList(rooms=rooms):
                listed = " ".join(f"{name}={count}" for name, count in rooms)
                return f"rooms count={len(rooms)} :{listed}\n"
            case ev.Replay(room=room, events=events):
                return "".join(
                    [
                        f"history room={room} count={len(events)}\n",
                        *map(self.line, events),
                        f"history-end room={room}\n",
                    ]
                )
            case ev.RoomState(room=room, epoch=epoch, seq=seq):
                return f"room room={room} epoch={epoch} seq={seq}\n"
            case ev.Resumed(room=room, epoch=epoch, seq=seq, events=events):
                return "".join(
                    [
                        *map(self.line, events),
                        f"resumed room={room} epoch={epoch} seq={seq} count={len(events)}\n",
                    ]
                )
            case ev.ResumeFailed(room=room, epoch=epoch, seq=seq, lost=lost, reason=reason):
                return (
                    f"resume-failed room={room} epoch={epoch or '-'} seq={seq} lost={lost}"
                    f" :{reason}\n"
                )
            case ev.Welcome(name=name, token=token, grace=grace):
                return f"welcome name={name} token={token} grace={_grace(grace)}\n"
            case ev.Hello(version=version, grace=grace, resume_max=resume_max):
                return f"hello version={version} grace={_grace(grace)} resume-max={resume_max}\n"
        raise AssertionError(f"no v2 line for {event!r}")  # pragma: no cover


# --- The client's side -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerLine:
    """A parsed v2 server line: its kind, its fields, and its free text (``None``: none)."""

    kind: str
    fields: dict[str, str] = field(default_factory=dict)
    text: str | None = None

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def get(self, key: str, default: str = "") -> str:
        return self.fields.get(key, default)

    def number(self, key: str) -> int:
        return int(self.fields[key])


class V2ParseError(ValueError):
    """A line that is not v2 (the server's v1 welcome before the hello, say)."""


def parse_line(line: str) -> ServerLine:
    """Split one server line (without its newline) into kind, fields and text."""
    head, sep, text = line.partition(" :")
    kind, *pairs = head.split(" ")
    if not kind or not kind.replace("-", "").isalpha() or not kind.islower():
        raise V2ParseError(f"not a v2 line: {line!r}")
    fields = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise V2ParseError(f"not a v2 field {pair!r} in {line!r}")
        fields[key] = value
    return ServerLine(kind, fields, text if sep else None)
