"""Who is in each room on the other nodes, kept in list order as their presence changes.

A backplane answers the hub's questions about a room (its count, its first names,
all its names) from here, without looking at every remote user: asked once per
joiner, a scan of everyone made registering N clients in a room spread over two
nodes O(N²). Each room holds its remote users' ``(name_sort_key(name), name)`` in a
sorted list, so its count is ``len``, its first names a slice, and a change is a
bisection and a C-speed insert or delete.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Protocol

from ..core.names import name_sort_key


class Placed(Protocol):
    """A user as the roster sees it: a name in some rooms."""

    @property
    def name(self) -> str: ...

    @property
    def rooms(self) -> tuple[str, ...]: ...


class Roster:
    """Room -> its remote users' ``(sort key, name)``, sorted; rooms with nobody are dropped."""

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[str, list[tuple[str, str]]] = {}

    def clear(self) -> None:
        self._rooms.clear()

    def load(self, users: Iterable[Placed]) -> None:
        """Start again from ``users`` (a snapshot): each room sorted once, not one insert
        at a time (which moves the list's tail each time: O(n²) for a room of n)."""
        rooms: dict[str, list[tuple[str, str]]] = {}
        for user in users:
            entry = (name_sort_key(user.name), user.name)
            for room in set(user.rooms):
                rooms.setdefault(room, []).append(entry)
        for listed in rooms.values():
            listed.sort()
        self._rooms = rooms

    def change(self, old: Placed | None, new: Placed | None) -> None:
        """A user that was ``old`` is ``new`` now (``None``: it was not here before, or is
        gone now): a rename, rooms entered or left, an arrival, a departure."""
        before = set(old.rooms) if old is not None else set()
        after = set(new.rooms) if new is not None else set()
        if old is not None and new is not None and old.name == new.name:
            before, after = before - after, after - before  # only the rooms that changed
        if before and old is not None:
            self._remove((name_sort_key(old.name), old.name), before)
        if after and new is not None:
            self._add((name_sort_key(new.name), new.name), after)

    def _add(self, entry: tuple[str, str], rooms: Iterable[str]) -> None:
        for room in rooms:
            listed = self._rooms.get(room)
            if listed is None:
                self._rooms[room] = [entry]
            else:
                bisect.insort(listed, entry)

    def _remove(self, entry: tuple[str, str], rooms: Iterable[str]) -> None:
        for room in rooms:
            listed = self._rooms.get(room)
            if listed is None:
                continue
            i = bisect.bisect_left(listed, entry)
            if i < len(listed) and listed[i] == entry:
                del listed[i]
                if not listed:
                    del self._rooms[room]

    def count(self, room: str) -> int:
        listed = self._rooms.get(room)
        return len(listed) if listed is not None else 0

    def first(self, room: str, count: int) -> Sequence[tuple[str, str]]:
        """The first ``count`` users of ``room`` in list order, as ``(sort key, name)``."""
        return self._rooms.get(room, [])[:count]

    def names(self, room: str) -> list[str]:
        """Every user of ``room``, in list order."""
        return [name for _, name in self._rooms.get(room, ())]

    def counts(self) -> dict[str, int]:
        return {room: len(listed) for room, listed in self._rooms.items()}
