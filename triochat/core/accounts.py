"""Accounts as the session sees them: what it asks of the account book, and its answers.

Pure: the session emits a :class:`Request` inside a
:class:`~triochat.core.session.AccountCall` effect; the door's driver hands it
to the book (``server/accounts.py``, which hashes in a worker thread) and feeds
the :class:`Outcome` back. A request's repr never shows a password, so neither
a log line nor a traceback can leak one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from .names import name_key

Kind = Literal["register", "verify", "change", "unregister"]

NEED_DB: Final = "Accounts need a database: the server runs without --db"
MAX_PASSWORD: Final = 1024
"""The default longest password, in characters (``--max-password``)."""


def account_key(name: str) -> str:
    """Names compare as the hub compares them."""
    return name_key(name)


@dataclass(frozen=True, slots=True)
class Request:
    """Do ``kind`` for the account ``name`` with ``password`` (and ``new_password``)."""

    kind: Kind
    name: str
    password: str = field(repr=False)
    new_password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of ``request``; ``error`` says why it failed."""

    request: Request
    ok: bool
    error: str = ""


class AccountBook(Protocol):
    """What a session asks synchronously: the book answers from memory."""

    def registered(self, name: str, /) -> bool: ...

    def admin(self, name: str, /) -> bool: ...


def password_error(password: str, limit: int) -> str | None:
    """Why ``password`` cannot be an account's password, or ``None``."""
    if not password:
        return "A password must not be empty"
    if len(password) > limit:
        return f"A password is at most {limit} characters"
    return None


_DURATION: Final = re.compile(r"(\d{1,9})([smhd])")
_UNIT: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float | None:
    """``10m``, ``2h``, ``7d`` (or ``30s``) in seconds; ``None`` if ``text`` is not one."""
    match = _DURATION.fullmatch(text.lower())
    if match is None or int(match[1]) == 0:
        return None
    return float(int(match[1]) * _UNIT[match[2]])
