"""What nodes say to each other on the cluster's channel (sans-IO).

One pub/sub message is a batch: a header line ``NODE<TAB>SEQ`` and then one
record a line. Nothing in a record can hold a tab or newline (text is
cleaned of control characters before it is stored or relayed), so tabs
and newlines frame it. Records:

``L<TAB>ROOM<TAB>0|1<TAB>LINE``
    a room line (1: it goes into the room's history)
``P<TAB>NODE<TAB>KEY<TAB>NAME<TAB>ROOM``
    a user's presence on NODE; an empty ROOM means gone
``M<TAB>KEY<TAB>LINE``
    a private line for the user holding KEY
``D<TAB>ROOM``
    ROOM's history was dropped: no node has a member in it any more
``H<TAB>ROOM<TAB>LINE<TAB>LINE...``
    ROOM's history is now exactly these lines, oldest first (a drop was undone)

Redis itself publishes the last two kinds, from the Lua scripts in
:mod:`triochat.backplane.redis` that drop and restore a history, because
only Redis knows whether they happened; those scripts build ``H`` records
as described here, joining the lines with tabs.

``SEQ`` counts each node's batches from 1, so a receiver can skip batches
it already has (from a snapshot) and notice ones it missed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Line:
    room: str
    record: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class Presence:
    node: str
    key: str
    name: str
    room: str
    """Empty: the user is gone."""


@dataclass(frozen=True, slots=True)
class Private:
    key: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    room: str


@dataclass(frozen=True, slots=True)
class History:
    room: str
    lines: tuple[bytes, ...]
    """Oldest first, each ending with a newline."""


Record = Line | Presence | Private | Drop | History


class WireError(ValueError):
    """A batch that does not parse (another program on our channel, or a bug)."""


def encode_record(record: Record) -> bytes:
    """One record as its line, newline included."""
    match record:
        case Line(room, keep, data):
            return b"L\t%s\t%d\t%s" % (room.encode(), keep, _line(data))
        case Presence(node, key, name, room):
            return f"P\t{node}\t{key}\t{name}\t{room}\n".encode()
        case Private(key, data):
            return b"M\t%s\t%s" % (key.encode(), _line(data))
        case Drop(room):
            return f"D\t{room}\n".encode()
        case History(room, lines):
            fields = [b"H", room.encode(), *(line.rstrip(b"\n") for line in lines)]
            return b"\t".join(fields) + b"\n"


def _line(data: bytes) -> bytes:
    return data if data.endswith(b"\n") else data + b"\n"


def encode_batch(node: str, seq: int, records: list[bytes]) -> bytes:
    """A batch: the header and the already encoded records."""
    return b"".join([f"{node}\t{seq}\n".encode(), *records])


def decode_batch(payload: bytes) -> tuple[str, int, list[Record]]:
    """``(node, seq, records)`` from a batch; raises :class:`WireError` if malformed."""
    lines = payload.split(b"\n")
    try:
        node, seq = lines[0].decode().split("\t")
        records: list[Record] = []
        for raw in lines[1:]:
            if not raw:
                continue
            kind = raw[:1]
            if kind == b"L":
                _, room, keep, data = raw.split(b"\t", 3)
                records.append(Line(room.decode(), keep == b"1", data + b"\n"))
            elif kind == b"P":
                _, *fields = raw.decode().split("\t")
                records.append(Presence(*fields))
            elif kind == b"M":
                _, to, text = raw.split(b"\t", 2)
                records.append(Private(to.decode(), text + b"\n"))
            elif kind == b"D":
                _, name = raw.decode().split("\t")
                records.append(Drop(name))
            elif kind == b"H":
                _, where, *lines = raw.split(b"\t")
                records.append(History(where.decode(), tuple(line + b"\n" for line in lines)))
            else:
                raise WireError(f"unknown record kind {kind!r}")
        return node, int(seq), records
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"malformed batch: {exc}") from None
