"""The interface between the hub and whatever connects it to other nodes.

The hub calls these methods synchronously; none of them waits. Only
:meth:`Backplane.claim` (a cluster-wide name claim) and :meth:`Backplane.run`
(the backplane's own tasks) are async, and the server awaits ``claim``
*before* it calls into the hub, so the hub's "no method awaits" rule holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from ..core.hub import Hub


class BackplaneError(Exception):
    """The link to the rest of the chat failed (Redis unreachable, timed out, or refused)."""


class Backplane(Protocol):
    """What the hub and server need from a backplane.

    ``remote`` is false for the local (single-process) backplane; the hub and
    server then take their direct paths and never call the rest.
    """

    remote: bool

    @property
    def notice(self) -> str | None:
        """A line newcomers should read (e.g. that the link is down), if any."""
        ...

    def publish_line(self, room: str, data: bytes, record: bool) -> bool:
        """Queue a room line for every node; ``False`` means deliver it locally instead."""
        ...

    def publish_private(self, key: str, data: bytes) -> bool:
        """Queue a private line for the node that holds ``key``; ``False`` if it cannot."""
        ...

    def presence(self, key: str, name: str, room: str | None) -> None:
        """A local member is now in ``room`` (``None``: gone, and its name is released)."""
        ...

    def occupy(self, room: str) -> None:
        """A first member on this node entered ``room`` (never the lobby): keep its history."""
        ...

    def vacate(self, room: str) -> bool:
        """The last member on this node left ``room``: its history may go.

        The cluster drops it once no node has a member in the room, and says
        so (:meth:`Hub.drop_history`). ``False`` means nobody will say so
        (there is no link): the hub forgets its copy now.
        """
        ...

    def remote_name(self, key: str) -> str | None:
        """The display name of the user on another node holding ``key``, if any."""
        ...

    def remote_users(self, room: str) -> list[str]:
        """Names of the users in ``room`` on other nodes."""
        ...

    def remote_rooms(self) -> dict[str, int]:
        """Member counts of the rooms on other nodes."""
        ...

    async def claim(self, name: str) -> str | None:
        """Claim ``name`` across the cluster; the error text if it is taken."""
        ...

    def unclaim(self, name: str) -> None:
        """Give back a claim that was not used."""
        ...

    async def run(
        self, hub: Hub, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the link up until cancelled; ``started`` after the first attempt."""
        ...

    async def leave_cluster(self) -> None:
        """Announce this node's users as gone and drop its keys (on shutdown)."""
        ...
