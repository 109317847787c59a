"""Events as text records, for whatever keeps or carries them (SQLite, Redis).

A record is a JSON array: the event's type name, then its fields in order,
e.g. ``["Said", "#lobby", 7, 1764590000.25, "ann", "hello"]``. Compact, and
readable with ``sqlite3`` or ``redis-cli``. :func:`decode` checks every field's
type, so a bad record is a :class:`RecordError`, never a half-built event.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Final

from . import events as ev

_TYPES: Final[dict[str, type[ev.RoomEvent] | type[ev.Private]]] = {
    cls.__name__: cls
    for cls in (
        ev.Said,
        ev.Acted,
        ev.Joined,
        ev.Left,
        ev.Renamed,
        ev.TopicSet,
        ev.RoleChanged,
        ev.Presence,
        ev.Legacy,
        ev.Away,
        ev.Private,
    )
}
_FIELDS: Final = {
    name: tuple((f.name, f.type) for f in dataclasses.fields(cls)) for name, cls in _TYPES.items()
}
_CHECKS: Final = {"str": (str,), "int": (int,), "float": (float, int), "bool": (bool,)}


class RecordError(ValueError):
    """A record that is not an event this version knows."""


def encode(event: ev.RoomEvent | ev.Private) -> str:
    """The record of ``event``."""
    return json.dumps(
        [type(event).__name__, *dataclasses.astuple(event)],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def decode(record: str | bytes) -> ev.RoomEvent | ev.Private:
    """The event a record holds; :class:`RecordError` if it holds none."""
    try:
        values = json.loads(record)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"not JSON: {exc}") from None
    if not isinstance(values, list) or not values or not isinstance(values[0], str):
        raise RecordError("not an event record")
    kind, *args = values
    cls = _TYPES.get(kind)
    if cls is None:
        raise RecordError(f"unknown event type {kind!r}")
    fields = _FIELDS[kind]
    if len(args) != len(fields):
        raise RecordError(f"{kind} has {len(fields)} fields, not {len(args)}")
    for value, (name, annotation) in zip(args, fields, strict=True):
        allowed = _CHECKS[str(annotation)]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise RecordError(f"{kind}.{name} must be {annotation}, not {value!r}")
    return cls(*args)


def decode_room_event(record: str | bytes) -> ev.RoomEvent:
    """Like :func:`decode`, for a record that must hold a room event."""
    event = decode(record)
    if isinstance(event, ev.Private):
        raise RecordError("a private message where a room event was expected")
    return event
