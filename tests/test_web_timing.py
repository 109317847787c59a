"""The web door's timers on memory streams under trio's autojump clock: no real time passes.

A client here is wsproto's own client side over one end of a memory stream
pair; the door serves the other end (its outbox then always goes through the
writer task, as for TLS).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request, TextMessage

from triochat import ChatServer, ServerConfig
from triochat.backplane.memory import MemoryCluster
from triochat.core import events as ev
from triochat.protocol import web as w
from triochat.server.web import WebConfig, WebDoor


class Client:
    """A WebSocket client over a trio stream, driven by wsproto."""

    def __init__(self, stream: trio.abc.Stream, *, answer_pings: bool = True) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.answer_pings = answer_pings
        self.pings: list[float] = []
        """When the server's pings came."""
        self.closed: CloseConnection | None = None
        self._parts: list[str] = []
        self._pending: deque[Any] = deque()

    async def open(self) -> None:
        await self.stream.send_all(self.ws.send(Request(host="chat.test", target="/ws")))
        while True:
            for event in await self._events():
                if isinstance(event, AcceptConnection):
                    return

    async def send(self, **message: Any) -> None:
        await self.stream.send_all(self.ws.send(TextMessage(json.dumps(message))))

    async def receive(self) -> dict[str, Any]:
        """The next JSON message; raises ``EOFError`` once the server has closed."""
        while True:
            for event in await self._events():
                if isinstance(event, TextMessage):
                    self._parts.append(event.data)
                    if event.message_finished:
                        text = "".join(self._parts)
                        self._parts.clear()
                        return dict(json.loads(text))
                elif isinstance(event, Ping):
                    self.pings.append(trio.current_time())
                    if not self.answer_pings or self.ws.state is not ConnectionState.OPEN:
                        continue  # a mute client, or a close frame came after it
                    await self.stream.send_all(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.closed = event
                    raise EOFError(event.code)

    async def until(self, kind: str) -> dict[str, Any]:
        while (message := await self.receive())["type"] != kind:
            pass
        return message

    async def close_code(self) -> int:
        """Read until the server closes; its close code."""
        try:
            while True:
                await self.receive()
        except EOFError:
            assert self.closed is not None
            return int(self.closed.code)

    async def _events(self) -> Iterator[Any]:
        """Events not handled yet, reading more bytes if there are none."""
        if not self._pending:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)  # type: ignore[arg-type]
            self._pending.extend(self.ws.events())
        return _drain(self._pending)


def _drain(pending: deque[Any]) -> Iterator[Any]:
    while pending:
        yield pending.popleft()


_TIMED: weakref.WeakSet[WebDoor] = weakref.WeakSet()
"""The doors whose timers run (what ``WebDoor.serve`` would start with them)."""


async def open_client(nursery: trio.Nursery, door: WebDoor, *, answer_pings: bool = True) -> Client:
    if door not in _TIMED:
        _TIMED.add(door)
        nursery.start_soon(door.keep_time)
    client_end, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(door.handle_stream, server_end)
    client = Client(client_end, answer_pings=answer_pings)
    await client.open()
    assert (await client.receive())["type"] == "hello"
    return client


def make_door(web: WebConfig | None = None, **options: Any) -> WebDoor:
    options.setdefault("rate", 0)
    return WebDoor(ChatServer(ServerConfig(**options)), web or WebConfig(port=0))


async def test_a_wrong_password_s_verdict_waits_and_the_wait_grows(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    door = make_door(password="right", password_delay=1.0)
    waits = []
    for _ in range(3):
        client = await open_client(nursery, door)
        asked = trio.current_time()
        await client.send(type="register", name="eve", password="wrong")
        assert (await client.receive()) == {"type": "error", "text": "Wrong password"}
        waits.append(trio.current_time() - asked)
        assert await client.close_code() == w.CLOSE_WRONG_PASSWORD
    assert waits == pytest.approx([1.0, 2.0, 4.0])
    client = await open_client(nursery, door)
    asked = trio.current_time()
    await client.send(type="register", name="ann", password="right")
    assert (await client.receive())["type"] == "welcome"  # its resume token, then
    assert (await client.receive())["type"] == "registered"
    assert trio.current_time() == asked  # the right one is never kept waiting


async def test_no_register_within_the_timeout_closes_with_4002(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    door = make_door(registration_timeout=60)
    client = await open_client(nursery, door)
    start = trio.current_time()
    assert await client.close_code() == w.CLOSE_NO_NAME
    assert trio.current_time() - start == pytest.approx(60)
    named = await open_client(nursery, door)
    await named.send(type="register", name="ann")
    await named.until("joined")
    with trio.move_on_after(120):
        await named.receive()  # nothing comes, and it stays open
    assert named.closed is None


async def test_a_client_silent_to_pings_is_closed_one_that_answers_stays(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Without a grace a silent page leaves at once (with one, it is held: test_web_resume).
    door = make_door(web=WebConfig(port=0, ping_interval=20, ping_timeout=10), resume_grace=0)
    talker = await open_client(nursery, door)
    await talker.send(type="register", name="talker")
    await talker.until("joined")
    heard: list[dict[str, Any]] = []

    async def listen() -> None:
        while True:
            heard.append(await talker.receive())  # and answers each ping

    nursery.start_soon(listen)
    mute = await open_client(nursery, door, answer_pings=False)
    await mute.send(type="register", name="mute")
    start = trio.current_time()
    assert await mute.close_code() == w.CLOSE_PING_TIMEOUT
    assert trio.current_time() - start == pytest.approx(30)
    await trio.sleep(200)  # ten more pings, answered
    assert talker.closed is None
    left = [m for m in heard if m["type"] == "left"]
    assert [(m["name"], m["reason"]) for m in left] == [("mute", "ping timeout")]


async def test_the_door_pings_every_interval_and_closes_a_peer_once_it_stops_answering(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    door = make_door(web=WebConfig(port=0, ping_interval=20, ping_timeout=10), resume_grace=0)
    start = trio.current_time()
    ann = await open_client(nursery, door)
    await ann.send(type="register", name="ann")
    await ann.until("registered")
    with trio.move_on_after(65):
        await ann.until("never")  # reading, and answering each ping at once
    assert [t - start for t in ann.pings] == [20, 40, 60]  # interval after each answer
    ann.answer_pings = False
    assert await ann.close_code() == w.CLOSE_PING_TIMEOUT
    assert [t - start for t in ann.pings] == [20, 40, 60, 80]
    assert trio.current_time() - start == pytest.approx(90)  # 80 + the ping timeout


async def test_each_connection_s_pings_keep_their_own_times(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # The door's one task keeps each connection's times: a ping answered late but
    # in time, and another connection's, opened later and silent, do not mix.
    door = make_door(web=WebConfig(port=0, ping_interval=20, ping_timeout=10), resume_grace=0)
    start = trio.current_time()
    ann = await open_client(nursery, door)
    await ann.send(type="register", name="ann")
    await ann.until("registered")
    await trio.sleep(5)
    bob = await open_client(nursery, door, answer_pings=False)
    bob_start = trio.current_time()

    ann.answer_pings = False
    with trio.move_on_at(start + 21):
        await ann.until("never")
    assert [t - start for t in ann.pings] == [20]
    # ann answers its ping 9 s late, within the ping timeout; bob never does.
    await trio.sleep_until(start + 29)
    await ann.stream.send_all(ann.ws.send(Pong(b"triochat")))
    ann.answer_pings = True
    assert await bob.close_code() == w.CLOSE_PING_TIMEOUT
    assert trio.current_time() - bob_start == pytest.approx(30)
    with trio.move_on_at(start + 75):
        await ann.until("never")
    assert ann.closed is None
    assert [t - start for t in ann.pings] == [20, 49, 69]  # 20 s after each answer


async def test_flood_control_paces_messages_and_drops_none(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    door = make_door(rate=1.0, burst=3)
    client = await open_client(nursery, door)
    await client.send(type="register", name="fast")  # the register takes a token too
    await client.until("joined")
    start = trio.current_time()
    for i in range(6):
        await client.send(type="say", room="#lobby", text=f"line {i}")
    times = []
    for i in range(6):
        said = await client.until("said")
        assert said["text"] == f"line {i}"
        times.append(round(trio.current_time() - start))
    assert times == [0, 0, 1, 2, 3, 4]
    assert door.server.stats.flood_delays == 4


async def test_a_request_head_not_finished_in_time_is_dropped_quietly(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    door = make_door(web=WebConfig(port=0, request_timeout=10))
    client_end, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(door.handle_stream, server_end)
    await client_end.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the end
    start = trio.current_time()
    assert await client_end.receive_some(100) == b""
    assert trio.current_time() - start == pytest.approx(10)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_web_members_on_two_nodes_of_a_cluster_are_one_chat(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cluster = MemoryCluster(history=5)
    doors = []
    for _ in range(2):
        server = ChatServer(ServerConfig(rate=0), backplane=cluster.backplane())
        await nursery.start(server.backplane.run)
        doors.append(WebDoor(server, WebConfig(port=0)))
    a, b = doors
    ann = await open_client(nursery, a)
    await ann.send(type="register", name="ann")
    await ann.until("registered")
    # The name is the cluster's: a web member on the other node cannot take it.
    bob = await open_client(nursery, b)
    await bob.send(type="register", name="ANN")
    assert (await bob.receive()) == {"type": "error", "text": "Name ANN is taken, choose another"}
    await bob.send(type="register", name="bob")
    await bob.until("registered")
    while (await ann.until("joined"))["name"] != "bob":
        pass
    await bob.send(type="say", room="#lobby", text="across nodes")
    said = await ann.until("said")
    assert (said["name"], said["text"]) == ("bob", "across nodes")
    await bob.send(type="nick", name="ann")
    assert (await bob.until("error"))["text"] == "Name ann is taken, choose another"
    await bob.send(type="nick", name="bobby")
    renamed = await ann.until("renamed")
    assert (renamed["old"], renamed["new"]) == ("bob", "bobby")
    await bob.send(type="msg", to="ann", text="psst")
    assert (await ann.until("private"))["from"] == "bobby"


class CountingDialect(w.WebDialect):
    __slots__ = ("bursts",)

    def __init__(self) -> None:
        super().__init__()
        self.bursts: list[int] = []

    def render(self, events: Sequence[ev.Event], /) -> bytes:
        if any(isinstance(event, ev.Said) for event in events):
            self.bursts.append(len(events))
        return super().render(events)


async def test_a_burst_of_chat_messages_is_rendered_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    door = make_door()
    door.dialect = dialect = CountingDialect()
    door.sessions = dataclasses.replace(door.sessions, dialect=dialect)
    ann = await open_client(nursery, door)
    await ann.send(type="register", name="ann")
    bob = await open_client(nursery, door)
    await bob.send(type="register", name="bob")
    await bob.until("joined")
    burst = b"".join(
        bob.ws.send(TextMessage(json.dumps({"type": "say", "room": "#lobby", "text": str(i)})))
        for i in range(5)
    )
    await bob.stream.send_all(burst)
    for i in range(5):
        assert (await ann.until("said"))["text"] == str(i)
    assert dialect.bursts == [5]  # one render for the two of them, not five
