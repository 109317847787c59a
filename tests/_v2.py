"""v2 test clients on a whole server over memory streams (trio's jumping clock): raw lines
in and out, a v2 client that tracks its rooms' positions and token, and ``serving``.

A "cut" is the client closing its end without ``/quit``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from triochat import ChatServer, ServerConfig
from triochat.backplane import Backplane
from triochat.protocol import v2
from triochat.server.accounts import AccountStore

WAIT = 100  # virtual seconds


class Client:
    """The far end of a memory stream the server serves: raw lines in, raw lines out."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = b""

    async def send(self, *lines: str) -> None:
        await self.stream.send_all("".join(f"{line}\n" for line in lines).encode())

    async def line(self) -> str | None:
        with trio.fail_after(WAIT):
            while b"\n" not in self._buffer:
                data = await self.stream.receive_some()
                if not data:
                    return None
                self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def until(self, last: str, *, at_end: bool = False) -> list[str]:
        """Every line up to and including one that starts (``at_end``: ends) with ``last``."""
        lines: list[str] = []
        while not lines or not (lines[-1].endswith(last) if at_end else lines[-1].startswith(last)):
            line = await self.line()
            assert line is not None, f"closed before {last!r}: {lines}"
            lines.append(line)
        return lines

    async def cut(self) -> None:
        await self.stream.aclose()


class V2Client(Client):
    """A client that opted into v2, with what it knows of its rooms."""

    token = ""
    name = ""

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__(stream)
        self.positions: dict[str, tuple[str, int]] = {}

    async def parsed(self, last: str) -> list[v2.ServerLine]:
        """The v2 lines up to one of kind ``last``; tracks epochs, numbers and the token."""
        lines = [v2.parse_line(line) for line in await self.until(last + " ")]
        for line in lines:
            self.track(line)
        return lines

    def track(self, line: v2.ServerLine) -> None:
        if line.kind == "welcome":
            self.token, self.name = line["token"], line["name"]
        elif line.kind in ("room", "resumed", "resume-failed"):
            self.positions[line["room"]] = (line["epoch"], line.number("seq"))
        elif "seq" in line.fields and line["room"] in self.positions:
            epoch, seq = self.positions[line["room"]]
            self.positions[line["room"]] = (epoch, max(seq, line.number("seq")))

    async def hello(self) -> list[str]:
        """Opt into v2 (after v1's welcome): the hello and the name question."""
        first = await self.until("* What is your name?")
        await self.send(v2.HELLO)
        return [*first, *await self.until("notice :What is your name?")]

    async def register(self, name: str) -> list[v2.ServerLine]:
        await self.hello()
        await self.send(name)
        return await self.parsed("room")

    async def log_in(self, name: str) -> list[v2.ServerLine]:
        """Register ``name``, a registered name whose password is ``NAME-pw``."""
        await self.hello()
        await self.send(name)
        await self.until(f"notice :{name} is registered: its password?")
        await self.send(f"{name}-pw")
        return await self.parsed("room")

    async def upto(self, text: str) -> None:
        """Read up to a line starting with ``text``, tracking every line as ``parsed`` does."""
        for line in await self.until(text):
            self.track(v2.parse_line(line))

    async def operator_away(self, room: str, away: str) -> None:
        """Join ``room`` as its first (registered) member, its operator; then ``/away``."""
        await self.send(f"/join {room}")
        await self.upto(f"notice :You are an operator of {room}")
        await self.send(f"/away {away}")
        await self.upto(f"notice :You are away: {away}")

    def resume_line(self) -> str:
        marks = " ".join(f"{room}={epoch}:{seq}" for room, (epoch, seq) in self.positions.items())
        return f"/resume {self.token} {marks}"


Connect = Callable[[], Awaitable[Client]]
ConnectV2 = Callable[[], Awaitable[V2Client]]


@asynccontextmanager
async def serving(
    backplane: Backplane | None = None, accounts: AccountStore | None = None, **options: Any
) -> AsyncIterator[tuple[ChatServer, Connect, ConnectV2]]:
    """A whole server (``serve``) in its own nursery; clients connect over memory streams."""
    options.setdefault("rate", 0)
    server = ChatServer(ServerConfig(port=0, **options), backplane=backplane, accounts=accounts)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)

        def open_stream() -> trio.StapledStream[Any, Any]:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle_stream, server_side)
            return client

        async def connect() -> Client:
            return Client(open_stream())

        async def connect_v2() -> V2Client:
            return V2Client(open_stream())

        yield server, connect, connect_v2
        server.shutdown()


async def resume(connect_v2: Callable[[], Awaitable[V2Client]], old: V2Client) -> V2Client:
    """A new connection that gives ``old``'s token and positions (its answer not read)."""
    again = await connect_v2()
    again.token, again.positions = old.token, dict(old.positions)
    await again.hello()
    await again.send(again.resume_line())
    return again


async def v1_user(connect: Connect, name: str) -> Client:
    client = await connect()
    await client.until("* What is your name?")
    await client.send(name)
    await client.until("[")  # its own join
    return client
