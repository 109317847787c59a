"""Big rooms: the server tells each one of its joins and leaves once per interval."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from triochat.protocol import line as p
from triochat.server.listener import ChatServer, ServerConfig


async def test_the_server_summarizes_big_rooms_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = ChatServer(ServerConfig(quiet_above=2, presence_interval=30))
    hub = server.hub
    inboxes = []
    for name in ("ann", "ben", "cat"):
        send, receive = trio.open_memory_channel[bytes](100)
        member = hub.register(name, send, lambda: None, server.dialect)
        assert not isinstance(member, str)
        hub.join(member, "#big")
        inboxes.append(receive)

    def unread(receive: trio.MemoryReceiveChannel[bytes]) -> list[str]:
        out = []
        while True:
            try:
                out.append(receive.receive_nowait().decode())
            except trio.WouldBlock:
                return out

    ann = inboxes[0]
    unread(ann)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._summarize_presence)
        await trio.sleep(29)
        assert unread(ann) == []
        await trio.sleep(2)
        assert unread(ann) == ["* 1 joined and 0 left #big in the last 30 s\n"]
        await trio.sleep(30)
        assert unread(ann) == []  # nothing happened, nothing said
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("quiet_above", "presence_interval"), [(-1, 30.0), (200, 0.0), (200, float("nan"))]
)
def test_presence_settings_are_checked(quiet_above: int, presence_interval: float) -> None:
    with pytest.raises(ValueError, match=r"quiet_above|presence_interval"):
        ServerConfig(quiet_above=quiet_above, presence_interval=presence_interval)


def test_help_mentions_users_all() -> None:
    assert any("/users [all]" in line for line in p.HELP)
