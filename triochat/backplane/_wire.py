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


Record = Line | Presence | Private


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
            else:
                raise WireError(f"unknown record kind {kind!r}")
        return node, int(seq), records
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"malformed batch: {exc}") from None
