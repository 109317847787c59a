"""The web door's resume: a page whose WebSocket breaks is held, and takes its member back.

The whole server runs (``serve``: the expiry of held members) under trio's jumping
clock; pages are wsproto clients over memory streams (``test_web_timing``), and a
"cut" is a page's stream closed without a close frame, as a network drop or a
sleeping laptop looks to the server.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from _v2 import V2Client
from test_web_timing import Client, make_door, open_client
from wsproto.events import BytesMessage, CloseConnection

from triochat import ChatServer, ServerConfig
from triochat.backplane.memory import MemoryBackplane, MemoryCluster
from triochat.core.resume import BAD_TOKEN, CANNOT_RESUME
from triochat.protocol import web as w
from triochat.server.web import WebConfig, WebDoor

REFUSED = BAD_TOKEN.partition(";")[0]
"""What the page is told of a bad token: the same words whatever was wrong with it."""


class Page(Client):
    """A page that keeps what it needs to come back: its token, and each room's epoch and
    last number."""

    token = ""
    name = ""

    def __init__(self, client: Client) -> None:
        super().__init__(client.stream, answer_pings=client.answer_pings)
        self.ws = client.ws
        self.positions: dict[str, tuple[str, int]] = {}
        self.seen: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        message = await super().receive()
        self.seen.append(message)
        kind = message["type"]
        if kind == "welcome":
            self.token, self.name = message["token"], message["name"]
        elif kind in ("room", "resumed", "resume-failed"):
            self.positions[message["room"]] = (message["epoch"], message["seq"])
        elif message.get("seq") and message["room"] in self.positions:
            epoch, seq = self.positions[message["room"]]
            self.positions[message["room"]] = (epoch, max(seq, message["seq"]))
        return message

    async def register(self, name: str, *rooms: str) -> None:
        await self.send(type="register", name=name, rooms=list(rooms or ["#lobby"]))
        for _ in rooms or ["#lobby"]:
            await self.until("room")

    def resume_message(self, **changes: Any) -> dict[str, Any]:
        resume = {room: {"epoch": e, "seq": s} for room, (e, s) in self.positions.items()}
        message = {"type": "register", "name": self.name, "token": self.token, "resume": resume}
        return {**message, **changes}

    async def cut(self) -> None:
        """The network goes: no close frame, the server just sees the stream end."""
        await self.stream.aclose()


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[WebDoor, trio.Nursery]]:
    # Pings only where a test wants them: a page not read meanwhile would not answer.
    web = options.pop("web", WebConfig(port=0, ping_interval=3600, ping_timeout=3600))
    door = make_door(web, port=0, **options)
    with trio.fail_after(1000):  # virtual seconds: a test that waits forever fails
        async with trio.open_nursery() as nursery:
            await nursery.start(door.server.serve)
            yield door, nursery
            nursery.cancel_scope.cancel()  # the server and every page's connection


async def page(door: WebDoor, nursery: trio.Nursery, name: str = "", *rooms: str) -> Page:
    opened = Page(await open_client(nursery, door))
    if name:
        await opened.register(name, *rooms)
    return opened


async def back(door: WebDoor, nursery: trio.Nursery, old: Page, **changes: Any) -> Page:
    """A new connection that resumes ``old``'s member; answered up to ``registered``."""
    new = await page(door, nursery)
    new.positions, new.name, new.token = dict(old.positions), old.name, old.token
    await new.send(**old.resume_message(**changes))
    return new


async def registered_anew(client: Page) -> None:
    """The token was refused (in the one answer for every bad token), and the register
    went on without it: a new member under the name given."""
    assert await client.receive() == {"type": "error", "text": REFUSED}
    assert (await client.until("registered"))["resumed"] is False


async def noise(observer: Page, name: str) -> list[str]:
    """What ``observer`` was told of ``name`` coming and going, up to now."""
    await observer.send(type="rooms")
    await observer.until("rooms")
    seen = observer.seen
    return [m["type"] for m in seen if m["type"] in ("joined", "left") and m.get("name") == name]


async def test_a_cut_page_is_held_and_resumes_every_room_after_its_last_number(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (door, nursery):
        ann = await page(door, nursery, "ann", "#lobby", "#dev")
        bob = await page(door, nursery, "bob", "#lobby")
        await ann.until("joined")  # bob's, in #lobby
        old_token = ann.token
        await ann.cut()
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            await bob.send(type="say", room="#lobby", text=f"missed {i}")
            await bob.until("said")
        await trio.sleep(20)  # within the 30 s grace
        ann2 = await back(door, nursery, ann)
        welcome = await ann2.receive()  # first: the new token
        assert (welcome["type"], welcome["name"]) == ("welcome", "ann")
        assert welcome["token"] != old_token
        replay: list[dict[str, Any]] = []
        while (message := await ann2.receive())["type"] != "resumed":
            replay.append(message)
        assert [m["text"] for m in replay] == ["missed 0", "missed 1", "missed 2"]
        assert message["room"] == "#lobby"
        assert message["count"] == 3
        dev = await ann2.receive()
        assert (dev["type"], dev["room"], dev["count"]) == ("resumed", "#dev", 0)
        registered = await ann2.receive()  # last: it is back
        assert (registered["type"], registered["resumed"]) == ("registered", True)
        await ann2.send(type="ack", token=ann2.token)
        await bob.send(type="say", room="#lobby", text="live")
        assert (await ann2.until("said"))["text"] == "live"
        await trio.sleep(60)  # past any grace: nothing is pending
        await bob.send(type="users", room="#lobby")
        assert "ann" in (await bob.until("users"))["names"]
        assert await noise(bob, "ann") == []  # the room saw no left, no joined


async def test_past_the_grace_the_room_sees_the_leave_and_the_page_registers_anew(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(resume_grace=30) as (door, nursery):
        ann = await page(door, nursery, "ann")
        bob = await page(door, nursery, "bob")
        await ann.cut()
        left = await bob.until("left")
        assert (left["name"], left["reason"]) == ("ann", "connection lost")
        ann2 = await back(door, nursery, ann, rooms=["#lobby"])
        await registered_anew(ann2)  # its name was free: it is ann again
        assert (await ann2.until("joined"))["name"] == "ann"


async def test_bad_tokens_forged_used_expired_all_get_the_same_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (door, nursery):
        ann = await page(door, nursery, "ann")
        first = ann.token
        await ann.cut()
        # A forged token for a held member: refused, and the name stays the member's.
        forger = await back(door, nursery, ann, token="00" * 16)
        assert await forger.receive() == {"type": "error", "text": REFUSED}
        assert await forger.until("error") == {
            "type": "error",
            "text": "Name ann is taken, choose another",
        }
        # The forgery took nothing: the real token still works, and gives a new one.
        ann2 = await back(door, nursery, ann)
        await ann2.until("resumed")
        assert (await ann2.until("registered"))["resumed"] is True
        # Before the ack, the first token stays valid (a lost handshake locks nobody out).
        second = ann2.token
        await ann2.cut()
        ann3 = await back(door, nursery, ann)
        assert ann3.token == first
        await ann3.until("resumed")
        assert (await ann3.until("registered"))["resumed"] is True
        await ann3.send(type="ack", token=ann3.token)
        await ann3.send(type="ack", token=second)  # not its newest: refused
        assert await ann3.until("error") == {
            "type": "error",
            "text": "That is not your newest resume token",
        }
        await ann3.cut()
        # Acknowledged away: both older tokens are dead, and say so in the same words.
        for used in (first, second):
            again = await back(door, nursery, ann, token=used)
            assert await again.receive() == {"type": "error", "text": REFUSED}
            await again.cut()
        # Expired: past the grace, the newest is dead too.
        await trio.sleep(31)
        late = await back(door, nursery, ann3)
        await registered_anew(late)


async def test_a_room_that_never_existed_a_number_from_the_future_and_a_wrong_epoch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (door, nursery):
        ann = await page(door, nursery, "ann", "#lobby", "#dev")
        epoch, seq = ann.positions["#lobby"]
        dev_epoch, dev_seq = ann.positions["#dev"]
        await ann.cut()
        resume = {
            "#never": {"epoch": epoch, "seq": 1},
            "#lobby": {"epoch": epoch, "seq": seq + 100},
            "#dev": {"epoch": "0badc0ffee00", "seq": dev_seq},
        }
        ann2 = await back(door, nursery, ann, resume=resume)
        failed = [await ann2.until("resume-failed") for _ in range(3)]
        assert (await ann2.until("registered"))["resumed"] is True
        assert failed == [
            {
                "type": "resume-failed",
                "room": "#never",
                "epoch": "",
                "seq": 0,
                "lost": 0,
                "reason": "no such room",
            },
            {
                "type": "resume-failed",
                "room": "#lobby",
                "epoch": epoch,
                "seq": seq,
                "lost": 0,
                "reason": f"number {seq + 100} is from the future (the room is at {seq})",
            },
            {
                "type": "resume-failed",
                "room": "#dev",
                "epoch": dev_epoch,
                "seq": dev_seq,
                "lost": dev_seq,
                "reason": "the room's history was reset",
            },
        ]
        # Nothing was replayed, and it is back in its rooms, not in the one it made up.
        assert not [m for m in ann2.seen if m["type"] == "said"]
        await ann2.send(type="say", room="#never", text="x")
        assert (await ann2.until("error"))["text"] == "You are not in #never"


async def test_guessing_tokens_is_closed_after_resume_attempts_tries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(resume_attempts=3) as (door, nursery):
        ann = await page(door, nursery, "ann")
        await ann.cut()  # held: the name stays taken, so every guess falls back to nothing
        guesser = await page(door, nursery)
        for guess in range(3):
            await guesser.send(type="register", name="ann", token=f"{guess:032x}")
        assert await guesser.close_code() == w.CLOSE_BAD_TOKENS
        errors = [m["text"] for m in guesser.seen if m["type"] == "error"]
        assert errors == [REFUSED, "Name ann is taken, choose another"] * 2 + [
            "Too many bad resume tokens, closing"
        ]
        ann2 = await back(door, nursery, ann)  # the member is untouched
        assert (await ann2.until("registered"))["resumed"] is True


async def test_a_page_that_closes_on_purpose_leaves_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (door, nursery):
        bob = await page(door, nursery, "bob")
        ann = await page(door, nursery, "ann")
        await ann.stream.send_all(ann.ws.send(CloseConnection(1001)))  # a reload, a closed tab
        start = trio.current_time()
        left = await bob.until("left")
        assert (left["name"], left["reason"]) == ("ann", "connection lost")
        assert trio.current_time() == start  # not held
        again = await back(door, nursery, ann)
        await registered_anew(again)


async def test_a_page_the_server_closes_for_its_own_fault_leaves_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (door, nursery):
        bob = await page(door, nursery, "bob")
        ann = await page(door, nursery, "ann")
        await ann.stream.send_all(ann.ws.send(BytesMessage(b"\x00")))  # not JSON text
        assert await ann.close_code() == w.CLOSE_UNSUPPORTED
        start = trio.current_time()
        left = await bob.until("left")
        assert (left["name"], trio.current_time()) == ("ann", start)  # not held


async def test_a_page_silent_to_pings_is_held_and_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    web = WebConfig(port=0, ping_interval=20, ping_timeout=10)
    async with serving(web=web) as (door, nursery):
        ann = Page(await open_client(nursery, door, answer_pings=False))
        await ann.register("ann")
        assert await ann.close_code() == w.CLOSE_PING_TIMEOUT  # the laptop slept
        bob = await page(door, nursery, "bob")
        await bob.send(type="say", room="#lobby", text="while asleep")
        await bob.until("said")
        ann2 = await back(door, nursery, ann)
        assert (await ann2.until("said"))["text"] == "while asleep"
        assert (await ann2.until("resumed"))["count"] == 2  # bob's join and line
        nursery.start_soon(bob.until, "never")  # bob reads (and answers pings) from now on
        await trio.sleep(60)
        assert [m for m in bob.seen if m.get("name") == "ann"] == []  # no left, no joined


async def test_a_resume_takes_over_a_connection_that_has_not_noticed_it_is_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (door, nursery):
        bob = await page(door, nursery, "bob")
        ann = await page(door, nursery, "ann")
        ann2 = await back(door, nursery, ann)  # the old one is still open
        assert (await ann2.until("registered"))["resumed"] is True
        before = len(ann.seen)
        assert await ann.close_code() == 1006  # hung up without a close frame
        assert ann.seen[before:] == []  # and without a word
        await bob.send(type="say", room="#lobby", text="to the new one")
        assert (await ann2.until("said"))["text"] == "to the new one"
        await trio.sleep(60)
        assert await noise(bob, "ann") == ["joined"]


async def test_the_token_is_never_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving() as (door, nursery):
        ann = await page(door, nursery, "ann")
        tokens = [ann.token]
        await ann.cut()
        ann2 = await back(door, nursery, ann)
        await ann2.until("resumed")
        tokens.append(ann2.token)
        await ann2.send(type="ack", token=ann2.token)
        await ann2.cut()
        forged = await back(door, nursery, ann2, token="ff" * 16)
        await forged.until("error")
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "ann resumed" in logged
    for token in [*tokens, "ff" * 16]:
        assert token not in logged


async def test_a_page_s_token_does_not_resume_on_the_line_door_nor_the_other_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as (door, nursery):
        ann = await page(door, nursery, "ann")
        await ann.cut()

        async def line_v2() -> V2Client:
            client_end, server_end = trio.testing.memory_stream_pair()
            nursery.start_soon(door.server.handle_stream, server_end)
            client = V2Client(client_end)
            await client.hello()
            return client

        # The page's token on the line door's v2: refused, and ann stays held for the page.
        liner = await line_v2()
        await liner.send(f"/resume {ann.token}")
        assert (await liner.until("error"))[-1].startswith(f"error :{REFUSED}")
        ann2 = await back(door, nursery, ann)
        assert (await ann2.until("registered"))["resumed"] is True
        # A v2 member's token on the web door: refused the same way.
        bob = await line_v2()
        await bob.send("bob")
        await bob.parsed("room")
        await bob.cut()
        web = await page(door, nursery)
        await web.send(type="register", name="bob", token=bob.token)
        assert await web.receive() == {"type": "error", "text": REFUSED}
        assert (await web.until("error"))["text"] == "Name bob is taken, choose another"
        assert door.server.tokens.held == 1
        await trio.sleep(31)  # held for its grace only, then gone
        assert door.server.tokens.held == 0
        assert door.server.hub.member("bob") is None
        assert door.server.hub.member("ann") is not None


@asynccontextmanager
async def two_web_nodes() -> AsyncIterator[tuple[list[ChatServer], WebDoor, WebDoor, trio.Nursery]]:
    """Two whole servers on one MemoryCluster, each with a web door."""
    cluster = MemoryCluster(history=5)
    web = WebConfig(port=0, ping_interval=3600, ping_timeout=3600)
    servers = [ChatServer(ServerConfig(port=0, rate=0), backplane=cluster.backplane())]
    servers.append(ChatServer(ServerConfig(port=0, rate=0), backplane=cluster.backplane()))
    with trio.fail_after(1000):
        async with trio.open_nursery() as nursery:
            for server in servers:
                await nursery.start(server.serve)
            yield servers, WebDoor(servers[0], web), WebDoor(servers[1], web), nursery
            nursery.cancel_scope.cancel()


async def test_a_page_cut_on_one_node_resumes_on_another_silently_and_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_web_nodes() as (servers, a, b, nursery):
        ann = await page(a, nursery, "ann", "#lobby", "#dev")
        bob = await page(b, nursery, "bob", "#lobby")
        while (await ann.until("joined"))["name"] != "bob":
            pass
        await trio.testing.wait_all_tasks_blocked()
        await ann.cut()
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            await bob.send(type="say", room="#lobby", text=f"missed {i}")
            await bob.until("said")
        await bob.send(type="msg", to="ann", text="psst")
        await bob.until("notice")  # kept for ann on node A
        ann2 = await back(b, nursery, ann)
        assert (await ann2.receive())["type"] == "welcome"
        replay: list[dict[str, Any]] = []
        while (message := await ann2.receive())["type"] != "resumed":
            replay.append(message)
        assert [m["text"] for m in replay] == ["missed 0", "missed 1", "missed 2"]
        assert (message["room"], message["count"]) == ("#lobby", 3)
        dev = await ann2.receive()
        assert (dev["type"], dev["room"], dev["count"]) == ("resumed", "#dev", 0)
        # Then it is back, and the message kept for it on node A follows it from there
        # (through the cluster, so it may come just after "registered").
        last = {m["type"]: m for m in [await ann2.receive(), await ann2.receive()]}
        assert last["registered"]["resumed"] is True
        assert (last["private"]["from"], last["private"]["text"]) == ("bob", "psst")
        await bob.send(type="say", room="#lobby", text="live")
        assert (await ann2.until("said"))["text"] == "live"
        assert servers[0].hub.member("ann") is None
        assert servers[1].hub.member("ann") is not None
        await trio.sleep(60)  # past node A's grace: nothing happens
        assert await noise(bob, "ann") == []  # the room saw no left, no joined


async def test_a_page_resuming_on_a_node_cut_off_from_the_cluster_is_told_to_try_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_web_nodes() as (servers, a, b, nursery):
        ann = await page(a, nursery, "ann")
        await ann.until("joined")
        await ann.cut()
        await trio.testing.wait_all_tasks_blocked()
        backplane = servers[1].backplane
        assert isinstance(backplane, MemoryBackplane)
        backplane.link_down = True
        early = await back(b, nursery, ann)
        assert await early.receive() == {"type": "error", "text": CANNOT_RESUME}
        assert await early.close_code() == w.CLOSE_TRY_LATER  # the page keeps its token
        assert early.closed is not None
        assert early.closed.reason == CANNOT_RESUME
        assert len(servers[1].password_delays) == 0  # not a bad try
        backplane.link_down = False
        later = await back(b, nursery, ann)
        assert (await later.until("registered"))["resumed"] is True
