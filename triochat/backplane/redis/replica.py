"""The replica of remote presence: who is on the other nodes, and in which rooms.

Fed by the snapshot a node reads on linking and by the presence records on
the channel, so the hub's ``/users``, ``/rooms`` and name checks cost no
Redis round trip. A user may be in several rooms, or in none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from .wire import Whereabouts


class Replica:
    """Users on nodes other than ``node``: key -> (their node, name, rooms)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._users: dict[str, tuple[str, str, tuple[str, ...]]] = {}

    def load(self, entries: Iterable[tuple[str, str, str, tuple[str, ...]]]) -> None:
        """Start again from a snapshot's ``(key, node, name, rooms)`` entries."""
        self._users = {
            key: (node, name, rooms) for key, node, name, rooms in entries if node != self.node
        }

    def clear(self) -> None:
        self._users.clear()

    def apply(self, record: Whereabouts) -> None:
        """A presence record from the channel (this node's own are ignored)."""
        if record.node == self.node:
            return
        if record.rooms is not None:
            self._users[record.key] = (record.node, record.name, record.rooms)
        elif self._users.get(record.key, ("",))[0] == record.node:
            # Only its own node's word removes a user: a rename elsewhere may have
            # given the key to a user of another node meanwhile.
            del self._users[record.key]

    def moved(self, key: str, node: str) -> None:
        """The user holding ``key`` is on ``node`` now (taken over there)."""
        entry = self._users.get(key)
        if node == self.node:
            self._users.pop(key, None)
        elif entry is not None:
            self._users[key] = (node, entry[1], entry[2])

    def name(self, key: str) -> str | None:
        entry = self._users.get(key)
        return entry[1] if entry is not None else None

    def users(self, room: str) -> list[str]:
        return [name for _, name, rooms in self._users.values() if room in rooms]

    def rooms(self) -> dict[str, int]:
        return dict(Counter(room for _, _, rooms in self._users.values() for room in rooms))

    def __len__(self) -> int:
        return len(self._users)
