"""Accounts and moderation through the web door: the page's password field and commands."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _accounts import open_accounts
from test_web_door import receive, until, web_client
from trio_websocket import WebSocketConnection

from triochat import ChatServer, ServerConfig
from triochat.core.accounts import Request
from triochat.server.web import WebConfig, WebDoor

Start = Callable[[], Awaitable[int]]


@pytest.fixture
async def web_port(nursery: trio.Nursery, tmp_path: Path) -> int:
    accounts = open_accounts(tmp_path / "chat.db")
    assert (await accounts.perform(Request("register", "ann", "ann-pw"))).ok
    server = ChatServer(ServerConfig(port=0, rate=0, password_delay=0.01), accounts=accounts)
    door = WebDoor(server, WebConfig(port=0))
    await nursery.start(server.serve)
    webs = await nursery.start(door.serve)
    return int(webs[0].socket.getsockname()[1])


async def send(ws: WebSocketConnection, **message: Any) -> None:
    await ws.send_message(json.dumps(message))


async def test_a_registered_name_on_the_page_asks_for_its_password(web_port: int) -> None:
    async with web_client(web_port) as ws:
        assert (await receive(ws))["type"] == "hello"
        await send(ws, type="register", name="ann")
        assert await receive(ws) == {"type": "account_password", "name": "ann"}
        await send(ws, type="register", name="ann", account_password="guess")
        assert (await until(ws, "error"))["text"] == "Wrong password for ann"
        await send(ws, type="register", name="ann", account_password="ann-pw", rooms=["#den"])
        await until(ws, "registered", name="ann")
        assert (await until(ws, "notice"))["text"] == "You are an operator of #den"


async def test_moderation_commands_from_the_page_act_on_the_room_typed_in(web_port: int) -> None:
    async with web_client(web_port) as ann, web_client(web_port) as bob:
        await receive(ann)
        await send(ann, type="register", name="ann", account_password="ann-pw", rooms=["#den"])
        await until(ann, "registered", name="ann")
        await receive(bob)
        await send(bob, type="register", name="bob", rooms=["#lobby", "#den"])
        await until(bob, "registered", name="bob")
        await until(ann, "joined", room="#den", name="bob")
        await send(bob, type="line", room="#den", text="/topic mine")
        assert (await until(bob, "error"))["text"] == "You are not an operator of #den"
        await send(ann, type="line", room="#den", text="/topic Be kind")
        topic = await until(bob, "topic", room="#den")
        assert (topic["name"], topic["topic"]) == ("ann", "Be kind")
        await send(ann, type="line", room="#den", text="/mute bob")
        await until(ann, "notice", text="bob is muted in #den until lifted")
        await send(bob, type="say", room="#den", text="spam")
        assert (await until(bob, "error"))["text"] == "You are muted in #den until lifted: not sent"
        await send(bob, type="say", room="#lobby", text="fine here")  # muted in #den only
        await until(bob, "said", room="#lobby", text="fine here")
        await send(ann, type="line", room="#den", text="/kick bob bye")
        left = await until(bob, "error")
        assert left["text"] == "You left #den (kicked by ann: bye)"
        await until(ann, "left", room="#den", name="bob", reason="kicked by ann: bye")


async def test_a_resumed_page_is_still_identified_and_still_operates_its_room(
    web_port: int,
) -> None:
    async with web_client(web_port) as ann:
        await receive(ann)
        await send(ann, type="register", name="ann", account_password="ann-pw", rooms=["#den"])
        welcome = await until(ann, "welcome", name="ann")
        room = await until(ann, "room", room="#den")
        await ann._stream.aclose()  # the network goes: no close frame
    async with web_client(web_port) as back:
        await receive(back)
        resume = {"#den": {"epoch": room["epoch"], "seq": room["seq"]}}
        await send(back, type="register", name="ann", token=welcome["token"], resume=resume)
        assert (await until(back, "registered", name="ann"))["resumed"] is True
        await send(back, type="line", room="#den", text="/topic still mine")
        with trio.fail_after(10):
            while (answer := await receive(back))["type"] not in ("topic", "error"):
                pass
        assert (answer["type"], answer.get("topic")) == ("topic", "still mine")
