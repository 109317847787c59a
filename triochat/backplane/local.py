"""The default backplane: one process, a synchronous loopback into its hub.

Publishing hands the events straight back to the hub's :meth:`Node.deliver`,
so the single-node server takes the same path as a cluster with no detour:
no queue, no task, no copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import trio

from ..core.events import Dialect, Private, RoomEvent
from ..core.modstate import AccountSet, Change
from .base import Claim, Handover, Node, RemoteUser


class LocalBackplane:
    """No other nodes: every query is empty and every claim succeeds at once."""

    remote = False
    link_down = False

    def __init__(self) -> None:
        self._node: Node | None = None

    def attach(self, node: Node, /) -> None:
        self._node = node
        # The hot path calls these: bind the node's methods once.
        self.publish = node.deliver  # type: ignore[method-assign]

    def publish(self, events: Sequence[RoomEvent], /) -> None:
        raise RuntimeError("publish() before attach()")

    def publish_private(self, key: str, event: Private, /) -> bool:
        return False

    def publish_notice(self, key: str, text: str, error: bool, /) -> bool:
        return False

    def publish_state(self, change: Change, /) -> None:
        pass  # The hub has taken it already: there is nobody else to tell.

    async def claim_account(self, entry: AccountSet, /) -> Claim:
        return Claim.CLAIMED  # The --db file's primary key decides.

    def presence(
        self,
        key: str,
        name: str,
        rooms: Iterable[str] | None,
        account: str | None = None,
        away: str | None = None,
        /,
    ) -> None:
        pass

    def occupy(self, room: str, /) -> None:
        pass

    def vacate(self, room: str, /) -> bool:
        return False

    def remote_name(self, key: str, /) -> str | None:
        return None

    def remote_users(self, room: str, /) -> list[str]:
        return []

    def remote_count_in(self, room: str, /) -> int:
        return 0

    def remote_first(self, room: str, count: int, /) -> Sequence[tuple[str, str]]:
        return ()

    def remote_user(self, key: str, /) -> RemoteUser | None:
        return None

    def remote_rooms(self) -> dict[str, int]:
        return {}

    def remote_count(self) -> int:
        return 0

    async def claim(self, name: str, /) -> Claim:
        return Claim.CLAIMED

    def unclaim(self, name: str, /) -> None:
        pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def leave_cluster(self) -> None:
        pass

    def resumable(self, entry: str, key: str, name: str, digest: bytes, /) -> None:
        pass

    def keep_token(self, entry: str, digest: bytes, /) -> None:
        pass

    def unresumable(self, entry: str, /) -> None:
        pass

    def hold(self, entry: str, /) -> None:
        pass

    async def take_over(
        self, digest: bytes, positions: Sequence[tuple[str, int]], dialect: Dialect, /
    ) -> Handover | None:
        return None  # One node: its own tokens are all there is.

    async def expire(self, entry: str, /) -> bool:
        return True
