"""SASL ``PLAIN`` over IRC's ``AUTHENTICATE``, pure: gathering the chunks, reading the payload.

The client sends its base64 payload in ``AUTHENTICATE`` chunks of 400 bytes
(IRCv3 ``sasl``): a shorter chunk is the last, and ``+`` ends a payload whose
length is a multiple of 400 (or an empty one). A ``PLAIN`` payload is
``authzid NUL authcid NUL password`` (RFC 4616); triochat takes an empty
authzid or one equal to the authcid (nobody acts for another account).
Neither class shows the password in its repr.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Final

CHUNK: Final = 400
"""The size of every chunk but the last (IRCv3 ``sasl``)."""
MAX_PAYLOAD: Final = 8192
"""The default most bytes of base64 one exchange may send (``IRCRules.max_sasl``):
room for the longest name and a password of ``--max-password`` characters."""
MECHANISMS: Final = ("PLAIN",)


class TooLong(ValueError):
    """A chunk over 400 bytes, or a payload over the limit (``905``)."""


@dataclass(frozen=True, slots=True)
class Plain:
    """What a ``PLAIN`` payload says: log in to ``account`` with ``password``."""

    account: str
    password: str = field(repr=False)


class Exchange:
    """One ``AUTHENTICATE PLAIN`` exchange's chunks, until the payload is whole."""

    __slots__ = ("_chunks", "_size", "limit")

    def __init__(self, limit: int = MAX_PAYLOAD) -> None:
        self.limit = limit
        self._chunks: list[str] = []
        self._size = 0

    def __repr__(self) -> str:
        return f"<Exchange {self._size} bytes so far>"

    def feed(self, chunk: str) -> str | None:
        """Take one chunk; the whole base64 payload once it is complete, else ``None``.

        Raises:
          TooLong: the chunk is over 400 bytes, or the payload over ``limit``.
        """
        if len(chunk) > CHUNK:
            raise TooLong(f"a chunk is at most {CHUNK} bytes")
        if chunk == "+":
            chunk = ""
        self._size += len(chunk)
        if self._size > self.limit:
            raise TooLong(f"at most {self.limit} bytes of SASL data")
        self._chunks.append(chunk)
        if len(chunk) == CHUNK:
            return None
        return "".join(self._chunks)


def plain(payload: str) -> Plain | str:
    """The credentials in a base64 ``PLAIN`` payload, or why there are none."""
    try:
        raw = base64.b64decode(payload.encode("ascii"), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return "Not a base64 PLAIN payload"
    parts = text.split("\0")
    if len(parts) != 3:
        return "A PLAIN payload is authzid, authcid and password, NUL-separated"
    authzid, authcid, password = parts
    if not authcid or not password:
        return "An account name and its password are needed"
    if authzid and authzid != authcid:
        return "Logging in for another account is not supported"
    return Plain(authcid, password)


def encode(account: str, password: str, authzid: str = "") -> list[str]:
    """The ``AUTHENTICATE`` chunks a client sends for ``PLAIN`` (for tests and bots)."""
    data = base64.b64encode(f"{authzid}\0{account}\0{password}".encode()).decode()
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    if not chunks or len(chunks[-1]) == CHUNK:
        chunks.append("+")
    return chunks
