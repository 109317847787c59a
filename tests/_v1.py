"""A v1 line client on a hub without a socket: the session the line door runs for it."""

from __future__ import annotations

import trio

from triochat.core import commands as c, session as s
from triochat.core._auth import FailureDelays
from triochat.core.events import Dialect
from triochat.core.hub import Hub, Member


class LineUser:
    """A registered v1 member (in the lobby), its session, and its inbox."""

    def __init__(self, hub: Hub, name: str, dialect: Dialect, queue: int = 100) -> None:
        self.send, self.inbox = trio.open_memory_channel[bytes](queue)
        self.disconnects = 0
        self.hub = hub
        self.dialect = dialect
        door = s.Door(
            hub=hub, rules=s.Rules(), dialect=dialect, delays=FailureDelays(), clock=lambda: 0.0
        )
        self.session = s.Session(door, outbox=self.send, disconnect=self._disconnect)
        self.session.start()
        refused = self.session.receive_line(name)
        assert refused == [], refused
        assert isinstance(self.session.member, Member)
        self.member: Member = self.session.member

    def _disconnect(self) -> None:
        self.disconnects += 1

    def do(self, command: c.Command) -> None:
        """A command from this client; what the session answers itself is sent too."""
        if not self.hub.is_member(self.member):
            return  # its connection stops reading once it is out
        events = [out for out in self.session.command(command) if not isinstance(out, s.EFFECTS)]
        if events:
            self.send.send_nowait(self.dialect.render(events))
