"""The replica of remote presence: who is on the other nodes, and in which rooms.

Fed by the snapshot a node reads on linking and by the presence records on
the channel, so the hub's ``/users``, ``/rooms`` and name checks cost no
Redis round trip. A user may be in several rooms, or in none. Each entry
also holds the user's account and away text, so that this node can mark
operators and away members connected elsewhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..base import RemoteUser
from .wire import Presence, Whereabouts


@dataclass(frozen=True, slots=True)
class _Entry:
    node: str
    user: RemoteUser
    rooms: tuple[str, ...]


class Replica:
    """Users on nodes other than ``node``: key -> their node, name, rooms, account and away."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._users: dict[str, _Entry] = {}

    def load(self, entries: Iterable[tuple[str, *Presence]]) -> None:
        """Start again from a snapshot's ``(key, node, name, rooms, account, away)`` entries."""
        self._users = {
            key: _Entry(node, RemoteUser(name, account, away), rooms)
            for key, node, name, rooms, account, away in entries
            if node != self.node
        }

    def clear(self) -> None:
        self._users.clear()

    def apply(self, record: Whereabouts) -> None:
        """A presence record from the channel (this node's own are ignored)."""
        if record.node == self.node:
            return
        if record.rooms is not None:
            user = RemoteUser(record.name, record.account, record.away)
            self._users[record.key] = _Entry(record.node, user, record.rooms)
        elif (entry := self._users.get(record.key)) is not None and entry.node == record.node:
            # Only its own node's word removes a user: a rename elsewhere may have
            # given the key to a user of another node meanwhile.
            del self._users[record.key]

    def moved(self, key: str, node: str) -> None:
        """The user holding ``key`` is on ``node`` now (taken over there)."""
        entry = self._users.get(key)
        if node == self.node:
            self._users.pop(key, None)
        elif entry is not None:
            self._users[key] = _Entry(node, entry.user, entry.rooms)

    def name(self, key: str) -> str | None:
        entry = self._users.get(key)
        return entry.user.name if entry is not None else None

    def user(self, key: str) -> RemoteUser | None:
        entry = self._users.get(key)
        return entry.user if entry is not None else None

    def users(self, room: str) -> list[str]:
        return [e.user.name for e in self._users.values() if room in e.rooms]

    def rooms(self) -> dict[str, int]:
        return dict(Counter(room for e in self._users.values() for room in e.rooms))

    def __len__(self) -> int:
        return len(self._users)
