"""Moderation and accounts in Redis: the keys, the scripts, and what a node does with them.

A cluster's moderation (room operators, topics, bans, mutes) is one hash,
``moderation``, and its accounts another, ``accounts``; each field holds one
change record of :mod:`triochat.core.modstate` (the field is
:func:`~triochat.core.modstate.field`, e.g. ``ban<TAB>#den<TAB>bob``; an
account's field is its name key, its value holds the Argon2 hash, never a
password). A change made on a node goes in the transaction that publishes it
on the channel (an ``X`` record, :mod:`.wire`), so a node's snapshot and the
channel agree. Every node takes every change in the channel's order, its own
included, so all of them end in the state Redis holds.

``seeded`` says the hashes are the cluster's (it is set with the first change
written, or seeded): while it is missing (a new cluster, or a Redis that lost
its data) the first node to link seeds them
with what it knows (its ``--db`` file, or its memory), field by field with
HSETNX; every node then takes what Redis holds as the truth. A registration
is an HSETNX of the account's field: of two nodes registering one name at
once, exactly one wins.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import coredis
from coredis.commands.script import Script

from ...core import modstate
from ...core.modstate import AccountSet, Change, State
from .keys import Keys
from .link import log


@dataclass(frozen=True, slots=True)
class SharedKeys:
    """The moderation and account keys of one cluster (beside :class:`.Keys`)."""

    keys: Keys

    @property
    def moderation(self) -> str:
        return self.keys.prefix + "moderation"

    @property
    def accounts(self) -> str:
        return self.keys.prefix + "accounts"

    @property
    def seeded(self) -> str:
        return self.keys.prefix + "seeded"

    def of(self, change: Change) -> str:
        """The hash a change's field lives in."""
        if isinstance(change, AccountSet | modstate.AccountGone):
            return self.accounts
        return self.moderation


# If KEYS[3] (seeded) is missing, set each ARGV triple (hash 'm' or 'a', field, value) with
# HSETNX, and KEYS[3] if there was any. Return both hashes. KEYS: moderation, accounts, seeded.
SEED: Final = Script[bytes](
    None,
    """
if redis.call('EXISTS', KEYS[3]) == 0 then
  for i = 1, #ARGV, 3 do
    local hash = KEYS[1]
    if ARGV[i] == 'a' then hash = KEYS[2] end
    redis.call('HSETNX', hash, ARGV[i + 1], ARGV[i + 2])
  end
  if #ARGV > 0 then redis.call('SET', KEYS[3], '1') end
end
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
""",
)


def write(pipe: Any, keys: SharedKeys, change: Change) -> None:
    """Put ``change`` in its hash (or take its field out), in the publishing transaction."""
    name = modstate.field(change)
    if name is None:
        return  # A kick is kept nowhere.
    if modstate.sets(change):
        pipe.hset(keys.of(change), {name: modstate.encode(change)})
    else:
        pipe.hdel(keys.of(change), [name])
    pipe.set(keys.seeded, b"1")  # The hashes are the cluster's from now on.


async def claim_account(client: coredis.Redis[bytes], keys: SharedKeys, entry: AccountSet) -> bool:
    """Register ``entry`` unless its name is registered: one HSETNX, so one winner."""
    field = modstate.field(entry)
    assert field is not None
    return bool(await client.hsetnx(keys.accounts, field, modstate.encode(entry)))


async def link(
    client: coredis.Redis[bytes], keys: SharedKeys, known: Iterable[State]
) -> list[State]:
    """Seed the cluster's state from ``known`` if it has none; return the cluster's state,
    what has expired left out (and deleted)."""
    args: list[str] = []
    for change in known:
        name = modstate.field(change)
        if name is not None and modstate.sets(change):
            args += ["a" if isinstance(change, AccountSet) else "m", name, modstate.encode(change)]
    result: Any = await SEED(
        keys=[keys.moderation, keys.accounts, keys.seeded], args=args, client=client
    )
    moderation, accounts = result
    state: list[State] = []
    stale: list[str] = []
    now = time.time()
    for name, value in pairs(moderation):
        setting = decoded(name, value)
        if setting is None or modstate.expired(setting, now):
            stale.append(_text(name))
        else:
            state.append(setting)
    for name, value in pairs(accounts):
        account = decoded(name, value)
        if isinstance(account, AccountSet):
            state.append(account)
    if stale:
        await client.hdel(keys.moderation, stale)
    return state


def decoded(name: Any, value: Any) -> State | None:
    """The setting a hash entry holds; ``None`` (logged) if it holds none."""
    try:
        change = modstate.decode(value)
    except modstate.ChangeError as exc:
        log.warning("ignoring a malformed moderation entry %s: %s", _text(name), exc)
        return None
    if not isinstance(change, State) or not modstate.sets(change):
        log.warning("ignoring a moderation entry that sets nothing: %s", _text(name))
        return None
    return change


def pairs(flat: Sequence[Any] | Any) -> Iterable[tuple[Any, Any]]:
    """A flat HGETALL reply (or a dict) as ``(field, value)`` pairs."""
    if isinstance(flat, dict):
        return flat.items()
    return zip(flat[::2], flat[1::2], strict=True)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
