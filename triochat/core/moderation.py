"""Who may do what in a room, and who may not: operators, topics, bans and mutes.

Plain synchronous state beside the hub (``hub.moderation``), checked by the
session before it asks the hub for a join, and by the hub on a chat burst
for a mute: one falsy test per burst while nobody anywhere is muted, never
per recipient. Times come from ``clock`` (trio's, in a server), so a ban of
``10m`` can be watched expiring under ``autojump_clock``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

log: Final = logging.getLogger("triochat.moderation")

SERVER: Final = "*"
"""The "room" of server-wide bans (no room is called that)."""

ACTIONS: Final = ("op", "deop", "topic", "kick", "ban", "unban", "mute", "unmute", "wall")
"""What is counted in metrics (``triochat_moderation_actions{action=...}``)."""


@dataclass(frozen=True, slots=True)
class Ban:
    """``target`` (a name as names compare, or an address) is out until ``until``.

    ``guest`` is set on an address ban made along with a guest's name ban: the
    name it was for (``/unban NAME`` lifts both).
    """

    target: str
    until: float
    by: str
    reason: str
    guest: str = ""


@dataclass(frozen=True, slots=True)
class Topic:
    text: str
    by: str
    time: float


class Moderation:
    """Operators, topics, bans and mutes of every room, in memory on this node."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ops: dict[str, set[str]] = {}
        """Per room, the account keys of its operators."""
        self.topics: dict[str, Topic] = {}
        self._bans: dict[str, dict[str, Ban]] = {}
        self.mutes: dict[str, dict[str, float]] = {}
        """Per room, muted name keys and until when; empty while nobody is muted."""
        self.actions: Counter[str] = Counter()

    def record(self, action: str, by: str, whom: str, room: str, why: str = "") -> None:
        """Log a moderation action at info (who, whom, where, why) and count it."""
        self.actions[action] += 1
        log.info("%s: %s by %s in %s%s", action, whom, by, room, f" ({why})" if why else "")

    # --- operators -----------------------------------------------------------------

    def is_op(self, room: str, account: str | None) -> bool:
        return account is not None and account in self.ops.get(room, ())

    def op(self, room: str, account: str) -> None:
        self.ops.setdefault(room, set()).add(account)

    def deop(self, room: str, account: str) -> bool:
        held = self.ops.get(room)
        if held is None or account not in held:
            return False
        held.discard(account)
        if not held:
            del self.ops[room]
        return True

    # --- topics ------------------------------------------------------------------------

    def set_topic(self, room: str, topic: Topic) -> None:
        self.topics[room] = topic

    # --- bans -------------------------------------------------------------------------

    def ban(self, room: str, ban: Ban) -> None:
        self._bans.setdefault(room, {})[ban.target] = ban

    def unban(self, room: str, target: str) -> bool:
        held = self._bans.get(room)
        if held is None or held.pop(target, None) is None:
            return False
        if not held:
            del self._bans[room]
        return True

    def bans(self, room: str) -> Iterator[Ban]:
        """``room``'s bans in force, the expired ones forgotten."""
        held = self._bans.get(room)
        if held is None:
            return iter(())
        now = self.clock()
        for target in [t for t, ban in held.items() if ban.until <= now]:
            del held[target]
        if not held:
            del self._bans[room]
        return iter(list(held.values()))

    def banned(self, room: str, *targets: str) -> Ban | None:
        """The ban in force that keeps any of ``targets`` (name key, address) out of ``room``."""
        if room not in self._bans:
            return None
        for ban in self.bans(room):
            if ban.target in targets:
                return ban
        return None

    def remaining(self, until: float) -> str:
        """How long until ``until``, for people: ``until lifted``, ``for 9m more``."""
        if until == math.inf:
            return "until lifted"
        return f"for {_span(until - self.clock())} more"

    # --- mutes ---------------------------------------------------------------------------

    def mute(self, room: str, key: str, until: float) -> None:
        self.mutes.setdefault(room, {})[key] = until

    def unmute(self, room: str, key: str) -> bool:
        held = self.mutes.get(room)
        if held is None or held.pop(key, None) is None:
            return False
        if not held:
            del self.mutes[room]
        return True

    def muted(self, room: str, key: str) -> float | None:
        """Until when ``key`` is muted in ``room``, or ``None``; an expired mute goes."""
        held = self.mutes.get(room)
        if held is None:
            return None
        until = held.get(key)
        if until is None:
            return None
        if until <= self.clock():
            self.unmute(room, key)
            return None
        return until


def _span(seconds: float) -> str:
    seconds = max(1, math.ceil(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{math.ceil(seconds / size)}{unit}"
    return f"{seconds}s"
