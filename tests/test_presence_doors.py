"""Big rooms on every door at once: a line, an IRC and a web member in one room, just at
the ``--quiet-above`` threshold and just past it, over real sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from irc_support import RawIRC, close_clients, irc_client, line_until, opened
from trio_websocket import WebSocketConnection, open_websocket

from triochat import ChatServer, ServerConfig
from triochat.client.connection import ChatClient, open_chat_client
from triochat.server.irc import IRCConfig, IRCDoor
from triochat.server.web import WebConfig, WebDoor

_close_clients = pytest.fixture(autouse=True)(close_clients)


async def web_until(ws: WebSocketConnection, kind: str, **fields: Any) -> dict[str, Any]:
    """The next message of ``kind`` with ``fields``; the ones before it are skipped."""
    with trio.fail_after(10):
        while True:
            message: dict[str, Any] = json.loads(await ws.get_message())
            if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
                return message


async def lines_until(client: ChatClient, ending: str) -> list[str]:
    """Every line up to the one that ends with ``ending``, that one included."""
    seen: list[str] = []
    with trio.fail_after(10):
        while not (seen and seen[-1].endswith(ending)):
            seen.append(await client.receive_line())
    return seen


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
    ann = await open_chat_client("127.0.0.1", line_port)
    opened(ann)
    await ann.register("ann")
    async with open_websocket("127.0.0.1", web_port, "/ws", use_ssl=False) as ws:
        await web_until(ws, "hello")
        await ws.send_message(json.dumps({"type": "register", "name": "cat"}))
        await web_until(ws, "joined", room="#lobby", name="cat")
        await line_until(ann, "* cat joined #lobby")
        bob: RawIRC = await irc_client(irc_port, "bob")
        await bob.send("JOIN #lobby")
        # Three members: the threshold, not past it, so the third join is told to all.
        await bob.until("366", "bob", "#lobby")
        await line_until(ann, "* bob joined #lobby")
        await web_until(ws, "joined", room="#lobby", name="bob")

        dan = await open_chat_client("127.0.0.1", line_port)
        opened(dan)
        await dan.register("dan")  # the fourth, past it: only dan hears of its join
        server.hub.summarize_presence()  # what the timer does every --presence-interval
        summary = "* 1 joined and 0 left #lobby in the last 30 s"
        assert not any("dan" in line for line in await lines_until(ann, summary))
        notice = await bob.until("NOTICE", "#lobby")
        assert notice.params[1].endswith(summary)
        assert not any(
            m.command == "JOIN" and (m.source or "").startswith("dan!") for m in bob.seen
        )
        presence = await web_until(ws, "presence")
        assert (presence["room"], presence["joined"], presence["left"]) == ("#lobby", 1, 0)
        await dan.send_line("/users")
        assert (await lines_until(dan, "dan"))[-1] == "* Users in #lobby: ann, bob, cat, dan"
        await ws.aclose()
