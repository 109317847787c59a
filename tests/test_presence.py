"""Big rooms: the server tells each one of its joins and leaves once per interval."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from triochat.core.hub import USERS_SHOWN, Hub
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


def test_a_big_rooms_user_list_follows_joins_leaves_and_renames() -> None:
    """The first names a big room lists are kept as members come and go (not re-sorted per
    joiner), and are always the first of everyone in it."""
    hub = Hub(quiet_above=3)
    dialect = p.LineDialect()
    members = {}
    order = [f"u{(i * 37) % 90:02d}" for i in range(90)]  # every name once, out of order
    for name in order:
        member = hub.register(name, trio.open_memory_channel[bytes](1000)[0], lambda: None, dialect)
        assert not isinstance(member, str)
        hub.join(member, "#big")
        members[name] = member

    def listed() -> tuple[tuple[str, ...], int]:
        event = hub._user_list(hub._rooms["#big"])
        return event.names, event.total

    def expected() -> tuple[tuple[str, ...], int]:
        names = sorted(m.name for m in members.values())
        return tuple(names[:USERS_SHOWN]), len(names)

    assert listed() == expected()
    for name in ("u00", "u89", "u10", "u49", "u50"):  # among the first, and after them
        hub.leave(members.pop(name), "quit")
        assert listed() == expected()
    hub.rename(members["u70"], "a70")  # now the first of all
    members["a70"] = members.pop("u70")
    assert listed() == expected()
    hub.rename(members["u01"], "z01")  # now the last
    members["z01"] = members.pop("u01")
    assert listed() == expected()
    late = hub.register("b00", trio.open_memory_channel[bytes](1000)[0], lambda: None, dialect)
    assert not isinstance(late, str)
    hub.join(late, "#big")
    members["b00"] = late
    assert listed() == expected()
    # Marks are looked up for the names shown only: an away member among them is marked,
    # one past them is not listed at all.
    hub.set_away(members["u02"], "lunch")
    hub.set_away(members["u88"], "lunch")
    assert hub._user_list(hub._rooms["#big"]).away == frozenset({"u02"})
