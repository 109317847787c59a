"""The web door against real sockets: HTTP, WebSocket clients, and an nc user beside them."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from trio_websocket import CloseReason, ConnectionClosed, WebSocketConnection, open_websocket

from triochat import ChatServer, ServerConfig
from triochat.protocol import web as w
from triochat.server.web import CSP, WebConfig, WebDoor, _host_name, _is_loopback

Start = Callable[..., Awaitable[tuple[ChatServer, WebDoor, int, int]]]


@pytest.fixture
async def start(nursery: trio.Nursery) -> Start:
    """``server, door, line_port, web_port = await start(rate=0, web=WebConfig(...))``."""

    async def start_both(
        *, web: WebConfig | None = None, ssl_context: ssl.SSLContext | None = None, **options: Any
    ) -> tuple[ChatServer, WebDoor, int, int]:
        options.setdefault("port", 0)
        options.setdefault("rate", 0)
        server = ChatServer(ServerConfig(**options), ssl_context=ssl_context)
        door = WebDoor(server, web or WebConfig(port=0))
        line = await nursery.start(server.serve)
        webs = await nursery.start(door.serve)
        return server, door, line[0].socket.getsockname()[1], webs[0].socket.getsockname()[1]

    return start_both


@asynccontextmanager
async def web_client(
    port: int, origin: str | None = None, **options: Any
) -> AsyncIterator[WebSocketConnection]:
    headers = [] if origin is None else [(b"Origin", origin.encode())]
    options.setdefault("use_ssl", False)
    opened: list[WebSocketConnection] = []
    try:
        async with open_websocket(
            "127.0.0.1", port, "/ws", extra_headers=headers, message_queue_size=10_000, **options
        ) as ws:
            opened.append(ws)
            yield ws
    finally:
        # trio-websocket 0.12's client leaves its TCP stream open when the
        # server closed first (its reader stops at EOF without closing it).
        for ws in opened:
            await ws._stream.aclose()


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    return dict(json.loads(await ws.get_message()))


async def until(ws: WebSocketConnection, kind: str, **fields: Any) -> dict[str, Any]:
    """The next message of ``kind`` whose fields match (those before it are skipped)."""
    while True:
        message = await receive(ws)
        if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
            return message


async def register(ws: WebSocketConnection, name: str, **fields: Any) -> dict[str, Any]:
    hello = await receive(ws)
    assert hello["type"] == "hello"
    await ws.send_message(json.dumps({"type": "register", "name": name, **fields}))
    await until(ws, "registered", name=name)
    return hello


async def closed_with(ws: WebSocketConnection) -> CloseReason:
    """Read until the server closes: its close code and reason."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed as closed:
        return closed.reason  # type: ignore[return-value]


async def http_get(port: int, target: str, **headers: str) -> tuple[str, dict[str, str], bytes]:
    """One raw HTTP/1.1 request: the status line, the headers, the body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *rest = head.decode().split("\r\n")
    found = {}
    for line in rest:
        name, _, value = line.partition(":")
        found[name.lower()] = value.strip()
    return status, found, body


async def raw_upgrade(port: int, origin: str | None = None) -> tuple[trio.SocketStream, bytes]:
    """A WebSocket handshake by hand: the stream, and the response's head."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = [
        "GET /ws HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *([f"Origin: {origin}"] if origin else []),
    ]
    await stream.send_all(("\r\n".join(request) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(1)
    return stream, head


# --- HTTP ------------------------------------------------------------------------------


async def test_the_page_is_served_with_a_strict_policy_and_no_cookie(start: Start) -> None:
    _, _, _, port = await start()
    status, headers, body = await http_get(port, "/")
    assert status.startswith("HTTP/1.1 200")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP
    assert "unsafe-inline" not in CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in headers
    assert b'<script src="/app.js" defer></script>' in body
    assert b"<script>" not in body  # no inline script for the policy to forbid
    status, headers, body = await http_get(port, "/app.js")
    assert headers["content-type"].startswith("text/javascript")
    assert b"textContent" in body
    assert b"innerHTML" not in body
    status, _, _ = await http_get(port, "/../pyproject.toml")
    assert status.startswith("HTTP/1.1 404")


async def test_a_bad_request_gets_400_and_the_door_carries_on(start: Start) -> None:
    _, _, _, port = await start()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"NONSENSE\r\n\r\n")
        assert (await stream.receive_some(100)).startswith(b"HTTP/1.1 400")
    status, _, _ = await http_get(port, "/")
    assert status.startswith("HTTP/1.1 200")


# --- Chatting -----------------------------------------------------------------------


async def test_an_nc_user_and_a_web_user_chat_in_one_room(start: Start) -> None:
    _, _, line_port, port = await start()
    async with web_client(port) as ws:
        hello = await register(ws, "webby")
        assert hello["password"] is False
        assert hello["limits"] == {"text": 4096, "message": w.DEFAULT_MAX_MESSAGE}
        await until(ws, "joined", room="#lobby", name="webby")
        nc = await trio.open_tcp_stream("127.0.0.1", line_port)
        await nc.send_all(b"ncer\n<b>hi</b> web\n")
        said = await until(ws, "said", name="ncer")
        assert said["text"] == "<b>hi</b> web"  # relayed as sent, never escaped
        assert said["room"] == "#lobby"
        assert said["seq"] >= 2
        assert said["time"].endswith("Z")
        assert isinstance(said["ts"], float)
        await ws.send_message(json.dumps({"type": "say", "room": "#lobby", "text": "hi nc"}))
        await ws.send_message(json.dumps({"type": "line", "room": "#lobby", "text": "/me waves"}))
        got = b""
        while b"* webby waves" not in got:
            got += await nc.receive_some(4096)
        assert b"<webby> hi nc\n" in got
        await nc.aclose()
        left = await until(ws, "left", name="ncer")
        assert left["reason"] == "connection lost"


async def test_a_web_member_is_in_several_rooms(start: Start) -> None:
    _, _, _, port = await start()
    async with web_client(port) as a, web_client(port) as b:
        await register(a, "ann", rooms=["#lobby", "#cats"])
        await until(a, "joined", room="#cats", name="ann")
        await register(b, "bob", rooms=["#cats"])
        await until(a, "joined", room="#cats", name="bob")
        await b.send_message(json.dumps({"type": "say", "room": "#cats", "text": "meow"}))
        assert (await until(a, "said"))["room"] == "#cats"
        await b.send_message(json.dumps({"type": "msg", "to": "ann", "text": "psst"}))
        private = await until(a, "private")
        assert (private["from"], private["to"], private["echo"]) == ("bob", "ann", False)
        await b.send_message(json.dumps({"type": "part", "room": "#cats", "reason": "nap"}))
        assert (await until(a, "left", room="#cats"))["reason"] == "nap"
        await b.send_message(json.dumps({"type": "say", "room": "#cats", "text": "x"}))
        assert (await until(b, "error"))["text"] == "You are not in #cats"


async def test_bad_messages_get_errors_and_the_connection_carries_on(start: Start) -> None:
    _, _, _, port = await start()
    async with web_client(port) as ws:
        await receive(ws)  # hello
        await ws.send_message(json.dumps({"type": "say", "room": "#lobby", "text": "early"}))
        assert (await receive(ws)) == {"type": "error", "text": "Register first"}
        await ws.send_message(json.dumps({"type": "register", "name": "no spaces"}))
        assert (await receive(ws))["text"].startswith("Invalid name 'no spaces'")
        await ws.send_message(json.dumps({"type": "register", "name": "fine"}))
        await until(ws, "registered")
        await ws.send_message("{oops")
        assert (await until(ws, "error"))["text"].startswith("Bad JSON")
        await ws.send_message(json.dumps({"type": "teleport"}))
        assert (await until(ws, "error"))["text"] == "Unknown message type 'teleport'"
        await ws.send_message(json.dumps({"type": "say", "room": "#lobby", "text": "x" * 5000}))
        assert (await until(ws, "error"))["text"].startswith("Message too long (limit 4096")
        await ws.send_message(json.dumps({"type": "say", "room": "#lobby", "text": "still here"}))
        assert (await until(ws, "said"))["text"] == "still here"
        await ws.send_message(json.dumps({"type": "quit"}))
        assert (await closed_with(ws)).code == w.CLOSE_NORMAL


# --- Limits and the slow-consumer policy ------------------------------------------------


async def test_an_oversized_message_closes_only_that_connection(start: Start) -> None:
    _, _, _, port = await start(web=WebConfig(port=0, max_message=2048))
    async with web_client(port) as other:
        await register(other, "other")
        big, _ = await raw_upgrade(port)
        async with big:
            await big.send_all(_masked(json.dumps({"type": "register", "name": "big"}).encode()))
            await until(other, "joined", name="big")
            await big.send_all(_masked(b"x" * 3000))
            assert await close_code(big) == (w.CLOSE_TOO_BIG, "Message too big (limit 2048 bytes)")
        assert (await until(other, "left", name="big"))["reason"] == "connection lost"
        await other.send_message(json.dumps({"type": "say", "room": "#lobby", "text": "fine"}))
        assert (await until(other, "said"))["text"] == "fine"


async def test_a_binary_message_is_refused_with_1003(start: Start) -> None:
    _, _, _, port = await start()
    async with web_client(port) as ws:
        await receive(ws)
        await ws.send_message(b"\x00\x01")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == w.CLOSE_UNSUPPORTED  # type: ignore[union-attr]


async def test_a_tab_that_never_reads_is_evicted_while_others_keep_receiving(
    start: Start,
) -> None:
    server, door, _, port = await start(history=1, send_queue=20)
    slow, head = await raw_upgrade(port)
    assert head.startswith(b"HTTP/1.1 101")
    # Its receive window stays tiny, so the server's writes back up quickly.
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await slow.send_all(_masked(json.dumps({"type": "register", "name": "slow"}).encode()))
    async with web_client(port) as talker, web_client(port) as reader:
        await register(talker, "talker")
        await register(reader, "reader")
        with trio.fail_after(20):
            while door.connections == 3:
                for _ in range(20):
                    text = "y" * 3000
                    await talker.send_message(
                        json.dumps({"type": "say", "room": "#lobby", "text": text})
                    )
                await until(reader, "said", name="talker")
        left = await until(reader, "left", name="slow")
        assert left["reason"] == "too slow"
        assert server.hub.slow_evictions == 1
        await talker.send_message(json.dumps({"type": "say", "room": "#lobby", "text": "on"}))
        assert (await until(reader, "said", text="on"))["name"] == "talker"
    await slow.aclose()


async def test_a_tab_that_reads_slowly_gets_a_backlog_whole_and_in_order_then_the_close(
    start: Start,
) -> None:
    server, door, line_port, port = await start(send_queue=10_000)
    page, head = await raw_upgrade(port)
    assert head.startswith(b"HTTP/1.1 101")
    await page.send_all(_masked(json.dumps({"type": "register", "name": "page"}).encode()))
    frames = _Frames(page)
    while (await frames.next()).get("type") != "registered":
        pass
    # The server's side keeps little, so most of what follows waits in the outbox
    # and the web door's writer sends it as the page reads.
    (connection,) = door._connections
    assert isinstance(connection.stream, trio.SocketStream)
    connection.stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    nc = await trio.open_tcp_stream("127.0.0.1", line_port)
    await nc.send_all(b"ncer\n")
    await _line_until(nc, b"ncer joined")
    texts = [f"{i:04d} " + "z" * 900 for i in range(600)]  # about 0.6 MB of frames
    await nc.send_all("".join(f"{text}\n" for text in texts).encode())
    got: list[str] = []
    with trio.fail_after(20):
        while len(got) < len(texts):
            message = await frames.next()
            if message.get("type") == "said":
                assert message["name"] == "ncer"
                got.append(message["text"])
            await trio.sleep(0.0005)  # a slow reader: the server's writes back up
        assert got == texts
        await page.send_all(_masked(json.dumps({"type": "quit"}).encode()))
        while "close" not in (message := await frames.next()):
            pass
    assert message["close"] == [w.CLOSE_NORMAL, "Bye!"]
    assert server.stats.queue_high_water > 100  # lines did wait for the writer
    await nc.aclose()
    await page.aclose()


class _Frames:
    """The server's frames on a raw WebSocket, one at a time: a TEXT frame's JSON, or
    a close frame as ``{"close": [code, reason]}``."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> dict[str, Any]:
        while True:
            buffer = self.buffer
            while len(buffer) < 2 or len(buffer) < 2 + _payload_size(buffer):
                chunk = await self.stream.receive_some(65536)
                assert chunk, "closed without a close frame"
                buffer += chunk
            start = 2 if buffer[1] < 126 else 4
            end = 2 + _payload_size(buffer)  # which counts an extended length's 2 bytes
            opcode, payload, self.buffer = buffer[0], buffer[start:end], buffer[end:]
            if opcode == 0x88:
                return {"close": [int.from_bytes(payload[:2]), payload[2:].decode()]}
            if opcode == 0x81:
                return dict(json.loads(payload))


def _masked(payload: bytes) -> bytes:
    """A client TEXT frame with an all-zero mask (the payload then goes as it is)."""
    size = len(payload)
    length = bytes((0x80 | size,)) if size < 126 else bytes((0x80 | 126,)) + size.to_bytes(2)
    return b"\x81" + length + b"\x00\x00\x00\x00" + payload


async def close_code(stream: trio.SocketStream) -> tuple[int, str]:
    """Read server frames until the close frame: its code and reason."""
    buffer = b""
    while True:
        while len(buffer) < 2 or len(buffer) < 2 + _payload_size(buffer):
            chunk = await stream.receive_some(65536)
            assert chunk, "closed without a close frame"
            buffer += chunk
        size = _payload_size(buffer)
        start = 2 if buffer[1] < 126 else 4
        if buffer[0] == 0x88:
            payload = buffer[start : start + size]
            return int.from_bytes(payload[:2]), payload[2:].decode()
        buffer = buffer[start + size :]


def _payload_size(frame: bytes) -> int:
    if frame[1] < 126:
        return frame[1]
    return int.from_bytes(frame[2:4]) + 2 if len(frame) >= 4 else 1 << 20


async def test_a_full_server_refuses_with_1013(start: Start) -> None:
    _, _, _, port = await start(max_clients=1)
    async with web_client(port) as first:
        await register(first, "first")
        second, _ = await raw_upgrade(port)
        async with second:
            assert await close_code(second) == (w.CLOSE_TRY_LATER, "Server full, try again later")


async def test_the_password_is_checked(start: Start) -> None:
    server, _, _, port = await start(password="s3cret", password_delay=0)
    async with web_client(port) as ws:
        assert (await receive(ws))["password"] is True
        await ws.send_message(json.dumps({"type": "register", "name": "eve", "password": "x"}))
        assert (await receive(ws)) == {"type": "error", "text": "Wrong password"}
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == w.CLOSE_WRONG_PASSWORD  # type: ignore[union-attr]
    assert server.stats.wrong_passwords == 1
    async with web_client(port) as ws:
        await register(ws, "ann", password="s3cret")


# --- The origin ---------------------------------------------------------------------


async def test_a_cross_site_page_cannot_open_the_websocket(start: Start) -> None:
    _, _, _, port = await start()
    stream, head = await raw_upgrade(port, origin="https://evil.example")
    assert head.startswith(b"HTTP/1.1 403")
    await stream.aclose()
    stream, head = await raw_upgrade(port, origin="null")
    assert head.startswith(b"HTTP/1.1 403")
    await stream.aclose()


async def test_a_rebound_name_cannot_reach_a_server_on_loopback(start: Start) -> None:
    """DNS rebinding: evil.example now resolves to 127.0.0.1; Host and Origin agree."""
    _, _, _, port = await start()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            (
                f"GET /ws HTTP/1.1\r\nHost: evil.example:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                f"Sec-WebSocket-Version: 13\r\nOrigin: http://evil.example:{port}\r\n\r\n"
            ).encode()
        )
        assert (await stream.receive_some(12)) == b"HTTP/1.1 403"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_page_s_own_origin_may_connect_however_it_names_the_host(
    start: Start, host: str
) -> None:
    _, _, _, port = await start()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: http://{host}:{port}\r\n\r\n"
        ).encode()
    )
    assert (await stream.receive_some(12)) == b"HTTP/1.1 101"
    await stream.aclose()


async def test_web_origin_lets_in_the_origins_given_and_no_other(start: Start) -> None:
    _, _, _, port = await start(web=WebConfig(port=0, origins=("https://chat.example.org",)))
    async with web_client(port, origin="https://chat.example.org") as ws:
        await register(ws, "ok")
    stream, head = await raw_upgrade(port, origin=f"http://127.0.0.1:{port}")
    assert head.startswith(b"HTTP/1.1 403")
    await stream.aclose()


# --- TLS and shutdown -----------------------------------------------------------------


async def test_wss_with_the_server_s_certificate(start: Start) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    _, _, _, port = await start(ssl_context=context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with web_client(port, origin=f"https://127.0.0.1:{port}", use_ssl=client_context) as ws:
        await register(ws, "secure")


async def test_shutdown_tells_every_page_1001(start: Start) -> None:
    server, door, _, port = await start()
    async with web_client(port) as ws:
        await register(ws, "stay")
        await until(ws, "joined")
        door.shutdown()
        server.shutdown()
        reason = await closed_with(ws)
        assert reason.code == w.CLOSE_GOING_AWAY
        assert reason.reason == "Server is shutting down. Bye!"


async def test_max_per_address_counts_websockets(start: Start) -> None:
    _, _, _, port = await start(max_per_address=1)
    async with web_client(port) as first:
        await register(first, "first")
        # Fetching the page does not count: only open WebSockets do.
        status, _, _ = await http_get(port, "/")
        assert status.startswith("HTTP/1.1 200")
        second, _ = await raw_upgrade(port)
        async with second:
            code = await close_code(second)
        assert code == (w.CLOSE_TRY_LATER, "Too many connections from your address")


async def test_serve_web_port_0_says_where_the_page_is() -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "triochat", "serve", "--port", "0", "--web-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        with trio.fail_after(10):
            out = b""
            while b"triochat web listening on " not in out or not out.endswith(b"\n"):
                out += await process.stdout.receive_some(4096)
        url = out.decode().split("triochat web listening on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/")
        status, _, body = await http_get(int(url.rsplit(":", 1)[1].rstrip("/")), "/")
        assert status.startswith("HTTP/1.1 200")
        assert b'<label for="message"' in body
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
        await process.stdout.aclose()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8080", True),
        ("localhost:8080", True),
        ("LOCALHOST", True),
        ("[::1]:8080", True),
        ("127.1.2.3", True),
        ("chat.example.org:8080", False),
        ("10.0.0.5:80", False),
        ("[2001:db8::1]:443", False),
        ("", False),
    ],
)
def test_which_host_names_are_loopback(host: str, loopback: bool) -> None:
    assert _is_loopback(_host_name(host)) is loopback


async def test_every_command_through_the_door(start: Start) -> None:
    _, _, _, port = await start()

    async def send(ws: WebSocketConnection, **message: Any) -> None:
        await ws.send_message(json.dumps(message))

    async with web_client(port) as ann, web_client(port) as bob:
        await register(ann, "ann")
        await send(ann, type="register", name="again")
        assert (await until(ann, "error"))["text"] == "You are already registered as ann"
        await register(bob, "bob")
        await send(ann, type="say", room="#lobby", text="one")
        await send(ann, type="me", room="#lobby", text="two")
        assert (await until(bob, "acted"))["text"] == "two"
        await send(ann, type="history", room="#lobby", count=2)
        history = await until(ann, "history")
        assert [e["text"] for e in history["events"]] == ["one", "two"]
        await send(ann, type="users", room="#lobby")
        assert (await until(ann, "users"))["names"] == ["ann", "bob"]
        await send(ann, type="join", room="#dev")
        assert (await until(ann, "joined", room="#dev"))["name"] == "ann"
        await send(ann, type="rooms")
        rooms = (await until(ann, "rooms"))["rooms"]
        assert {"room": "#dev", "members": 1} in rooms
        await send(ann, type="nick", name="annie")
        renamed = await until(bob, "renamed")
        assert (renamed["old"], renamed["new"]) == ("ann", "annie")
        await send(bob, type="nick", name="ANNIE")
        assert (await until(bob, "error"))["text"] == "Name ANNIE is taken, choose another"
        await send(bob, type="help")
        assert (await until(bob, "notice"))["text"] == "Commands:"
        await send(bob, type="line", room="#lobby", text="/part see you")
        assert (await until(ann, "left", room="#lobby"))["reason"] == "see you"
        await send(bob, type="history", room="#lobby")
        assert (await until(bob, "error"))["text"] == "You are not in #lobby"
        await send(bob, type="join", room="#lobby")
        await until(ann, "joined", room="#lobby")
        await send(bob, type="part", room="#lobby")
        assert (await until(ann, "left", room="#lobby"))["reason"] == "bye"
        await ann.ping(b"are you there")  # the door answers pings (trio-websocket waits)


async def test_http_keeps_the_connection_for_the_next_request(start: Start) -> None:
    _, _, _, port = await start()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        request = f"GET /style.css HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        await stream.send_all(
            request + b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        )
        got = b""
        while b"405" not in got or not got.endswith(b"Only GET here\n"):
            got += await stream.receive_some(65536)
        assert got.startswith(b"HTTP/1.1 200")
        assert b"content-type: text/css; charset=utf-8" in got.lower()
        assert b"HTTP/1.1 405" in got


async def test_an_upgrade_without_version_13_gets_426(start: Start) -> None:
    _, _, _, port = await start()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
        )
        assert (await stream.receive_some(12)) == b"HTTP/1.1 426"


async def test_a_page_that_closes_first_leaves_the_room(start: Start) -> None:
    _, _, _, port = await start()
    async with web_client(port) as stay:
        await register(stay, "stay")
        async with web_client(port) as going:
            await register(going, "going")
            await until(stay, "joined", name="going")
        # trio-websocket closed with 1000 and the server answered: a quit.
        assert (await until(stay, "left", name="going"))["reason"] == "quit"


async def test_metrics_count_the_web_door_s_clients(start: Start, nursery: trio.Nursery) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from triochat.server.metrics import serve_metrics

    server, door, _, port = await start()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(partial(serve_metrics, server, listeners, web=door))
    metrics_port = listeners[0].socket.getsockname()[1]

    async def web_clients() -> float:
        _, _, body = await http_get(metrics_port, "/metrics")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "triochat_web_clients":
                    return sample.value
        raise AssertionError("no triochat_web_clients")

    assert await web_clients() == 0
    async with web_client(port) as ws:
        await register(ws, "counted")
        assert await web_clients() == 1


async def test_a_web_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(20):
            result = await trio.run_process(
                [sys.executable, "-m", "triochat", "serve", "--port", "0", "--web-port", str(port)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"Error: cannot listen for the web door on 127.0.0.1:{port}: Address already in use\n"
    )


async def _line_until(stream: trio.SocketStream, text: bytes) -> bytes:
    """What the line door sent, up to ``text`` (or its close); within 10 s."""
    data = b""
    with trio.fail_after(10):
        while text not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


async def test_the_doors_share_one_max_per_address(start: Start) -> None:
    _, _, line_port, port = await start(max_per_address=1)
    liner = await trio.open_tcp_stream("127.0.0.1", line_port)
    await liner.send_all(b"liner\n")
    await _line_until(liner, b"liner joined")
    # The line client holds the address's one connection: the browser is refused.
    second, _ = await raw_upgrade(port)
    async with second:
        code = await close_code(second)
    assert code == (w.CLOSE_TRY_LATER, "Too many connections from your address")
    await liner.send_all(b"/quit\n")
    await _line_until(liner, b"Bye!")
    await liner.aclose()
    # Once it has gone, the address may connect again, on the other door.
    await trio.testing.wait_all_tasks_blocked()
    async with web_client(port) as ws:
        await register(ws, "webber")


async def test_websockets_count_against_the_line_door_s_max_clients(start: Start) -> None:
    _, _, line_port, port = await start(max_clients=1)
    async with web_client(port) as first:
        await register(first, "first")
        liner = await trio.open_tcp_stream("127.0.0.1", line_port)
        assert b"! Server full, try again later" in await _line_until(liner, b"Server full")
        await liner.aclose()


async def test_a_silent_page_on_a_plain_socket_is_closed_while_an_answering_one_stays(
    start: Start,
) -> None:
    # The door's one timer task pings every WebSocket; trio-websocket answers.
    web = WebConfig(port=0, ping_interval=0.05, ping_timeout=0.05)
    _, _, _, port = await start(web=web, resume_grace=0)
    async with web_client(port) as talker:
        await register(talker, "talker")
        silent, head = await raw_upgrade(port)
        assert head.startswith(b"HTTP/1.1 101")
        await silent.send_all(_masked(json.dumps({"type": "register", "name": "silent"}).encode()))
        with trio.fail_after(10):
            # Its pings (opcode 0x89) are skipped; it never answers one.
            assert await close_code(silent) == (w.CLOSE_PING_TIMEOUT, "No answer to ping")
            assert (await until(talker, "left", name="silent"))["reason"] == "ping timeout"
            await trio.sleep(0.3)  # several more pings, each answered
            await talker.send_message(json.dumps({"type": "say", "room": "#lobby", "text": "on"}))
            assert (await until(talker, "said", text="on"))["name"] == "talker"
        await silent.aclose()


async def test_an_idle_websocket_keeps_no_task_of_its_own_but_its_reader(start: Start) -> None:
    # Its timers are the door's (keep_time): a task each would cost every idle page
    # about 2 KB (docs/benchmarks.md, the web door's idle connection).
    _, door, _, port = await start()
    async with web_client(port) as ann:
        await register(ann, "ann")
        await trio.testing.wait_all_tasks_blocked()
        (connection,) = door._connections
        nursery = connection._nursery
        assert nursery is not None
        assert nursery.child_tasks == frozenset()


async def test_a_web_member_sent_away_by_the_server_is_told_and_hung_up(start: Start) -> None:
    server, _, _, port = await start()
    async with web_client(port) as ann, web_client(port) as bob:
        await register(ann, "ann")
        await register(bob, "bob")
        await until(ann, "joined", name="bob")
        member = server.hub.member("bob")
        assert member is not None
        server.hub.expel(member, "banned from the server")
        assert (await until(bob, "error"))[
            "text"
        ] == "You are out of the chat (banned from the server)"
        # After what it was told: the close frame, although the hub had closed its outbox.
        assert (await closed_with(bob)).code == w.CLOSE_EXPELLED
        assert (await until(ann, "left", name="bob"))["reason"] == "banned from the server"
