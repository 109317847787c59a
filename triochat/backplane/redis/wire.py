"""What nodes say to each other on the cluster's channel (sans-IO).

One pub/sub message is a batch: a header line ``NODE<TAB>SEQ``, then one
record a line, each a compact JSON array whose first item is its kind.
JSON escapes every control character, so a record never holds a newline,
and newlines frame it. Room events travel as they left the hub, their
``seq`` and ``time`` included:

``["S", ROOM, SEQ, TIME, NAME, TEXT]``, ``["A", ...]`` (an action)
    :class:`~triochat.core.events.Said`, :class:`~triochat.core.events.Acted`
``["J", ROOM, SEQ, TIME, NAME]``, ``["L", ROOM, SEQ, TIME, NAME, REASON]``
    joined, left
``["N", ROOM, SEQ, TIME, OLD, NEW]``, ``["T", ROOM, SEQ, TIME, NAME, TOPIC]``
    renamed, topic set
``["G", ROOM, SEQ, TIME, LINE]``
    a line kept from before events (:class:`~triochat.core.events.Legacy`)

and the cluster's own records:

``["M", KEY, TIME, SENDER, RECIPIENT, TEXT, ECHO]``
    a private message for the user holding KEY (:class:`Direct`)
``["P", NODE, KEY, NAME, [ROOM, ...] | null]``
    a user's presence on NODE; ``null``: gone, its name released
``["D", ROOM]``
    ROOM's history was dropped: no node has a member in it any more
``["H", ROOM, [EVENT, ...]]``
    ROOM's history is now exactly these events, oldest first (a drop was undone)

A room's history in Redis is a list of encoded events (:func:`encode_event`,
without the newline). Redis itself publishes the last two kinds, from the
Lua scripts in :mod:`.scripts`, because only Redis knows whether a drop
happened; the undo script builds an ``H`` record by joining the stored
events with commas behind :func:`history_prefix`.

``SEQ`` in the header counts each node's batches from 1, so a receiver can
skip batches it already has (from a snapshot) and notice ones it missed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ...core.events import (
    Acted,
    Joined,
    Left,
    Legacy,
    Private,
    Renamed,
    RoomEvent,
    Said,
    TopicSet,
)


@dataclass(frozen=True, slots=True)
class Direct:
    """A private message for the user holding ``key``, on whichever node it is."""

    key: str
    event: Private


@dataclass(frozen=True, slots=True)
class Presence:
    node: str
    key: str
    name: str
    rooms: tuple[str, ...] | None
    """The rooms the user is in; ``None``: gone."""


@dataclass(frozen=True, slots=True)
class Drop:
    room: str


@dataclass(frozen=True, slots=True)
class History:
    room: str
    events: tuple[RoomEvent, ...]
    """Oldest first."""


Record = RoomEvent | Direct | Presence | Drop | History


class WireError(ValueError):
    """A batch or record that does not parse (another program on our channel, or a bug)."""


# Each room event's kind and the types of the fields after room, seq and time.
_ROOM_EVENTS: Final[dict[type[Any], tuple[str, tuple[str, ...]]]] = {
    Said: ("S", ("name", "text")),
    Acted: ("A", ("name", "text")),
    Joined: ("J", ("name",)),
    Left: ("L", ("name", "reason")),
    Renamed: ("N", ("old", "new")),
    TopicSet: ("T", ("name", "topic")),
    Legacy: ("G", ("line",)),
}
_BY_KIND: Final = {kind: (cls, names) for cls, (kind, names) in _ROOM_EVENTS.items()}


def _dumps(value: object) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # Text is cleaned before the hub sees it; a lone surrogate still must not crash a node.
    return text.encode("utf-8", "surrogatepass")


def _event_items(event: RoomEvent) -> list[object]:
    kind, names = _ROOM_EVENTS[type(event)]
    return [kind, event.room, event.seq, event.time, *(getattr(event, n) for n in names)]


def encode_event(event: RoomEvent) -> bytes:
    """One room event as stored in a history list (no newline)."""
    return _dumps(_event_items(event))


def encode_record(record: Record) -> bytes:
    """One record as its line, newline included."""
    items: object
    match record:
        case Direct(key, Private(time, sender, recipient, text, echo)):
            items = ["M", key, time, sender, recipient, text, echo]
        case Presence(node, key, name, rooms):
            items = ["P", node, key, name, None if rooms is None else list(rooms)]
        case Drop(room):
            items = ["D", room]
        case History(room, events):
            items = ["H", room, [_event_items(e) for e in events]]
        case _:
            items = _event_items(record)
    return _dumps(items) + b"\n"


def encode_presence(node: str, name: str, rooms: Sequence[str]) -> bytes:
    """A user's entry in the presence hash: ``[NODE, NAME, [ROOM, ...]]``."""
    return _dumps([node, name, list(rooms)])


def presence_prefix(node: str) -> bytes:
    """How every presence entry of ``node`` starts (for the reap script)."""
    return b"[" + _dumps(node) + b","


def decode_presence(raw: bytes) -> tuple[str, str, tuple[str, ...]]:
    """``(node, name, rooms)`` from a presence entry; raises :class:`WireError` if malformed."""
    items = _loads(raw)
    if not isinstance(items, list) or len(items) != 3:
        raise WireError(f"a presence entry is [node, name, rooms], not {items!r:.80}")
    node, name, rooms = items
    return _str(node), _str(name), _strs(rooms)


def history_prefix(room: str) -> bytes:
    """The start of ``room``'s ``H`` record, up to its first event (for the undo script)."""
    return b'["H",' + _dumps(room) + b",["


def encode_batch(node: str, seq: int, records: Sequence[bytes]) -> bytes:
    """A batch: the header and the already encoded records."""
    return b"".join([f"{node}\t{seq}\n".encode(), *records])


def decode_batch(payload: bytes) -> tuple[str, int, list[Record]]:
    """``(node, seq, records)`` from a batch; raises :class:`WireError` if malformed."""
    header, _, body = payload.partition(b"\n")
    try:
        node, seq = header.decode().split("\t")
        number = int(seq)
    except ValueError as exc:  # UnicodeDecodeError is one.
        raise WireError(f"malformed batch header {header[:80]!r}: {exc}") from None
    return node, number, [_record(_loads(raw)) for raw in body.split(b"\n") if raw]


def decode_event(raw: bytes) -> RoomEvent:
    """A room event from a history list; raises :class:`WireError` if malformed."""
    return _event(_loads(raw))


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8", "surrogatepass"), parse_constant=_no_constant)
    except ValueError as exc:
        raise WireError(f"malformed record {raw[:80]!r}: {exc}") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number here")


def _record(items: Any) -> Record:
    if not isinstance(items, list) or not items:
        raise WireError(f"a record is a non-empty array, not {items!r:.80}")
    kind = items[0]
    if kind == "M":
        _, key, time, sender, recipient, text, echo = _fields(items, 7)
        event = Private(_time(time), _str(sender), _str(recipient), _str(text), _bool(echo))
        return Direct(_str(key), event)
    if kind == "P":
        _, node, key, name, rooms = _fields(items, 5)
        return Presence(_str(node), _str(key), _str(name), None if rooms is None else _strs(rooms))
    if kind == "D":
        _, room = _fields(items, 2)
        return Drop(_str(room))
    if kind == "H":
        _, room, events = _fields(items, 3)
        if not isinstance(events, list):
            raise WireError(f"an H record's events are an array, not {events!r:.80}")
        return History(_str(room), tuple(_event(e) for e in events))
    return _event(items)


def _event(items: Any) -> RoomEvent:
    if not isinstance(items, list) or not items or items[0] not in _BY_KIND:
        raise WireError(f"not a record: {items!r:.80}")
    cls, names = _BY_KIND[items[0]]
    _, room, seq, time, *rest = _fields(items, 4 + len(names))
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise WireError(f"a sequence number is a natural number, not {seq!r:.80}")
    event: RoomEvent = cls(_str(room), seq, _time(time), *(_str(v) for v in rest))
    return event


def _fields(items: list[Any], count: int) -> list[Any]:
    if len(items) != count:
        raise WireError(f"a {items[0]!r:.10} record has {count} items, not {len(items)}")
    return items


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise WireError(f"expected a string, not {value!r:.80}")
    return value


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise WireError(f"expected an array of strings, not {value!r:.80}")
    return tuple(_str(v) for v in value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise WireError(f"expected true or false, not {value!r:.80}")
    return value


def _time(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(f"expected a time, not {value!r:.80}")
    return float(value)
