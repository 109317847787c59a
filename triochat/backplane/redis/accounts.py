"""A cluster's accounts, worked on from outside any node (``triochat admin --redis``).

It reads the ``accounts`` hash (:mod:`.shared`) and changes one account with
one Lua script that checks the cluster has shared accounts at all (``seeded``:
against a wrong cluster name, or a Redis that lost its data, a change would
become the whole cluster's accounts when the next node links), checks the
account is still what was read (a user changing its password meanwhile is
not overwritten), writes it, and publishes its ``X`` record on the channel in
one step, so that every running node takes it at once, as it takes a change
made on a node.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, Final

import coredis
from coredis.commands.script import Script

from ...core import modstate
from ...core.accounts import account_key
from ...core.modstate import AccountSet
from .keys import Keys
from .shared import SharedKeys, decoded, pairs
from .wire import Shared, encode_batch, encode_record

ATTEMPTS: Final = 5
"""How often a change is tried again when the account changed under it."""

# KEYS: accounts, seeded, channel. ARGV: field, the value read, the new value, the batch.
# Returns -1 if the cluster has no shared accounts, 0 if the account changed meanwhile.
UPDATE: Final = Script[bytes](
    None,
    """
if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', KEYS[3], ARGV[4])
return 1
""",
)


class NoSharedAccounts(Exception):
    """The cluster keeps no accounts in this Redis (a wrong ``--cluster``, or none linked yet)."""


class ClusterAccounts:
    """The accounts of ``cluster`` in the Redis that ``client`` talks to."""

    def __init__(self, client: coredis.Redis[bytes], cluster: str) -> None:
        self._client = client
        self._keys = Keys(cluster)
        self._shared = SharedKeys(self._keys)
        self._origin = "admin-" + uuid.uuid4().hex[:12]
        """The sender named in the batch headers (the nodes count each sender's batches)."""
        self._seq = 0

    async def entries(self) -> list[AccountSet]:
        """Every account of the cluster, by key; raises :class:`NoSharedAccounts`."""
        if not await self._client.exists([self._shared.seeded]):
            raise NoSharedAccounts(self._keys.cluster)
        flat: Any = await self._client.hgetall(self._shared.accounts)
        found = [decoded(name, value) for name, value in pairs(flat)]
        return sorted((a for a in found if isinstance(a, AccountSet)), key=lambda a: a.key)

    async def change(self, name: str, update: Callable[[AccountSet], AccountSet]) -> bool:
        """Give ``name``'s account what ``update`` makes of it, for every node; ``False`` if
        ``name`` is not registered. Raises :class:`NoSharedAccounts`."""
        key = account_key(name)
        for _ in range(ATTEMPTS):
            if not await self._client.exists([self._shared.seeded]):
                raise NoSharedAccounts(self._keys.cluster)
            raw = await self._client.hget(self._shared.accounts, key)
            if raw is None:
                return False
            account = decoded(key, raw)
            if not isinstance(account, AccountSet):
                return False
            changed = update(account)
            batch = encode_batch(self._origin, self._seq + 1, [encode_record(Shared(changed))])
            done: Any = await UPDATE(
                keys=[self._shared.accounts, self._shared.seeded, self._keys.channel],
                args=[key, raw, modstate.encode(changed), batch],
                client=self._client,
            )
            if done == -1:
                raise NoSharedAccounts(self._keys.cluster)
            if done == 1:
                self._seq += 1
                return True
        raise RuntimeError(f"{name}'s account kept changing; try again")
