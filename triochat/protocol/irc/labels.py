"""IRCv3 ``labeled-response``, pure: the answer to a labeled command, as the client gets it.

A client that negotiated ``labeled-response`` (and ``batch``, which it needs)
may tag a command with ``@label=X``. Everything the server sends that client
while it carries the command out is the answer, and goes out as one logical
message carrying the label: nothing is an ``ACK``, one line is that line with
the tag, several are wrapped in a ``labeled-response`` batch whose start
carries it (a ``CHATHISTORY`` batch inside is nested: its ``BATCH`` lines join
the outer batch, its lines stay in their own).
"""

from __future__ import annotations

from typing import Final

from . import wire

MAX_LABEL: Final = 64
"""The longest label taken, in bytes (a longer one is ignored: the answer goes unlabeled)."""


def usable(label: str | None, limit: int = MAX_LABEL) -> str | None:
    """``label`` if it can label an answer (not empty, at most ``limit`` bytes), else ``None``."""
    if not label or len(label.encode()) > limit:
        return None
    return label


def _tagged(line: bytes, tag: bytes) -> bytes:
    """``line`` (without CR LF) with ``tag`` (``key=value``) first among its tags."""
    if line.startswith(b"@"):
        return b"@" + tag + b";" + line[1:]
    return b"@" + tag + b" " + line


def _in_batch(line: bytes) -> bool:
    if not line.startswith(b"@"):
        return False
    tags = line[1:].partition(b" ")[0]
    return any(item.partition(b"=")[0] == b"batch" for item in tags.split(b";"))


def answer(data: bytes, label: str, ref: str, server: str) -> bytes:
    """``data`` (whole lines, each ending in CR LF) as the answer to the command labeled ``label``.

    ``ref`` names the batch if one is needed; ``server`` is the source of the
    ``ACK`` and of the batch's lines.
    """
    tag = b"label=" + wire.escape_tag_value(label).encode()
    lines = data.split(b"\r\n")[:-1]
    if not lines:
        return _tagged(wire.serialize(wire.message("ACK", source=server)), tag)
    if len(lines) == 1:
        return _tagged(lines[0], tag) + b"\r\n"
    start = wire.serialize(wire.message("BATCH", f"+{ref}", "labeled-response", source=server))
    end = wire.serialize(wire.message("BATCH", f"-{ref}", source=server))
    inside = b"batch=" + ref.encode()
    body = b"".join(
        (line if _in_batch(line) else _tagged(line, inside)) + b"\r\n" for line in lines
    )
    return _tagged(start, tag) + body + end
