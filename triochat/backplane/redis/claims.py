"""Name claims across the cluster: a key ``name:KEY`` holding ``NODE:SERIAL``.

A claim is taken by a Lua script that treats a name held by a dead node (no
heartbeat key) as free, so two nodes claiming one name at once get one
winner. The result is a :class:`~triochat.backplane.base.Claim`: the session
tells "taken" from "the link is down" and words each for its user.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import coredis
import trio

from ...core.names import name_key
from ..base import Claim, LocalMember, Node
from . import scripts
from .keys import Keys
from .link import describe, is_link_error, log


class Claims:
    """This node's claims: name key -> its ``NODE:SERIAL`` token.

    ``release(key, token)`` queues the release of a claim for the publisher
    (releases go in order with the presence that ends a name's use).
    """

    def __init__(
        self, node: str, keys: Keys, timeout: float, release: Callable[[str, str], None]
    ) -> None:
        self.node = node
        self._keys = keys
        self._timeout = timeout
        self._release = release
        self._tokens: dict[str, str] = {}
        self._serial = itertools.count(1)

    def _new(self, key: str) -> str:
        token = self._tokens[key] = self.fresh()
        return token

    def fresh(self) -> str:
        """A claim token not used yet (a takeover writes it into the name's key itself)."""
        return f"{self.node}:{next(self._serial)}"

    def adopt(self, key: str, token: str) -> None:
        """The name ``key`` is ours with ``token`` (a takeover claimed it)."""
        self._tokens[key] = token

    def forget(self, key: str) -> None:
        """The name ``key`` is another node's now (it took our member over): no release."""
        self._tokens.pop(key, None)

    async def claim(self, client: coredis.Redis[bytes] | None, name: str) -> Claim:
        """Claim ``name``; with no link (``client`` is ``None``), only against this node's claims.

        Names claimed without a link are claimed again when it is back
        (:meth:`reclaim`), and a node that finds one taken expels its user.
        """
        key = name_key(name)
        if key in self._tokens:
            return Claim.TAKEN
        token = self._new(key)
        if client is None:
            return Claim.CLAIMED
        try:
            owner = await self._take(client, key, token)
        except BaseException as exc:
            # Cancelled (or failed) half-way: the key may hold our token; give it back.
            self._tokens.pop(key, None)
            self._release(key, token)
            if is_link_error(exc):
                log.warning("could not claim a name: %s", describe(exc))
                log.debug("the claim's failure", exc_info=exc)
                return Claim.LINK_DOWN
            raise
        if owner is not None:
            del self._tokens[key]
            return Claim.TAKEN
        return Claim.CLAIMED

    def unclaim(self, name: str, linked: bool) -> None:
        """Give back a claim that was not used."""
        self.drop(name_key(name), linked)

    def drop(self, key: str, linked: bool) -> None:
        """Forget the claim on ``key`` (its user left or renamed), releasing it if ``linked``."""
        token = self._tokens.pop(key, None)
        if token is not None and linked:
            self._release(key, token)

    async def reclaim(self, client: coredis.Redis[bytes], node: Node) -> list[LocalMember]:
        """Claim every local member's name again; return the members whose name was taken."""
        conflicts = []
        done: set[str] = set()
        # Until none is left: users may register (locally) while we await.
        while todo := [m for m in node.local_members() if m.key not in done]:
            for member in todo:
                done.add(member.key)
                token = self._tokens.get(member.key) or self._new(member.key)
                if await self._take(client, member.key, token) is not None:
                    self._tokens.pop(member.key, None)
                    conflicts.append(member)
        return conflicts

    async def _take(self, client: coredis.Redis[bytes], key: str, token: str) -> str | None:
        """Claim ``key``; ``None`` on success, else the holder's token."""
        with trio.fail_after(self._timeout):
            owner = await self._run(client, key, token, "0")
            if owner is not None and owner.split(":")[0] == self.node:
                live = set(self._tokens.values()) - {token}
                if owner not in live:  # Our own, from a release still in flight.
                    owner = await self._run(client, key, token, "1")
        return owner

    async def _run(self, client: coredis.Redis[bytes], key: str, *args: str) -> str | None:
        token, take_over = args
        result: Any = await scripts.CLAIM(
            keys=[self._keys.name(key)],
            args=[token, self._keys.alive_prefix, self.node, take_over],
            client=client,
        )
        return result.decode() if isinstance(result, bytes) else None
