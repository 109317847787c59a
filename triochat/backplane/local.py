"""The default backplane: one process, nothing to share.

It is a null object. The hub checks ``remote`` once and then takes its
direct, synchronous paths, so the single-node server pays nothing for
scale-out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ..core.hub import Hub


class LocalBackplane:
    """No other nodes: every query is empty and every claim succeeds at once."""

    remote = False
    notice = None

    def publish_line(self, room: str, data: bytes, record: bool) -> bool:
        return False

    def publish_private(self, key: str, data: bytes) -> bool:
        return False

    def presence(self, key: str, name: str, room: str | None) -> None:
        pass

    def occupy(self, room: str) -> None:
        pass

    def vacate(self, room: str) -> bool:
        return False

    def remote_name(self, key: str) -> str | None:
        return None

    def remote_users(self, room: str) -> list[str]:
        return []

    def remote_rooms(self) -> dict[str, int]:
        return {}

    async def claim(self, name: str) -> str | None:
        return None

    def unclaim(self, name: str) -> None:
        pass

    async def run(
        self, hub: Hub, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()

    async def leave_cluster(self) -> None:
        pass
