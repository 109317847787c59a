"""How triochat's names and rooms appear on IRC, and which IRC nicks are triochat names.

A triochat name is 1 to 24 letters or digits of any script, ``_`` or ``-``
(:data:`~triochat.protocol.line.NAME_RULES`). Every such name is already a
usable IRC nick: it holds none of the characters IRC gives a meaning (space,
``,``, ``*``, ``?``, ``!``, ``@``, ``:``, ``#``, ``&``, ``$``, ``.``), so it is
sent as it is, in UTF-8, which irssi, WeeChat and HexChat display. The other
way, an IRC nick is accepted exactly when it is a triochat name: nicks with
RFC 2812's specials (``[ ] \\ ` ^ { | }``) get ``432`` with the rule, rather than
being rewritten into a name that someone else could hold. So every user is
addressed by the same name from every door, and no two users share one.

Names compare as :func:`~triochat.protocol.line.name_key` (NFKC, then Unicode
case folding), advertised as ``CASEMAPPING=rfc8265`` (PRECIS, the closest
standard mapping). A client that does not know it falls back to ``rfc1459``,
which agrees for every ASCII name since ``[]\\~`` never occur in one.
"""

from __future__ import annotations

from typing import Final

from .. import line

CASEMAPPING: Final = "rfc8265"
NICKLEN: Final = line.NAME_MAX
CHANNELLEN: Final = line.ROOM_MAX + 1  # with its "#"

_SPECIALS: Final = frozenset("[]\\`^{|}")


def nick_error(nick: str) -> str | None:
    """Why ``nick`` cannot be a triochat name (the text of a ``432``), or ``None``."""
    if line.name_error(nick) is None:
        return None
    if len(nick) > NICKLEN:
        return f"Nickname too long: {line.NAME_RULES}"
    if _SPECIALS & set(nick):
        return f"IRC's [ ] \\ ` ^ {{ | }} are not in triochat names: {line.NAME_RULES}"
    return f"Erroneous nickname: {line.NAME_RULES}"


def channel(name: str) -> str | None:
    """The room an IRC channel name stands for (lower case), or ``None`` if it is not one.

    Only ``#`` channels exist (``CHANTYPES=#``); ``&`` and ``+`` channels, and
    names without a ``#``, are not rooms.
    """
    if not name.startswith("#"):
        return None
    return line.normalize_room(name)


def source(name: str, host: str) -> str:
    """The ``nick!user@host`` that a user's messages come from: ``name!name@host``.

    The hub's events carry only a name, so every door's users look alike; the
    host is the door's server name.
    """
    return f"{name}!{name}@{host}"
