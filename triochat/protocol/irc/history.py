"""``CHATHISTORY`` (IRCv3 ``draft/chathistory``), pure: reading a request, choosing events.

A message is referred to by its ``msgid`` (``#room/SEQ``, the room's sequence
number: see :func:`~triochat.protocol.irc.render.msgid`) or by a
``timestamp=`` in the ``server-time`` format. Only chat lines and actions are
history here (the kinds a client without ``draft/event-playback`` expects).
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ...core import events as ev

SUBCOMMANDS: Final = frozenset({"LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN"})

_TIMESTAMP_RE: Final = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?Z")
_MSGID_RE: Final = re.compile(r"#[^/\s]+/(\d{1,18})")


@dataclass(frozen=True, slots=True)
class Point:
    """A place in a room's history: after the event numbered ``seq``, or at ``time``."""

    seq: int | None = None
    time: float | None = None

    def key(self, event: ev.RoomEvent) -> float:
        """Where ``event`` is, measured as this point is (its number or its time)."""
        return event.seq if self.seq is not None else event.time

    @property
    def value(self) -> float:
        return self.seq if self.seq is not None else (self.time or 0.0)


@dataclass(frozen=True, slots=True)
class Query:
    """What to choose: ``subcommand`` around ``points`` (``None``: ``*``), at most ``limit``."""

    subcommand: str
    points: tuple[Point | None, ...]
    limit: int


def parse_point(text: str) -> Point | str | None:
    """A reference: ``*`` is ``None``; a ``str`` result says what is wrong with it."""
    if text == "*":
        return None
    kind, _, value = text.partition("=")
    if kind == "msgid" and (found := _MSGID_RE.fullmatch(value)):
        return Point(seq=int(found.group(1)))
    if kind == "timestamp" and (found := _TIMESTAMP_RE.fullmatch(value)):
        whole = calendar.timegm(time.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S"))
        fraction = found.group(2) or "0"
        return Point(time=whole + int(fraction) / 10 ** len(fraction))
    return f"Not a message reference: {text[:64]}"


def parse(subcommand: str, args: Sequence[str], most: int) -> Query | str:
    """The request ``CHATHISTORY subcommand target *args``, or what is wrong with it."""
    sub = subcommand.upper()
    if sub not in SUBCOMMANDS:
        return f"Unknown subcommand {subcommand[:16]} (try LATEST, BEFORE, AFTER, AROUND, BETWEEN)"
    wanted = 3 if sub == "BETWEEN" else 2
    if len(args) < wanted:
        return "Missing parameters"
    *refs, count = args[:wanted]
    if not count.isdecimal() or not int(count) > 0:
        return f"The limit must be a positive number, not {count[:16]}"
    points: list[Point | None] = []
    for ref in refs:
        point = parse_point(ref)
        if isinstance(point, str):
            return point
        if point is None and sub != "LATEST":
            return f"{sub} needs a msgid= or timestamp= reference, not *"
        points.append(point)
    return Query(sub, tuple(points), min(int(count), most))


def select(events: Sequence[ev.RoomEvent], query: Query) -> list[ev.RoomEvent]:
    """The events ``query`` asks for among ``events`` (oldest first), oldest first."""
    said: list[ev.RoomEvent] = [e for e in events if isinstance(e, ev.Said | ev.Acted)]
    limit = query.limit
    match query.subcommand, query.points:
        case "LATEST", (None,):
            return said[-limit:]
        case "LATEST" | "AFTER", (Point() as point,):
            later = [e for e in said if point.key(e) > point.value]
            return later[-limit:] if query.subcommand == "LATEST" else later[:limit]
        case "BEFORE", (Point() as point,):
            return [e for e in said if point.key(e) < point.value][-limit:]
        case "AROUND", (Point() as point,):
            before = [e for e in said if point.key(e) < point.value]
            after = [e for e in said if point.key(e) >= point.value]
            half = before[-(limit // 2) :] if limit // 2 else []
            return [*half, *after[: limit - len(half)]]
        case "BETWEEN", (Point() as start, Point() as end):
            low, high = sorted((start, end), key=lambda p: p.value)
            inside = [e for e in said if low.key(e) > low.value and high.key(e) < high.value]
            return inside[:limit] if start.value <= end.value else inside[-limit:]
    return []  # pragma: no cover (parse makes only the queries above)
