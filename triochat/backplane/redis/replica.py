"""The replica of remote presence: who is on the other nodes, and in which rooms.

Fed by the snapshot a node reads on linking and by the presence records on
the channel, so the hub's ``/users``, ``/rooms`` and name checks cost no
Redis round trip. A user may be in several rooms, or in none. Each entry
also holds the user's account and away text, so that this node can mark
operators and away members connected elsewhere. A :class:`.Roster` indexes them by
room, kept by the same updates, so a room's count, first names and names cost no
scan of every remote user.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._roster import Roster
from ..base import RemoteUser
from .wire import Presence, Whereabouts


@dataclass(frozen=True, slots=True)
class _Entry:
    node: str
    user: RemoteUser


class Replica:
    """Users on nodes other than ``node``: key -> their node, name, rooms, account and away."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._users: dict[str, _Entry] = {}
        self._roster = Roster()

    def load(self, entries: Iterable[tuple[str, *Presence]]) -> None:
        """Start again from a snapshot's ``(key, node, name, rooms, account, away)`` entries."""
        self._users = {
            key: _Entry(node, RemoteUser(name, account, away, rooms))
            for key, node, name, rooms, account, away in entries
            if node != self.node
        }
        self._roster.load(entry.user for entry in self._users.values())

    def clear(self) -> None:
        self._users.clear()
        self._roster.clear()

    def _put(self, key: str, entry: _Entry | None) -> None:
        """``key`` is ``entry`` now (``None``: gone); the roster follows."""
        old = self._users.pop(key, None) if entry is None else self._users.get(key)
        if entry is not None:
            self._users[key] = entry
        self._roster.change(
            old.user if old is not None else None, entry.user if entry is not None else None
        )

    def apply(self, record: Whereabouts) -> None:
        """A presence record from the channel (this node's own are ignored)."""
        if record.node == self.node:
            return
        if record.rooms is not None:
            user = RemoteUser(record.name, record.account, record.away, record.rooms)
            self._put(record.key, _Entry(record.node, user))
        elif (entry := self._users.get(record.key)) is not None and entry.node == record.node:
            # Only its own node's word removes a user: a rename elsewhere may have
            # given the key to a user of another node meanwhile.
            self._put(record.key, None)

    def moved(self, key: str, node: str) -> None:
        """The user holding ``key`` is on ``node`` now (taken over there)."""
        entry = self._users.get(key)
        if node == self.node:
            self._put(key, None)
        elif entry is not None:
            self._users[key] = _Entry(node, entry.user)  # the same user in the same rooms

    def name(self, key: str) -> str | None:
        entry = self._users.get(key)
        return entry.user.name if entry is not None else None

    def user(self, key: str) -> RemoteUser | None:
        entry = self._users.get(key)
        return entry.user if entry is not None else None

    def users(self, room: str) -> list[str]:
        """The names in ``room``, in list order."""
        return self._roster.names(room)

    def count_in(self, room: str) -> int:
        return self._roster.count(room)

    def first(self, room: str, count: int) -> Sequence[tuple[str, str]]:
        """The first ``count`` in ``room`` in list order, as ``(name_sort_key(name), name)``."""
        return self._roster.first(room, count)

    def rooms(self) -> dict[str, int]:
        return self._roster.counts()

    def __len__(self) -> int:
        return len(self._users)
