"""Moderation in the ``--db`` file: room operators, topics, bans and mutes (schema 5).

The hub's moderation is in memory (:class:`~triochat.core.modstate.SharedModeration`),
so a check on the chat's hot path (a mute, a ban at a join) never touches the
disk. Each change is handed to :meth:`ModerationStore.changed`, which only puts
it on a bounded channel; one writer task commits what is queued in a worker
thread (``trio.to_thread``), pruning expired bans and mutes in the same
transaction. At start-up the file's state is read once (expired entries
deleted first). In a cluster the same writer also keeps the file a copy of
the cluster's accounts (the ``accounts`` table, see ``server/accounts.py``).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import trio

from ..core.modstate import (
    AccountGone,
    AccountSet,
    BanLifted,
    BanSet,
    Change,
    MuteLifted,
    MuteSet,
    OpSet,
    State,
    TopicChange,
)

log: Final = logging.getLogger("triochat.store")

# Schema 5. ``room`` is ``*`` for a server-wide ban; ``until`` is a Unix time, NULL
# until lifted; ``target`` a name's key or an address; ``key``/``account`` names' keys;
# ``guest``, on an address ban made with a guest's name ban, that name's key (else '').
TABLES: Final = """
CREATE TABLE room_ops (
    room    TEXT NOT NULL,
    account TEXT NOT NULL,
    PRIMARY KEY (room, account)
);
CREATE TABLE topics (
    room   TEXT PRIMARY KEY,
    text   TEXT NOT NULL,
    set_by TEXT NOT NULL,
    time   REAL NOT NULL
);
CREATE TABLE bans (
    room   TEXT NOT NULL,
    target TEXT NOT NULL,
    until  REAL,
    set_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    guest  TEXT NOT NULL,
    PRIMARY KEY (room, target)
);
CREATE TABLE mutes (
    room  TEXT NOT NULL,
    key   TEXT NOT NULL,
    until REAL,
    PRIMARY KEY (room, key)
)
"""

QUEUE: Final = 1000
"""The default bound on moderation changes waiting for the writer (``StoreConfig``)."""


@dataclass(frozen=True, slots=True)
class _Replace:
    """The moderation tables (or, with ``accounts``, the accounts table) become ``state``."""

    state: tuple[State, ...]
    accounts: bool


_Item = Change | _Replace


def _until(value: float) -> float | None:
    return None if value == math.inf else value


def _from_until(value: float | None) -> float:
    return math.inf if value is None else float(value)


def load(db: sqlite3.Connection) -> list[State]:
    """The file's moderation state, expired bans and mutes deleted first (blocking)."""
    with db:
        _prune(db, time.time())
    ops = db.execute("SELECT room, account FROM room_ops")
    state: list[State] = [OpSet(room, account, True) for room, account in ops]
    topics = db.execute("SELECT room, text, set_by, time FROM topics")
    state += [TopicChange(*row) for row in topics]
    for room, target, until, by, reason, guest in db.execute(
        "SELECT room, target, until, set_by, reason, guest FROM bans"
    ):
        state.append(BanSet(room, target, _from_until(until), by, reason, guest))
    for room, key, until in db.execute("SELECT room, key, until FROM mutes"):
        state.append(MuteSet(room, key, _from_until(until)))
    return state


def _prune(db: sqlite3.Connection, now: float) -> None:
    db.execute("DELETE FROM bans WHERE until IS NOT NULL AND until <= ?", (now,))
    db.execute("DELETE FROM mutes WHERE until IS NOT NULL AND until <= ?", (now,))


def _write(db: sqlite3.Connection, item: _Item) -> None:
    match item:
        case OpSet(room, account, True):
            db.execute("INSERT OR IGNORE INTO room_ops VALUES (?, ?)", (room, account))
        case OpSet(room, account, False):
            db.execute("DELETE FROM room_ops WHERE room = ? AND account = ?", (room, account))
        case TopicChange(room, text, by, at):
            db.execute("INSERT OR REPLACE INTO topics VALUES (?, ?, ?, ?)", (room, text, by, at))
        case BanSet(room, target, until, by, reason, guest):
            db.execute(
                "INSERT OR REPLACE INTO bans VALUES (?, ?, ?, ?, ?, ?)",
                (room, target, _until(until), by, reason, guest),
            )
        case BanLifted(room, target):
            db.execute("DELETE FROM bans WHERE room = ? AND target = ?", (room, target))
        case MuteSet(room, key, until):
            db.execute("INSERT OR REPLACE INTO mutes VALUES (?, ?, ?)", (room, key, _until(until)))
        case MuteLifted(room, key):
            db.execute("DELETE FROM mutes WHERE room = ? AND key = ?", (room, key))
        case AccountSet(key, name, digest, admin, created):
            db.execute(
                "INSERT OR REPLACE INTO accounts (key, name, hash, admin, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, name, digest, int(admin), created),
            )
        case AccountGone(key):
            db.execute("DELETE FROM accounts WHERE key = ?", (key,))
        case _Replace(state, True):
            db.execute("DELETE FROM accounts")
            for entry in state:
                _write(db, entry)
        case _Replace(state, False):
            for table in ("room_ops", "topics", "bans", "mutes"):
                db.execute(f"DELETE FROM {table}")
            for entry in state:
                _write(db, entry)
        case _:
            pass  # A kick is kept nowhere.


class ModerationStore:
    """The writer of moderation changes to the ``--db`` file; a :class:`StateSink`.

    Args:
      db: its own connection to the migrated file (closed by :meth:`run`'s end).
      initial: the file's state at start-up (:func:`load`).
      queue: changes that may wait for the writer; past it a change is not saved
        (logged, counted in :attr:`lost`), though it holds in memory.
    """

    def __init__(
        self, db: sqlite3.Connection, initial: Sequence[State], queue: int = QUEUE
    ) -> None:
        self._db = db
        self.initial = tuple(initial)
        self._send, self._receive = trio.open_memory_channel[_Item](queue)
        self._queued = 0
        self._written = 0
        self._progress = trio.Event()
        self.lost = 0

    def changed(self, change: Change, here: bool, /) -> None:
        self._queue(change)

    def replaced(self, state: Sequence[State], /) -> None:
        self._queue(_Replace(tuple(state), accounts=False))

    def accounts_replaced(self, entries: Sequence[AccountSet], /) -> None:
        self._queue(_Replace(tuple(entries), accounts=True))

    def _queue(self, item: _Item) -> None:
        try:
            self._send.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.lost += 1
            log.warning("moderation writer is behind: a change is not saved (%d so far)", self.lost)
            return
        self._queued += 1

    async def wait_written(self) -> None:
        """Return once every change queued before this call is committed."""
        target = self._queued
        while self._written < target:
            await self._progress.wait()

    def close(self) -> None:
        """Take no more changes: :meth:`run` commits what is queued, then returns."""
        self._send.close()

    async def run(self) -> None:
        """Commit queued changes, all that are ready in one transaction, until closed."""
        try:
            while True:
                try:
                    batch = [await self._receive.receive()]
                except trio.EndOfChannel:
                    return
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                # Shielded: a change taken from the queue is committed, shutdown or not
                # (a few rows: the thread is quick).
                with trio.CancelScope(shield=True):
                    try:
                        await trio.to_thread.run_sync(self._commit, batch)
                    except sqlite3.Error as exc:
                        self.lost += len(batch)
                        log.error("could not save %d moderation changes: %s", len(batch), exc)
                self._written += len(batch)
                self._progress.set()
                self._progress = trio.Event()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._db.close)

    def _commit(self, batch: list[_Item]) -> None:
        with self._db as db:
            db.execute("BEGIN")
            for item in batch:
                _write(db, item)
            _prune(db, time.time())
