"""Persistent history in SQLite: ``triochat serve --db PATH``.

The event loop never waits on the disk. The hub hands each kept event (chat
lines, actions) to :meth:`HistoryStore.append`, which only puts it in a
bounded memory channel; one writer task takes them from it and commits them in
batches (group commit) in a worker thread. Rows hold events as records
(:mod:`triochat.core.records`), so a joiner on any door gets them in its own
dialect. Joiners get a room's recent events from a bounded
in-memory cache, filled from the file at start-up, so entering a room never
touches the disk; ``/history`` reads older lines through a second connection
(WAL lets it read while the writer writes).

Durability: a line is on disk once its batch commits, at most
``batch_interval`` seconds after it was said (plus the commit itself). A
``kill -9`` loses at most the lines not yet committed: the batch being
collected or written. A graceful shutdown commits everything, unless the
disk is stuck for longer than ``flush_timeout``: what is left is then logged
as not saved rather than holding up the exit.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from ..core import events as ev, records
from ..core.events import RoomEvent
from ..core.hub import new_epoch
from . import modstore
from .accounts import AccountStore

log: Final = logging.getLogger("triochat.store")

SCHEMA_VERSION: Final = 5
"""Kept in ``PRAGMA user_version``; a newer file is refused, an older one migrated."""

_SCHEMA: Final = """
CREATE TABLE messages (
    id   INTEGER PRIMARY KEY,
    room TEXT NOT NULL,
    ts   REAL NOT NULL,
    line TEXT NOT NULL  -- version 1: as sent to clients, without the newline
);
CREATE INDEX messages_room ON messages (room, id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# ``event`` holds a record (triochat.core.records). (No SQL comment here: SQLite
# keeps an ADD COLUMN's text in the schema, and a trailing comment breaks it.)
_EVENTS: Final = """
ALTER TABLE messages ADD COLUMN seq INTEGER;
ALTER TABLE messages ADD COLUMN event TEXT
"""

# A version 1 line: "[HH:MM:SS] <name> text" or "[HH:MM:SS] * name text".
_V1_LINE: Final = re.compile(
    r"\[(\d\d):(\d\d):(\d\d)\] (?:<(?P<said>[^>\s]+)> |\* (?P<acted>\S+) )(?P<text>.*)", re.DOTALL
)


def _stamped(ts: float, match: re.Match[str]) -> float:
    """The time a v1 line shows (local ``HH:MM:SS``) on the day it was saved (``ts``).

    The row's own time was taken a moment after the line was stamped, so the
    line's is the one to keep: rendered again, it shows the same ``HH:MM:SS``.
    """
    day = time.localtime(ts)
    hour, minute, second = (int(match[i]) for i in (1, 2, 3))
    shown = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, hour, minute, second, 0, 0, -1))
    return shown - 86400 if shown > ts + 3600 else shown


def _events_from_lines(db: sqlite3.Connection) -> None:
    """Version 1 rows (rendered lines) become events, numbered per room in order.

    Lines that parse become chat lines and actions with their original time;
    any other line is kept as it was, as a :class:`~triochat.core.events.Legacy` event.
    """
    for statement in _EVENTS.split(";"):
        db.execute(statement)
    seqs: dict[str, int] = {}
    rows = db.execute("SELECT id, room, ts, line FROM messages ORDER BY id").fetchall()
    updates = []
    for row_id, room, ts, line in rows:
        seq = seqs[room] = seqs.get(room, 0) + 1
        event: RoomEvent
        match = _V1_LINE.fullmatch(line)
        if match is None:
            event = ev.Legacy(room, seq, ts, line)
        elif match["said"] is not None:
            event = ev.Said(room, seq, _stamped(ts, match), match["said"], match["text"])
        else:
            event = ev.Acted(room, seq, _stamped(ts, match), match["acted"], match["text"])
        updates.append((seq, records.encode(event), row_id))
    db.executemany("UPDATE messages SET seq = ?, event = ? WHERE id = ?", updates)


def _numbered_rooms(db: sqlite3.Connection) -> None:
    """Version 3 keeps each room's epoch and last number, so resume outlives a restart.

    A room of an older file gets a fresh epoch and the last number its rows hold.
    """
    db.execute(
        "CREATE TABLE rooms (room TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL)"
    )
    rows = db.execute("SELECT room, COALESCE(MAX(seq), 0) FROM messages GROUP BY room").fetchall()
    db.executemany(
        "INSERT INTO rooms (room, epoch, seq) VALUES (?, ?, ?)",
        [(room, new_epoch(), seq) for room, seq in rows],
    )


# Accounts (server/accounts.py): ``key`` is the name as names compare, ``hash`` Argon2's.
_ACCOUNTS: Final = """
CREATE TABLE accounts (
    key     TEXT PRIMARY KEY,
    name    TEXT NOT NULL,
    hash    TEXT NOT NULL,
    admin   INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)
"""

# Migrations from version N to N + 1, run in order inside one transaction.
_MIGRATIONS: Final[dict[int, str | Callable[[sqlite3.Connection], None]]] = {
    0: _SCHEMA,
    1: _events_from_lines,
    2: _numbered_rooms,
    3: _ACCOUNTS,
    4: modstore.TABLES,
}


_Recent = list[tuple[str, list[RoomEvent]]]
"""Rooms (most recently active first) and their last events (oldest first)."""


_Row = tuple[str, float, int, str]
"""What the writer inserts: room, time, sequence number, record."""


class StoreError(Exception):
    """The history database cannot be used (corrupt, unwritable, too new)."""


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """Where and how history is kept; each limit is a named option."""

    path: Path
    history: int = 20
    """Events per room kept in memory for joiners (the server's ``--history``)."""
    batch_interval: float = 0.05
    """Seconds the writer collects lines before one commit (``--db-batch-interval``)."""
    batch_max: int = 500
    """Most lines in one commit (``--db-batch-max``)."""
    queue: int = 10_000
    """Lines waiting for the writer before new ones are not saved, only counted (``--db-queue``)."""
    cache_rooms: int = 1000
    """Rooms whose recent lines are kept in memory; others start empty until spoken in
    (``--db-cache-rooms``)."""
    moderation_queue: int = modstore.QUEUE
    """Moderation changes (ops, topics, bans, mutes) waiting to be written; past it a
    change holds in memory but is not saved, and is logged."""
    flush_timeout: float = 1.0
    """Seconds a shutdown waits for queued lines to be committed; what is left then is
    logged as not saved, so a stuck disk cannot hold the exit (``--db-flush-timeout``).
    After the clients' 2 s shutdown grace this keeps the exit within 3 s."""


class HistoryStore:
    """SQLite-backed history; make one with :func:`open_history_store`."""

    def __init__(
        self, config: StoreConfig, writer: sqlite3.Connection, reader: sqlite3.Connection
    ) -> None:
        self.config = config
        self._writer = writer
        self._reader = reader
        self._reading = trio.Lock()
        self._send, self._receive = trio.open_memory_channel[_Row](config.queue)
        self._cache: OrderedDict[str, deque[RoomEvent]] = OrderedDict()
        # Each room's epoch and last number, and those changed since the last commit.
        self._rooms: dict[str, tuple[str, int]] = {}
        self._changed: dict[str, tuple[str, int]] = {}
        self._appended = 0
        self._committed = 0
        self._progress = trio.Event()
        self._last_drop_log = -math.inf
        # Once shutdown starts, no commit may outlast this deadline (trio time).
        self._flush_deadline = math.inf
        self._committing: trio.CancelScope | None = None
        self.accounts: AccountStore | None = None
        """The file's accounts (set by :func:`open_history_store`)."""
        self.moderation: modstore.ModerationStore | None = None
        """The file's operators, topics, bans and mutes (set by :func:`open_history_store`)."""
        # Statistics, for metrics.
        self.batches = 0
        self.rows = 0
        self.dropped = 0
        self.write_seconds = 0.0
        self.write_seconds_max = 0.0

    # --- the hub's side (synchronous, never blocks) -----------------------------

    def append(self, event: RoomEvent, /) -> None:
        """Queue ``event`` for the writer, and remember it for joiners."""
        self._cached(event.room).append(event)
        try:
            self._send.send_nowait((event.room, event.time, event.seq, records.encode(event)))
        except trio.WouldBlock:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log > 10:
                self._last_drop_log = now
                log.warning(
                    "history writer is behind (--db-queue %d full): lines are delivered"
                    " but not saved, %d so far",
                    self.config.queue,
                    self.dropped,
                )
            return
        except trio.ClosedResourceError:
            self.dropped += 1
            return
        self._appended += 1

    def recent(self, room: str, /) -> list[RoomEvent]:
        """The room's last ``history`` events, from memory."""
        lines = self._cache.get(room)
        if lines is None:
            return []
        self._cache.move_to_end(room)
        return list(lines)

    def epoch(self, room: str, /) -> str:
        """The room's epoch; a room the file never had gets a new one, saved with the
        next commit."""
        known = self._rooms.get(room)
        if known is None:
            known = self._rooms[room] = self._changed[room] = (new_epoch(), 0)
        return known[0]

    def last_seq(self, room: str, /) -> int:
        """The last number the room gave out before (0 for a room the file never had)."""
        known = self._rooms.get(room)
        return 0 if known is None else known[1]

    def numbered(self, room: str, seq: int, /) -> None:
        """The room has given out numbers up to ``seq``: saved with the next commit."""
        known = self._rooms.get(room)
        epoch = known[0] if known is not None else self.epoch(room)
        self._rooms[room] = self._changed[room] = (epoch, seq)

    @property
    def pending(self) -> int:
        """Lines queued and not yet committed."""
        return self._appended - self._committed

    # --- reading --------------------------------------------------------------

    async def fetch(self, room: str, count: int) -> list[RoomEvent]:
        """Up to ``count`` of the room's most recent events, oldest first, from the file.

        Waits first until every line appended so far is committed, so the
        answer includes what was just said.
        """
        await self.wait_committed()
        async with self._reading:
            rows = await trio.to_thread.run_sync(self._select, room, count)
        return _decoded(reversed(rows))

    def _select(self, room: str, count: int) -> list[tuple[str]]:
        cursor = self._reader.execute(
            "SELECT event FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?", (room, count)
        )
        return cursor.fetchall()

    async def wait_committed(self) -> None:
        """Return once every line appended before this call is on disk."""
        target = self._appended
        while self._committed < target:
            await self._progress.wait()

    # --- the writer -------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Commit queued lines in batches until the channel is closed and drained."""
        config = self.config
        while True:
            try:
                batch = [await self._receive.receive()]
            except trio.EndOfChannel:
                return
            with suppress(trio.EndOfChannel), trio.move_on_after(config.batch_interval):
                while len(batch) < config.batch_max:
                    try:
                        # What is already queued is taken without a trip through
                        # the scheduler per line: under a flood that trip is the cost.
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        batch.append(await self._receive.receive())
            # Cancellation must not lose a batch already taken; only the flush deadline
            # (set at shutdown) may cut the commit short.
            with trio.CancelScope(shield=True, deadline=self._flush_deadline) as scope:
                self._committing = scope
                await self._commit(batch)
            self._committing = None

    def _start_shutdown(self, writer_scope: trio.CancelScope) -> None:
        """Take no more lines, and give the writer until the flush deadline to commit."""
        self._send.close()
        self._flush_deadline = trio.current_time() + self.config.flush_timeout
        writer_scope.deadline = self._flush_deadline
        if self._committing is not None:
            self._committing.deadline = self._flush_deadline

    async def _flush_remaining(self) -> None:
        """Commit whatever is still queued (after the writer task stopped)."""
        batch: list[_Row] = []
        while True:
            try:
                batch.append(self._receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if batch or self._changed:
            await self._commit(batch)
        self._receive.close()

    async def _commit(self, batch: list[_Row]) -> None:
        started = time.perf_counter()
        rooms = [(room, epoch, seq) for room, (epoch, seq) in self._changed.items()]
        self._changed = {}
        try:
            # Abandoned only at the flush deadline: the thread then finishes (or not)
            # on its own, and its lines are counted as not saved.
            await trio.to_thread.run_sync(self._insert, batch, rooms, abandon_on_cancel=True)
        except sqlite3.Error as exc:
            self.dropped += len(batch)
            log.error("could not save %d history lines: %s", len(batch), exc)
        else:
            self.rows += len(batch)
        elapsed = time.perf_counter() - started
        self.batches += 1
        self.write_seconds += elapsed
        self.write_seconds_max = max(self.write_seconds_max, elapsed)
        self._committed += len(batch)
        self._progress.set()
        self._progress = trio.Event()

    def _insert(self, batch: list[_Row], rooms: list[tuple[str, str, int]]) -> None:
        # One transaction (one fsync) for the whole batch: the connection is in
        # autocommit mode, where each INSERT would otherwise commit on its own.
        # Leaving the with block commits it, or rolls it back.
        with self._writer as writer:
            writer.execute("BEGIN")
            writer.executemany(
                "INSERT INTO messages (room, ts, seq, event, line) VALUES (?, ?, ?, ?, '')", batch
            )
            writer.executemany(
                "INSERT OR REPLACE INTO rooms (room, epoch, seq) VALUES (?, ?, ?)", rooms
            )

    # --- cache ---------------------------------------------------------------------

    def _cached(self, room: str) -> deque[RoomEvent]:
        lines = self._cache.get(room)
        if lines is None:
            lines = self._cache[room] = deque(maxlen=self.config.history)
            if len(self._cache) > self.config.cache_rooms:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(room)
        return lines

    def _preload(self, rooms: _Recent) -> None:
        # Least recently active first, so the most active end up most recent.
        for room, events in reversed(rooms):
            self._cached(room).extend(events)


# --- opening -------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    return db


_Rooms = dict[str, tuple[str, int]]


def _open_sync(
    config: StoreConfig,
) -> tuple[sqlite3.Connection, sqlite3.Connection, _Recent, _Rooms]:
    """Open (creating or migrating) the file, prove it writable, load recent lines."""
    writer = _connect(config.path)
    try:
        mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StoreError(f"cannot switch {config.path} to WAL mode (got {mode})")
        writer.execute("PRAGMA synchronous = FULL")
        version = writer.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{config.path} has schema version {version}; this triochat "
                f"understands up to {SCHEMA_VERSION}. Upgrade triochat."
            )
        writer.execute("BEGIN IMMEDIATE")
        try:
            for step in range(version, SCHEMA_VERSION):
                migration = _MIGRATIONS[step]
                if callable(migration):
                    migration(writer)
                    continue
                for statement in migration.split(";"):
                    if statement.strip():
                        writer.execute(statement)
            writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            _new_epochs_after_a_crash(writer)
            # A real write: an unwritable file fails here, not at the first message.
            writer.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', ?)",
                (str(time.time()),),
            )
            writer.execute("COMMIT")
        except BaseException:
            writer.execute("ROLLBACK")
            raise
        reader = _connect(config.path)
        rooms = _load_recent(reader, config)
        numbered = {
            room: (epoch, seq)
            for room, epoch, seq in reader.execute("SELECT room, epoch, seq FROM rooms")
        }
    except BaseException:
        writer.close()
        raise
    return writer, reader, rooms, numbered


def _new_epochs_after_a_crash(db: sqlite3.Connection) -> None:
    """If the last run did not close the file, every room gets a new epoch.

    The last numbers given to joins and leaves are saved only with the next
    commit, so a ``kill -9`` may lose them, and numbering would give them
    again: a new epoch tells every client that its numbers no longer hold.
    """
    running = db.execute("SELECT value FROM meta WHERE key = 'running'").fetchone()
    if running is not None and running[0] == "1":
        rooms = [room for (room,) in db.execute("SELECT room FROM rooms")]
        db.executemany(
            "UPDATE rooms SET epoch = ? WHERE room = ?", [(new_epoch(), room) for room in rooms]
        )
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('running', '1')")


def _load_recent(db: sqlite3.Connection, config: StoreConfig) -> _Recent:
    if config.history == 0:
        return []
    rooms = db.execute(
        "SELECT room FROM messages GROUP BY room ORDER BY MAX(id) DESC LIMIT ?",
        (config.cache_rooms,),
    ).fetchall()
    recent: _Recent = []
    for (room,) in rooms:
        rows = db.execute(
            "SELECT event FROM messages WHERE room = ? ORDER BY id DESC LIMIT ?",
            (room, config.history),
        ).fetchall()
        recent.append((room, _decoded(reversed(rows))))
    return recent


def _decoded(rows: Iterable[tuple[str]]) -> list[RoomEvent]:
    """The events of ``rows``; one that cannot be read is logged and skipped."""
    events = []
    for (record,) in rows:
        try:
            events.append(records.decode_room_event(record))
        except records.RecordError as exc:
            log.warning("skipped a history row that cannot be read: %s", exc)
    return events


def _describe(config: StoreConfig, exc: BaseException) -> str:
    return f"cannot use history database {config.path}: {exc}"


@asynccontextmanager
async def open_history_store(config: StoreConfig) -> AsyncIterator[HistoryStore]:
    """Open the database, run its writer task, and on exit commit everything and close.

    Raises:
      StoreError: the file is corrupt, unwritable, or from a newer triochat;
        raised before anything is yielded, so a server never half-starts.
    """
    try:
        writer, reader, recent, numbered = await trio.to_thread.run_sync(_open_sync, config)
    except StoreError:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(_describe(config, exc)) from None
    store = HistoryStore(config, writer, reader)
    store._preload(recent)
    store._rooms = numbered
    store.accounts = await trio.to_thread.run_sync(AccountStore.open, config.path)
    moderation = store.moderation = await trio.to_thread.run_sync(_open_moderation, config)
    log.info(
        "history database %s: %d rooms loaded, %d moderation entries",
        config.path,
        len(recent),
        len(moderation.initial),
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._write_loop)
            nursery.start_soon(moderation.run)
            try:
                yield store
            finally:
                # Let the writers drain what is queued, until the flush deadline.
                moderation.close()
                store._start_shutdown(nursery.cancel_scope)
    finally:
        with trio.CancelScope(shield=True, deadline=store._flush_deadline):
            await store._flush_remaining()
        unsaved = store.pending
        if unsaved:
            # A commit may still be running in its abandoned thread: leave the
            # connections to the process's exit rather than close them under it.
            store.dropped += unsaved
            log.warning(
                "history database: %d lines not saved: not committed within"
                " --db-flush-timeout %g s",
                unsaved,
                config.flush_timeout,
            )
        else:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close, writer, reader)
                store.accounts.close()
        log.info("history database closed: %d lines saved, %d lost", store.rows, store.dropped)


def _open_moderation(config: StoreConfig) -> modstore.ModerationStore:
    db = _connect(config.path)
    try:
        initial = modstore.load(db)
    except BaseException:
        db.close()
        raise
    return modstore.ModerationStore(db, initial, config.moderation_queue)


def _close(writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
    reader.close()
    # Every number given out is saved: the next run may keep the epochs.
    with suppress(sqlite3.Error):
        writer.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('running', '0')")
    writer.close()
