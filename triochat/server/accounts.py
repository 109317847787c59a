"""Accounts in the ``--db`` file: names people own, their Argon2 hashes and roles.

Who is registered (and who is a server admin) is kept in memory, so a
session can ask synchronously whether a name needs a password; the hashing,
the checks and every write run in a worker thread (``trio.to_thread``), one
at a time, so the event loop never waits on Argon2 or the disk. A password
is never logged and never kept: only its hash reaches the file.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ..backplane import Backplane, Claim
from ..core.accounts import Outcome, Request, account_key as _key
from ..core.modstate import AccountGone, AccountSet

if TYPE_CHECKING:
    from .modstore import ModerationStore

LINK_DOWN: Final = (
    "Accounts cannot change while the link to the rest of the chat is down; try again later"
)

log: Final = logging.getLogger("triochat.accounts")


@dataclass(frozen=True, slots=True)
class Account:
    """One registered name, as ``triochat admin accounts`` lists it."""

    name: str
    admin: bool
    created: float


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the (already migrated) ``--db`` file, usable from worker threads."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    return db


class AccountStore:
    """The accounts of one ``--db`` file; :meth:`perform` carries out a session's request.

    Args:
      db: a connection to the migrated file (see :func:`connect`); closed by :meth:`close`.
      hasher: Argon2's parameters (tests pass cheap ones).
    """

    def __init__(self, db: sqlite3.Connection, hasher: PasswordHasher | None = None) -> None:
        self._db = db
        self._hasher = hasher or PasswordHasher()
        self._lock = trio.Lock()
        rows = db.execute("SELECT key, name, hash, admin, created FROM accounts").fetchall()
        self._admins: dict[str, bool] = {row[0]: bool(row[3]) for row in rows}
        # In a cluster, every account as the cluster has it (hashes included), so a
        # check never waits for this node's copy of a change made elsewhere.
        self._entries: dict[str, AccountSet] = {
            key: AccountSet(key, name, digest, bool(admin), created)
            for key, name, digest, admin, created in rows
        }
        self._cluster: Backplane | None = None
        self._copy: ModerationStore | None = None
        # The role the last check read from the file, handed from the worker thread
        # under the lock (which serializes requests).
        self._roles_read: dict[str, bool] = {}

    @classmethod
    def open(cls, path: Path, hasher: PasswordHasher | None = None) -> AccountStore:
        """The accounts of the migrated file at ``path`` (blocking: call it in a thread)."""
        return cls(connect(path), hasher)

    # --- the cluster's accounts (with --redis) -----------------------------------

    def share(self, backplane: Backplane, copy: ModerationStore | None) -> None:
        """Share the accounts through ``backplane`` (if it links nodes); ``copy`` (the
        file's writer) keeps the changes made elsewhere."""
        if backplane.remote:
            self._cluster = backplane
            self._copy = copy

    def apply(self, change: AccountSet | AccountGone, /) -> None:
        """An account changed somewhere in the cluster (here too): take it, and keep a copy."""
        if isinstance(change, AccountSet):
            self._entries[change.key] = change
            self._admins[change.key] = change.admin
        else:
            self._entries.pop(change.key, None)
            self._admins.pop(change.key, None)
        if self._copy is not None:
            self._copy.changed(change, False)

    def entries(self) -> list[AccountSet]:
        return list(self._entries.values())

    def replace(self, entries: Sequence[AccountSet], /) -> None:
        """The cluster's accounts are ``entries``: this node's (and its file's) become them."""
        self._entries = {entry.key: entry for entry in entries}
        self._admins = {entry.key: entry.admin for entry in entries}
        if self._copy is not None:
            self._copy.accounts_replaced(entries)

    # --- synchronous questions (from memory) ----------------------------------

    def registered(self, name: str) -> bool:
        return _key(name) in self._admins

    def admin(self, name: str) -> bool:
        return self._admins.get(_key(name), False)

    def __len__(self) -> int:
        return len(self._admins)

    # --- requests (in a worker thread, one at a time) ----------------------------

    async def perform(self, request: Request) -> Outcome:
        """Carry out ``request`` (register, verify, change, unregister); never raises on a
        database error, which becomes an outcome the member is told of."""
        async with self._lock:
            try:
                if self._cluster is not None:
                    return await self._perform_shared(self._cluster, request)
                outcome = await trio.to_thread.run_sync(self._perform, request)
                if outcome.ok and request.kind != "verify":
                    await self._reread(_key(request.name))
            except sqlite3.Error as exc:
                log.error("account %s of %s failed: %s", request.kind, request.name, exc)
                return Outcome(request, False, "The account database failed; try again later")
        admin = self._roles_read.pop(_key(request.name), None)
        if outcome.ok:
            if admin is not None:
                # A role granted by ``triochat admin`` while the server runs counts from here.
                self._admins[_key(request.name)] = admin
            if request.kind == "register":
                self._admins[_key(request.name)] = False
            elif request.kind == "unregister":
                self._admins.pop(_key(request.name), None)
            log.info("account %s: %s", request.kind, request.name)
        return outcome

    async def _perform_shared(self, cluster: Backplane, request: Request) -> Outcome:
        """``request`` in a cluster: Redis decides who registers a name (one winner), and
        every change reaches every node; this node's file keeps a copy."""
        key = _key(request.name)
        if request.kind != "verify" and cluster.link_down:
            return Outcome(request, False, LINK_DOWN)
        if request.kind == "register":
            digest = await trio.to_thread.run_sync(self._hasher.hash, request.password)
            entry = AccountSet(key, request.name, digest, False, time.time())
            claim = await cluster.claim_account(entry)
            if claim is Claim.TAKEN:
                return Outcome(request, False, f"{request.name} is registered already")
            if claim is Claim.LINK_DOWN:
                return Outcome(request, False, LINK_DOWN)
            self.apply(entry)  # The cluster tells every node; here it counts at once.
            log.info("account register: %s", request.name)
            return Outcome(request, True)
        known = self._entries.get(key)
        right = await trio.to_thread.run_sync(self._check, known, request.password)
        if known is None or not right:
            return Outcome(request, False, "Wrong password")
        if request.kind == "change":
            digest = await trio.to_thread.run_sync(self._hasher.hash, request.new_password)
            changed = AccountSet(key, known.name, digest, known.admin, known.created)
            cluster.publish_state(changed)
            self.apply(changed)
        elif request.kind == "unregister":
            cluster.publish_state(AccountGone(key))
            self.apply(AccountGone(key))
        log.info("account %s: %s", request.kind, request.name)
        return Outcome(request, True)

    async def _reread(self, key: str) -> None:
        """Take the account's row from the file again (to seed a cluster with it later)."""
        entry = await trio.to_thread.run_sync(self._row, key)
        if entry is None:
            self._entries.pop(key, None)
        else:
            self._entries[key] = entry

    def _row(self, key: str) -> AccountSet | None:
        row = self._db.execute(
            "SELECT key, name, hash, admin, created FROM accounts WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else AccountSet(row[0], row[1], row[2], bool(row[3]), row[4])

    def _check(self, known: AccountSet | None, password: str) -> bool:
        if known is None:
            self._hasher.hash(password)  # The same work as for a real account.
            return False
        try:
            return bool(self._hasher.verify(known.hash, password))
        except (VerificationError, InvalidHashError):
            return False

    def _perform(self, request: Request) -> Outcome:
        key = _key(request.name)
        if request.kind == "register":
            digest = self._hasher.hash(request.password)
            with self._db as db:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO accounts (key, name, hash, admin, created)"
                    " VALUES (?, ?, ?, 0, ?)",
                    (key, request.name, digest, time.time()),
                )
            if cursor.rowcount == 0:
                return Outcome(request, False, f"{request.name} is registered already")
            return Outcome(request, True)
        admin = self._verify(key, request.password)
        if admin is None:
            return Outcome(request, False, "Wrong password")
        self._roles_read[key] = admin
        if request.kind == "change":
            self._set_hash(key, self._hasher.hash(request.new_password))
        elif request.kind == "unregister":
            with self._db as db:
                db.execute("DELETE FROM accounts WHERE key = ?", (key,))
        return Outcome(request, True)

    def _verify(self, key: str, password: str) -> bool | None:
        """Whether the account is an admin if ``password`` is right; ``None`` if it is not."""
        row = self._db.execute("SELECT hash, admin FROM accounts WHERE key = ?", (key,)).fetchone()
        if row is None:
            # The same work as for a real account, so timing tells nothing.
            self._hasher.hash(password)
            return None
        try:
            self._hasher.verify(row[0], password)
        except (VerificationError, InvalidHashError):
            return None
        return bool(row[1])

    def _set_hash(self, key: str, digest: str) -> None:
        with self._db as db:
            db.execute("UPDATE accounts SET hash = ? WHERE key = ?", (digest, key))

    # --- administration (``triochat admin``, synchronous, not in a trio run) -------

    def accounts(self) -> Sequence[Account]:
        rows = self._db.execute("SELECT name, admin, created FROM accounts ORDER BY key")
        return [Account(name, bool(admin), created) for name, admin, created in rows]

    def reset_password(self, name: str, password: str) -> bool:
        """Set ``name``'s password without the old one; False if not registered."""
        if not self.registered(name):
            return False
        self._set_hash(_key(name), self._hasher.hash(password))
        return True

    def set_admin(self, name: str, admin: bool) -> bool:
        """Grant or take the server-admin role; False if ``name`` is not registered."""
        key = _key(name)
        with self._db as db:
            cursor = db.execute("UPDATE accounts SET admin = ? WHERE key = ?", (int(admin), key))
        if cursor.rowcount == 0:
            return False
        self._admins[key] = admin
        entry = self._row(key)
        if entry is not None:
            self._entries[key] = entry
        return True

    def close(self) -> None:
        self._db.close()
