"""Big rooms on every door at once: a line, an IRC and a web member in one room, just at
the ``--quiet-above`` threshold and just past it, over real sockets."""

from __future__ import annotations

import pytest
import trio
from irc_support import RawIRC, close_clients, irc_client, line_client, line_until
from test_reconnect import lines_of
from test_web_door import register, until, web_client

from triochat import ChatServer, ServerConfig
from triochat.server.irc import IRCConfig, IRCDoor
from triochat.server.web import WebConfig, WebDoor

_close_clients = pytest.fixture(autouse=True)(close_clients)


@pytest.fixture
async def doors(nursery: trio.Nursery) -> tuple[ChatServer, int, int, int]:
    """A server (``quiet_above=3``) with its line, IRC and web ports."""
    server = ChatServer(ServerConfig(port=0, rate=0, quiet_above=3, presence_interval=30))
    line = await nursery.start(server.serve)
    irc = await nursery.start(IRCDoor(server, IRCConfig(port=0, name="irc.test")).serve)
    web = await nursery.start(WebDoor(server, WebConfig(port=0)).serve)
    ports = [listeners[0].socket.getsockname()[1] for listeners in (line, irc, web)]
    return server, ports[0], ports[1], ports[2]


async def test_every_door_hears_each_join_at_the_threshold_and_a_summary_past_it(
    doors: tuple[ChatServer, int, int, int],
) -> None:
    server, line_port, irc_port, web_port = doors
    with trio.fail_after(30):  # the helpers below wait without bound
        ann = await line_client(line_port, "ann")
        async with web_client(web_port) as ws:
            await register(ws, "cat")
            await until(ws, "joined", room="#lobby", name="cat")
            await line_until(ann, "* cat joined #lobby")
            bob: RawIRC = await irc_client(irc_port, "bob")
            await bob.send("JOIN #lobby")
            # Three members: the threshold, not past it, so the third join is told to all.
            await bob.until("366", "bob", "#lobby")
            await line_until(ann, "* bob joined #lobby")
            await until(ws, "joined", room="#lobby", name="bob")

            # The fourth, past it: only dan hears of its join.
            dan = await line_client(line_port, "dan")
            server.hub.summarize_presence()  # what the timer does every --presence-interval
            summary = "* 1 joined and 0 left #lobby in the last 30 s"
            assert not any("dan" in line for line in await lines_of(ann, summary))
            notice = await bob.until("NOTICE", "#lobby")
            assert notice.params[1].endswith(summary)
            assert not any(
                m.command == "JOIN" and (m.source or "").startswith("dan!") for m in bob.seen
            )
            presence = await until(ws, "presence")
            assert (presence["room"], presence["joined"], presence["left"]) == ("#lobby", 1, 0)
            await dan.send_line("/users")
            assert (await lines_of(dan, "dan"))[-1] == "* Users in #lobby: ann, bob, cat, dan"
