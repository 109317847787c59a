"""IRC test helpers: a raw-socket IRC client, line-door clients, and closing them all."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from triochat.client.connection import ChatClient, open_chat_client
from triochat.protocol import irc


class RawIRC:
    """An IRC client on a raw socket: lines out, parsed messages in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.framer = irc.IRCFramer(max_line=100_000, max_tags=100_000)
        self.seen: list[irc.Message] = []
        self._pending: list[irc.Message] = []
        self._pending_events: list[irc.Received] = []

    async def send(self, *lines: str) -> None:
        await self.stream.send_all("".join(f"{line}\r\n" for line in lines).encode())

    async def next_event(self) -> irc.Received | None:
        """The next thing the framer found, message or not; ``None`` once closed."""
        while not self._pending_events:
            self._pending_events.extend(self.framer.events())
            if self._pending_events:
                break
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.framer.receive_data(data)
        return self._pending_events.pop(0)

    async def next(self) -> irc.Message | None:
        """The next message, or ``None`` once the server closed the connection."""
        while True:
            if self._pending:
                msg = self._pending.pop(0)
                self.seen.append(msg)
                return msg
            for event in self.framer.events():
                assert isinstance(event, irc.Message), event
                self._pending.append(event)
            if self._pending:
                continue
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self.framer.receive_data(data)

    async def until(self, command: str, *params: str, within: float = 10) -> irc.Message:
        """Read until a ``command`` message whose parameters start with ``params``."""
        with trio.fail_after(within):
            while True:
                msg = await self.next()
                assert msg is not None, f"closed before {command} {params}"
                if msg.command == command and msg.params[: len(params)] == params:
                    return msg

    async def closed(self) -> list[irc.Message]:
        """Everything until the server closes the connection."""
        got = []
        with trio.fail_after(10):
            while (msg := await self.next()) is not None:
                got.append(msg)
        return got


_OPEN: list[trio.abc.AsyncResource | ChatClient] = []


async def close_clients() -> AsyncIterator[None]:
    """Every client a test opened here is closed after it.

    A fixture body: a test module makes it one with
    ``_close_clients = pytest.fixture(autouse=True)(close_clients)``.
    """
    yield
    while _OPEN:
        await _OPEN.pop().aclose()


def opened(resource: trio.abc.AsyncResource | ChatClient) -> None:
    """Close ``resource`` after the test, with the clients."""
    _OPEN.append(resource)


async def irc_client(port: int, nick: str | None = None, *lines: str) -> RawIRC:
    client = RawIRC(await trio.open_tcp_stream("127.0.0.1", port))
    opened(client.stream)
    if nick is not None:
        await client.send(*lines, f"NICK {nick}", "USER u 0 * :Real")
        await client.until("001")
        await client.until("422")
    return client


async def line_client(port: int, name: str) -> ChatClient:
    client = await open_chat_client("127.0.0.1", port)
    opened(client)
    await client.register(name)
    return client


async def line_until(client: ChatClient, ending: str, within: float = 10) -> str:
    with trio.fail_after(within):
        while True:
            line = await client.receive_line()
            if line.endswith(ending):
                return line
