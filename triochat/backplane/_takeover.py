"""A takeover in flight on the node that asked for it, the same for every backplane.

The node that takes a member over adopts it when its own announcement of the
takeover comes back through the cluster's channel (so that it is adopted at
that point of the channel's order), in the backplane's receiving task; the
resuming connection waits for that meanwhile.
"""

from __future__ import annotations

import trio

from ..core.events import Dialect
from .base import LocalMember, Node, Takeover


class Pending:
    """A takeover this node asked for, until its announcement comes back."""

    __slots__ = ("abandoned", "claim", "dialect", "done", "member")

    def __init__(self, dialect: Dialect, claim: str = "") -> None:
        self.dialect = dialect
        self.claim = claim
        """The name claim the takeover wrote (Redis), made ours when it comes back."""
        self.done = trio.Event()
        self.member: LocalMember | None = None
        self.abandoned = False

    def arrived(self, node: Node, takeover: Takeover) -> None:
        """The announcement is here: ``node`` adopts the member (which leaves at once if
        the resuming connection is gone)."""
        self.member = node.adopt(takeover, self.dialect)
        if self.abandoned:
            node.abandon(self.member)
        self.done.set()

    def failed(self) -> None:
        """The announcement will not come (the link went down)."""
        self.done.set()

    async def adopted(self, node: Node) -> LocalMember | None:
        """Wait for the member, adopted; ``None`` if it failed. If the wait is cancelled
        (the connection is gone), the member leaves once adopted."""
        try:
            await self.done.wait()
        except BaseException:
            if self.member is not None:
                node.abandon(self.member)
            else:
                self.abandoned = True
            raise
        return self.member
