"""What nodes say to each other on the cluster's channel (sans-IO).

One pub/sub message is a batch: a header line ``NODE<TAB>SEQ``, then one
record a line, each a compact JSON array whose first item is its kind.
JSON escapes every control character, so a record never holds a newline,
and newlines frame it. Room events travel as the hub made them, ``seq`` and
``time`` included, as the event records of :mod:`triochat.core.records`
(the ones SQLite keeps too): ``["Said", ROOM, SEQ, TIME, NAME, TEXT]``,
``["Joined", ROOM, SEQ, TIME, NAME]``, ... The cluster's own records:

``["M", KEY, PRIVATE]``
    a private message (a ``Private`` event record) for the user holding KEY
``["N", KEY, TEXT, ERROR]``
    a line from the server for the user holding KEY (an error line if ERROR is true)
``["P", NODE, KEY, NAME, [ROOM, ...] | null, ACCOUNT | null, AWAY | null]``
    a user's presence on NODE; ``null`` rooms: gone, its name released. ACCOUNT is
    the key of the account it proved is its own, AWAY why it is away (``/away``), so
    every node can mark operators and away members wherever they are connected
``["D", ROOM]``
    ROOM's history was dropped: no node has a member in it any more
``["H", ROOM, [EVENT, ...]]``
    ROOM's history is now exactly these events, oldest first (a drop was undone)
``["T", ID, KEY, NAME, OLD, NEW, NONCE, [ROOM, ...], [[ROOM, EPOCH, SEQ], ...], ACCOUNT, AWAY]``
    node NEW took the resumable member ID (holding KEY) over from node OLD, at this
    point of the channel's order, where each room's numbering stood as given; ACCOUNT
    and AWAY (or ``null``) are its presence's (Redis copies them from the presence hash), so it is
    identified and away on NEW as it was on OLD (an older node's record has neither)
``["E", ROOM, EPOCH]``
    the room events that follow in the batch (up to the next record of another kind)
    were numbered in ROOM's epoch EPOCH
``["X", CHANGE]``
    a change of moderation or accounts (a :mod:`triochat.core.modstate` record)

Room events are numbered by Redis as it publishes them (the batch script of
:mod:`.scripts`): a node sends each one's record cut in two around its number
(:func:`numbered_parts`), and the script puts the number in between.

A room's history in Redis is a list of event records (:func:`encode_event`).
Redis itself publishes the last two kinds, from the Lua scripts in
:mod:`.scripts`, because only Redis knows whether a drop happened; the undo
script builds an ``H`` record by joining the stored events with commas
behind :func:`history_prefix`.

``SEQ`` in the header counts each node's batches from 1, so a receiver can
skip batches it already has (from a snapshot) and notice ones it missed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ...core import modstate, records
from ...core.events import Private, RoomEvent
from ...core.modstate import Change
from ..base import Takeover


@dataclass(frozen=True, slots=True)
class Direct:
    """A private message for the user holding ``key``, on whichever node it is."""

    key: str
    event: Private


@dataclass(frozen=True, slots=True)
class Told:
    """A server line for the user holding ``key``, on whichever node it is."""

    key: str
    text: str
    error: bool


@dataclass(frozen=True, slots=True)
class Whereabouts:
    """Which rooms a user of ``node`` is in (``P``), not a room's presence summary."""

    node: str
    key: str
    name: str
    rooms: tuple[str, ...] | None
    """The rooms the user is in; ``None``: gone."""
    account: str | None = None
    """The key of the account the user proved is its own, if any."""
    away: str | None = None
    """Why the user is away, if it is."""


@dataclass(frozen=True, slots=True)
class Drop:
    room: str


@dataclass(frozen=True, slots=True)
class History:
    room: str
    events: tuple[RoomEvent, ...]
    """Oldest first."""


@dataclass(frozen=True, slots=True)
class Epoch:
    """The room events after this record in a batch are numbered in ``room``'s ``epoch``."""

    room: str
    epoch: str


@dataclass(frozen=True, slots=True)
class Taken:
    """Node ``new`` took resumable member ``entry`` over from ``old`` (see the ``T`` record)."""

    entry: str
    takeover: Takeover
    old: str
    new: str
    nonce: str


@dataclass(frozen=True, slots=True)
class Shared:
    """A change of moderation or accounts, for every node (``X``)."""

    change: Change


Record = RoomEvent | Direct | Told | Whereabouts | Drop | History | Epoch | Taken | Shared


class WireError(ValueError):
    """A batch or record that does not parse (another program on our channel, or a bug)."""


def _dumps(value: object) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # Text is cleaned before the hub sees it; a lone surrogate still must not crash a node.
    return text.encode("utf-8", "surrogatepass")


def encode_event(event: RoomEvent | Private) -> bytes:
    """An event's record, as a history list stores it (no newline)."""
    return records.encode(event).encode("utf-8", "surrogatepass")


def encode_record(record: Record) -> bytes:
    """One record as its line, newline included."""
    match record:
        case Direct(key, event):
            return b'["M",' + _dumps(key) + b"," + encode_event(event) + b"]\n"
        case Told(key, text, error):
            return _dumps(["N", key, text, error]) + b"\n"
        case Whereabouts(node, key, name, rooms, account, away):
            listed = None if rooms is None else list(rooms)
            return _dumps(["P", node, key, name, listed, account, away]) + b"\n"
        case Drop(room):
            return _dumps(["D", room]) + b"\n"
        case History(room, events):
            return history_prefix(room) + b",".join(map(encode_event, events)) + b"]]\n"
        case Epoch(room, epoch):
            return _dumps(["E", room, epoch]) + b"\n"
        case Taken(entry, takeover, old, new, nonce):
            numbers = [[room, *numbering] for room, numbering in takeover.numbers.items()]
            fields = [entry, takeover.key, takeover.name, old, new, nonce, list(takeover.rooms)]
            marks = [takeover.account, takeover.away]
            return _dumps(["T", *fields, numbers, *marks]) + b"\n"
        case Shared(change):
            return b'["X",' + modstate.encode(change).encode("utf-8", "surrogatepass") + b"]\n"
        case _:
            return encode_event(record) + b"\n"


def numbered_parts(event: RoomEvent) -> tuple[bytes, bytes]:
    """``event``'s record cut around its number: what comes before it, and after."""
    record = encode_event(event)
    head = b'["' + type(event).__name__.encode() + b'",' + _dumps(event.room) + b","
    number = str(event.seq).encode()
    if not record.startswith(head + number + b","):  # pragma: no cover - records' layout
        raise WireError(f"cannot number the record {record[:80]!r}")
    return head, record[len(head) + len(number) :]


def epoch_head(room: str) -> bytes:
    """The start of ``room``'s ``E`` record, up to its epoch (the batch script ends it)."""
    return b'["E",' + _dumps(room) + b',"'


def encode_presence(
    node: str, name: str, rooms: Sequence[str], account: str | None = None, away: str | None = None
) -> bytes:
    """A user's entry in the presence hash: ``[NODE, NAME, [ROOM, ...], ACCOUNT, AWAY]``."""
    return _dumps([node, name, list(rooms), account, away])


def presence_prefix(node: str) -> bytes:
    """How every presence entry of ``node`` starts (for the reap script)."""
    return b"[" + _dumps(node) + b","


Presence = tuple[str, str, tuple[str, ...], str | None, str | None]
"""A presence entry: node, name, rooms, account, away."""


def decode_presence(raw: bytes) -> Presence:
    """``(node, name, rooms, account, away)`` from a presence entry (one written by an older
    node has no account or away); raises :class:`WireError` if malformed."""
    items = _loads(raw)
    if not isinstance(items, list) or len(items) not in (3, 5):
        raise WireError(f"a presence entry is [node, name, rooms, ...], not {items!r:.80}")
    node, name, rooms, account, away = (*items, None, None)[:5]
    return _str(node), _str(name), _strs(rooms), _optional(account), _optional(away)


def history_prefix(room: str) -> bytes:
    """The start of ``room``'s ``H`` record, up to its first event (for the undo script)."""
    return b'["H",' + _dumps(room) + b",["


def encode_batch(node: str, seq: int, lines: Sequence[bytes]) -> bytes:
    """A batch: the header and the already encoded records (``lines``)."""
    return b"".join([f"{node}\t{seq}\n".encode(), *lines])


def decode_batch(payload: bytes) -> tuple[str, int, list[Record]]:
    """``(node, seq, records)`` from a batch; raises :class:`WireError` if malformed."""
    header, _, body = payload.partition(b"\n")
    try:
        node, seq = header.decode().split("\t")
        number = int(seq)
    except ValueError as exc:  # UnicodeDecodeError is one.
        raise WireError(f"malformed batch header {header[:80]!r}: {exc}") from None
    return node, number, [_record(raw) for raw in body.split(b"\n") if raw]


def decode_event(raw: bytes | str) -> RoomEvent:
    """A room event from its record; raises :class:`WireError` if malformed."""
    try:
        text = raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else raw
        return records.decode_room_event(text)
    except (records.RecordError, UnicodeDecodeError) as exc:
        raise WireError(f"malformed event record {raw[:80]!r}: {exc}") from None


_CLUSTER_KINDS: Final = (
    b'["M",',
    b'["N",',
    b'["P",',
    b'["D",',
    b'["H",',
    b'["E",',
    b'["T",',
    b'["X",',
)


def _record(raw: bytes) -> Record:
    if not raw.startswith(_CLUSTER_KINDS):
        return decode_event(raw)
    items = _loads(raw)
    if not isinstance(items, list) or not items:
        raise WireError(f"a record is a non-empty array, not {items!r:.80}")
    kind = items[0]
    if kind == "M":
        _, key, event = _fields(items, 3)
        private = _decode_json_record(event)
        if not isinstance(private, Private):
            raise WireError(f"an M record holds a private message, not {private!r:.80}")
        return Direct(_str(key), private)
    if kind == "N":
        _, key, text, error = _fields(items, 4)
        if not isinstance(error, bool):
            raise WireError(f"an N record's last item is true or false, not {error!r:.20}")
        return Told(_str(key), _str(text), error)
    if kind == "P":
        _, node, key, name, rooms, account, away = _fields(items, 7)
        return Whereabouts(
            _str(node),
            _str(key),
            _str(name),
            None if rooms is None else _strs(rooms),
            _optional(account),
            _optional(away),
        )
    if kind == "D":
        _, room = _fields(items, 2)
        return Drop(_str(room))
    if kind == "E":
        _, room, epoch = _fields(items, 3)
        return Epoch(_str(room), _str(epoch))
    if kind == "T":
        if len(items) == 9:  # from a node that carried no account or away
            items = [*items, None, None]
        _, entry, key, name, old, new, nonce, rooms, numbers, account, away = _fields(items, 11)
        numbering: dict[str, tuple[str, int]] = {}
        for item in numbers or ():  # Lua's cjson makes an empty array {}
            if not isinstance(item, list) or len(item) != 3 or not isinstance(item[2], int):
                raise WireError(f"a T record's numbers are [room, epoch, seq], not {item!r:.80}")
            numbering[_str(item[0])] = (_str(item[1]), item[2])
        marks = _optional(account), _optional(away)
        takeover = Takeover(_str(key), _str(name), _strs(rooms or []), numbering, *marks)
        return Taken(_str(entry), takeover, _str(old), _str(new), _str(nonce))
    if kind == "X":
        _, change = _fields(items, 2)
        try:
            return Shared(modstate.decode(json.dumps(change, ensure_ascii=False)))
        except modstate.ChangeError as exc:
            raise WireError(f"malformed change record {change!r:.80}: {exc}") from None
    _, room, events = _fields(items, 3)
    if not isinstance(events, list):
        raise WireError(f"an H record's events are an array, not {events!r:.80}")
    return History(_str(room), tuple(_room_event(e) for e in events))


def _decode_json_record(items: Any) -> RoomEvent | Private:
    """An event record found inside another record (already parsed, so dumped again)."""
    try:
        return records.decode(json.dumps(items, ensure_ascii=False))
    except records.RecordError as exc:
        raise WireError(f"malformed event record {items!r:.80}: {exc}") from None


def _room_event(items: Any) -> RoomEvent:
    event = _decode_json_record(items)
    if isinstance(event, Private):
        raise WireError("a private message where a room event was expected")
    return event


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8", "surrogatepass"), parse_constant=_no_constant)
    except ValueError as exc:
        raise WireError(f"malformed record {raw[:80]!r}: {exc}") from None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number here")


def _fields(items: list[Any], count: int) -> list[Any]:
    if len(items) != count:
        raise WireError(f"a {items[0]!r:.10} record has {count} items, not {len(items)}")
    return items


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise WireError(f"expected a string, not {value!r:.80}")
    return value


def _optional(value: Any) -> str | None:
    return None if value is None else _str(value)


def _strs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise WireError(f"expected an array of strings, not {value!r:.80}")
    return tuple(_str(v) for v in value)
